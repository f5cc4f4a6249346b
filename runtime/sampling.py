"""Sampling-time selection in the runtime: how many draws per sample `Pipeline.translate` keeps the most likely of,
and how many times the kept latent goes through the autoencoder (z -> Θ(Λ(z))) before the last decode.

A bundle's manifest may carry `sampling.best_of` / `sampling.cycles` (export writes the task's measured choice,
train/tasks/sprites.py SAMPLING; absent: 1 and 0, plain sampling). The choice itself: `most_likely` below, the
numpy twin of train/core/selection.py (docs/results.md "Sampling-time selection" measures it).
"""
from __future__ import annotations

import numbers

import numpy as np

from runtime.manifest import MANIFEST, PipelineError

MAX_BEST_OF = 64                  # candidates per sample: τ and τ⁻¹ run on all of them
MAX_CYCLES = 4                    # z -> Θ(Λ(z)) round trips before the last decode


def best_of_problem(n) -> str | None:
    """Why `n` is not a usable number of draws per sample (None when it is): an integer in [1, MAX_BEST_OF]."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= MAX_BEST_OF:
        return f"must be an integer >= 1 and <= {MAX_BEST_OF}, got {n!r}"
    return None


def default_best_of(manifest: dict) -> int:
    """The bundle's draws per sample (`sampling.best_of`, 1 if absent); a bad value is refused at load."""
    n = manifest.get("sampling", {}).get("best_of", 1)
    if best_of_problem(n):
        raise PipelineError(f"{MANIFEST}: 'sampling.best_of' {best_of_problem(n)}; re-export the bundle")
    return int(n)


def check_best_of(n) -> int:
    """`best_of` as given to translate: one clear error for anything but an integer in [1, MAX_BEST_OF]."""
    if best_of_problem(n):
        raise PipelineError(f"best_of {best_of_problem(n)}")
    return int(n)


def cycles_problem(k, stages) -> str | None:
    """Why `k` round trips through the autoencoder cannot be run (None when they can)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k <= MAX_CYCLES:
        return f"must be an integer >= 0 and <= {MAX_CYCLES}, got {k!r}"
    if k and not {"target_encoder", "target_decoder"} <= set(stages):
        return "needs a bundle with a target encoder and decoder (the autoencoder's Θ and Λ)"
    return None


def default_cycles(manifest: dict, stages) -> int:
    """The bundle's autoencoder round trips per sample (`sampling.cycles`, 0 if absent); a bad value is refused."""
    k = manifest.get("sampling", {}).get("cycles", 0)
    if cycles_problem(k, stages):
        raise PipelineError(f"{MANIFEST}: 'sampling.cycles' {cycles_problem(k, stages)}; re-export the bundle")
    return int(k)


def check_cycles(k, stages) -> int:
    if cycles_problem(k, stages):
        raise PipelineError(f"cycles {cycles_problem(k, stages)}")
    return int(k)


def most_likely(z: np.ndarray, v: np.ndarray, logdet: np.ndarray, n: int) -> np.ndarray:
    """Of each n consecutive candidates z (with their v = τ⁻¹(z | c) and log|det ∂v/∂z|), the one with the highest
    log p(z | c) = log N(v; 0, I) + log|det ∂v/∂z| (τ's density at T = 1, up to a constant)."""
    score = -0.5 * np.square(v.astype(np.float64)).sum(1) + logdet
    return z.reshape(-1, n, z.shape[1])[np.arange(len(z) // n), score.reshape(-1, n).argmax(1)]
