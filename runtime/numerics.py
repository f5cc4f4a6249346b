"""The measures every check uses (export, `runtime check`, bench): relative errors, NLL, batch dependence."""
from __future__ import annotations

import numpy as np


def max_rel(a, b) -> float:
    """max |a - b| / max |b|: the parity measure of export checks and `runtime check`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def l2_rel(a, b) -> float:
    """‖a - b‖ / ‖b‖: the round-trip measure (τ(τ⁻¹(z)) against z)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12))


def nll_per_dim(v, logdet) -> np.ndarray:
    """-log p(zΘ | zΦ) per dim from τ⁻¹'s outputs: (0.5 |v|² + D/2 log 2π - logdet) / D."""
    v = np.asarray(v, np.float64)
    return (0.5 * (v ** 2).sum(1) + 0.5 * v.shape[1] * np.log(2 * np.pi) - logdet) / v.shape[1]


def batch_dependence(run, feeds: dict[str, np.ndarray], rows: int = 8, sizes: tuple[int, ...] = (8, 64),
                     seed: int = 0) -> float:
    """max |Δ| of a row's output computed alone vs inside batches of `sizes` rows of other inputs (the
    pool's other rows, at a random position): 0 when each row is independent of the rest of its batch.
    `run(feeds) -> array` runs one graph; `feeds` holds aligned rows (at least 2)."""
    n = len(next(iter(feeds.values())))
    rng, worst = np.random.default_rng(seed), 0.0
    for i in range(min(rows, n)):
        alone = run({k: x[i:i + 1] for k, x in feeds.items()})
        others = np.delete(np.arange(n), i)
        for size in sizes:
            idx = rng.permutation(np.resize(others, size - 1))
            at = int(rng.integers(size))
            idx = np.insert(idx, at, i)
            inside = run({k: x[idx] for k, x in feeds.items()})[at:at + 1]
            worst = max(worst, float(np.abs(np.asarray(inside, np.float64) - alone).max()))
    return worst
