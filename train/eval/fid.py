"""Realism: the Fréchet distance between two feature sets (FID, Heusel et al. 2017; the paper's Tab. 1, Fig. 6).

    d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)

`frechet_distance` works on any features (N, D), so real-image data sets (CelebA, folders) can pass the output
of any extractor. The sprites evaluations use "oracle FID": features = the oracle classifier's penultimate layer,
`AttributeNet.features(x)["last"]` (the 128-d hidden vector after its ReLU, just before the attribute head),
of generated images against real renders of the same attribute distribution (`reference_renders`).

FID is biased upward for small N and the bias depends on N, so only numbers at equal N (and equal reference)
compare; every evaluation reports its N beside them. (Σ₁Σ₂)^½ is scipy.linalg.sqrtm in float64, with the
small diagonal offset and the real part taken as in the reference implementation (pytorch-fid) when the
product is near-singular (dead ReLU units make Σ singular).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg

from train.core.common import UserError
from train.data.latents import encode_images
from train.data.sprites import SPLITS, render_batch

FEATURE_LAYER = "last"          # AttributeNet's penultimate layer (the input of its linear head)
REFERENCE_OFFSET = 5000         # reference renders: test sprites 5000.. (the evaluations score 0.. upward)


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) in float64 of an (N, D) feature set (Σ with N − 1 in the denominator)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"expected features (N, D) with N >= 2, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_from_statistics(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """d² between N(μ₁, Σ₁) and N(μ₂, Σ₂)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature sets differ in dimension: {mu1.shape} vs {mu2.shape}")
    with warnings.catch_warnings():         # a singular product is expected (dead units) and handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():  # offset both diagonals, as pytorch-fid does
            offset = np.eye(len(sigma1)) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):            # round-off leaves tiny imaginary parts on a real PSD root
        covmean = covmean.real
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean), 0.0))


def frechet_distance(features_a, features_b) -> float:
    """FID between two feature sets (N₁, D) and (N₂, D)."""
    return frechet_from_statistics(*statistics(features_a), *statistics(features_b))


@torch.no_grad()
def oracle_features(oracle, images, batch_size: int = 256) -> np.ndarray:
    """(N, 128) penultimate-layer features of the oracle for uint8 (N,H,W,3) or float (N,3,H,W) [-1, 1] images."""
    x = oracle._as_input(images)
    out = [oracle.model.features(x[i:i + batch_size].cpu())[FEATURE_LAYER] for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy()


def reference_renders(count: int, size: int, style: str | None = None, offset: int = REFERENCE_OFFSET) -> np.ndarray:
    """`count` real test renders from `offset` on (seeded by their index, like every render): the real set
    each evaluation's images are compared with. Disjoint from the scored images while those stay < offset."""
    start, stop = SPLITS["test"]
    if offset + count > stop - start:
        raise UserError(f"the FID reference needs test sprites {offset}..{offset + count}; the test split holds "
                        f"{stop - start} (lower --num-images)")
    return render_batch(range(start + offset, start + offset + count), "test", size, style)[0]


class OracleFID:
    """FID of image sets against one real reference of `count` renders, features from the oracle."""

    def __init__(self, oracle, count: int, size: int, style: str | None = None, scored: int | None = None):
        """`scored`: how many test sprites from 0 on the evaluation draws (default `count`); they must stay
        below the reference, or real images would be compared with themselves."""
        if count < 2:
            raise UserError(f"the oracle FID needs at least 2 images (a covariance), got --num-images {count}")
        scored = count if scored is None else scored
        if scored > REFERENCE_OFFSET:
            raise UserError(f"this evaluation scores test sprites 0..{scored - 1}, which would overlap the FID "
                            f"reference renders from {REFERENCE_OFFSET} on; lower --num-images")
        self.oracle, self.count, self.style = oracle, count, style
        self.reference = statistics(oracle_features(oracle, reference_renders(count, size, style)))

    def __call__(self, images) -> float:
        return frechet_from_statistics(*statistics(oracle_features(self.oracle, images)), *self.reference)

    def references(self, images, translator) -> dict:
        """The floor and ceiling of `fid` at this N: real renders `images` (disjoint from the reference) and
        their AE reconstructions Λ(Θ(y)) — what any τ through this AE can reach at best."""
        with torch.no_grad():
            recon = translator.decode(encode_images(translator.ae, images))
        return {"fid_real": self(images), "fid_recon": self(recon), "fid_reference": self.describe()}

    def describe(self) -> dict:
        return {"features": f"oracle AttributeNet.features()['{FEATURE_LAYER}']", "reference_count": self.count,
                "reference_renders": f"test sprites {REFERENCE_OFFSET}..{REFERENCE_OFFSET + self.count - 1}"
                                     + (f" ({self.style})" if self.style else "")}
