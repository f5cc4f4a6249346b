"""The deterministic MLP baseline of Sec. E: the same condition embedder H as τ, no residual v.

It shares τ's standardisation buffers and embedder, so the two differ only in what follows h = H(zΦ).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from train.core.flow import ConditionalINN, ConvEmbedder, FlowConfig, VectorEmbedder, mlp


@dataclass
class MLPConfig:
    """The deterministic baseline of Sec. E: embedder H + a NeRF-style FC net [46] (8 x 256, one skip)."""
    target_dim: int
    cond_shape: tuple[int, ...]
    embed_dim: int = 64
    embed_hidden: int = 256
    embed_depth: int = 2
    hidden: int = 256
    depth: int = 8

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MLPConfig":
        d = dict(d)
        d["cond_shape"] = tuple(d["cond_shape"])
        return cls(**d)


class MLPTranslator(nn.Module):
    """zΘ = MLP(H(zΦ)), trained by MSE. Same `sample` interface as the cINN; every sample is the same
    point (the mean), which is exactly the failure mode Sec. E shows."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        emb = FlowConfig(cfg.target_dim, cfg.cond_shape, cfg.embed_dim, cfg.embed_hidden, cfg.embed_depth)
        self.embedder = VectorEmbedder(emb) if len(cfg.cond_shape) == 1 else ConvEmbedder(emb)
        half = cfg.depth // 2
        self.head = mlp(cfg.embed_dim, cfg.hidden, cfg.hidden, half)
        self.tail = mlp(cfg.hidden + cfg.embed_dim, cfg.target_dim, cfg.hidden, cfg.depth - half)
        self.register_buffer("cond_mean", torch.zeros(cfg.cond_shape))
        self.register_buffer("cond_std", torch.ones(cfg.cond_shape))
        self.register_buffer("target_mean", torch.zeros(cfg.target_dim))
        self.register_buffer("target_std", torch.ones(cfg.target_dim))
        self.cond_whitening = None           # the baseline keeps per-dim standardisation

    set_standardization = ConditionalINN.set_standardization
    embed = ConditionalINN.embed

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        h = self.embed(cond)
        x = self.tail(torch.cat([F.leaky_relu(self.head(h), 0.01), h], 1))   # the NeRF skip connection
        return x * self.target_std + self.target_mean

    def loss(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Per-sample MSE in standardised latent units."""
        return (((self.forward(cond) - z) / self.target_std) ** 2).mean(1)

    @torch.no_grad()
    def sample(self, cond, num_samples: int = 1, temperature: float = 1.0, generator=None) -> torch.Tensor:
        return self.forward(cond).repeat_interleave(num_samples, dim=0)
