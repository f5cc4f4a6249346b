"""BigGAN-deep as the target expert Λ of Sec. 4.1 (Θ ≡ identity), the dequantizer of Appendix G.2, and
the ImageNet class names and captions that stand in for the paper's COCO captioner.

Target representation (Eq. 23-24): BigGAN draws an image from [z̃, W·c], with z̃ the truncated noise and
h = W·c the class embedding of the one-hot class c. The class part is discrete, so a small VAE (Tab. S4)
replaces h by its stochastic reconstruction ĥ ("dequantization"), and the cINN models zΘ = [z̃, ĥ].

Weights are never downloaded: `--biggan DIR` loads a folder in pytorch-pretrained-biggan's format,
`--biggan biggan-deep-128|256|512` only the package's existing cache, and `random:<name>` builds the real
architecture with seeded random weights for tests and benchmarks, always with a warning.
"""
from __future__ import annotations

import functools
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from pytorch_pretrained_biggan import BigGAN, BigGANConfig
from pytorch_pretrained_biggan import convert_tf_to_pytorch as _configs
from pytorch_pretrained_biggan.model import (
    CONFIG_NAME,
    PRETRAINED_CONFIG_ARCHIVE_MAP,
    PRETRAINED_MODEL_ARCHIVE_MAP,
    WEIGHTS_NAME,
    BigGANBatchNorm,
)
from torch.nn.utils.spectral_norm import SpectralNorm

from train.common import UserError

CLASSES_FILE = Path(__file__).parent / "data" / "imagenet_classes.txt"
RANDOM_SEED = 0          # random-init weights are seeded, so a run's decoder can be rebuilt exactly
# BigGAN-deep's own configurations (as the package ships them) and a tiny one, for tests only.
ARCHITECTURES = {"biggan-deep-128": _configs.BigGAN128, "biggan-deep-256": _configs.BigGAN256,
                 "biggan-deep-512": _configs.BigGAN512,
                 "tiny": BigGANConfig(output_dim=32, channel_width=4, attention_layer_position=2,
                                      layers=[(True, 16, 8), (True, 8, 4), (False, 4, 2), (True, 2, 1)])}


# ----------------------------------------------------------------------------------------------- BigGAN
def _package_cache(name: str) -> tuple[Path, Path] | None:
    """The package's cached (config, weights) files for `name`, or None. Looks only at the cache folder
    (files named sha256(url)[.sha256(etag)] with a .json beside them): nothing touches the network."""
    from pytorch_pretrained_biggan.file_utils import PYTORCH_PRETRAINED_BIGGAN_CACHE as cache
    found = []
    for url in (PRETRAINED_CONFIG_ARCHIVE_MAP[name], PRETRAINED_MODEL_ARCHIVE_MAP[name]):
        stem = hashlib.sha256(url.encode()).hexdigest()
        hits = sorted(p for p in Path(cache).glob(stem + "*") if p.suffix != ".json"
                      and Path(str(p) + ".json").is_file()) if Path(cache).is_dir() else []
        if not hits:
            return None
        found.append(hits[-1])
    return found[0], found[1]


def _random_init(config: BigGANConfig) -> BigGAN:
    """The real architecture with seeded random weights. Two things the package leaves undefined are
    fixed here: the unconditional final batch-norm affine (uninitialised memory -> 1 and 0), and the
    spectral-norm vectors u, v, which are power-iterated until σ estimates the largest singular value."""
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_SEED)
        model = BigGAN(config)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, BigGANBatchNorm) and not m.conditional:
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                for hook in m._forward_pre_hooks.values():
                    if isinstance(hook, SpectralNorm):
                        w = hook.reshape_weight_to_matrix(getattr(m, hook.name + "_orig"))
                        u, v = getattr(m, hook.name + "_u"), getattr(m, hook.name + "_v")
                        for _ in range(10):
                            v.copy_(nn.functional.normalize(w.t() @ u, dim=0, eps=hook.eps))
                            u.copy_(nn.functional.normalize(w @ v, dim=0, eps=hook.eps))
    return model


@functools.lru_cache(maxsize=2)
def load_biggan(spec: str | None) -> tuple[BigGAN, dict, tuple[str, ...]]:
    """(frozen BigGAN, info for config.json, warnings) for a `--biggan` value. Cached per process, so the
    random-init warning is printed once per command."""
    if not spec:
        raise UserError("--biggan is required: pass DIR (a folder with config.json + pytorch_model.bin in "
                        "pytorch-pretrained-biggan's format) or random:biggan-deep-128 (random weights, tests only)")
    warnings: tuple[str, ...] = ()
    if spec.startswith("random:"):
        name = spec.split(":", 1)[1]
        if name not in ARCHITECTURES:
            raise UserError(f"unknown architecture in --biggan {spec}; use random:biggan-deep-128, -256 or -512")
        model = _random_init(BigGANConfig.from_dict(ARCHITECTURES[name].to_dict()))
        warnings = (f"random-init BigGAN ({name}, seed {RANDOM_SEED}): not a trained generator, images are noise; "
                    f"for tests and benchmarks only",)
        print(f"WARNING: {warnings[0]}", file=sys.stderr)
    else:
        if spec in PRETRAINED_MODEL_ARCHIVE_MAP:
            files = _package_cache(spec)
            if files is None:
                raise UserError(f"BigGAN weights '{spec}' are not in pytorch-pretrained-biggan's cache and nothing is "
                                f"downloaded at run time; pass --biggan DIR with {CONFIG_NAME} + {WEIGHTS_NAME}")
            config_file, weights_file = files
        else:
            folder = Path(spec)
            config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
            if not config_file.is_file() or not weights_file.is_file():
                raise UserError(f"--biggan {spec}: expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME} "
                                f"(pytorch-pretrained-biggan's format), biggan-deep-128|256|512 or random:<name>")
        try:
            model = BigGAN(BigGANConfig.from_json_file(config_file))
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError, TypeError, json.JSONDecodeError, KeyError) as e:
            raise UserError(f"cannot load BigGAN from {spec}: {e}") from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"{weights_file} does not match {config_file} (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    model.eval().requires_grad_(False)
    w = class_embeddings(model)
    info = {"source": spec, "random_init": spec.startswith("random:"), "image_size": model.config.output_dim,
            "z_dim": model.config.z_dim, "num_classes": w.shape[0],
            "embedding_sha256": hashlib.sha256(w.numpy().tobytes()).hexdigest()[:16]}
    return model, info, warnings


def class_embeddings(model: BigGAN) -> torch.Tensor:
    """W of Eq. 23 as rows: `model.embeddings` is Linear(K -> 128) on the one-hot c, so h = W·c is column c
    of its weight. Returns (K, 128)."""
    return model.embeddings.weight.detach().t().contiguous()


def truncated_noise(n: int, dim: int, truncation: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """z̃ of Eq. 23 with BigGAN's truncation trick, as `truncated_noise_sample` draws it: truncation · N(0, 1)
    restricted to [-2, 2] (by resampling the components outside)."""
    z = torch.randn(n, dim, generator=generator)
    while (bad := z.abs() > 2).any():
        z[bad] = torch.randn(int(bad.sum()), generator=generator)
    return truncation * z


class BigGANDecoder(nn.Module):
    """Λ: zΘ = [z̃, ĥ] (N, 2·128) -> image (N, 3, H, W) in [-1, 1] (Eq. 24 decoding). It is BigGAN.forward
    with the dequantized ĥ in place of W·c and the truncation a constant, so it traces to ONNX as is."""

    def __init__(self, model: BigGAN, truncation: float):
        super().__init__()
        self.generator = model.generator
        self.z_dim = model.config.z_dim
        self.truncation = float(truncation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z_tilde, h_hat = z[:, : self.z_dim], z[:, self.z_dim:]
        return self.generator(torch.cat([z_tilde, h_hat], 1), self.truncation)


# ----------------------------------------------------------------------------------------- dequantizer
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


# ------------------------------------------------------------------------------------- names, captions
@functools.lru_cache(maxsize=1)
def class_names() -> tuple[tuple[str, ...], ...]:
    """The 1000 ILSVRC-2012 classes in index order, each as its lemmas (first = the common name)."""
    lines = CLASSES_FILE.read_text(encoding="utf-8").splitlines()
    if len(lines) != 1000:
        raise UserError(f"{CLASSES_FILE} must have 1000 lines (one per ImageNet class), has {len(lines)}")
    return tuple(tuple(s.strip() for s in line.split(",") if s.strip()) for line in lines)


# {a}: with article, {p}: plural, {n}: bare name. Held-out frames never occur in training.
TRAIN_TEMPLATES = ["a photo of {a}", "{a} in the wild", "a picture of {p}", "a close-up photo of {a}",
                   "there is {a} in this image", "a blurry photo of the {n}", "an image of {p}", "{n}",
                   "a bright photo of {a}", "a cropped photo of the {n}", "a drawing of {a}", "{p} outdoors"]
HELDOUT_TEMPLATES = ["a snapshot showing {a}", "this is a good example of {a}", "several {p} next to each other",
                     "my favourite {n}"]


def _article(phrase: str) -> str:
    low = phrase.lower()
    vowel = low[0] in "aeiou" and not low.startswith(("eu", "uni", "use", "one")) or low.startswith("hour")
    return f"{'an' if vowel else 'a'} {phrase}"


def _plural(phrase: str) -> str:
    head, _, last = phrase.rpartition(" ")
    low = last.lower()
    if low.endswith(("fish", "sheep", "deer", "s", "ware")) and not low.endswith(("ss", "us")):
        word = last
    elif low.endswith(("ss", "x", "z", "ch", "sh", "us")):
        word = last + "es"
    elif low.endswith("y") and low[-2:-1] not in tuple("aeiou"):
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def fill(template: str, name: str) -> str:
    return template.format(a=_article(name), p=_plural(name), n=name)


def class_captions(cls: int, count: int, split: str, seed: int = 0) -> list[str]:
    """`count` distinct captions of class `cls`, the same on every call. Train captions cycle through the
    class's lemmas (every other one uses the common name) and a per-class shuffle of TRAIN_TEMPLATES;
    held-out captions use HELDOUT_TEMPLATES with the common name only."""
    names = class_names()[cls]
    rng = np.random.default_rng([seed, cls, split == "heldout"])
    templates = HELDOUT_TEMPLATES if split == "heldout" else TRAIN_TEMPLATES
    order = rng.permutation(len(templates))
    out: list[str] = []
    for k in range(count):
        synonym = 1 + (k // 2) % max(1, len(names) - 1) if len(names) > 1 and split == "train" and k % 2 else 0
        text = fill(templates[order[k % len(order)]], names[synonym])
        if text not in out:
            out.append(text)
    return out


def load_captions_file(path: str | Path) -> list[tuple[int, str]]:
    """User (class index, caption) pairs: .jsonl lines {"class": int, "text": str} or .tsv lines
    "index<TAB>caption". Blank lines are skipped; any other bad line is a UserError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"caption file not found: {path}")
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        if jsonl:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or "class" not in row or "text" not in row:
                raise UserError(f'{where}: expected {{"class": <0-999>, "text": "..."}}')
            cls, text = row["class"], row["text"]
        else:
            cls, sep, text = line.partition("\t")
            if not sep:
                raise UserError(f"{where}: expected 'class index<TAB>caption'")
            cls = int(cls) if cls.strip().lstrip("-").isdigit() else cls
        if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls < 1000:
            raise UserError(f"{where}: class must be an integer ImageNet index 0-999, got {cls!r}")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: caption must be a non-empty string")
        out.append((cls, text.strip()))
    if not out:
        raise UserError(f"{path} holds no captions")
    return out
