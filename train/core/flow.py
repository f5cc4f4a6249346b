"""The conditional invertible network τ of the paper (Sec. 3, Appendix G.1), read top to bottom.

Notation, used everywhere in this project:
  τ     (Eq. 1)  `ConditionalINN.forward(v, cond) -> z`            residual v ~ N(0, I) to target zΘ; sampling.
  τ⁻¹   (Eq. 2)  `ConditionalINN.inverse(z, cond) -> (v, logdet)`  target to residual, with log|det ∂v/∂z|;
                                                                    likelihood (Eq. 4) and editing.
Every invertible piece below has the same pair of methods, `forward` (τ direction) and `inverse`
(τ⁻¹ direction), each returning its output and the log-determinant of that direction.

One INN block (Fig. S7) in the τ⁻¹ direction: ActNorm -> double affine coupling -> fixed permutation;
τ runs the same pieces backwards. ActNorm comes first in τ⁻¹ so every coupling sees normalised input.
Optionally (`FlowConfig.cond_affine`) one conditional affine layer of h alone sits before the blocks
(z side) or after them (v side, i.e. a conditional Gaussian base).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
import torch.nn as nn


@dataclass
class FlowConfig:
    target_dim: int                    # D, dimension of zΘ
    cond_shape: tuple[int, ...]        # shape of one raw condition zΦ: (c,) vector or (C, H, W) spatial
    embed_dim: int = 64                # dimension of h = H(zΦ), Eq. 19
    embed_hidden: int = 256            # width of the vector embedder / FC of the conv embedder
    embed_depth: int = 2               # hidden layers of the vector embedder; downsamplings n of the conv one
    num_blocks: int = 12               # the paper uses 20; net2net's configs 20-24
    hidden: int = 256                  # subnetwork width (paper: 8·D, Tab. S3a)
    depth: int = 2                     # hidden layers per subnetwork (paper: 4)
    clamp: float = 2.0                 # soft clamp α of the log-scale, see `soft_clamp`
    dropout: float = 0.0               # dropout in the coupling subnetworks while training (regularises small data)
    fused: bool = True                 # one subnetwork emits both s and t (same math, half the matmuls)
    cond_whiten: float | None = None   # vector zΦ: None = standardise per dim; λ >= 0 = shrinkage whitening
    cond_affine: str = "none"          # ConditionalAffine of h alone: "none" | "first" (z side) | "last" (v side)
    cond_affine_clamp: float = 7.0     # its soft clamp α: one layer must reach e.g. log 0.01 ≈ -4.6 alone
    seed: int = 0                      # seeds the fixed permutations

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FlowConfig":
        d = dict(d)
        d["cond_shape"] = tuple(d["cond_shape"])
        return cls(**d)


class InvertibleBlock(Protocol):
    """The protocol of every invertible piece (FrEIA's shape): both directions return (output, log-det).

    `forward(v, h)` runs the τ direction (Eq. 1) and returns log|det ∂z/∂v| per sample; `inverse(z, h)`
    runs τ⁻¹ (Eq. 2) and returns log|det ∂v/∂z|, so the two log-dets of one input sum to 0. `h` is the
    embedded condition H(zΦ) (Eq. 19), ignored by unconditional pieces."""

    def forward(self, v: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...
    def inverse(self, z: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...


def soft_clamp(s: torch.Tensor, alpha: float) -> torch.Tensor:
    """s -> α·tanh(s/α): |log-scale| < α, so exp(s) stays below e^α (7.4 for α = 2) and can never
    overflow, also in fp16 engines; near 0 it is the identity, so small scales train unhindered."""
    return alpha * torch.tanh(s / alpha)


def mlp(d_in: int, d_out: int, hidden: int, depth: int, zero_last: bool = False,
        dropout: float = 0.0) -> nn.Sequential:
    """Tab. S3a: (FC, LReLU(0.01)) -> depth-1 x (FC, LReLU) -> FC. With zero_last the net starts at 0,
    so every coupling starts as the identity. `dropout` > 0 follows each LReLU (only then: layer indices,
    and so older checkpoints, stay as they were); in eval mode it is the identity, so τ stays exactly invertible."""
    drop = [nn.Dropout(dropout)] if dropout > 0 else []
    layers: list[nn.Module] = [nn.Linear(d_in, hidden), nn.LeakyReLU(0.01), *drop]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.LeakyReLU(0.01), *([nn.Dropout(dropout)] if dropout > 0 else [])]
    last = nn.Linear(hidden, d_out)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class ActNorm(nn.Module):
    """Glow's activation normalisation [35]: τ⁻¹: v = (z - b)·exp(-s), log-det = -Σ s (per sample).

    Data-dependent init: on the first τ⁻¹ batch in training mode, b and s are set so the output has zero
    mean and unit variance per channel. The `initialized` buffer is saved with the checkpoint, so a
    loaded model never re-initialises. Works on (N, C) and (N, C, H, W) inputs (log-det counts H·W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def _init_from(self, z: torch.Tensor) -> None:
        flat = z.transpose(0, 1).reshape(z.shape[1], -1)
        self.bias.copy_(flat.mean(1))
        self.log_scale.copy_(torch.log(flat.std(1).clamp_min(1e-6)))
        self.initialized.fill_(True)

    def inverse(self, z: torch.Tensor, h=None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self._init_from(z)
        v = (z - self._view(self.bias, z)) * torch.exp(-self._view(self.log_scale, z))
        pixels = z[0, 0].numel()
        return v, (-self.log_scale.sum() * pixels).expand(z.shape[0])

    def forward(self, v: torch.Tensor, h=None) -> tuple[torch.Tensor, torch.Tensor]:
        z = v * torch.exp(self._view(self.log_scale, v)) + self._view(self.bias, v)
        pixels = v[0, 0].numel()
        return z, (self.log_scale.sum() * pixels).expand(v.shape[0])


class Permutation(nn.Module):
    """A fixed random permutation of the components (seeded; stored as a buffer in the checkpoint).
    Volume preserving: log-det 0."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        perm = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)
        self.register_buffer("perm_inv", torch.argsort(perm))

    def inverse(self, z, h=None):
        return z[:, self.perm], z.new_zeros(z.shape[0])

    def forward(self, v, h=None):
        return v[:, self.perm_inv], v.new_zeros(v.shape[0])


class AffineHalf(nn.Module):
    """Predicts (s, t) for one half from [x_other ; h] (Eq. 21), fused or as two subnetworks."""

    def __init__(self, d_in: int, d_out: int, cfg: FlowConfig):
        super().__init__()
        self.clamp = cfg.clamp
        if cfg.fused:
            self.st = mlp(d_in, 2 * d_out, cfg.hidden, cfg.depth, zero_last=True, dropout=cfg.dropout)
        else:
            self.s = mlp(d_in, d_out, cfg.hidden, cfg.depth, zero_last=True, dropout=cfg.dropout)
            self.t = mlp(d_in, d_out, cfg.hidden, cfg.depth, zero_last=True, dropout=cfg.dropout)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xh = torch.cat([x, h], dim=1)
        if hasattr(self, "st"):
            s, t = self.st(xh).chunk(2, dim=1)
        else:
            s, t = self.s(xh), self.t(xh)
        return soft_clamp(s, self.clamp), t


class DoubleAffineCoupling(nn.Module):
    """The alternating ("double") affine coupling of Eq. 20-22, conditioned on h.

    τ⁻¹:  a2 = exp(s1(a1; h))·z2 + t1(a1; h)      with (a1, z2) = split(z), a1 = z1
          a1' = exp(s2(a2; h))·a1 + t2(a2; h)     output (a1', a2)
          log-det = Σ s1 + Σ s2
    τ runs the two steps backwards with exp(-s) and subtraction, so both directions are exact."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        d = cfg.target_dim
        self.d1 = d // 2
        self.d2 = d - self.d1
        self.first = AffineHalf(self.d1 + cfg.embed_dim, self.d2, cfg)    # acts on the second half
        self.second = AffineHalf(self.d2 + cfg.embed_dim, self.d1, cfg)   # acts on the first half

    def inverse(self, z, h):
        z1, z2 = z[:, : self.d1], z[:, self.d1 :]
        s1, t1 = self.first(z1, h)
        a2 = z2 * torch.exp(s1) + t1
        s2, t2 = self.second(a2, h)
        a1 = z1 * torch.exp(s2) + t2
        return torch.cat([a1, a2], 1), s1.sum(1) + s2.sum(1)

    def forward(self, v, h):
        a1, a2 = v[:, : self.d1], v[:, self.d1 :]
        s2, t2 = self.second(a2, h)
        z1 = (a1 - t2) * torch.exp(-s2)
        s1, t1 = self.first(z1, h)
        z2 = (a2 - t1) * torch.exp(-s1)
        return torch.cat([z1, z2], 1), -(s1.sum(1) + s2.sum(1))


class ConditionalAffine(nn.Module):
    """An elementwise affine map whose parameters depend on the condition only, on all D dims at once:

    τ⁻¹:  v = (x - μ(h))·exp(-s(h)),  s = α·tanh(ŝ(h)/α)      log-det = -Σ s
    τ:    x = v·exp(s(h)) + μ(h)                                log-det = +Σ s
    with (μ, ŝ) from one MLP of h (Tab. S3a shape, last layer zero so it starts as the identity). Placed after
    the blocks in τ⁻¹ it is a conditional Gaussian base N(μ(h), diag e^{2s(h)}); placed before them it takes a
    condition-dependent location and scale off zΘ directly. Why: a near-deterministic target dim needs a
    log-scale near log σ (−4.6 for σ = 0.01) and a mean accurate to σ; the couplings reach that only through
    several |s| < α steps fed by the other half, so one layer with a larger α gives it in one place."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.clamp = cfg.cond_affine_clamp
        self.net = mlp(cfg.embed_dim, 2 * cfg.target_dim, cfg.hidden, cfg.depth, zero_last=True)

    def _params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, s = self.net(h).chunk(2, dim=1)
        return mu, soft_clamp(s, self.clamp)

    def inverse(self, x, h):
        mu, s = self._params(h)
        return (x - mu) * torch.exp(-s), -s.sum(1)

    def forward(self, v, h):
        mu, s = self._params(h)
        return v * torch.exp(s) + mu, s.sum(1)


COND_AFFINE_PLACES = ("none", "first", "last")


class VectorEmbedder(nn.Module):
    """H for vector conditions (Tab. S3b, last sentence): a feed-forward net as Tab. S3a."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.net = mlp(cfg.cond_shape[0], cfg.embed_dim, cfg.embed_hidden, cfg.embed_depth)

    def forward(self, c):
        return self.net(c)


class ConvEmbedder(nn.Module):
    """H for spatial conditions (Tab. S3b): n x (Conv stride 2, ActNorm, LReLU) -> flatten -> FC."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        ch, hgt, wid = cfg.cond_shape
        layers: list[nn.Module] = []
        for i in range(cfg.embed_depth):
            out = 64 * (i + 1)
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), ActNormLayer(out), nn.LeakyReLU(0.01)]
            ch, hgt, wid = out, hgt // 2, wid // 2
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(ch * hgt * wid, cfg.embed_dim)

    def forward(self, c):
        return self.fc(self.convs(c).flatten(1))


class ActNormLayer(ActNorm):
    """ActNorm used as a plain (non-invertible) layer inside the embedder H."""

    def forward(self, x, h=None):
        return ActNorm.inverse(self, x)[0]


class ConditionalINN(nn.Module):
    """τ(v | zΦ) (Eq. 1) and τ⁻¹(zΘ | zΦ) (Eq. 2), with the condition embedder H inside.

    Standardisation of both representations lives in fixed buffers (`set_standardization`), so the
    module takes and returns zΦ and zΘ in their original units and its log-det (and thus the NLL of
    Eq. 4) includes the -Σ log σ of the target standardisation."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.embedder = VectorEmbedder(cfg) if len(cfg.cond_shape) == 1 else ConvEmbedder(cfg)
        blocks: list[nn.Module] = []
        for i in range(cfg.num_blocks):
            perm = Permutation(cfg.target_dim, cfg.seed * 1000 + i)
            blocks += [ActNorm(cfg.target_dim), DoubleAffineCoupling(cfg), perm]
        self.blocks = nn.ModuleList(blocks)
        if cfg.cond_affine not in COND_AFFINE_PLACES:
            raise ValueError(f"cond_affine must be one of {', '.join(COND_AFFINE_PLACES)}, got {cfg.cond_affine!r}")
        # a separate attribute, not a block: older checkpoints keep their parameter names
        self.cond_affine = ConditionalAffine(cfg) if cfg.cond_affine != "none" else None
        self.register_buffer("cond_mean", torch.zeros(cfg.cond_shape))
        self.register_buffer("cond_std", torch.ones(cfg.cond_shape))
        self.register_buffer("target_mean", torch.zeros(cfg.target_dim))
        self.register_buffer("target_std", torch.ones(cfg.target_dim))
        if cfg.cond_whiten is not None:
            if len(cfg.cond_shape) != 1:
                raise ValueError("cond_whiten applies to vector conditions only")
            self.register_buffer("cond_whitening", torch.eye(cfg.cond_shape[0]))
        else:
            self.cond_whitening = None

    @torch.no_grad()
    def set_standardization(self, cond_mean, cond_std, target_mean, target_std) -> None:
        self.cond_mean.copy_(cond_mean)
        self.cond_std.copy_(cond_std.clamp_min(1e-6))
        self.target_mean.copy_(target_mean)
        self.target_std.copy_(target_std.clamp_min(1e-6))

    @torch.no_grad()
    def fit_condition_whitening(self, cond: torch.Tensor) -> None:
        """Shrinkage ZCA whitening of vector conditions, W = U (Λ + λ·mean(Λ))^-1/2 Uᵀ from the covariance
        U Λ Uᵀ of training conditions `cond` (N, c); cond_std becomes the per-dim std after W.
        Why: a sentence embedding carries some meanings in low-variance directions ("left" vs "right" in
        MiniLM moves the per-dim standardised embedding 3x less than "dark" vs "light"), which H then
        barely sees; λ keeps the noise directions from being blown up to unit variance too."""
        x = (cond - self.cond_mean).double()
        lam, u = torch.linalg.eigh(x.T @ x / (len(x) - 1))
        lam = lam.clamp_min(0)
        w = (u / (lam + self.cfg.cond_whiten * lam.mean()).clamp_min(1e-12).sqrt()) @ u.T
        self.cond_whitening.copy_(w.float())
        self.cond_std.copy_((x @ w).std(0).float().clamp_min(1e-6))

    def embed(self, cond: torch.Tensor) -> torch.Tensor:
        """h = H(zΦ), Eq. 19, on standardised (or whitened) zΦ."""
        x = cond - self.cond_mean
        if self.cond_whitening is not None:
            x = x @ self.cond_whitening
        return self.embedder(x / self.cond_std)

    @torch.no_grad()
    def random_conditions(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n random conditions spread roughly like the training ones (mean, per-dim scale): export test inputs."""
        x = self.cond_std * torch.randn(n, *self.cfg.cond_shape, generator=generator)
        if self.cond_whitening is not None:
            x = torch.linalg.solve(self.cond_whitening, x.T).T     # W is symmetric: x W⁻¹
        return self.cond_mean + x

    def _pieces(self) -> list[nn.Module]:
        """The invertible pieces in τ⁻¹ order (τ runs them reversed)."""
        pieces = list(self.blocks)
        if self.cond_affine is not None:
            pieces.insert(0 if self.cfg.cond_affine == "first" else len(pieces), self.cond_affine)
        return pieces

    def inverse(self, z: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """τ⁻¹ (Eq. 2): v = τ⁻¹(zΘ | zΦ) and log|det ∂v/∂zΘ| per sample."""
        h = self.embed(cond)
        x = (z - self.target_mean) / self.target_std
        logdet = (-torch.log(self.target_std).sum()).expand(z.shape[0])
        for block in self._pieces():
            x, ld = block.inverse(x, h)
            logdet = logdet + ld
        return x, logdet

    def forward(self, v: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """τ (Eq. 1): zΘ = τ(v | zΦ)."""
        h = self.embed(cond)
        x = v
        for block in reversed(self._pieces()):
            x, _ = block.forward(x, h)
        return x * self.target_std + self.target_mean

    def nll(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Per-sample -log p(zΘ | zΦ) in nats: the Eq. 4 objective, -log q(τ⁻¹(z|c)) - log|det J_τ⁻¹|,
        with q = N(0, I). Averaging over pairs gives Eq. 4 up to the constant data entropy."""
        v, logdet = self.inverse(z, cond)
        log_q = -0.5 * (v**2).sum(1) - 0.5 * v.shape[1] * math.log(2 * math.pi)
        return -(log_q + logdet)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, num_samples: int = 1, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Eq. 7: v ~ N(0, T²·I), zΘ = τ(v | zΦ). Returns (N·num_samples, D), samples of one condition
        adjacent (row i·num_samples + k is sample k of condition i)."""
        cond = cond.repeat_interleave(num_samples, dim=0)
        v = torch.randn(cond.shape[0], self.cfg.target_dim, generator=generator).to(cond.device) * temperature
        return self.forward(v, cond)
