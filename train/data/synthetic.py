"""A synthetic conditional density with a known conditional entropy H(zΘ | zΦ), to measure the cINN.

zΦ = c ~ N(0, I_4);  zΘ = μ(c) + L(c)·g(ε),  ε ~ N(0, I_8)
  μ      nonlinear in c,
  L(c)   lower triangular: heteroscedastic diagonal exp(a(c)) and fixed off-diagonal terms (dependent dims),
  g      elementwise u = ε + β·tanh(ε) (non-Gaussian, invertible, g' = 1 + β·(1 - tanh²) > 0).
Change of variables: H(zΘ | c) = H(ε) + E[Σ log g'(ε)] + E_c[Σ a(c)], estimated by Monte Carlo.

`python -m train.synthetic --out DIR` (`write_benchmark`) writes source.npy / target.npy (and a test split) for the
`features` task, plus truth.json with the conditional entropy in nats per target dim.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from train.core.common import atomic_write_json

SOURCE_DIM, TARGET_DIM, BETA = 4, 8, 0.6


def _params():
    rng = np.random.default_rng(1234)       # the distribution itself is fixed; `seed` only draws pairs
    return {
        "A": rng.normal(size=(TARGET_DIM, SOURCE_DIM)) / 2,
        "B": rng.normal(size=(TARGET_DIM, SOURCE_DIM)),
        "W": rng.normal(size=(TARGET_DIM, SOURCE_DIM)) / 2,
        "off": np.tril(rng.normal(size=(TARGET_DIM, TARGET_DIM)) * 0.5, -1),
    }


def _log_diag(c, p):
    return 0.7 * np.tanh(c @ p["W"].T) - 0.3            # a(c), log of L's diagonal


def sample_pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    p = _params()
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n, SOURCE_DIM))
    eps = rng.normal(size=(n, TARGET_DIM))
    u = eps + BETA * np.tanh(eps)
    mu = np.sin(c @ p["A"].T) * 2 + 0.5 * (c @ p["B"].T) ** 2 / SOURCE_DIM
    diag = np.exp(_log_diag(c, p))
    z = mu + diag * u + u @ p["off"].T                  # L(c) = diag(exp a(c)) + off, lower triangular
    return c.astype(np.float32), z.astype(np.float32)


def true_conditional_entropy(n: int = 1_000_000, seed: int = 99) -> float:
    """H(zΘ | zΦ) in nats per target dim (Monte Carlo, standard error ~1e-4)."""
    p = _params()
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n, SOURCE_DIM))
    eps = rng.normal(size=(n, TARGET_DIM))
    h_eps = 0.5 * TARGET_DIM * math.log(2 * math.pi * math.e)
    log_gprime = np.log1p(BETA * (1 - np.tanh(eps) ** 2)).sum(1).mean()
    log_diag = _log_diag(c, p).sum(1).mean()
    return float((h_eps + log_gprime + log_diag) / TARGET_DIM)


def write_benchmark(out: str | Path, n: int = 40_000, n_test: int = 10_000, seed: int = 0) -> float:
    """Write {train,test}_{source,target}.npy and truth.json into `out`; returns the true H(z|c) per dim."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, count, s in (("train", n, seed), ("test", n_test, seed + 1)):
        c, z = sample_pairs(count, s)
        np.save(out / f"{name}_source.npy", c)
        np.save(out / f"{name}_target.npy", z)
    h = true_conditional_entropy()
    atomic_write_json(out / "truth.json", {"conditional_entropy_nats_per_dim": h, "source_dim": SOURCE_DIM,
                                           "target_dim": TARGET_DIM})
    return h
