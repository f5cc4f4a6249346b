"""The dequantizer of Appendix G.2 (Tab. S4): a small VAE that replaces BigGAN's discrete class embedding
h = W·c by a stochastic reconstruction ĥ, so the cINN models a continuous zΘ = [z̃, ĥ] (Eq. 24)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from train.core.common import load_tensors


class _Stack(nn.Module):
    """Tab. S4's building block, layers × (FC, LReLU(0.01)) -> FC (+ LReLU when `last_act`), plus a linear
    skip FC from input to output. The skip is our addition: the near-identity map a VAE of 128-d
    embeddings needs is then learnt in ~1000 CPU steps instead of many thousands through a plain stack."""

    def __init__(self, d_in: int, width: int, layers: int, d_out: int, last_act: bool):
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(d_in if i == 0 else width, width), nn.LeakyReLU(0.01)]
        self.mlp = nn.Sequential(*mods, nn.Linear(width, d_out))
        self.skip = nn.Linear(d_in, d_out)
        self.last_act = last_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x) + self.skip(x)
        return nn.functional.leaky_relu(y, 0.01) if self.last_act else y


class Dequantizer(nn.Module):
    """The VAE of Tab. S4: h -> trunk 3×(FC, LReLU) -> (FC, LReLU) -> R^128; μ and log σ² each from
    3×(FC, LReLU) -> FC; latent ~ N(μ, diag σ²); decoder 4×(FC, LReLU) -> FC gives ĥ. The paper's width is
    4096; it is a parameter here (512 by default, for the CPU). The heads' and decoder's last FC are linear
    so μ, log σ² and ĥ can take any sign. Inputs are divided by `scale` (the std of W's entries), so the
    same settings suit any BigGAN's embedding scale."""

    def __init__(self, dim: int = 128, width: int = 512, scale: float = 1.0, noise: float = 0.1):
        super().__init__()
        self.config = {"dim": dim, "width": width, "scale": float(scale), "noise": float(noise)}
        self.trunk = _Stack(dim, width, 3, dim, last_act=True)
        self.mu = _Stack(dim, width, 3, dim, last_act=False)
        self.logvar = _Stack(dim, width, 3, dim, last_act=False)
        self.decoder = _Stack(dim, width, 4, dim, last_act=False)

    def forward(self, h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """ĥ: one stochastic reconstruction of each row of h (Eq. 24)."""
        return self._reconstruct(h, generator)[0]

    def _reconstruct(self, h, generator):
        e = self.trunk(h / self.config["scale"])
        mu, logvar = self.mu(e), self.logvar(e).clamp(-30, 10)
        latent = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator)
        return self.decoder(latent) * self.config["scale"], mu, logvar

    def loss(self, h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO per sample, with a Gaussian decoder of std `noise` (in units of `scale`): the
        reconstruction noise the VAE settles at, and so the amount of dequantization."""
        h_hat, mu, logvar = self._reconstruct(h, generator)
        rec = (((h_hat - h) / self.config["scale"]) ** 2).sum(1) / (2 * self.config["noise"] ** 2)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)
        return (rec + kl).mean()


def nearest_classes(h: torch.Tensor, w: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Indices of the k rows of W nearest to each ĥ by cosine similarity, best first: (N, k)."""
    sim = nn.functional.normalize(h, dim=1) @ nn.functional.normalize(w, dim=1).t()
    return sim.topk(k, dim=1).indices


def train_dequantizer(w: torch.Tensor, steps: int, width: int, noise: float = 0.1, batch: int = 256,
                      lr: float = 3e-3, seed: int = 0) -> tuple[Dequantizer, dict]:
    """Fit the VAE on the K class embeddings (rows of W); returns it frozen and its metrics: the
    relative reconstruction error ‖ĥ − h‖/‖h‖ and how often the nearest row of W to ĥ is h's own class."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = Dequantizer(w.shape[1], width, scale=float(w.std()), noise=noise)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps), eta_min=lr * 0.05)
    for _ in range(steps):
        idx = torch.randint(len(w), (batch,), generator=gen)
        loss = vae.loss(w[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        h_hat = vae(w, gen)
        rel = float((h_hat - w).norm(dim=1).mean() / w.norm(dim=1).mean())
        top1 = float((nearest_classes(h_hat, w, 1)[:, 0] == torch.arange(len(w))).float().mean())
    return vae, {"steps": steps, "width": width, "noise": noise, "rel_error": rel, "nearest_class_acc": top1}


def load_dequantizer(run: str | Path, config: dict) -> tuple[Dequantizer, dict]:
    """The dequantizer a bert2biggan run trained and saved beside its weights (RUN/dequantizer.safetensors)."""
    info = config["dequantizer"]
    dq = Dequantizer(info["dim"], info["width"], info["scale"], info["noise"])
    dq.load_state_dict(load_tensors(Path(run) / "dequantizer.safetensors"))
    return dq.eval().requires_grad_(False), info
