"""Which training word does the sentence encoder put nearest to each held-out word?

    python -m train.caption_words [--text-encoder PATH] [--language train|broad] [--json]

text2image learns the meaning of a caption only from the training language (TRAIN_WORDS); a held-out
synonym can be read right only if the encoder places it nearer the training words of its own value
than those of another. This prints, for every held-out word, the nearest training word (cosine of
the encoder's embeddings of the bare words) and the best similarity per value, and counts the new words
whose nearest training word has another value (or ties) — a translator that learned its meanings from
the training words cannot be expected to read those.
"""
from __future__ import annotations

import argparse
import json

import torch.nn.functional as F

from train.core.common import run_cli
from train.data.captions import BROAD_WORDS, HELDOUT_WORDS, TRAIN_WORDS
from train.experts.text import TextEncoder


def neighbours(encoder, train_words: dict = TRAIN_WORDS) -> list[dict]:
    rows = []
    for group, values in HELDOUT_WORDS.items():
        train = [(value, word) for value, words in train_words[group].items() if value is not None for word in words]
        bank = F.normalize(encoder.encode([w for _, w in train]), dim=1)
        for value, words in values.items():
            if value is None:             # the "no shape named" nouns have no value to read
                continue
            sims = bank @ F.normalize(encoder.encode(words), dim=1).T      # (train words, held-out words)
            for j, word in enumerate(words):
                best = {str(v): max(float(sims[i, j]) for i, (tv, _) in enumerate(train) if tv == v)
                        for v in dict.fromkeys(tv for tv, _ in train)}
                near_value, near_word = train[int(sims[:, j].argmax())]
                other = max(s for v, s in best.items() if v != str(value))
                rows.append({"group": group, "value": str(value), "word": word, "nearest": near_word,
                             "nearest_value": str(near_value), "right": near_value == value, "best": best,
                             "margin": best[str(value)] - other, "trained": word in train_words[group][value]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.caption_words", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text-encoder", help="sentence-transformers folder (default: all-MiniLM-L6-v2)")
    ap.add_argument("--language", choices=("train", "broad"), default="train",
                    help="training words to compare with: the hand-written ones or the broad vocabulary "
                         "(docs/tasks.md)")
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    args = ap.parse_args(argv)
    rows = neighbours(TextEncoder(args.text_encoder), BROAD_WORDS if args.language == "broad" else TRAIN_WORDS)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        best = " ".join(f"{v}={s:.2f}" for v, s in r["best"].items())
        mark = ("   <- nearer another value" if not r["right"]
                else "   <- a tie (margin < 0.02)" if r["margin"] < 0.02 else "")
        print(f"{r['group']:6s} {r['value']:9s} {r['word']:30s} nearest {r['nearest']!r} ({r['nearest_value']}); "
              f"best per value: {best}{mark}")
    new = [r for r in rows if not r["trained"]]
    wrong = [r["word"] for r in new if not r["right"]]
    ties = [r["word"] for r in new if r["right"] and r["margin"] < 0.02]
    print(f"of {len(new)} held-out words never trained on ({len(rows) - len(new)} plain names are shared), "
          f"{len(wrong)} sit nearer a training word of another value ({', '.join(wrong) or '-'}) and "
          f"{len(ties)} are ties ({', '.join(ties) or '-'})")
    return 0


if __name__ == "__main__":
    run_cli(main)
