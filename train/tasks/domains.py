"""Two sprite tasks between image domains, built from the parts of train/tasks/sprites.py (issue 6).

  superres (Fig. 4)     zΦ = f(x): f an autoencoder trained on 16×16 sprites, x = A(y) the 4×4 area average
                        of the 64 px render y; zΘ = Θ(y) of the 64 px autoencoder g = Λ∘Θ. Samples
                        y* = Λ(τ(v | f(x))), v ~ N(0, I) (Eq. 7), are super-resolutions of x.
  unpaired (Sec. 4.3, App. D, Fig. 8)   zΦ = the domain label (one-hot over flat / textured sprites),
                        zΘ = Θ(y) of one autoencoder trained on both domains. Translation:
                        y⁰ -> v = τ⁻¹(Θ(y⁰) | 0) -> y¹ = Λ(τ(v | 1)), and back. The label is the only
                        condition, so v has to carry all content (Eq. 5-6); the MLP baseline has no v.

Low-res inputs are made by area averaging A (`area_downsample`), not by rendering at 16 px: A is an
operator on images, so the consistency ‖A(y*) − x‖ measures exactly what super-resolution must keep,
and a ground truth y has A(y) = x exactly. The renderer's own 16 px picture of a sprite differs from A(y)
by only ~42 dB PSNR (its edges are anti-aliased per size), so f is trained on plain 16 px renders
(`python -m train.ae --size 16 --preset small`).

The unpaired pairs are unpaired: the flat domain holds train sprites 0..N/2-1, the textured one N/2..N-1.
The union autoencoder is the 64 px sprites AE (trained on flat sprites only; textures do not survive it)
fine-tuned on the union for a few minutes (`python -m train.ae --style union --init runs/attributes/ae`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from train.core.common import UserError
from train.core.presets import derive
from train.data.latents import sprite_latents
from train.data.pairs import SpritePairs
from train.eval.domains import DOMAINS, DomainEval, domain_onehot, evaluate_run, write_grids
from train.experts.ae_training import AESpec, load_ae
from train.experts.autoencoder import AEDecoderStage, AEEncoderStage
from train.experts.base import Experts
from train.tasks.contract import PairRequest, RunResult, Task, TrainingPairs, option
from train.tasks.sprites import SPRITE_PRESETS, SpriteOptions, sprite_ae

LOWRES_AE, UNION_AE = "runs/superres/ae_lowres", "runs/unpaired/ae"
LOW_SIZE = 16

# `data`: renders whose latents train τ, validation renders, the autoencoders' training settings
# (`lowres`: AESpec overrides for f; `union`: for the union AE, fine-tuned from --ae when `union_init`).
_DATA = {
    "smoke": {"images": 256, "val_images": 64, "ae_preset": "smoke", "lowres": {"steps": 20},
              "union": {}, "union_init": False},
    "default": {"images": 60000, "val_images": 1000, "ae_preset": "default", "lowres": {},
                "union": {"steps": 1500, "lr": 5e-4}, "union_init": True},
}
PRESETS = derive(SPRITE_PRESETS, _DATA)


@dataclass
class DomainOptions(SpriteOptions):
    lowres_ae: str = option(LOWRES_AE, f"superres: the {LOW_SIZE} px autoencoder f (trained first if missing)")
    union_ae: str = option(UNION_AE, "unpaired: autoencoder on flat + textured sprites (fine-tuned from --ae "
                                     "first if missing)")


def lowres_ae(path: str, data: dict):
    """f, trained first (and said so) when missing. (Runs recorded before AESpec have no `lowres` section;
    their f exists, so the spec is never used.)"""
    return load_ae(path, AESpec(preset="small", task="superres", size=LOW_SIZE, **data.get("lowres", {})))


def union_ae(path: str, base: str, data: dict):
    """The autoencoder on both domains; when missing it is trained first, fine-tuned from `base`."""
    spec = AESpec(preset=data["ae_preset"], task="unpaired", style="union", **data.get("union", {}))
    if data.get("union_init") and not Path(path, "checkpoint.safetensors").is_file():
        load_ae(base, AESpec(preset=data["ae_preset"]))     # the flat AE it starts from, trained first if missing
        spec.init = base
    return load_ae(path, spec)


def _superres_pairs(req: PairRequest) -> TrainingPairs:
    data, o = req.data, req.options
    ae, low = sprite_ae(req), lowres_ae(o.lowres_ae, data)
    if ae.image_size % low.image_size or low.image_size >= ae.image_size:
        raise UserError(f"--lowres-ae reads {low.image_size} px images; it must be a smaller divisor of the "
                        f"target AE's {ae.image_size} px")

    def pairs(split, count):
        _, z = sprite_latents(o.ae, ae, split, count)
        _, c = sprite_latents(o.lowres_ae, low, split, count, render_size=ae.image_size)
        return c, z

    (c, z), (vc, vz) = pairs("train", data["images"]), pairs("val", data["val_images"])
    info = {"task": "superres", "ae": o.ae, "lowres_ae": o.lowres_ae, "low_size": low.image_size, "data": data}
    return TrainingPairs(SpritePairs(c.unsqueeze(1), z, vc, vz), info)


def _unpaired_pairs(req: PairRequest) -> TrainingPairs:
    if req.model == "mlp":
        raise UserError("unpaired translation needs the cINN's residual v = τ⁻¹(Θ(y)|domain); the MLP baseline "
                        "maps the label alone to one image and cannot translate (App. D). Drop --model mlp")
    data, o = req.data, req.options
    ae = union_ae(o.union_ae, o.ae, data)

    def pairs(split, count):        # disjoint sprites per domain: the model never sees a matched pair
        half = count // 2
        _, z0 = sprite_latents(o.union_ae, ae, split, half)
        _, z1 = sprite_latents(o.union_ae, ae, split, count - half, style="textured", offset=half)
        return domain_onehot([0] * half + [1] * (count - half)), torch.cat([z0, z1])

    (c, z), (vc, vz) = pairs("train", data["images"]), pairs("val", data["val_images"])
    info = {"task": "unpaired", "ae": o.union_ae, "union_ae": o.union_ae, "base_ae": o.ae,
            "domains": list(DOMAINS), "data": data}
    return TrainingPairs(SpritePairs(c.unsqueeze(1), z, vc, vz), info)


def _experts(config: dict) -> Experts:
    ae = load_ae(config["ae"])
    info = {"image_size": ae.image_size, "warnings": []}
    if config["task"] == "superres":
        low = load_ae(config["lowres_ae"])
        info["source_image_shape"] = [3, low.image_size, low.image_size]
        return Experts(AEEncoderStage(low), AEEncoderStage(ae), AEDecoderStage(ae), info)
    info["attribute_names"] = list(DOMAINS)
    return Experts(None, AEEncoderStage(ae), AEDecoderStage(ae), info)


def _grids(result: RunResult) -> None:
    write_grids(result.run)


TASKS = {
    "superres": Task("superres", "16 px sprites AE -> 64 px sprites AE: generative superresolution (Fig. 4)",
                     _superres_pairs, PRESETS, DomainOptions, _experts, _grids, evaluate_run, DomainEval),
    "unpaired": Task("unpaired", "domain label -> AE on flat + textured sprites: unpaired translation (App. D)",
                     _unpaired_pairs, PRESETS, DomainOptions, _experts, _grids, evaluate_run, DomainEval),
}
