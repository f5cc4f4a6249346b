"""The expert protocol (Sec. 3: fixed, pretrained networks; "no gradient w.r.t. f and g").

An expert is an `nn.Module` with `name`, `output_dim`, `encode(x) -> z` and, where it exists,
`decode(z) -> x`. `freeze` puts it in eval mode with `requires_grad=False`, so a cINN trained on its
outputs can never change it (tests check this). `Experts` is what a trained task hands to export and
evaluation: the source encoder Φ, the target encoder Θ and the target decoder Λ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn


@runtime_checkable
class Expert(Protocol):
    name: str
    output_dim: int

    def encode(self, x) -> torch.Tensor: ...


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@dataclass
class Experts:
    """The frozen experts of a trained task, as export and evaluation need them. Any may be None:
    `source_encoder` Φ (raw input -> zΦ; None when zΦ is given directly, e.g. an attribute vector),
    `target_encoder` Θ (image -> zΘ), `target_decoder` Λ (zΘ -> image). Export calls `encode` / `decode`
    where a module defines them, else `forward`."""
    source_encoder: nn.Module | None = None
    target_encoder: nn.Module | None = None
    target_decoder: nn.Module | None = None
    info: dict = field(default_factory=dict)     # e.g. tokenizer folder, image size, warnings


class EncodeStage(nn.Module):
    """`expert.encode` as a graph (e.g. Θ: image (N, 3, H, W) in [-1, 1] -> z)."""

    def __init__(self, expert: nn.Module):
        super().__init__()
        self.expert = expert

    def forward(self, x):
        return self.expert.encode(x)


class DecodeStage(nn.Module):
    """`expert.decode` as a graph (Λ: z -> image (N, 3, H, W) in [-1, 1])."""

    def __init__(self, expert: nn.Module):
        super().__init__()
        self.expert = expert

    def forward(self, z):
        return self.expert.decode(z)
