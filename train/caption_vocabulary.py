"""Generate text2image's training vocabulary (train/data/caption_vocabulary.json) from WordNet and colour tables.

    python -m train.caption_vocabulary [--wordnet-dir /usr/share/wordnet] [--out FILE] [--check]

Run once by a maintainer (needs Debian's `wordnet-base`: `apt-get install wordnet-base`); the JSON it writes
is committed, so training, the demo and CI need neither WordNet nor a download. What it adds to the
hand-written words of train/data/captions.py:
  shape   WordNet lemmas of each shape's synset, its hyponyms and the hypernyms no other shape shares
          (circle -> ellipse, oval; square -> rectangle, quadrilateral; polygon is dropped: squares and
          triangles share it); the "no shape named" nouns from shape/object synsets and a short hand list
  colour  WordNet's colour hyponyms and similar-to adjectives of the five colours (kept when their RGB, if
          the tables below know it, has its nearest renderer hue at that colour), plus every named colour of
          matplotlib's XKCD and CSS4 tables, each kept only when its RGB maps to that value: hue within 15
          degrees of the renderer's hue (train.data.sprites.HUES), saturation >= 0.45, value >= 0.35, naming
          no other of the five colours ("green yellow" is neither)
  size    WordNet similar-to adjectives of large / small (sense 1), minus the ones not about size
  style, positions, background: hand-written parts combined (preposition x side x noun)
  templates: hand-written sentence frames
Every generated phrase that reuses a held-out token (train.data.captions.leaks) is dropped — the held-out
test stays unseen — and so is every phrase naming another group's word ("right triangle").
`--check` re-derives the file and exits 1 if the committed one differs.
"""
from __future__ import annotations

import argparse
import colorsys
import itertools
import json
import re
import sys
from pathlib import Path

from train.core.common import run_cli
from train.data import COLORS
from train.data.captions import VOCABULARY_FILE, leaks
from train.data.sprites import HUES
from train.data.wordnet import DEFAULT_DIR, WordNet

SHAPE_SEEDS = {"circle": [("circle", 1), ("disk", 1)], "square": [("square", 1)], "triangle": [("triangle", 1)]}
SHAPE_HYPONYMS = {"triangle"}          # circle's and disk's hyponyms are anatomy and astronomy, not shapes
SHAPE_SKIP = {"isogon", "regular polygon", "conic", "conic section", "cuneus"}   # not one shape's alone
NO_SHAPE_SEEDS = [("shape", 1), ("shape", 2), ("object", 1)]
NO_SHAPE_HAND = ["symbol", "icon", "glyph", "mark", "element", "motif", "emblem", "token", "graphic", "entity"]
SIZE_SEEDS = {1: ("large", 1), 0: ("small", 1)}
# similar-to lemmas of large/small that describe something other than the size of a drawn shape
SIZE_SKIP = {"deep", "double", "broad", "spacious", "wide", "epic", "heroic", "larger-than-life", "extensive",
             "extended", "great", "grand", "large-mouthed", "medium-large", "rangy", "super", "volumed",
             "voluminous", "wide-ranging", "cosmic", "bouffant", "puffy", "slender", "slim", "atomic",
             "subatomic", "lesser", "puny", "runty", "shrimpy", "elfin", "elflike", "gnomish", "dinky",
             "banging", "thumping", "whopping", "walloping", "whacking", "macro", "micro", "capacious",
             "bear-sized", "man-sized", "olive-sized", "queen-size", "queen-sized", "king-size", "king-sized",
             "life-size", "lifesize", "life-sized", "full-size", "half-size", "blown-up", "enlarged", "plumping",
             "astronomic", "astronomical", "galactic", "macroscopic", "macroscopical", "overlarge", "too large",
             "brobdingnagian", "lilliputian", "midget", "flyspeck", "smaller", "littler", "bigger", "larger",
             "monolithic", "monumental", "mountainous", "elephantine", "pocketable", "hulky", "microscopical"}
COLOUR_SKIP = {"puke", "vomit", "barf", "poop", "poo", "shit", "booger", "snot", "diarrhea", "baby", "sick",
               "ugly", "dirty", "piss", "gross", "sickly", "swamp", "murky", "weird", "dirt", "mud", "muddy", "dull",
               "drab", "dusky", "dusty", "faded", "greyish",
               "grayish", "brownish", "brown", "orange", "orangish", "pink", "pinkish", "white", "black", "grey",
               "gray", "light", "dark", "pastel", "pale", "deep", "turquoise", "teal", "aqua", "cyan",
               "magenta", "fuchsia", "rose", "salmon", "maroon", "olive", "khaki", "beige", "tan", "cream"}
STYLE = {1: ["outlined", "hollow", "empty", "line-drawn", "framed", "ring-like", "unshaded", "uncoloured",
             "contoured", "wireframe", "see-through", "rimmed", "edged", "bordered", "traced", "sketched",
             "open", "stroked", "line-art", "thin-lined", "linear", "skeletal", "uncolored", "transparent",
             "hollowed-out", "unshaded outlined"],
         0: ["filled", "solid", "full", "solid-coloured", "block-coloured", "shaded", "coloured-in",
             "flat-coloured", "fully coloured", "colour-filled", "solid-filled", "dense", "inked", "heavy",
             "saturated", "solid-colored", "color-filled", "flat", "massy", "uniformly coloured",
             "completely filled", "fully filled", "block", "stuffed"]}
SIDES = {("h", 1): ["left"], ("h", 0): ["right"], ("v", 1): ["top", "upper"], ("v", 0): ["bottom", "lower"]}
PLACE_PREPS = ["on", "at", "in", "near", "by", "along", "over on", "off to", "over at", "close to", "placed at",
               "positioned on", "located in", "sitting at", "set on"]
PLACE_HEADS = ["the {s}", "the {s} side", "the {s} half", "the {s} part", "the {s} edge", "the {s}-hand side",
               "the {s} portion", "the {s} area", "the {s} region", "the {s} zone", "the {s} end", "the {s} border",
               "the {s} of the picture", "the {s} of the image", "the {s} of the frame", "the {s} side of the canvas"]
PLACE_EXTRA = {("h", 1): ["leftward", "to the left", "on its left", "far left", "at far left", "leftmost"],
               ("h", 0): ["rightward", "to the right", "on its right", "far right", "at far right", "rightmost"],
               ("v", 1): ["at the top", "topmost", "uppermost", "at the very top", "in the top corner area",
                          "overhead", "aloft", "atop the picture", "on top", "in the upper area", "elevated", "raised",
                          "skyward", "topside"],
               ("v", 0): ["at the bottom", "bottommost", "lowermost", "at the very bottom", "underneath",
                          "beneath", "at the foot of the picture", "on the bottom", "in the lower area", "sunken",
                          "at the base", "lowered", "at floor level"]}
BG_PREPS = ["on", "over", "against", "in front of", "set against", "upon", "atop", "on top of", "across"]
BG_ADJ = {1: ["dark", "black", "shadowy", "murky", "charcoal", "blackish", "inky", "jet-black", "ebony",
              "coal-black", "dark grey", "very dark", "sombre", "midnight", "dark-toned"],
          0: ["light", "white", "bright", "whitish", "light grey", "light-coloured", "snowy", "snow-white",
              "ivory", "cream", "milky", "luminous", "sunlit", "creamy", "very light", "silvery", "off-white",
              "light-toned", "washed-out", "faint", "soft", "blank"]}
# plus WordNet's similar-to adjectives of dark (sense 1) and light-coloured (light, sense 2), minus these
BG_SEEDS = {1: ("dark", 1), 0: ("light", 2)}
BG_SKIP = {"acheronian", "acherontic", "stygian", "aphotic", "caliginous", "cimmerian", "crepuscular",
           "darkening", "darkling", "glooming", "gloomful", "sulky", "tenebrous", "tenebrific", "tenebrious",
           "twilight", "powdery", "unlighted", "unilluminated"}
BG_NOUNS = ["background", "field", "wall", "ground", "canvas", "surface", "setting", "backcloth", "page",
            "sheet", "panel", "screen", "board", "base", "backing"]
TEMPLATES = ["{np}{where}{bg}", "we have {np}{where}{bg}", "it shows {np}{where}{bg}",
             "the image holds {np}{where}{bg}", "a photo of {np}{where}{bg}", "a sketch of {np}{where}{bg}",
             "an illustration of {np}{where}{bg}", "a graphic showing {np}{where}{bg}",
             "draw {np}{where}{bg}", "generate {np}{where}{bg}", "make {np}{where}{bg}",
             "render {np}{where}{bg}", "create an image of {np}{where}{bg}", "please draw {np}{where}{bg}",
             "i want {np}{where}{bg}", "show me {np}{where}{bg}", "give me {np}{where}{bg}",
             "there should be {np}{where}{bg}", "this is {np}{where}{bg}", "{np} lies{where}{bg}",
             "{np} is placed{where}{bg}", "{np} is located{where}{bg}", "{np} rests{where}{bg}",
             "{np} is visible{where}{bg}", "{np} has been drawn{where}{bg}", "one {np}{where}{bg}",
             "a frame showing {np}{where}{bg}", "a small picture of {np}{where}{bg}",
             "an icon of {np}{where}{bg}", "a diagram of {np}{where}{bg}", "{np}, drawn{where}{bg}",
             "a single {np}{where}{bg}", "the drawing depicts {np}{where}{bg}",
             "the picture features {np}{where}{bg}", "depicted is {np}{where}{bg}",
             "an artwork of {np}{where}{bg}", "a clip-art of {np}{where}{bg}", "this shows {np}{where}{bg}"]


def _lemmas(wn: WordNet, offsets) -> list[str]:
    return [l.lower() for o, p in offsets for l in wn.synset(o, p)[0]]


def _seed(wn: WordNet, lemma: str, pos: str, sense: int) -> tuple[int, str]:
    senses = wn.senses(lemma, pos)
    if len(senses) < sense:
        raise SystemExit(f"WordNet has no sense {sense} of {lemma!r} ({pos}); is it WordNet 3.0?")
    return senses[sense - 1], pos


def shape_words(wn: WordNet) -> dict:
    seeds = {s: [_seed(wn, l, "n", k) for l, k in v] for s, v in SHAPE_SEEDS.items()}
    ancestors = {s: set().union(*(wn.ancestors(o, p) for o, p in v)) for s, v in seeds.items()}
    out = {}
    for shape, syn in seeds.items():
        others = set().union(*(ancestors[s] | {o for o, _ in seeds[s]} for s in seeds if s != shape))
        own = [(o, p) for o, p in syn] + [x for o, p in syn if shape in SHAPE_HYPONYMS for x in wn.related(o, p, "~")]
        hyper = [x for o, p in syn for x in wn.related(o, p, "@")]
        hyper += [y for x in hyper for y in wn.related(*x, "@")]           # two levels up
        words = _lemmas(wn, own) + _lemmas(wn, [h for h in hyper if h[0] not in others])
        out[shape] = [w for w in words if w not in SHAPE_SKIP]
    out["none"] = _lemmas(wn, [_seed(wn, l, "n", k) for l, k in NO_SHAPE_SEEDS]) + NO_SHAPE_HAND
    out["none"] = [w for w in out["none"] if w not in {"contour", "configuration", "conformation"}]
    return out


def colour_value(rgb, strict: bool = True) -> str | None:
    """The renderer colour a named RGB reads as, or None when it is far from all five (strict) — or just the
    nearest hue (not strict: for WordNet's own colour words, where "navy" is a blue however dark)."""
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    if not strict:
        return min(COLORS, key=lambda c: min(abs(h * 360 - HUES[c]), 360 - abs(h * 360 - HUES[c])))
    if s < 0.45 or v < 0.35:                # saturated, not black; browns go by name (COLOUR_SKIP)
        return None
    dist = {c: min(abs(h * 360 - HUES[c]), 360 - abs(h * 360 - HUES[c])) for c in COLORS}
    best = min(dist, key=dist.get)
    return best if dist[best] <= 15 else None


def colour_table() -> dict[str, tuple[float, float, float]]:
    from matplotlib import colors as mc  # a data table shipped in the wheel
    table = {}
    for name, hexcode in list(mc.CSS4_COLORS.items()) + list(mc.XKCD_COLORS.items()):
        name = name.removeprefix("xkcd:").replace("/", " ").strip()
        table.setdefault(name, mc.to_rgb(hexcode))
    return table


def colour_words(wn: WordNet) -> dict:
    table = colour_table()
    squashed = {k.replace(" ", "").replace("-", ""): v for k, v in table.items()}
    out = {c: [] for c in COLORS}
    for c in COLORS:
        noun, adj = _seed(wn, c, "n", 1), _seed(wn, c, "a", 1)
        for word in _lemmas(wn, [noun] + wn.related(*noun, "~") + [adj] + wn.related(*adj, "&")):
            rgb = table.get(word) or squashed.get(word.replace(" ", "").replace("-", ""))
            others = [o for o in COLORS if o != c and o in re.findall(r"[a-z]+", word)]
            if (colour_value(rgb, strict=False) == c if rgb else c in word and not others):
                out[c].append(word)
    for name, rgb in table.items():
        value = colour_value(rgb)
        tokens = re.findall(r"[a-z]+", name)
        others = set(COLORS) - {value}
        if (value and len(tokens) <= 2 and not (COLOUR_SKIP | others) & set(tokens)
                and re.fullmatch(r"[a-z \-]+", name)):
            out[value].append(name)
    return out


def size_words(wn: WordNet) -> dict:
    out = {}
    for value, (lemma, sense) in SIZE_SEEDS.items():
        seed = _seed(wn, lemma, "a", sense)
        words = _lemmas(wn, [seed] + wn.related(*seed, "&"))
        out[str(value)] = [w for w in words if w not in SIZE_SKIP]
    return out


def place_words() -> dict:
    out = {"h": {}, "v": {}}
    for (group, value), sides in SIDES.items():
        phrases = [f"{p} {h.format(s=s)}" for p, h, s in itertools.product(PLACE_PREPS, PLACE_HEADS, sides)]
        out[group][str(value)] = phrases + PLACE_EXTRA[(group, value)]
    return out


def background_words(wn: WordNet) -> dict:
    out = {}
    for v, adjs in BG_ADJ.items():
        seed = _seed(wn, *BG_SEEDS[v][:1], "a", BG_SEEDS[v][1])
        adjs = list(dict.fromkeys(adjs + [w for w in _lemmas(wn, [seed] + wn.related(*seed, "&"))
                                          if w not in BG_SKIP]))
        out[str(v)] = [f"{p} {'an' if a[0] in 'aeiou' else 'a'} {a} {n}"
                       for p, a, n in itertools.product(BG_PREPS, adjs, BG_NOUNS)]
    return out


# words of one group that would claim another group's attribute when they appear in a phrase
_OTHER_GROUP = {"shape": r"\b(left|right|top|bottom|dark|light|big|small|red|green|blue|yellow|purple)\b",
                "color": r"\b(circle|square|triangle|left|right|top|bottom|big|small|large|little|outline)\b"}


def build(wn: WordNet) -> dict:
    words = {"shape": shape_words(wn), "color": colour_words(wn), "size": size_words(wn),
             "style": {str(k): v for k, v in STYLE.items()}, **place_words(), "bg": background_words(wn)}
    clean, dropped = {}, {}
    for group, values in words.items():
        clean[group] = {}
        for value, ws in values.items():
            keep = []
            for w in dict.fromkeys(w.strip().lower() for w in ws):
                other = re.search(_OTHER_GROUP[group], w) if group in _OTHER_GROUP else None
                why = leaks(w) or ([f"names {other.group(0)}"] if other and w not in COLORS and w not in SHAPE_SEEDS
                                   else [])
                if why:
                    dropped[w] = why
                else:
                    keep.append(w)
            clean[group][value] = sorted(keep)
    # a word claimed by two values of one group says nothing about it
    for group, values in clean.items():
        seen = {}
        for value, ws in values.items():
            for w in ws:
                seen.setdefault(w, set()).add(value)
        for value in values:
            values[value] = [w for w in values[value] if len(seen[w]) == 1]
    templates = [t for t in TEMPLATES if not leaks(t)]
    return {"about": "generated by `python -m train.caption_vocabulary` (WordNet 3.0, matplotlib colour "
                     "tables, hand-written parts); read by train/data/captions.py",
            "words": clean, "templates": templates,
            "dropped": _summary(dropped)}


def _summary(dropped: dict) -> dict:
    """Why phrases were dropped: reason -> how many phrases, with up to three examples."""
    out = {}
    for phrase, why in sorted(dropped.items()):
        entry = out.setdefault(", ".join(why), {"phrases": 0, "examples": []})
        entry["phrases"] += 1
        if len(entry["examples"]) < 3:
            entry["examples"].append(phrase)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.caption_vocabulary", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wordnet-dir", default=DEFAULT_DIR, help="WordNet 3.0 dict folder (default: %(default)s)")
    ap.add_argument("--out", default=str(VOCABULARY_FILE), help="where to write (default: the committed file)")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing; exit 1 if stale")
    args = ap.parse_args(argv)
    text = json.dumps(build(WordNet(args.wordnet_dir)), indent=1, ensure_ascii=False) + "\n"
    out = Path(args.out)
    if args.check:
        same = out.is_file() and out.read_text(encoding="utf-8") == text
        print(f"{out}: {'up to date' if same else 'STALE: re-run python -m train.caption_vocabulary'}")
        return 0 if same else 1
    out.write_text(text, encoding="utf-8")
    data = json.loads(text)
    counts = {g: {v: len(ws) for v, ws in vs.items()} for g, vs in data["words"].items()}
    print(f"wrote {out}: {counts}, {len(data['templates'])} templates, "
          f"{sum(d['phrases'] for d in data['dropped'].values())} phrases dropped (held-out words, other groups' "
          "words)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
