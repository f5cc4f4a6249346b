"""Captions for sprites: attribute vector -> English sentence, plus a loader for caption files.

A caption is built from up to seven phrases, one per attribute group (shape, colour, size,
horizontal position, vertical position, background, style). Each value has several synonyms and
each sentence frame comes from a template list. TRAIN_TEMPLATES / TRAIN_WORDS are what models
are trained on; HELDOUT_TEMPLATES / HELDOUT_WORDS are phrasings never seen in training, used to
test whether a text-conditioned model generalises. A partial caption mentions only some groups,
and `make_caption` returns exactly the attributes the sentence determines.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from train.core.errors import UserError
from train.data import ATTRIBUTES, COLORS, GROUPS, SHAPES

TRAIN_TEMPLATES = [
    "{np}{where}{bg}",
    "there is {np}{where}{bg}",
    "a picture of {np}{where}{bg}",
    "this image shows {np}{where}{bg}",
    "{np} is drawn{where}{bg}",
    "an image of {np}{where}{bg}",
    "a drawing of {np}{where}{bg}",
    "here we have {np}{where}{bg}",
    "the picture has {np}{where}{bg}",
    "a rendering of {np}{where}{bg}",
    "{np} is shown{where}{bg}",
    "in this picture, {np} sits{where}{bg}",
]
HELDOUT_TEMPLATES = [
    "you can see {np}{where}{bg}",
    "somebody painted {np}{where}{bg}",
    "the scene contains {np}{where}{bg}",
    "look, {np} appears{where}{bg}",
]

# Synonyms per (group, value). Held-out words overlap the train words only in the plain names,
# so a held-out caption always differs from every train caption in its frame. The train language is
# broad on purpose: with 2-3 synonyms per value a linear probe on MiniLM embeddings of train captions
# read shape off held-out captions 78 % of the time, with these six 97 % (colour 66 -> 70 %).
TRAIN_WORDS = {
    "shape": {"circle": ["circle", "disc", "round shape", "round object", "orb", "circular form"],
              "square": ["square", "box", "block", "square shape", "four-sided shape", "quadrilateral"],
              "triangle": ["triangle", "triangular shape", "wedge", "three-sided shape", "pyramid shape"],
              None: ["shape", "object", "item", "form", "sprite"]},
    "color": {"red": ["red", "crimson", "ruby", "cherry-red", "vermilion", "reddish"],
              "green": ["green", "emerald", "lime", "jade", "forest-green", "greenish"],
              "blue": ["blue", "azure", "navy", "sky-blue", "sapphire", "bluish"],
              "yellow": ["yellow", "golden", "amber", "mustard", "sunflower-yellow", "yellowish"],
              "purple": ["purple", "violet", "lavender", "lilac", "mauve", "purplish"]},
    "size": {1: ["large", "big", "giant", "oversized", "massive", "large-sized"],
             0: ["small", "little", "mini", "petite", "miniature", "small-sized"]},
    "style": {1: ["outlined", "hollow", "empty", "line-drawn", "framed", "ring-like"],
              0: ["filled", "solid", "full", "solid-coloured", "block-coloured", "shaded"]},
    "h": {1: ["on the left", "on the left side", "in the left half", "to the left", "at the left edge",
              "on the lefthand side"],
          0: ["on the right", "on the right side", "in the right half", "to the right", "at the right edge",
              "on the righthand side"]},
    "v": {1: ["at the top", "in the upper half", "near the top", "in the top part", "close to the top edge",
              "in the upper region"],
          0: ["at the bottom", "in the lower half", "near the bottom", "in the bottom part",
              "close to the bottom edge", "in the lower region"]},
    "bg": {1: ["on a dark background", "over a dark background", "against a black background",
               "on a black field", "on a dim background", "in front of a dark wall"],
           0: ["on a light background", "over a white background", "against a bright background",
               "on a white field", "on a light grey background", "in front of a light wall"]},
}
HELDOUT_WORDS = {
    "shape": {"circle": ["circle", "round blob"], "square": ["square", "tile"],
              "triangle": ["triangle", "three-cornered figure"], None: ["figure", "thing"]},
    "color": {"red": ["red", "scarlet"], "green": ["green", "grass-green"], "blue": ["blue", "cobalt"],
              "yellow": ["yellow", "lemon"], "purple": ["purple", "plum"]},
    "size": {1: ["huge", "sizeable"], 0: ["tiny", "compact"]},
    "style": {1: ["unfilled", "outline-only"], 0: ["filled-in", "opaque"]},
    "h": {1: ["toward the left", "left of centre"], 0: ["toward the right", "right of centre"]},
    "v": {1: ["up high", "above the middle"], 0: ["down low", "below the middle"]},
    "bg": {1: ["with a night-dark backdrop", "before a deep black backdrop"],
           0: ["with a pale backdrop", "before a bright white backdrop"]},
}

# Tokens the held-out language shares with the hand-written training language above (plain names,
# function words, and "round"/"three"/"dark"/"black"/"bright"/"white"/"filled"/"outline(d)"/"lower",
# shared since issue 4).
# Every OTHER held-out token — exactly, by stem, or one letter apart ("sizable" for "sizeable") — is kept
# out of everything training says (tests/test_sprites.py asserts it), so the held-out score stays honest.
SHARED_TOKENS = frozenset("a an the of in on circle square triangle red green blue yellow purple left right "
                          "round three dark black bright white filled outline lower".split())
VOCABULARY_FILE = Path(__file__).with_name("caption_vocabulary.json")


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower().replace("{np}", " ").replace("{where}", " ").replace("{bg}", " "))


def _stem(token: str) -> str:
    token = token[:-2] + "er" if token.endswith("re") else token     # centre -> center
    for _ in range(2):                                                 # centered -> center -> cent
        for suffix in ("ness", "ing", "ish", "est", "ed", "es", "er", "ly", "s"):
            if token.endswith(suffix) and len(token) - len(suffix) >= 3:
                token = token[:-len(suffix)]
                break
    return token.rstrip("e")


def _one_apart(a: str, b: str) -> bool:
    """One letter inserted or dropped (sizable / sizeable); not a substitution (light / night)."""
    if abs(len(a) - len(b)) != 1 or min(len(a), len(b)) < 5:
        return False
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def heldout_tokens() -> set[str]:
    """The held-out words and template words that training must never use."""
    texts = [w for values in HELDOUT_WORDS.values() for ws in values.values() for w in ws] + HELDOUT_TEMPLATES
    return {t for text in texts for t in _tokens(text)} - SHARED_TOKENS


def leaks(text: str, forbidden: set[str] | None = None) -> list[str]:
    """The held-out tokens a training phrase or template reuses: the same word, stem, a word one letter
    apart, or a compound starting with one ("downward")."""
    forbidden = heldout_tokens() if forbidden is None else forbidden
    stems = {_stem(f): f for f in forbidden}
    out = []
    for t in _tokens(text):
        if t in SHARED_TOKENS:
            continue
        hit = t if t in forbidden else stems.get(_stem(t)) or next(
            (f for f in forbidden if _one_apart(t, f) or (len(f) >= 4 and t.startswith(f))), None)
        if hit:
            out.append(f"{t} ({hit})" if hit != t else t)
    return out


def _load_vocabulary(path: Path = VOCABULARY_FILE) -> tuple[dict, list[str]]:
    """Training words/templates generated from WordNet and colour tables (python -m train.caption_vocabulary)."""
    if not path.is_file():
        return {}, []
    data = json.loads(path.read_text(encoding="utf-8"))
    keys = {"shape": {k: k for k in SHAPES} | {"none": None}, "color": {k: k for k in COLORS}}
    words = {group: {keys.get(group, {"1": 1, "0": 0})[value]: list(ws) for value, ws in values.items()}
             for group, values in data["words"].items()}
    return words, list(data.get("templates", []))


def _merge(hand: dict, extra: dict) -> dict:
    return {group: {value: list(dict.fromkeys(ws + extra.get(group, {}).get(value, [])))
                    for value, ws in values.items()} for group, values in hand.items()}


_EXTRA_WORDS, _EXTRA_TEMPLATES = _load_vocabulary()
# The "broad" training language (opt-in, `--caption-language broad`): the hand-written words plus the generated
# vocabulary (docs/tasks.md). Measured in docs/results.md: it reads broad phrasings better but not the held-out
# ones, and the plain training phrasing worse, so "train" stays the default.
BROAD_WORDS = _merge(TRAIN_WORDS, _EXTRA_WORDS)
BROAD_TEMPLATES = list(dict.fromkeys(TRAIN_TEMPLATES + _EXTRA_TEMPLATES))
# Share of "broad" picks drawn from the hand-written lists alone (the rest from everything): the generated
# lists are long (thousands of background phrases), and plain words like "on the left" must stay frequent.
HAND_SHARE = 0.5
SPLITS = ("train", "broad", "heldout")

_SINGLE = {"size": "size_large", "style": "style_outline", "h": "pos_left", "v": "pos_top", "bg": "bg_dark"}
_GROUP_ORDER = ["shape", "color", "size", "style", "h", "v", "bg"]


def _as_dict(attributes) -> dict[str, int]:
    """Accept a 13-vector in ATTRIBUTES order or a full name -> 0/1 dict; check the one-hot groups."""
    if isinstance(attributes, dict):
        values = {name: int(attributes[name]) for name in ATTRIBUTES}
    else:
        vec = np.asarray(attributes).reshape(-1)
        if vec.shape[0] != len(ATTRIBUTES):
            raise ValueError(f"expected {len(ATTRIBUTES)} attributes, got {vec.shape[0]}")
        values = {name: int(round(float(v))) for name, v in zip(ATTRIBUTES, vec)}
    for group, names in GROUPS.items():
        if sum(values[n] for n in names) != 1:
            raise ValueError(f"exactly one {group} attribute must be 1, got {[n for n in names if values[n]]}")
    return values


def make_caption(attributes, rng: np.random.Generator, split: str = "train",
                 partial_prob: float = 0.3) -> tuple[str, dict[str, int]]:
    """Describe `attributes` in one sentence; return (text, the attributes the text determines).

    split: "train" (TRAIN_TEMPLATES/WORDS), "broad" (those plus the generated vocabulary, BROAD_*) or
    "heldout" (HELDOUT_TEMPLATES/WORDS).
    With probability `partial_prob` each group is kept only with probability 1/2 (at least one
    group stays); otherwise every group is mentioned.
    """
    if split not in SPLITS:
        raise ValueError(f"caption split must be one of {', '.join(SPLITS)}, got {split!r}")
    templates, words = {"train": (TRAIN_TEMPLATES, TRAIN_WORDS), "broad": (BROAD_TEMPLATES, BROAD_WORDS),
                        "heldout": (HELDOUT_TEMPLATES, HELDOUT_WORDS)}[split]
    values = _as_dict(attributes)
    shape = next(s for s in SHAPES if values[f"shape_{s}"])
    color = next(c for c in COLORS if values[f"color_{c}"])

    keep = dict.fromkeys(_GROUP_ORDER, True)
    if rng.random() < partial_prob:
        flags = rng.random(len(_GROUP_ORDER)) < 0.5
        if not flags.any():
            flags[rng.integers(len(_GROUP_ORDER))] = True
        keep = dict(zip(_GROUP_ORDER, flags.tolist()))

    def pick(group, value):
        options = words[group][value]
        if split == "broad" and rng.random() < HAND_SHARE:     # the short hand list stays as common as before
            options = TRAIN_WORDS[group][value]
        return options[rng.integers(len(options))]

    mentioned: dict[str, int] = {}
    adjectives = []
    for group in ("size", "style"):
        if keep[group]:
            value = values[_SINGLE[group]]
            adjectives.append(pick(group, value))
            mentioned[_SINGLE[group]] = value
    if keep["color"]:
        adjectives.append(pick("color", color))
        mentioned.update({n: values[n] for n in GROUPS["color"]})
    noun = pick("shape", shape if keep["shape"] else None)
    if keep["shape"]:
        mentioned.update({n: values[n] for n in GROUPS["shape"]})
    phrase = " ".join(adjectives + [noun])
    article = "an" if phrase[0] in "aeiou" else "a"

    places = []
    for group in ("h", "v"):
        if keep[group]:
            value = values[_SINGLE[group]]
            places.append(pick(group, value))
            mentioned[_SINGLE[group]] = value
    if len(places) == 2 and rng.random() < 0.5:
        places.reverse()
    where = "".join(" " + p for p in places)
    bg = ""
    if keep["bg"]:
        bg = " " + pick("bg", values["bg_dark"])
        mentioned["bg_dark"] = values["bg_dark"]

    if split == "broad" and rng.random() < HAND_SHARE:
        templates = TRAIN_TEMPLATES
    template = templates[rng.integers(len(templates))]
    text = template.format(np=f"{article} {phrase}", where=where, bg=bg)
    return text, {name: mentioned[name] for name in ATTRIBUTES if name in mentioned}


def load_captions_jsonl(path) -> list[tuple[str, dict[str, int]]]:
    """Read lines `{"text": "...", "attributes": {"color_red": 1, ...}}` (attributes optional).

    Blank lines are skipped; any other malformed line raises UserError naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"caption file not found: {path} (expected JSON lines with a \"text\" field)")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or "text" not in row:
            raise UserError(f"{where}: missing \"text\" field (expected {{\"text\": ..., \"attributes\": {{...}}}})")
        text = row["text"]
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: \"text\" must be a non-empty string")
        attrs = row.get("attributes", {})
        if not isinstance(attrs, dict):
            raise UserError(f"{where}: \"attributes\" must be an object mapping attribute names to 0/1")
        for name, value in attrs.items():
            if name not in ATTRIBUTES:
                raise UserError(f"{where}: unknown attribute {name!r}; valid names: {', '.join(ATTRIBUTES)}")
            if isinstance(value, bool) or value not in (0, 1):
                raise UserError(f"{where}: attribute {name!r} must be 0 or 1, got {value!r}")
        out.append((text.strip(), {name: int(v) for name, v in attrs.items()}))
    return out
