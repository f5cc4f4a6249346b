"""Synthetic conditional densities with a known conditional entropy H(zΘ | zΦ), to measure the cINN.

A cINN's held-out NLL can only approach H(zΘ | zΦ) from above; the gap (NLL − H, nats per target dim) is
KL(p ‖ q) / D, which does not change under any invertible reparametrisation of zΘ - so it stays meaningful
when H itself is very negative (`neardet`). The generators (train/data/synthetic_generators.py):

  base     4 → 8    z = μ(c) + L(c)·g(ε): sin + quadratic mean, heteroscedastic diagonal, fixed triangular
                    mixing (dependent dims), g(ε) = ε + 0.6·tanh ε (non-Gaussian). The original benchmark.
  other    4 → 8    the same kind with different functions: autoregressive, every dim's mean and scale depend
                    on c and on the dims before it; skewed sinh-arcsinh noise.
  mixture  4 → 8    multimodal: 3 Gaussian modes with c-dependent weights, centres and scales.
  heavy    4 → 8    heavy tails: Student-t noise (ν = 3, infinite kurtosis) through c-dependent scales and
                    triangular mixing; entropy in closed form.
  neardet  4 → 8    near-deterministic: 4 dims as in `other`, 4 dims a nonlinear function of c and the earlier
                    dims plus noise of std ~0.02 (their entropy is about −2.5 nats each).
  wide     16 → 32  `base`'s kind at higher dimension.
  spatial  1×16×16 → 8  `base`'s conditional, the condition shown to the flow as an image of a blob.

`write_benchmark(name, out)` writes {train,test}_{source,target}.npy for the `features` task and truth.json.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from train.core.common import UserError, atomic_write_json
from train.data.synthetic_generators import Autoregressive, Generator, Mixture, Spatial, TanhWarp, Triangular

_BASE = Triangular("base", "4-D -> 8-D: sin + quadratic mean, heteroscedastic, triangular mixing, tanh-warped noise "
                   "(the original benchmark)", 4, 8, seed=1234, warp=TanhWarp(0.6))
GENERATORS: dict[str, Generator] = {g.name: g for g in (
    _BASE,
    Autoregressive("other", "4-D -> 8-D: autoregressive cos/product means, scales depending on c and earlier dims, "
                   "skewed sinh-arcsinh noise", 4, 8, seed=7, log_scale0=-0.4),
    Mixture("mixture", "4-D -> 8-D: 3 Gaussian modes, c-dependent weights, centres and scales", 4, 8, seed=11),
    Triangular("heavy", "4-D -> 8-D: Student-t noise (nu = 3) through c-dependent scales and triangular mixing",
               4, 8, seed=21, student_nu=3, a0=-0.5),
    Autoregressive("neardet", "4-D -> 8-D: 4 dims near-deterministic functions of c and the earlier dims "
                   "(noise std ~0.02)", 4, 8, seed=31, log_scale0=[-0.4] * 4 + [math.log(0.02)] * 4),
    Triangular("wide", "16-D -> 32-D: the base kind at higher dimension", 16, 32, seed=41, warp=TanhWarp(0.6),
               off_scale=0.25),
    Spatial("spatial", "1x16x16 image of a blob -> 8-D: the base conditional, condition seen as an image", _BASE),
)}


def get(name: str) -> Generator:
    if name not in GENERATORS:
        raise UserError(f"unknown generator '{name}'; choose from {', '.join(GENERATORS)} (or all)")
    return GENERATORS[name]


def sample(name: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source the flow sees, latent c, target z) as float32, n pairs drawn with `seed`."""
    gen = get(name)
    c, z = gen.draw(n, np.random.default_rng(seed))
    return gen.source(c).astype(np.float32), c.astype(np.float32), z.astype(np.float32)


def sample_pairs(n: int, seed: int = 0, generator: str = "base") -> tuple[np.ndarray, np.ndarray]:
    """(zΦ, zΘ) float32 pairs of one generator (the tests' and benchmarks' small data)."""
    source, _, z = sample(generator, n, seed)
    return source, z


@functools.cache
def stated_entropy(name: str) -> tuple[float, float, str]:
    """`get(name).entropy()`, computed once per process: (H nats/dim, standard error, method). Cached because
    three generators' H takes a Monte Carlo over 10⁶ samples (seconds each), and tests and `all` ask repeatedly."""
    return get(name).entropy()


def true_conditional_entropy(generator: str = "base") -> float:
    """H(zΘ | zΦ) in nats per target dim."""
    return stated_entropy(generator)[0]


TARGET_DIM = _BASE.target_dim


def write_benchmark(name: str, out: str | Path, n: int = 40_000, n_test: int = 10_000, seed: int = 0) -> dict:
    """Write {train,test}_{source,target}.npy and truth.json into `out`; returns truth.json's content."""
    gen = get(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, count, s in (("train", n, seed), ("test", n_test, seed + 1)):
        source, _, z = sample(name, count, s)
        np.save(out / f"{split}_source.npy", source)
        np.save(out / f"{split}_target.npy", z)
    h, se, how = stated_entropy(name)
    truth = {"generator": name, "summary": gen.summary, "conditional_entropy_nats_per_dim": h,
             "standard_error": se, "method": how, "source_shape": list(sample(name, 1)[0].shape[1:]),
             "target_dim": gen.target_dim, "train_pairs": n, "test_pairs": n_test, "seed": seed}
    atomic_write_json(out / "truth.json", truth)
    return truth
