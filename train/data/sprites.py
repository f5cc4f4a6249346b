"""Sprites: a deterministic, procedurally rendered image dataset with ground-truth attributes.

Each image shows one shape (circle / square / triangle) in one of five colours on a light or dark
background. The 13 binary ATTRIBUTES are what conditioning networks see; everything else about
the picture is a nuisance factor the flow's residual has to model: continuous position inside the
chosen half, size jitter, rotation, hue/saturation/brightness jitter, background level, tint and
gradient, outline width, and (style="textured") a stripe or dot pattern.

Determinism: `render(index, split)` seeds `np.random.default_rng([split_id, global_id])` and uses
only exactly rounded float ops (no transcendental numpy kernels on arrays), so the same index and
split give bit-identical pixels on any machine. All factors are drawn in image-relative units,
so one index shows the same scene at every size (32, 64, 128, ...). Objects are large (small
~35-40 %, large ~55-60 % of the side) and outlines thick (~6 % of the side, ~4 px at 64) so that
every attribute survives a small autoencoder.

Indices: SPLITS gives each split a disjoint range of global ids. `render` accepts an index counted
from the split's start (0 <= index < split size) or the global id itself; both name the same sprite.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from train.core.errors import UserError
from train.data import ATTRIBUTES, COLORS, SHAPES
from train.data.captions import make_caption

SPLITS = {"train": (0, 1_000_000), "val": (1_000_000, 1_010_000), "test": (1_010_000, 1_020_000)}
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
STYLES = (None, "flat", "textured")

HUES = {"red": 0.0, "green": 125.0, "blue": 220.0, "yellow": 52.0, "purple": 282.0}  # degrees
HUE_JITTER = 8.0  # degrees; the closest pair (red/yellow) keeps >= 36 degrees apart
SMALL, LARGE = (0.35, 0.40), (0.55, 0.60)  # object extent as a fraction of the image side
OUTLINE = (0.055, 0.07)  # outline width as a fraction of the side (3.5-4.5 px at 64)


@dataclass
class Sprite:
    image: np.ndarray  # (H, W, 3) uint8
    attributes: np.ndarray  # (13,) float32 0/1 in ATTRIBUTES order
    factors: dict  # every sampled factor, attributes and nuisances alike
    mask: np.ndarray  # (H, W) bool, the object's silhouette (interior included for outlines)
    caption: str  # a full caption from the train templates


def _global_id(index: int, split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    start, stop = SPLITS[split]
    index = int(index)
    if 0 <= index < stop - start:
        return start + index
    if start <= index < stop:
        return index
    raise IndexError(f"index {index} is outside split {split!r} (0 <= index < {stop - start})")


def _sample_factors(rng: np.random.Generator) -> dict:
    """Draw every factor of one sprite. A fixed number of draws: nothing here depends on size."""
    u = rng.random(24).tolist()  # plain floats, so the factor record is JSON-ready
    shape = SHAPES[int(u[0] * 3)]
    color = COLORS[int(u[1] * 5)]
    size_large, pos_left, pos_top, bg_dark, outline = (int(x < 0.5) for x in u[2:7])
    lo, hi = LARGE if size_large else SMALL
    scale = lo + (hi - lo) * u[7]
    # Centre offset from the middle line: at least 0.1 of the side so the half is unambiguous.
    max_offset = 0.5 - 0.5 * scale - 0.02
    dx = 0.1 + (max_offset - 0.1) * u[8]
    dy = 0.1 + (max_offset - 0.1) * u[9]
    period = {"circle": 360.0, "square": 90.0, "triangle": 120.0}[shape]
    hue = (HUES[color] + HUE_JITTER * (2 * u[11] - 1)) % 360.0
    saturation, value = 0.75 + 0.25 * u[12], 0.8 + 0.2 * u[13]
    rgb = colorsys.hsv_to_rgb(hue / 360.0, saturation, value)
    bg_level = 0.08 + 0.14 * u[14] if bg_dark else 0.74 + 0.14 * u[14]
    return {
        "shape": shape, "color": color, "size_large": size_large, "pos_left": pos_left,
        "pos_top": pos_top, "bg_dark": bg_dark, "style_outline": outline,
        "cx": 0.5 - dx if pos_left else 0.5 + dx, "cy": 0.5 - dy if pos_top else 0.5 + dy,
        "scale": scale, "rotation": period * u[10],
        "hue": hue, "saturation": saturation, "value": value, "rgb": [float(c) for c in rgb],
        "bg_level": bg_level, "bg_tint": [0.03 * (2 * t - 1) for t in u[15:18]],
        "bg_gradient": 0.06 * (2 * u[18] - 1), "bg_direction": 360.0 * u[19],
        "outline_width": OUTLINE[0] + (OUTLINE[1] - OUTLINE[0]) * u[20],
        "texture_kind": "stripes" if u[21] < 0.5 else "dots",
        "texture_angle": 180.0 * u[22], "texture_period": 0.11 + 0.03 * u[23],
    }


def factors_to_attributes(f: dict) -> np.ndarray:
    on = {f"shape_{f['shape']}", f"color_{f['color']}"}
    on |= {k for k in ("size_large", "pos_left", "pos_top", "bg_dark", "style_outline") if f[k]}
    return np.array([float(name in on) for name in ATTRIBUTES], dtype=np.float32)


def attributes_to_dict(vec) -> dict[str, int]:
    vec = np.asarray(vec).reshape(-1)
    if vec.shape[0] != len(ATTRIBUTES):
        raise ValueError(f"expected {len(ATTRIBUTES)} attributes, got {vec.shape[0]}")
    return {name: int(round(float(v))) for name, v in zip(ATTRIBUTES, vec)}


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in image-relative units [0, 1] (x to the right, y downwards)."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size)
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


def _signed_distance(f: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Distance to the shape's border in object coordinates (negative inside)."""
    s = f["scale"]
    if f["shape"] == "circle":
        return np.sqrt(u * u + v * v) - 0.5 * s
    if f["shape"] == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.45 * s
    # Equilateral triangle, apex up, circumradius 0.68 s: max over its three edge half-planes.
    inradius = 0.34 * s
    h = np.float32(math.sqrt(3) / 2)
    return np.maximum(np.maximum(v, -h * u - 0.5 * v), h * u - 0.5 * v) - inradius


def _draw(f: dict, size: int, textured: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise one sprite: (H, W, 3) float32 in [0, 1] and its (H, W) bool mask."""
    x, y = _grid(size)
    px = 1.0 / size
    c, s = math.cos(math.radians(f["rotation"])), math.sin(math.radians(f["rotation"]))
    ox, oy = x - np.float32(f["cx"]), y - np.float32(f["cy"])
    u = ox * np.float32(c) + oy * np.float32(s)
    v = oy * np.float32(c) - ox * np.float32(s)
    sdf = _signed_distance(f, u, v)
    alpha = np.clip(0.5 - sdf / px, 0.0, 1.0)  # 1-pixel linear ramp = antialiased edge
    if f["style_outline"]:
        alpha -= np.clip(0.5 - (sdf + f["outline_width"]) / px, 0.0, 1.0)

    color = np.asarray(f["rgb"], dtype=np.float32)
    if textured:
        period, a = f["texture_period"], math.radians(f["texture_angle"])
        p = (u * np.float32(math.cos(a)) + v * np.float32(math.sin(a))) / np.float32(period)
        if f["texture_kind"] == "stripes":
            dark = (p % 1.0) < 0.5
        else:
            q = (v * np.float32(math.cos(a)) - u * np.float32(math.sin(a))) / np.float32(period)
            dark = ((p % 1.0) - 0.5) ** 2 + ((q % 1.0) - 0.5) ** 2 < 0.09
        color = np.where(dark[..., None], 0.45 * color, color)

    d = math.radians(f["bg_direction"])
    ramp = (x - 0.5) * np.float32(2 * f["bg_gradient"] * math.cos(d)) + (y - 0.5) * np.float32(
        2 * f["bg_gradient"] * math.sin(d))
    bg = ramp[..., None] + (np.float32(f["bg_level"]) + np.asarray(f["bg_tint"], dtype=np.float32))
    a3 = alpha[..., None]
    return bg * (1.0 - a3) + color * a3, sdf < 0


def _quantize(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _check(size: int, style) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose one of {STYLES}")
    if not 8 <= int(size) <= 1024:
        raise ValueError(f"size must be between 8 and 1024 pixels, got {size}")


def render(index: int, split: str = "train", size: int = 64, style: str | None = None) -> Sprite:
    """Render one sprite with its attributes, factors, mask and a full train-template caption."""
    _check(size, style)
    gid = _global_id(index, split)
    rng = np.random.default_rng([_SPLIT_IDS[split], gid])
    f = _sample_factors(rng)
    f["texture"] = f["texture_kind"] if style == "textured" else "none"
    img, mask = _draw(f, size, style == "textured")
    attributes = factors_to_attributes(f)
    caption_rng = np.random.default_rng(rng.integers(2**63))
    caption, _ = make_caption(attributes, caption_rng, split="train", partial_prob=0.0)
    return Sprite(_quantize(img), attributes, f, mask, caption)


def render_batch(indices, split: str = "train", size: int = 64,
                 style: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N,H,W,3) uint8, attributes (N,13) float32 and masks (N,H,W) bool; same pixels as render."""
    _check(size, style)
    indices = list(indices)
    images = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    attributes = np.empty((len(indices), len(ATTRIBUTES)), dtype=np.float32)
    masks = np.empty((len(indices), size, size), dtype=bool)
    for i, index in enumerate(indices):
        f = _sample_factors(np.random.default_rng([_SPLIT_IDS[split], _global_id(index, split)]))
        img, masks[i] = _draw(f, size, style == "textured")
        images[i] = _quantize(img)
        attributes[i] = factors_to_attributes(f)
    return images, attributes, masks


def first_test_renders(count: int, size: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`render_batch` of test sprites offset .. offset+count-1: the fixed images every evaluation scores."""
    start, stop = SPLITS["test"]
    if offset + count > stop - start:
        raise UserError(f"asked for test sprites up to {offset + count}; the test split holds {stop - start} "
                        f"(lower --num-images)")
    return render_batch(range(start + offset, start + offset + count), "test", size)


def sprite_attributes(indices, split: str = "train") -> np.ndarray:
    """Attributes (N,13) float32 of the sprites `render_batch` would draw, without drawing them."""
    return np.stack([factors_to_attributes(_sample_factors(np.random.default_rng([_SPLIT_IDS[split],
                                                                                 _global_id(i, split)])))
                     for i in indices]).astype(np.float32).reshape(-1, len(ATTRIBUTES))


def to_tensor(images_uint8) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) float32 in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images_uint8))
    # contiguous NCHW: a channels-last view crashed conv backward in this torch build
    return x.permute(0, 3, 1, 2).contiguous().float().div(127.5).sub(1.0)


def to_uint8(images_tensor) -> np.ndarray:
    """(N,3,H,W) float in [-1, 1] -> (N,H,W,3) uint8, values outside the range clamped."""
    x = torch.as_tensor(images_tensor).detach().float().cpu()
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def area_downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N,3,H,W) float -> (N,3,size,size), each output pixel the mean of its (H/size)² block (area
    averaging; H must be a multiple of size). The degradation of the superres task (Fig. 4)."""
    factor = images.shape[-1] // size
    if factor < 1 or factor * size != images.shape[-1] or images.shape[-2] != images.shape[-1]:
        raise ValueError(f"cannot area-downsample {tuple(images.shape[-2:])} images to {size}x{size}")
    return torch.nn.functional.avg_pool2d(images, factor) if factor > 1 else images


class SpritesDataset(torch.utils.data.Dataset):
    """Sprites rendered on the fly. Item i is `render(i, split)`; nothing is cached.

    length: number of items, default the whole split (train: 1,000,000; val/test: 10,000). Cap
    it (e.g. length=50_000) to fix the training set; render_batch is faster for whole batches.
    style: None/"flat" (default look) or "textured" (stripes/dots; the unpaired-translation domain).
    """

    def __init__(self, split: str = "train", size: int = 64, length: int | None = None, style: str | None = None):
        _check(size, style)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        start, stop = SPLITS[split]
        if length is not None and not 0 < length <= stop - start:
            raise ValueError(f"length must be in 1..{stop - start} for split {split!r}, got {length}")
        self.split, self.size, self.style = split, size, style
        self.length = stop - start if length is None else length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        images, attributes, masks = render_batch([i], self.split, self.size, self.style)
        return {
            "image": to_tensor(images)[0],
            "attributes": torch.from_numpy(attributes[0]),
            "mask": torch.from_numpy(masks[0]).float()[None],
            "index": i,
        }
