"""Conditional densities p(zΘ | zΦ) with a known conditional entropy: the generators of train/data/synthetic.py.

Every generator draws a latent condition c ~ N(0, I_S), shows the flow `source(c)` (c itself, or an image of
it for `spatial`), and draws zΘ ~ p(· | c). `log_density(c, z)` evaluates log p(z | c) exactly (inverting the
sampler), and `entropy()` states H(zΘ | c) in nats per target dim with a standard error: exact where the
formula allows (quadrature of a 1-D integral, closed forms), else a Monte-Carlo mean over 10⁶ fresh samples.
Since the source determines c, H(zΘ | zΦ) = H(zΘ | c).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import integrate, special, stats

GAUSS_H = 0.5 * math.log(2 * math.pi * math.e)         # entropy of N(0, 1)
MC_SAMPLES = 1_000_000


def gauss_mean(f) -> float:
    """E f(ε), ε ~ N(0, 1), by adaptive quadrature (error ~1e-10): the 1-D integrals of the entropies."""
    return integrate.quad(lambda e: f(e) * math.exp(-0.5 * e * e) / math.sqrt(2 * math.pi), -np.inf, np.inf,
                          epsabs=1e-11, limit=200)[0]


def solve_lower(diag: np.ndarray, off: np.ndarray, y: np.ndarray) -> np.ndarray:
    """u with (diag(d) + off) u = y row by row: forward substitution, `off` strictly lower triangular (D, D)."""
    u = np.zeros_like(y)
    for i in range(y.shape[1]):
        u[:, i] = (y[:, i] - u[:, :i] @ off[i, :i]) / diag[:, i]
    return u


def log_normal(e: np.ndarray) -> np.ndarray:
    return -0.5 * e * e - 0.5 * math.log(2 * math.pi)


@dataclass
class TanhWarp:
    """u = ε + β·tanh(ε): non-Gaussian, invertible (g' = 1 + β·sech²ε > 0)."""
    beta: float

    def __call__(self, e):
        return e + self.beta * np.tanh(e)

    def log_grad(self, e):
        return np.log1p(self.beta * (1 - np.tanh(e) ** 2))

    def inverse(self, u):
        e = u / (1 + self.beta)
        for _ in range(30):                       # Newton on a monotone function with g' in [1, 1 + β]
            e = e - (self(e) - u) / np.exp(self.log_grad(e))
        return e


@dataclass
class SinhArcsinh:
    """u = sinh(κ·asinh ε + δ) (Jones & Pewsey): skew δ, tail weight κ (> 1 heavier than Gaussian)."""
    kappa: np.ndarray
    delta: np.ndarray

    def __call__(self, e):
        return np.sinh(self.kappa * np.arcsinh(e) + self.delta)

    def log_grad(self, e):
        return (np.log(self.kappa) + np.log(np.cosh(self.kappa * np.arcsinh(e) + self.delta))
                - 0.5 * np.log1p(e * e))

    def inverse(self, u):
        return np.sinh((np.arcsinh(u) - self.delta) / self.kappa)


class Generator:
    """The interface: name, summary, source_dim S (c), target_dim D, source(c), sample, log_density, entropy."""
    name: str
    summary: str
    source_dim: int
    target_dim: int

    def source(self, c: np.ndarray) -> np.ndarray:
        """What the flow is conditioned on (an injective function of c)."""
        return c

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def log_density(self, c: np.ndarray, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def entropy(self) -> tuple[float, float, str]:
        """(H(zΘ | c) nats/dim, its standard error, how it was computed)."""
        raise NotImplementedError

    def mc_entropy(self, n: int = MC_SAMPLES, seed: int = 99) -> tuple[float, float]:
        """Monte-Carlo -E log p(z | c) on fresh samples, per dim, with its standard error."""
        c, z = self.draw(n, np.random.default_rng(seed))
        nll = -self.log_density(c, z) / self.target_dim
        return float(nll.mean()), float(nll.std() / math.sqrt(n))


class Triangular(Generator):
    """z = μ(c) + L(c)·u, L(c) = diag(exp a(c)) + `off` (fixed, strictly lower), u_i iid non-Gaussian;
    a(c) = α·tanh(W c) + a₀. H = Σ H(u_i) + E Σ a(c) = D·(H(u) + a₀): tanh is odd and c symmetric."""

    def __init__(self, name, summary, source_dim, target_dim, seed, warp=None, student_nu=None,
                 alpha=0.7, a0=-0.3, off_scale=0.5):
        rng = np.random.default_rng(seed)        # the distribution is fixed; `draw`'s rng only draws pairs
        s, d = source_dim, target_dim
        self.name, self.summary, self.source_dim, self.target_dim = name, summary, s, d
        k = math.sqrt(4 / s)                        # keeps W c and A c at unit-ish scale for any S (1 at S = 4)
        self.A, self.B = rng.normal(size=(d, s)) / 2 * k, rng.normal(size=(d, s))
        self.W = rng.normal(size=(d, s)) / 2 * k
        self.off = np.tril(rng.normal(size=(d, d)) * off_scale, -1)
        self.warp, self.nu, self.alpha, self.a0 = warp, student_nu, alpha, a0

    def mean(self, c):
        return np.sin(c @ self.A.T) * 2 + 0.5 * (c @ self.B.T) ** 2 / self.source_dim

    def log_diag(self, c):
        return self.alpha * np.tanh(c @ self.W.T) + self.a0

    def noise(self, n, rng):
        if self.nu is not None:
            return rng.standard_t(self.nu, size=(n, self.target_dim))
        return self.warp(rng.normal(size=(n, self.target_dim)))

    def draw(self, n, rng):
        c = rng.normal(size=(n, self.source_dim))
        u = self.noise(n, rng)
        return c, self.mean(c) + np.exp(self.log_diag(c)) * u + u @ self.off.T

    def log_density(self, c, z):
        a = self.log_diag(c)
        u = solve_lower(np.exp(a), self.off, z - self.mean(c))
        if self.nu is not None:
            log_u = stats.t.logpdf(u, self.nu)
        else:
            e = self.warp.inverse(u)
            log_u = log_normal(e) - self.warp.log_grad(e)
        return (log_u - a).sum(1)

    def entropy(self):
        if self.nu is not None:
            nu = self.nu
            h_u = ((nu + 1) / 2 * (special.digamma((nu + 1) / 2) - special.digamma(nu / 2))
                   + math.log(math.sqrt(nu) * special.beta(nu / 2, 0.5)))
            how = f"closed form (Student-t, ν={nu})"
        else:
            h_u = GAUSS_H + gauss_mean(lambda e: float(self.warp.log_grad(e)))
            how = "change of variables, 1-D quadrature"
        return float(h_u + self.a0), 0.0, how


class Autoregressive(Generator):
    """z_i = m_i(c, z_<i) + exp(s_i(c, z_<i))·g_i(ε_i), ε_i ~ N(0, 1), g_i sinh-arcsinh: every dim depends
    nonlinearly on the condition and on the dims before it, with a skewed, non-Gaussian, heteroscedastic noise.
    H = D·H(ε) + Σ_i E log g_i'(ε) (quadrature) + E Σ_i s_i (Monte Carlo over 10⁶ samples)."""

    def __init__(self, name, summary, source_dim, target_dim, seed, log_scale0, dep=0.6, scale_dep=0.3):
        rng = np.random.default_rng(seed)
        s, d = source_dim, target_dim
        self.name, self.summary, self.source_dim, self.target_dim = name, summary, s, d
        self.P, self.phase = rng.normal(size=(d, s)) * 0.8, rng.uniform(0, 2 * np.pi, size=d)
        self.Q, self.R = rng.normal(size=(d, s)) / 2, rng.normal(size=(d, s))
        self.M = np.tril(rng.normal(size=(d, d)) * dep, -1)             # mean dependence on z_<i
        self.N = np.tril(rng.normal(size=(d, d)) * scale_dep, -1)       # scale dependence on z_<i
        self.W = rng.normal(size=(d, s)) / 2
        self.log_scale0 = np.broadcast_to(np.asarray(log_scale0, dtype=float), (d,)).copy()
        self.warp = SinhArcsinh(rng.uniform(0.75, 1.3, size=d), rng.uniform(-0.6, 0.6, size=d))

    def _loc_scale(self, i, c, z):
        """m_i and s_i from c and the dims z[:, :i] before i."""
        prev = np.tanh(z[:, :i] / 2)
        m = (1.5 * np.cos(c @ self.P[i] + self.phase[i]) + 0.4 * (c @ self.Q[i]) * np.tanh(c @ self.R[i])
             + 2 * prev @ self.M[i, :i])
        s = self.log_scale0[i] + 0.5 * np.tanh(c @ self.W[i]) + prev @ self.N[i, :i]
        return m, s

    def draw(self, n, rng):
        c = rng.normal(size=(n, self.source_dim))
        e = rng.normal(size=(n, self.target_dim))
        u = self.warp(e)
        z = np.zeros_like(e)
        for i in range(self.target_dim):
            m, s = self._loc_scale(i, c, z)
            z[:, i] = m + np.exp(s) * u[:, i]
        return c, z

    def log_density(self, c, z):
        total = np.zeros(len(z))
        for i in range(self.target_dim):
            m, s = self._loc_scale(i, c, z)
            u = (z[:, i] - m) * np.exp(-s)
            e = SinhArcsinh(self.warp.kappa[i], self.warp.delta[i]).inverse(u)
            total += log_normal(e) - self._log_grad(i, e) - s
        return total

    def _log_grad(self, i, e):
        return SinhArcsinh(self.warp.kappa[i], self.warp.delta[i]).log_grad(e)

    def entropy(self, n: int = MC_SAMPLES, seed: int = 98):
        h_warp = sum(gauss_mean(lambda e, i=i: float(self._log_grad(i, e))) for i in range(self.target_dim))
        c, z = self.draw(n, np.random.default_rng(seed))
        s_sum = sum(self._loc_scale(i, c, z)[1] for i in range(self.target_dim))
        d = self.target_dim
        h = (d * GAUSS_H + h_warp + s_sum.mean()) / d
        return float(h), float(s_sum.std() / math.sqrt(n) / d), "change of variables, quadrature + Monte Carlo"


class Mixture(Generator):
    """Multimodal: z ~ Σ_k π_k(c)·N(μ_k(c), e^{2 r_k(c)}·L_k L_kᵀ), K modes a few standard deviations apart,
    weights softmax(V c), each mode moving and scaling with c. No closed form: H by Monte Carlo over 10⁶
    samples of the exact log-density (log-sum-exp over the modes)."""

    def __init__(self, name, summary, source_dim, target_dim, seed, modes=3, spread=1.5):
        rng = np.random.default_rng(seed)
        s, d = source_dim, target_dim
        self.name, self.summary, self.source_dim, self.target_dim = name, summary, s, d
        self.V = rng.normal(size=(modes, s)) * 0.7
        self.centres = rng.normal(size=(modes, d)) * spread
        self.A = rng.normal(size=(modes, d, s)) / 2
        self.w = rng.normal(size=(modes, s)) / 2
        self.log_diag = rng.uniform(-1.0, -0.3, size=(modes, d))
        self.off = np.tril(rng.normal(size=(modes, d, d)) * 0.2, -1)

    def _modes(self, c):
        logits = c @ self.V.T
        log_pi = logits - special.logsumexp(logits, axis=1, keepdims=True)
        mu = self.centres[None] + 0.8 * np.sin(np.einsum("kds,ns->nkd", self.A, c))
        r = 0.3 * np.tanh(c @ self.w.T)                                   # (n, K) per-mode log-scale
        return log_pi, mu, r

    def draw(self, n, rng):
        c = rng.normal(size=(n, self.source_dim))
        log_pi, mu, r = self._modes(c)
        k = (rng.uniform(size=(n, 1)) > np.cumsum(np.exp(log_pi), 1)).sum(1).clip(max=len(self.V) - 1)
        e = rng.normal(size=(n, self.target_dim))
        lower = np.exp(self.log_diag)[k][:, :, None] * np.eye(self.target_dim) + self.off[k]
        rows = np.arange(n)
        return c, mu[rows, k] + np.exp(r[rows, k])[:, None] * np.einsum("nij,nj->ni", lower, e)

    def log_density(self, c, z):
        log_pi, mu, r = self._modes(c)
        per_mode = []
        for k in range(len(self.V)):
            diag = np.broadcast_to(np.exp(self.log_diag[k]), z.shape)
            u = solve_lower(diag, self.off[k], (z - mu[:, k]) * np.exp(-r[:, k:k + 1]))
            per_mode.append(log_pi[:, k] + log_normal(u).sum(1) - self.log_diag[k].sum() - self.target_dim * r[:, k])
        return special.logsumexp(np.stack(per_mode, 1), axis=1)

    def entropy(self):
        h, se = self.mc_entropy()
        return h, se, "Monte Carlo of the exact log-density"


class Spatial(Generator):
    """The `base` conditional, but the flow sees c only as a 1×16×16 image: one Gaussian blob whose position,
    width and brightness are strictly monotone in c's four components (so the image determines c, and
    H(zΘ | image) = H(zΘ | c)). Measures the convolutional condition embedder."""

    SIZE = 16

    def __init__(self, name, summary, inner: Triangular):
        self.inner, self.name, self.summary = inner, name, summary
        self.source_dim, self.target_dim = inner.source_dim, inner.target_dim

    def source(self, c):
        grid = np.arange(self.SIZE, dtype=float)
        x, y = 7.5 + 5 * np.tanh(c[:, 0] / 2), 7.5 + 5 * np.tanh(c[:, 1] / 2)
        width = 1.8 * np.exp(0.4 * np.tanh(c[:, 2] / 2))
        bright = np.exp(0.5 * np.tanh(c[:, 3] / 2))
        dx = (grid[None, :] - x[:, None]) / width[:, None]
        dy = (grid[None, :] - y[:, None]) / width[:, None]
        img = bright[:, None, None] * np.exp(-0.5 * (dy[:, :, None] ** 2 + dx[:, None, :] ** 2))
        return img[:, None]

    def draw(self, n, rng):
        return self.inner.draw(n, rng)

    def log_density(self, c, z):
        return self.inner.log_density(c, z)

    def entropy(self):
        return self.inner.entropy()
