"""The deformation d of Appendix C (shape task) and the object masks of the exemplar task (Fig. 7a).

d is a random spatial deformation (flips, rotation, affine zoom/stretch/shear/shift, a smooth thin-plate-like
warp, a crop), a pure function of (seed, image index, draw). A mask is read back off any image by
`read_mask` (colour distance to the border's colour, holes filled): no learned part.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from train.data.sprites import SPLITS, render_batch, to_tensor, to_uint8

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
