"""The image-level operations of the paper on a trained run: τ (or the MLP) between a condition and the
latent of a frozen autoencoder g = Λ∘Θ, shared by every evaluation of the sprites family.

Editing (Sec. 4.3, Fig. 6):  v = τ⁻¹(Θ(y) | c),  y* = Λ(τ(v | c*)).  Sampling (Eq. 7): Λ(τ(v | c)), v ~ N(0, I).
The deterministic MLP baseline (Sec. E) has no v: its "edit" is Λ(MLP(c*)).
"""
from __future__ import annotations

from pathlib import Path

import torch

from train.core.flow import ConditionalINN
from train.core.selection import sample_best_of
from train.core.translator import load_translator
from train.experts.ae_training import load_ae


class Translator:
    """A trained cINN (or MLP) plus the frozen AE: the image-level operations of the paper."""

    def __init__(self, model, ae, ae_dir: str, best_of: int = 1):
        self.model, self.ae, self.ae_dir = model, ae, ae_dir
        self.invertible = isinstance(model, ConditionalINN)
        self.best_of = best_of          # candidates per sample (train/core/selection.py); the MLP draws none
        self.cycles = 0                 # z -> Θ(Λ(z)) this many times before the final decode

    @torch.no_grad()
    def decode(self, z, batch=256):
        """Λ(z) in chunks."""
        return torch.cat([self.ae.decode(z[i:i + batch]) for i in range(0, len(z), batch)])

    @torch.no_grad()
    def residual(self, images: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """v = τ⁻¹(Θ(y) | c)."""
        return self.model.inverse(self.ae.encode(images), cond)[0]

    @torch.no_grad()
    def edit(self, images: torch.Tensor, cond: torch.Tensor, new_cond: torch.Tensor) -> torch.Tensor:
        if not self.invertible:
            return self.decode(self.model(new_cond))
        return self.decode(self.model(self.residual(images, cond), new_cond))

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, num_samples: int, seed: int, temperature: float = 1.0,
               best_of: int | None = None, cycles: int | None = None) -> torch.Tensor:
        """Λ(τ(v | c)), v ~ N(0, T² I); of `best_of` (None: self.best_of) draws per sample the one τ finds most
        likely, then `cycles` (None: self.cycles) times z -> Θ(Λ(z)) (train/core/selection.py)."""
        gen = torch.Generator().manual_seed(seed)
        if not self.invertible:
            return self.decode(self.model.sample(cond, num_samples, temperature, generator=gen))
        n = self.best_of if best_of is None else best_of
        z = sample_best_of(self.model, cond, num_samples, temperature, n, generator=gen)
        for _ in range(self.cycles if cycles is None else cycles):
            z = self.encode(self.decode(z))
        return self.decode(z)

    @torch.no_grad()
    def encode(self, images, batch=256):
        """Θ(y) (the posterior mean) in chunks."""
        return torch.cat([self.ae.encode(images[i:i + batch]) for i in range(0, len(images), batch)])


def load_task_run(run_dir: str | Path):
    """(Translator, config) of a trained run of a sprites-family task: its τ (or MLP) and its frozen AE."""
    model, config = load_translator(run_dir)
    return Translator(model, load_ae(config["ae"]), config["ae"]), config


def mlp_baseline(run: Path, translator: Translator, one) -> dict:
    """{"mlp": one(MLP translator)} for the MLP baseline (Sec. E) beside the run (RUN/../mlp), if trained."""
    mlp_dir = run.parent / "mlp"
    if not (mlp_dir / "checkpoint.safetensors").is_file():
        return {"mlp": None, "mlp_note": f"no MLP run in {mlp_dir}; train one with --model mlp"}
    mlp, _ = load_translator(mlp_dir)
    return {"mlp": one(Translator(mlp, translator.ae, translator.ae_dir))}
