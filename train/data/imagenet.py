"""The ImageNet class names and the caption language that stands in for the paper's COCO captioner
(bert2biggan, Sec. 4.1): training and held-out templates per class, and user caption files."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from train.core.common import UserError

CLASSES_FILE = Path(__file__).parent / "imagenet_classes.txt"


@functools.lru_cache(maxsize=1)
def class_names() -> tuple[tuple[str, ...], ...]:
    """The 1000 ILSVRC-2012 classes in index order, each as its lemmas (first = the common name)."""
    lines = CLASSES_FILE.read_text(encoding="utf-8").splitlines()
    if len(lines) != 1000:
        raise UserError(f"{CLASSES_FILE} must have 1000 lines (one per ImageNet class), has {len(lines)}")
    return tuple(tuple(s.strip() for s in line.split(",") if s.strip()) for line in lines)


# {a}: with article, {p}: plural, {n}: bare name. Held-out frames never occur in training.
TRAIN_TEMPLATES = ["a photo of {a}", "{a} in the wild", "a picture of {p}", "a close-up photo of {a}",
                   "there is {a} in this image", "a blurry photo of the {n}", "an image of {p}", "{n}",
                   "a bright photo of {a}", "a cropped photo of the {n}", "a drawing of {a}", "{p} outdoors"]
HELDOUT_TEMPLATES = ["a snapshot showing {a}", "this is a good example of {a}", "several {p} next to each other",
                     "my favourite {n}"]


def _article(phrase: str) -> str:
    low = phrase.lower()
    vowel = low[0] in "aeiou" and not low.startswith(("eu", "uni", "use", "one")) or low.startswith("hour")
    return f"{'an' if vowel else 'a'} {phrase}"


def _plural(phrase: str) -> str:
    head, _, last = phrase.rpartition(" ")
    low = last.lower()
    if low.endswith(("fish", "sheep", "deer", "s", "ware")) and not low.endswith(("ss", "us")):
        word = last
    elif low.endswith(("ss", "x", "z", "ch", "sh", "us")):
        word = last + "es"
    elif low.endswith("y") and low[-2:-1] not in tuple("aeiou"):
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def fill(template: str, name: str) -> str:
    return template.format(a=_article(name), p=_plural(name), n=name)


def class_captions(cls: int, count: int, split: str, seed: int = 0) -> list[str]:
    """`count` distinct captions of class `cls`, the same on every call. Train captions cycle through the
    class's lemmas (every other one uses the common name) and a per-class shuffle of TRAIN_TEMPLATES;
    held-out captions use HELDOUT_TEMPLATES with the common name only."""
    names = class_names()[cls]
    rng = np.random.default_rng([seed, cls, split == "heldout"])
    templates = HELDOUT_TEMPLATES if split == "heldout" else TRAIN_TEMPLATES
    order = rng.permutation(len(templates))
    out: list[str] = []
    for k in range(count):
        synonym = 1 + (k // 2) % max(1, len(names) - 1) if len(names) > 1 and split == "train" and k % 2 else 0
        text = fill(templates[order[k % len(order)]], names[synonym])
        if text not in out:
            out.append(text)
    return out


def load_captions_file(path: str | Path) -> list[tuple[int, str]]:
    """User (class index, caption) pairs: .jsonl lines {"class": int, "text": str} or .tsv lines
    "index<TAB>caption". Blank lines are skipped; any other bad line is a UserError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"caption file not found: {path}")
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        if jsonl:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or "class" not in row or "text" not in row:
                raise UserError(f'{where}: expected {{"class": <0-999>, "text": "..."}}')
            cls, text = row["class"], row["text"]
        else:
            cls, sep, text = line.partition("\t")
            if not sep:
                raise UserError(f"{where}: expected 'class index<TAB>caption'")
            cls = int(cls) if cls.strip().lstrip("-").isdigit() else cls
        if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls < 1000:
            raise UserError(f"{where}: class must be an integer ImageNet index 0-999, got {cls!r}")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: caption must be a non-empty string")
        out.append((cls, text.strip()))
    if not out:
        raise UserError(f"{path} holds no captions")
    return out


def class_subset(n: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, 999, n).round()})


def heldout_captions(classes: list[int], n: int, part: str) -> list[tuple[int, str]]:
    """Held-out-template captions: per class the first n are evaluated, the next n are the trainer's
    validation split (best-checkpoint selection), so model selection never sees an evaluated caption."""
    start = 0 if part == "eval" else n
    return [(c, t) for c in classes for t in class_captions(c, 2 * n, "heldout")[start:start + n]]
