"""Spatial translation tasks on the embedded sprites (Sec. 4.3, Fig. 7; Appendix C, Fig. S1).

  exemplar  (Sec. 4.3, Fig. 7a)  Φ = a segmentation expert: the renderer's object mask, average-pooled to
            `mask_size`² and embedded by the conv embedder H (Tab. S3b). Samples Λ(τ(v | Φ(x))) render a
            mask; exemplar-guided synthesis takes v = τ⁻¹(Θ(y) | Φ(y)) from an exemplar y and gives
            Λ(τ(v | Φ(x))), the exemplar's appearance in x's layout.
  shape     (Appendix C, Fig. 7b / S1)  Φ = Θ ∘ d, d a random spatial deformation (flips, rotation, affine
            zoom/stretch/shear/shift, a smooth thin-plate-like warp, a crop) drawn afresh per pair and
            reproducible from (seed, image index, draw). d destroys position, size and pose, so τ must put
            them into v; the appearance comes through zΦ. After training Φ = Θ (no d, as in App. C):
            y* = Λ(τ(v | Θ(x))) with v = τ⁻¹(Θ(y) | Θ(y)) recombines y's shape with x's appearance.

Both share the frozen 64 px sprites autoencoder g = Λ∘Θ of the other sprites tasks. Θ(y) of the
training renders is cached by `tasks_sprites.sprite_latents`; Θ(d(y)) for `draws` deformations per image
is cached beside it (AE_RUN/latents/deformed_*). Masks are re-rendered (cheap, deterministic).
A mask is read back off any image by `read_mask` (colour distance to the border's colour, holes filled).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from train.common import load_tensors, progress_interval, save_tensors
from train.data.sprites import SPLITS, render_batch, to_tensor, to_uint8
from train.tasks import Experts, Task, register
from train.tasks_sprites import (
    AEDecoderStage,
    AEEncoderStage,
    SpritePairs,
    _sprite_args,
    derive_presets,
    encode_images,
    load_ae,
    sprite_latents,
)

# `data`: renders whose latents train τ, validation renders, the AE preset to train when the AE is missing,
# the side of the mask condition (exemplar) and the cached deformation draws per image (shape).
_DATA = {"smoke": {"images": 256, "val_images": 64, "ae_preset": "smoke", "mask_size": 16, "draws": 2},
         "default": {"images": 60000, "val_images": 1000, "ae_preset": "default", "mask_size": 16, "draws": 4},
         "paper": {"images": 50000, "val_images": 2000, "ae_preset": "default", "mask_size": 16, "draws": 8}}


def _presets(default_steps: int, default_images: int) -> dict:
    """Sprite presets with this task's data section; `default` sized to train in <= 5 min on one CPU thread."""
    return derive_presets({**_DATA, "default": {**_DATA["default"], "images": default_images}}, steps=default_steps)


EXEMPLAR_PRESETS = _presets(default_steps=3000, default_images=60000)   # the conv embedder costs ~60 % more
SHAPE_PRESETS = _presets(default_steps=4000, default_images=30000)      # x 4 deformation draws each

# ---------------------------------------------------------------- the deformation d (Appendix C)

DEFORM_VERSION = 1          # part of the cache file name: bump when the distribution of d changes
DEFORMATION = {"flip_p": 0.5, "rotation_deg": 360.0, "zoom": (0.75, 1.35), "aspect": 0.15, "shear": 0.15,
               "shift": 0.12, "crop": (0.8, 1.0), "warp_grid": 4, "warp": 0.08}


def deformation(seed: int, index: int, draw: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The parameters of one draw of d, a pure function of (seed, index, draw): an affine map θ (2, 3) from
    output to input coordinates (normalised to [-1, 1]) and a (2, g, g) smooth displacement grid (the
    thin-plate-like part). In order: crop window -> zoom/stretch/shear -> rotation -> flips -> shift."""
    p = DEFORMATION
    rng = np.random.default_rng([0xD3F0, seed, index, draw])
    u = rng.random(10)
    side = p["crop"][0] + (p["crop"][1] - p["crop"][0]) * u[0]
    offset = (1 - side) * (2 * u[1:3] - 1)                    # the crop window stays inside the image
    zoom = math.exp(math.log(p["zoom"][0]) + (math.log(p["zoom"][1]) - math.log(p["zoom"][0])) * u[3])
    aspect = math.exp(p["aspect"] * (2 * u[4] - 1))
    shear = p["shear"] * (2 * u[5] - 1)
    angle = math.radians(p["rotation_deg"] * u[6])
    flips = np.diag([-1.0 if u[7] < p["flip_p"] else 1.0, -1.0 if u[8] < p["flip_p"] else 1.0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    stretch = np.array([[aspect, shear], [0.0, 1.0 / aspect]]) / zoom
    m = flips @ rot @ stretch
    shift = 2 * p["shift"] * (2 * rng.random(2) - 1)
    theta = np.concatenate([m * side, (m @ offset + shift)[:, None]], 1)
    warp = p["warp"] * (2 * rng.random((2, p["warp_grid"], p["warp_grid"])) - 1)
    return theta.astype(np.float32), warp.astype(np.float32)


def deform(images_uint8: np.ndarray, indices, seed: int, draw: int = 0) -> np.ndarray:
    """d(y) for each image (N, H, W, 3) uint8, the i-th drawn from (seed, indices[i], draw); uint8 out.
    The border colour continues past the edge (the sprites' background)."""
    params = [deformation(seed, int(i), draw) for i in indices]
    x = to_tensor(images_uint8)
    theta = torch.from_numpy(np.stack([t for t, _ in params]))
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warp = F.interpolate(torch.from_numpy(np.stack([w for _, w in params])), size=x.shape[-2:], mode="bicubic",
                         align_corners=True)
    out = F.grid_sample(x, grid + warp.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return to_uint8(out)


def deformed_latents(ae_dir: str, ae, split: str, count: int, draws: int, seed: int) -> torch.Tensor:
    """Θ(d(y)) (count, draws, D) for the first `count` renders of `split`, cached in AE_RUN/latents/."""
    path = Path(ae_dir) / "latents" / f"deformed{DEFORM_VERSION}_{split}_{count}x{draws}_s{seed}.safetensors"
    if path.is_file():
        return load_tensors(path)["z"]
    start, out = SPLITS[split][0], []
    for i in tqdm(range(0, count, 1000), desc=f"encode deformed {split} renders", mininterval=progress_interval()):
        idx = range(start + i, start + min(count, i + 1000))
        images, _, _ = render_batch(idx, split, ae.image_size)
        out.append(torch.stack([encode_images(ae, deform(images, idx, seed, k)) for k in range(draws)], 1))
    z = torch.cat(out)
    save_tensors(path, {"z": z})
    return z


# ---------------------------------------------------------------- masks: the condition and the reader


def mask_condition(masks: np.ndarray, size: int) -> torch.Tensor:
    """Φ of the exemplar task: (N, H, W) bool masks -> (N, 1, size, size) object coverage in [0, 1]."""
    m = torch.from_numpy(np.asarray(masks, dtype=np.float32))[:, None]
    return F.adaptive_avg_pool2d(m, size)


def render_masks(split: str, count: int, image_size: int, mask_size: int) -> torch.Tensor:
    start = SPLITS[split][0]
    return torch.cat([mask_condition(render_batch(range(start + i, start + min(count, i + 2000)), split,
                                                  image_size)[2], mask_size) for i in range(0, count, 2000)])


def read_mask(images_uint8: np.ndarray, min_contrast: float = 0.15) -> np.ndarray:
    """The object mask of sprite-like images (N, H, W, 3) uint8 -> (N, H, W) bool, with no learned part.

    The background is the median colour of the 2-pixel border ring; a pixel is "object" when its RGB
    distance to it exceeds half the image's 99th-percentile distance (the midpoint of an antialiased or
    blurred edge), and at least `min_contrast`. Background is what is connected to the border through
    non-object pixels, so the inside of an outlined shape counts as object, as in the renderer's mask."""
    x = torch.from_numpy(np.asarray(images_uint8)).float() / 255.0
    n, h, w, _ = x.shape
    ring = torch.ones(h, w, dtype=torch.bool)
    ring[2:-2, 2:-2] = False
    bg = x[:, ring].median(1).values
    dist = (x - bg[:, None, None]).norm(dim=-1)
    level = torch.quantile(dist.reshape(n, -1), 0.99, dim=1)
    fg = dist > (0.5 * level).clamp_min(min_contrast)[:, None, None]
    free = (~fg).float()[:, None]
    outside = free * ring.float()
    while True:                                   # flood fill from the border through background pixels
        grown = F.max_pool2d(outside, 3, 1, 1) * free
        if torch.equal(grown, outside):
            break
        outside = grown
    return ~outside[:, 0].bool().numpy()


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image intersection over union of two (N, H, W) bool masks (1 where both are empty)."""
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


# ---------------------------------------------------------------- the registry entries


def _exemplar_source(args):
    data = EXEMPLAR_PRESETS.get(args.preset, EXEMPLAR_PRESETS["default"])["data"]
    ae = load_ae(args.ae, data["ae_preset"])
    _, z = sprite_latents(args.ae, ae, "train", data["images"])
    _, vz = sprite_latents(args.ae, ae, "val", data["val_images"])
    cond = render_masks("train", data["images"], ae.image_size, data["mask_size"])
    val_cond = render_masks("val", data["val_images"], ae.image_size, data["mask_size"])
    info = {"task": "exemplar", "ae": args.ae, "data": data, "mask_size": data["mask_size"]}
    return SpritePairs(cond[:, None], z, val_cond, vz), info


def _shape_source(args):
    data = SHAPE_PRESETS.get(args.preset, SHAPE_PRESETS["default"])["data"]
    ae = load_ae(args.ae, data["ae_preset"])
    _, z = sprite_latents(args.ae, ae, "train", data["images"])
    _, vz = sprite_latents(args.ae, ae, "val", data["val_images"])
    cond = deformed_latents(args.ae, ae, "train", data["images"], data["draws"], args.seed)
    val_cond = deformed_latents(args.ae, ae, "val", data["val_images"], 1, args.seed)[:, 0]
    info = {"task": "shape", "ae": args.ae, "data": data, "deform_seed": args.seed,
            "deformation": {**DEFORMATION, "version": DEFORM_VERSION}}
    return SpritePairs(cond, z, val_cond, vz), info


def spatial_experts(config: dict) -> Experts:
    """exemplar: zΦ is the pooled mask itself (no source network); shape: Φ = Θ at test time."""
    ae = load_ae(config["ae"])
    size = ae.image_size
    info = {"image_size": size, "warnings": []}
    source = None
    if config["task"] == "shape":
        source = AEEncoderStage(ae)
        info.update(source_kind="image", source_image_shape=[3, size, size])
    else:
        info["mask_size"] = config["mask_size"]
    return Experts(source_encoder=source, target_encoder=AEEncoderStage(ae), target_decoder=AEDecoderStage(ae),
                   info=info)


def _after(out, model, args):
    from train.spatial_eval import write_grids
    write_grids(out, seed=args.seed)


def _evaluate(args):
    from train.spatial_eval import evaluate_run
    return evaluate_run(args)


register(Task("exemplar", "sprite mask (segmentation expert) -> sprites AE; exemplar-guided synthesis (Fig. 7a)",
              _sprite_args, _exemplar_source, EXEMPLAR_PRESETS, spatial_experts, _after, _evaluate))
register(Task("shape", "AE encoder after a random deformation d -> sprites AE; shape/appearance (Fig. 7b, S1)",
              _sprite_args, _shape_source, SHAPE_PRESETS, spatial_experts, _after, _evaluate))
