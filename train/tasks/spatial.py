"""Spatial translation tasks on the embedded sprites (Sec. 4.3, Fig. 7; Appendix C, Fig. S1).

  exemplar  (Sec. 4.3, Fig. 7a)  Φ = a segmentation expert: the renderer's object mask, average-pooled to
            `mask_size`² and embedded by the conv embedder H (Tab. S3b). Samples Λ(τ(v | Φ(x))) render a
            mask; exemplar-guided synthesis takes v = τ⁻¹(Θ(y) | Φ(y)) from an exemplar y and gives
            Λ(τ(v | Φ(x))), the exemplar's appearance in x's layout.
  shape     (Appendix C, Fig. 7b / S1)  Φ = Θ ∘ d, d a random spatial deformation (flips, rotation, affine
            zoom/stretch/shear/shift, a smooth thin-plate-like warp, a crop) drawn afresh per pair and
            reproducible from (seed, image index, draw). d destroys position, size and pose, so τ must put
            them into v; the appearance comes through zΦ. After training Φ = Θ (no d, as in App. C):
            y* = Λ(τ(v | Θ(x))) with v = τ⁻¹(Θ(y) | Θ(y)) recombines y's shape with x's appearance.

Both share the frozen 64 px sprites autoencoder g = Λ∘Θ of the other sprites tasks. Θ(y) of the
training renders is cached by `data.latents.sprite_latents`; Θ(d(y)) for `draws` deformations per image
is cached beside it (AE_RUN/latents/deformed_*). Masks are re-rendered (cheap, deterministic).
A mask is read back off any image by `read_mask` (colour distance to the border's colour, holes filled).
"""
from __future__ import annotations

from train.core.presets import derive
from train.data.deform import DEFORM_VERSION, DEFORMATION, render_masks
from train.data.latents import deformed_latents, sprite_latents
from train.data.pairs import SpritePairs
from train.eval.spatial import evaluate_run, write_grids
from train.experts.ae_training import load_ae
from train.experts.autoencoder import AEDecoderStage, AEEncoderStage
from train.experts.base import Experts
from train.tasks.contract import PairRequest, RunResult, Task, TrainingPairs
from train.tasks.sprites import SPRITE_PRESETS, SpriteOptions, sprite_ae

# `data`: renders whose latents train τ, validation renders, the AE preset to train when the AE is missing,
# the side of the mask condition (exemplar) and the cached deformation draws per image (shape).
_DATA = {"smoke": {"images": 256, "val_images": 64, "ae_preset": "smoke", "mask_size": 16, "draws": 2},
         "default": {"images": 60000, "val_images": 1000, "ae_preset": "default", "mask_size": 16, "draws": 4},
         "paper": {"images": 50000, "val_images": 2000, "ae_preset": "default", "mask_size": 16, "draws": 8}}


def _presets(default_steps: int, default_images: int) -> dict:
    """Sprite presets with this task's data section; `default` sized to train in <= 5 min on one CPU thread."""
    data = {**_DATA, "default": {**_DATA["default"], "images": default_images}}
    return derive(SPRITE_PRESETS, data, steps=default_steps)


EXEMPLAR_PRESETS = _presets(default_steps=3000, default_images=60000)   # the conv embedder costs ~60 % more
SHAPE_PRESETS = _presets(default_steps=4000, default_images=30000)      # x 4 deformation draws each

def _exemplar_pairs(req: PairRequest) -> TrainingPairs:
    data, ae_dir, ae = req.data, req.options.ae, sprite_ae(req)
    _, z = sprite_latents(ae_dir, ae, "train", data["images"])
    _, vz = sprite_latents(ae_dir, ae, "val", data["val_images"])
    cond = render_masks("train", data["images"], ae.image_size, data["mask_size"])
    val_cond = render_masks("val", data["val_images"], ae.image_size, data["mask_size"])
    info = {"task": "exemplar", "ae": ae_dir, "data": data, "mask_size": data["mask_size"]}
    return TrainingPairs(SpritePairs(cond[:, None], z, val_cond, vz), info)


def _shape_pairs(req: PairRequest) -> TrainingPairs:
    data, ae_dir, ae = req.data, req.options.ae, sprite_ae(req)
    _, z = sprite_latents(ae_dir, ae, "train", data["images"])
    _, vz = sprite_latents(ae_dir, ae, "val", data["val_images"])
    cond = deformed_latents(ae_dir, ae, "train", data["images"], data["draws"], req.seed)
    val_cond = deformed_latents(ae_dir, ae, "val", data["val_images"], 1, req.seed)[:, 0]
    info = {"task": "shape", "ae": ae_dir, "data": data, "deform_seed": req.seed,
            "deformation": {**DEFORMATION, "version": DEFORM_VERSION}}
    return TrainingPairs(SpritePairs(cond, z, val_cond, vz), info)


def spatial_experts(config: dict) -> Experts:
    """exemplar: zΦ is the pooled mask itself (no source network); shape: Φ = Θ at test time."""
    ae = load_ae(config["ae"])
    size = ae.image_size
    info = {"image_size": size, "warnings": []}
    source = None
    if config["task"] == "shape":
        source = AEEncoderStage(ae)
        info.update(source_kind="image", source_image_shape=[3, size, size])
    else:
        info["mask_size"] = config["mask_size"]
    return Experts(source_encoder=source, target_encoder=AEEncoderStage(ae), target_decoder=AEDecoderStage(ae),
                   info=info)


def _grids(result: RunResult) -> None:
    write_grids(result.run, seed=result.request.seed)


TASKS = {
    "exemplar": Task("exemplar", "sprite mask (segmentation expert) -> sprites AE; exemplar-guided synthesis "
                     "(Fig. 7a)", _exemplar_pairs, EXEMPLAR_PRESETS, SpriteOptions, spatial_experts, _grids,
                     evaluate_run),
    "shape": Task("shape", "AE encoder after a random deformation d -> sprites AE; shape/appearance (Fig. 7b, S1)",
                  _shape_pairs, SHAPE_PRESETS, SpriteOptions, spatial_experts, _grids, evaluate_run),
}
