"""A small reader of the Princeton WordNet 3.0 database files (Debian's `wordnet-base`), no NLTK needed.

Only what the caption vocabulary needs: the senses of a lemma, a synset's lemmas and its pointers
(hypernym `@`, hyponym `~`, similar-to `&`). Format: wndb(5WN) — a data line starts with its own byte
offset, so a synset is one seek away.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from train.core.errors import UserError

DEFAULT_DIR = "/usr/share/wordnet"
_FILES = {"n": "noun", "a": "adj", "s": "adj"}


class WordNet:
    def __init__(self, directory: str | Path = DEFAULT_DIR):
        self.dir = Path(directory)
        if not (self.dir / "data.noun").is_file():
            raise UserError(f"no WordNet database in {self.dir} (expected data.noun there); install it with "
                            "`apt-get install wordnet-base` or pass --wordnet-dir")
        self._index = {pos: self._read_index(pos) for pos in ("noun", "adj")}
        self._data = {pos: (self.dir / f"data.{pos}").read_bytes() for pos in ("noun", "adj")}

    def _read_index(self, pos: str) -> dict[str, list[int]]:
        out = {}
        for line in (self.dir / f"index.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue                                  # the licence header
            f = line.split()
            n_ptr = int(f[3])
            synset_cnt = int(f[2])
            out[f[0]] = [int(x) for x in f[4 + n_ptr + 2:4 + n_ptr + 2 + synset_cnt]]
        return out

    def senses(self, lemma: str, pos: str) -> list[int]:
        """Synset offsets of `lemma` (spaces as in the text, e.g. "plane figure") in sense order."""
        return self._index[_FILES[pos]].get(lemma.lower().replace(" ", "_"), [])

    @lru_cache(maxsize=None)
    def synset(self, offset: int, pos: str) -> tuple[tuple[str, ...], tuple[tuple[str, int, str], ...]]:
        """(lemmas, pointers (symbol, offset, pos)) of the synset at `offset`."""
        data = self._data[_FILES[pos]]
        end = data.index(b"\n", offset)
        f = data[offset:end].decode("latin-1").split(" | ")[0].split()
        w_cnt = int(f[3], 16)
        lemmas = tuple(f[4 + 2 * i].split("(")[0].replace("_", " ") for i in range(w_cnt))
        i = 4 + 2 * w_cnt
        p_cnt = int(f[i])
        ptrs = tuple((f[i + 1 + 4 * k], int(f[i + 2 + 4 * k]), f[i + 3 + 4 * k]) for k in range(p_cnt))
        return lemmas, ptrs

    def related(self, offset: int, pos: str, symbol: str) -> list[tuple[int, str]]:
        return [(o, p) for s, o, p in self.synset(offset, pos)[1] if s == symbol]

    def ancestors(self, offset: int, pos: str) -> set[int]:
        """Every hypernym above a synset (transitively)."""
        seen, todo = set(), [offset]
        while todo:
            for o, _ in self.related(todo.pop(), pos, "@"):
                if o not in seen:
                    seen.add(o)
                    todo.append(o)
        return seen
