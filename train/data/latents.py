"""Caches of expert outputs on disk: the experts are frozen, so their outputs on fixed inputs can be computed
once and reused exactly. Sprite latents Θ(y) and Θ(d(y)) live in AE_RUN/latents/, caption embeddings in a
captions folder, classifier-layer features in CLASSIFIER_RUN/features/.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from train.core.common import load_tensors, progress_interval, save_tensors
from train.data.captions import make_caption
from train.data.deform import DEFORM_VERSION, deform
from train.data.sprites import SPLITS, area_downsample, render_batch, to_tensor


@torch.no_grad()
def encode_images(ae, images, batch: int = 256, posterior: bool = False) -> torch.Tensor:
    """Θ of uint8 (N,H,W,3) images or of float (N,3,H,W) tensors in [-1, 1]: the posterior mean µ (N, D), or
    with `posterior` µ and the posterior std σ stacked (N, 2, D)."""
    x = images if torch.is_tensor(images) and images.is_floating_point() else to_tensor(images)

    def one(chunk):
        return torch.stack(ae.posterior(chunk), 1) if posterior else ae.encode(chunk)
    return torch.cat([one(x[i:i + batch]) for i in range(0, len(x), batch)])


def sprite_latents(ae_dir: str, ae, split: str, count: int, style: str | None = None, offset: int = 0,
                   render_size: int | None = None, posterior: bool = False):
    """(attributes, Θ(y)) for `count` renders of `split` from index `offset` on, cached in AE_RUN/latents/.
    `style` picks the renderer's look; with `render_size` the sprites are rendered at that size and
    area-averaged down to the AE's (the low-res inputs of superres). With `posterior`: (attributes, µ, σ),
    the mean and std of q(z | y) (cached in a file of their own)."""
    render_size = render_size or ae.image_size
    tag = (f"_{style}" if style else "") + (f"_at{offset}" if offset else "") + (
        f"_from{render_size}" if render_size != ae.image_size else "") + ("_posterior" if posterior else "")
    path = Path(ae_dir) / "latents" / f"{split}_{count}{tag}.safetensors"
    keys = ("attributes", "z", "z_std") if posterior else ("attributes", "z")
    if path.is_file():
        t = load_tensors(path)
        return tuple(t[k] for k in keys)
    attrs, zs = [], []
    start = SPLITS[split][0] + offset
    for i in tqdm(range(0, count, 1000), desc=f"encode {split} renders", mininterval=progress_interval()):
        images, a, _ = render_batch(range(start + i, start + min(count, i + 1000)), split, render_size, style)
        attrs.append(torch.from_numpy(a))
        zs.append(encode_images(ae, area_downsample(to_tensor(images), ae.image_size), posterior=posterior))
    z = torch.cat(zs)
    out = {"attributes": torch.cat(attrs), **({"z": z[:, 0].contiguous(), "z_std": z[:, 1].contiguous()}
                                              if posterior else {"z": z})}
    save_tensors(path, out)
    return tuple(out[k] for k in keys)


def caption_pool(attributes: torch.Tensor, per_image: int, split: str, seed: int) -> list[list[str]]:
    rng = np.random.default_rng([seed, 7])
    return [[make_caption(a, rng, split)[0] for _ in range(per_image)] for a in attributes.numpy()]


def embed_captions(encoder, texts: list[str], cache: Path) -> torch.Tensor:
    """Embeddings of `texts` (row-aligned), cached on disk keyed by the texts themselves (a SHA-256
    of them is stored, so a changed caption language is re-embedded, never silently reused)."""
    digest = torch.frombuffer(bytearray(hashlib.sha256("\n".join(texts).encode()).digest()), dtype=torch.uint8)
    if cache.is_file():
        t = load_tensors(cache)
        if "sha256" in t and torch.equal(t["sha256"], digest):
            return t["embeddings"]
    out = []
    for i in tqdm(range(0, len(texts), 512), desc="embed captions", mininterval=progress_interval()):
        out.append(encoder.encode(texts[i:i + 512]))
    emb = torch.cat(out)
    save_tensors(cache, {"embeddings": emb, "sha256": digest})
    return emb


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


def layer_features(phi, images_uint8: np.ndarray, batch: int = 500) -> dict[str, torch.Tensor]:
    x = to_tensor(images_uint8)
    parts = [phi.all_layers(x[i:i + batch]) for i in range(0, len(x), batch)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def cached_features(clf_dir: str | Path, phi, split: str, count: int) -> torch.Tensor:
    """zΦ of the first `count` renders of `split` (the renders `sprite_latents` encodes), all layers
    computed at once and cached as float16 in CLASSIFIER_RUN/features/."""
    path = Path(clf_dir) / "features" / f"{split}_{count}_{phi.layer}.safetensors"
    if not path.is_file():
        start, parts = SPLITS[split][0], []
        for i in tqdm(range(0, count, 1000), desc=f"{Path(clf_dir).name} features", mininterval=progress_interval()):
            images, _, _ = render_batch(range(start + i, start + min(count, i + 1000)), split, phi.image_size)
            parts.append(layer_features(phi, images))
        for layer in parts[0]:
            save_tensors(path.with_name(f"{split}_{count}_{layer}.safetensors"),
                         {"features": torch.cat([p[layer] for p in parts]).half()})
    return load_tensors(path)["features"].float()
