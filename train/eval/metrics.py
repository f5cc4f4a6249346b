"""Metrics shared by the evaluations: image quality, masks, sample diversity, linear probes, invariance.

Images are in [-1, 1] unless a docstring says otherwise; every function is plain torch / numpy.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from train.data import ATTRIBUTES, GROUPS

# attributes as the oracle scores them: the one-hot groups as one categorical attribute each
SCORED = {**{g: [ATTRIBUTES.index(n) for n in names] for g, names in GROUPS.items()},
          **{a: [ATTRIBUTES.index(a)] for a in ATTRIBUTES if not any(a in n for n in GROUPS.values())}}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1], measured on the [0, 1] scale."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image intersection over union of two (N, H, W) bool masks (1 where both are empty)."""
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def probe(v_train, y_train, v_test, y_test, steps: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Linear probe per attribute from v (Eq. 5-6: v should carry no information about zΦ)."""
    torch.manual_seed(0)
    mean, std = v_train.mean(0), v_train.std(0) + 1e-6
    lin = torch.nn.Linear(v_train.shape[1], y_train.shape[1])
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(lin((v_train - mean) / std), y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (((lin((v_test - mean) / std) > 0).float() == y_test).float().mean(0)).numpy()
    majority = (y_train.mean(0) > 0.5).float()
    return acc, (y_test == majority).float().mean(0).numpy()


def diversity(translator, cond, samples: int, seed: int, temperature: float = 1.0) -> float:
    """Mean over conditions of the per-pixel standard deviation across samples (pixels in [0, 1]) of the images
    `translator.sample(cond, samples, seed, temperature)` draws."""
    imgs = (translator.sample(cond, samples, seed, temperature) + 1) / 2
    return float(imgs.reshape(len(cond), samples, -1).std(1).mean())


@torch.no_grad()
def roundtrip_rel_err(model, cond: torch.Tensor, z: torch.Tensor, batch: int = 4096) -> float:
    """‖τ(τ⁻¹(z|c)|c) − z‖ / ‖z‖ over all pairs."""
    err = norm = 0.0
    for i in range(0, len(z), batch):
        zb, cb = z[i:i + batch], cond[i:i + batch]
        v, _ = model.inverse(zb, cb)
        err += float(((model(v, cb) - zb) ** 2).sum())
        norm += float((zb ** 2).sum())
    return math.sqrt(err / max(norm, 1e-30))


def read_scored(pred: np.ndarray) -> np.ndarray:
    """(N, 13) 0/1 oracle readings or attribute vectors -> (N, len(SCORED)) integer class per attribute."""
    return np.stack([pred[:, cols].argmax(1) if len(cols) > 1 else pred[:, cols[0]].astype(int)
                     for cols in SCORED.values()], 1)


def invariance_scores(reads: np.ndarray, truth: np.ndarray, names=tuple(SCORED)) -> dict:
    """reads (N, S, A) classes of S samples per image, truth (N, A) the images' own classes.
    `pair_disagreement`: share of an image's sample pairs that disagree; `invariance`: the same divided
    by 1 - Σ_k p_k² (p = class frequencies of the N images); `error`: share of samples ≠ the truth."""
    n, s, _ = reads.shape
    result = {"invariance": {}, "pair_disagreement": {}, "error": {}}
    for j, name in enumerate(names):
        classes = range(int(max(reads[..., j].max(), truth[:, j].max())) + 1)
        counts = np.stack([(reads[:, :, j] == v).sum(1) for v in classes], 1)       # (N, classes)
        pairs = ((s * s - (counts ** 2).sum(1)) / (s * (s - 1))).mean() if s > 1 else 0.0
        p = np.bincount(truth[:, j]) / n
        result["pair_disagreement"][name] = float(pairs)
        result["invariance"][name] = float(pairs / max(1 - (p ** 2).sum(), 1e-9))
        result["error"][name] = float((reads[:, :, j] != truth[:, j:j + 1]).mean())
    for scores in result.values():
        scores["mean"] = float(np.mean(list(scores.values())))
    return result
