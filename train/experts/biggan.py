"""BigGAN-deep as the target expert Λ of Sec. 4.1 (Θ ≡ identity). The dequantizer of Appendix G.2 is in
train/experts/dequantizer.py, the ImageNet class names and captions in train/data/imagenet.py.

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

from train.core.common import UserError
from train.experts.base import Experts
from train.experts.text import cached_text_encoder

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


def random_init(config: BigGANConfig) -> BigGAN:
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
        model = random_init(BigGANConfig.from_dict(ARCHITECTURES[name].to_dict()))
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


def biggan_for_run(config: dict, override: str | None):
    """The run's BigGAN (or `override`, e.g. the same weights in another folder), checked to have the class
    embeddings the run was trained on."""
    model, binfo, warnings = load_biggan(override or config["biggan"]["source"])
    if binfo["embedding_sha256"] != config["biggan"]["embedding_sha256"]:
        raise UserError(f"--biggan {binfo['source']} is not the generator this run was trained with "
                        f"({config['biggan']['source']}): its class embeddings W differ")
    return model, binfo, list(warnings)


def biggan_experts(config: dict, biggan: str | None = None, text_encoder: str | None = None) -> Experts:
    """bert2biggan's experts from a run's config: Φ the text encoder, Λ BigGAN (Θ ≡ identity: none)."""
    model, binfo, warnings = biggan_for_run(config, biggan)
    encoder = cached_text_encoder(text_encoder or config["text_encoder"]["path"])
    t = config["biggan"]["truncation"]
    return Experts(source_encoder=encoder, target_encoder=None, target_decoder=BigGANDecoder(model, t),
                   info={"tokenizer_dir": encoder.path, "image_size": binfo["image_size"],
                         "split": [binfo["z_dim"], binfo["z_dim"]], "truncation": t, "warnings": warnings,
                         "biggan": {**config["biggan"], "source": binfo["source"]}})
