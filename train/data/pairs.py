"""Pair sources: what the training loop draws (zΦ, zΘ) batches from (see train/core/translator.PairSource).

Pair sources hand out detached tensors, so no gradient can reach an expert.
"""
from __future__ import annotations

import numpy as np
import torch


class TensorPairs:
    """A PairSource over aligned in-memory arrays, with a held-out validation split."""

    def __init__(self, cond: np.ndarray, target: np.ndarray, val_fraction: float = 0.1, seed: int = 0,
                 max_val: int = 5000):
        n = len(target)
        perm = np.random.default_rng(seed).permutation(n)
        n_val = min(max_val, int(round(n * val_fraction))) if n >= 20 else 0
        self.val_idx, self.train_idx = perm[:n_val], perm[n_val:]
        self.cond = torch.from_numpy(cond)
        self.target = torch.from_numpy(target)
        self.cond_shape = tuple(cond.shape[1:])
        self.target_dim = target.shape[1]

    def batch(self, size: int, generator: torch.Generator):
        idx = torch.from_numpy(self.train_idx)[torch.randint(len(self.train_idx), (size,), generator=generator)]
        return self.cond[idx], self.target[idx]

    def validation(self):
        idx = self.val_idx if len(self.val_idx) else self.train_idx[:1000]
        return self.cond[idx], self.target[idx]

    def statistics(self):
        z = self.target[self.train_idx]
        return (*condition_statistics(self.cond[self.train_idx]), z.mean(0), z.std(0))


def condition_statistics(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of conditions (N, *cond_shape) in cond_shape: spatial conditions (N, C, H, W) are
    standardised per channel, vectors per dim."""
    dims = (0, 2, 3) if c.dim() == 4 else (0,)
    cm, cs = c.mean(dims, keepdim=True)[0], c.std(dims, keepdim=True)[0]
    if c.dim() == 4:
        cm, cs = cm.expand(c.shape[1:]), cs.expand(c.shape[1:])
    return cm, cs


class SpritePairs:
    """PairSource: (zΦ, Θ(y)) with zΦ = attributes or caption embeddings (one of a pool per image)."""

    def __init__(self, cond: torch.Tensor, z: torch.Tensor, val_cond: torch.Tensor, val_z: torch.Tensor,
                 attributes: torch.Tensor | None = None, z_std: torch.Tensor | None = None,
                 val_z_std: torch.Tensor | None = None):
        # cond: (N, K, *cond_shape) — K alternative conditions per image (K = 1 for attributes);
        # cond_shape (c,) for vectors, (C, H, W) for spatial conditions; `attributes` (N, A): what each image
        # shows, from which `condition_meanings` derives the directions of zΦ that say it (only when asked).
        # z_std (N, D): the AE's posterior std σ of each target; given, every batch draws z = µ + σ·ε afresh
        # (τ then learns the AE's posterior, not only its means), and validation is one fixed such draw.
        self.cond, self.z, self.z_std, self.attributes = cond, z, z_std, attributes
        if z_std is not None:
            val_z = val_z + val_z_std * torch.randn(val_z.shape, generator=torch.Generator().manual_seed(0))
        self.val = (val_cond, val_z)
        self.cond_shape = tuple(cond.shape[2:])
        self.target_dim = z.shape[1]

    def batch(self, size: int, generator: torch.Generator):
        idx = torch.randint(len(self.z), (size,), generator=generator)
        k = torch.randint(self.cond.shape[1], (size,), generator=generator)
        if self.z_std is None:
            return self.cond[idx, k], self.z[idx]
        eps = torch.randn(size, self.target_dim, generator=generator)
        return self.cond[idx, k], self.z[idx] + self.z_std[idx] * eps

    def validation(self):
        return self.val

    def statistics(self):
        std = self.z.std(0) if self.z_std is None else (self.z.var(0) + self.z_std.pow(2).mean(0)).sqrt()  # µ + σ·ε
        return (*condition_statistics(self.cond.flatten(0, 1)), self.z.mean(0), std)

    def condition_meanings(self) -> torch.Tensor | None:
        """(A, *cond_shape) directions of zΦ per attribute (`attribute_directions`), or None without attributes."""
        return None if self.attributes is None else attribute_directions(self.cond, self.attributes.float())


def attribute_directions(cond: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """(A, c): least-squares coefficients of vector conditions cond (N, K, c) on the attributes (N, A) of
    their images — per attribute, the direction in which the condition moves when that attribute changes."""
    k = cond.shape[1]
    x = cond.flatten(0, 1).double()
    a = attributes.double().repeat_interleave(k, 0)
    return torch.linalg.lstsq(a - a.mean(0), x - x.mean(0)).solution.float()
