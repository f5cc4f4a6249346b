"""Sampling-time selection: Eq. 7 drawn `best_of` times per sample, keeping the candidate τ finds most likely;
`Translator.sample` (train/eval/translator.py) then sends the kept latent `cycles` times through the autoencoder.

    v_j ~ N(0, T² I),  z_j = τ(v_j | c),  j = 1..n;      keep the z_j with the largest
    log p(z_j | c) = log N(τ⁻¹(z_j | c); 0, I) + log|det ∂v/∂z|   (Eq. 4's density, at T = 1)
    cycles: z <- Θ(Λ(z)) k times (Θ = the encoder's mean), then the image Λ(z)

Why: draws at T > 1 that τ stretches into thin regions are its least typical samples; the AE round trip puts a
latent back among the latents the AE itself produces. Together they lower text2image's fid at both training seeds
without a lower T (docs/results.md "Sampling-time selection"; blends between shape modes stay). The candidates of
sample k of condition i are rows (i·S + k)·n … (i·S + k)·n + n − 1 of one draw of N·S·n rows: a row's result
depends only on its own draws, and n = 1 is plain Eq. 7 sampling, draw for draw. runtime.Pipeline.translate draws
and scores the same way (τ⁻¹'s log-det from the bundle; runtime/sampling.py).
"""
from __future__ import annotations

import torch

from train.core.flow import ConditionalINN


@torch.no_grad()
def log_density(model: ConditionalINN, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """log p(z | c) under τ at T = 1, up to the constant −D/2·log 2π: log N(τ⁻¹(z | c)) + log|det ∂v/∂z|."""
    v, logdet = model.inverse(z, cond)
    return -0.5 * (v ** 2).sum(1) + logdet


@torch.no_grad()
def pick_best(z: torch.Tensor, score: torch.Tensor, best_of: int) -> torch.Tensor:
    """Of each consecutive group of `best_of` rows of z, the row with the highest score."""
    pick = score.view(-1, best_of).argmax(1)
    return z.view(-1, best_of, z.shape[1])[torch.arange(len(pick)), pick]


@torch.no_grad()
def sample_best_of(model: ConditionalINN, cond: torch.Tensor, num_samples: int = 1, temperature: float = 1.0,
                   best_of: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """`model.sample` with `best_of` candidates per sample (module docstring): (N·num_samples, D), row
    i·num_samples + k is sample k of condition i."""
    if not isinstance(best_of, int) or isinstance(best_of, bool) or best_of < 1:
        raise ValueError(f"best_of must be an integer >= 1, got {best_of!r}")
    z = model.sample(cond, num_samples * best_of, temperature, generator=generator)
    if best_of == 1:
        return z
    return pick_best(z, log_density(model, z, cond.repeat_interleave(num_samples * best_of, 0)), best_of)
