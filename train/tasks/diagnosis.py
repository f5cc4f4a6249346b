"""Model diagnosis (Sec. 4.2 "Model Diagnosis", Fig. 5; the MLP ablation of Sec. E, Fig. S4) on sprites.

  diagnosis  zΦ = activations of one layer of a sprites classifier f, zΘ = Θ(y) of the frozen sprites AE

What τ learns to sample for a fixed zΦ(y) is what f has become invariant to at that layer: an
attribute that still varies across samples Λ(τ(v|zΦ(y))) is one the layer no longer encodes.

f (`--classifier`): `shape`, trained for the three shape classes only (so colour, background, ...
may become free in deep layers), or `all`, trained for all 13 attributes with another seed than the
oracle runs/sprites/classifier, which reads attributes off the samples: the judge is never the
network being diagnosed. Missing classifiers are trained first (about a minute each).
Layers (`--layer`, AttributeNet.features): `early` = stage 1 (16×32×32 at 64 px), average-pooled
4×4 to 16×8×8 so that caching and the conv embedder stay cheap; `middle` = stage 3 as is (64×8×8);
both are spatial conditions for the ConvEmbedder (Tab. S3b). `last` = the 128-d hidden vector.

Invariance of attribute a (shape and colour count as one 3- and 5-way attribute, the five binary
ones as they are), over N test images with S samples each: the fraction of sample pairs (k < l) of
one image whose oracle readings of a disagree, divided by the disagreement of two independent test
images, 1 - Σ_k p_k², so 0 = a is fixed by zΦ and 1 = a is as free as in the data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from train.core.common import UserError
from train.data import ATTRIBUTES, GROUPS
from train.data.latents import cached_features, sprite_latents
from train.data.pairs import TensorPairs
from train.eval.diagnosis import DiagnosisEval, evaluate_run, write_grid
from train.experts.ae_training import load_ae
from train.experts.autoencoder import AEDecoderStage, AEEncoderStage
from train.experts.base import Experts
from train.experts.classifier import LAYERS, LayerFeatures, load_oracle
from train.experts.classifier_training import ClassifierSpec, ensure_classifier
from train.tasks.contract import PairRequest, RunResult, Task, TrainingPairs, option
from train.tasks.sprites import DEFAULT_AE, sprite_ae

CLASSIFIERS = {"all": list(ATTRIBUTES), "shape": list(GROUPS["shape"])}
CLASSIFIER_SEED = 1             # the oracle runs/sprites/classifier has seed 0

DIAGNOSIS_PRESETS = {
    "smoke": {"flow": {"num_blocks": 2, "hidden": 32, "embed_hidden": 32, "embed_dim": 16},
              "train": {"steps": 20, "batch_size": 32, "val_every": 10, "ckpt_every": 10, "warmup": 5},
              "data": {"images": 256, "classifier_steps": 5, "ae_preset": "smoke"}},
    # measured on one thread: about a minute of training per cINN (see README, model diagnosis)
    "default": {"flow": {"num_blocks": 6, "hidden": 256, "depth": 2, "embed_hidden": 256, "embed_dim": 64},
                "train": {"steps": 1500, "batch_size": 256, "lr": 1e-3, "val_every": 250},
                "data": {"images": 20000, "classifier_steps": 1000, "ae_preset": "default"}},
    "paper": {"flow": {"num_blocks": 20, "hidden": "8d", "depth": 4, "embed_dim": 128},
              "train": {"steps": 20000, "batch_size": 25, "lr": 1e-4},
              "data": {"images": 50000, "classifier_steps": 2000, "ae_preset": "default"}},
}


def default_classifier_dir(kind: str, preset: str) -> str:
    return f"runs/diagnosis{'-smoke' if preset == 'smoke' else ''}/classifier_{kind}"


def diagnosed_classifier(kind: str, run_dir: str | Path, steps: int, size: int):
    """The diagnosed classifier f, trained first (and said so) when `run_dir` holds none."""
    spec = ClassifierSpec(attributes=CLASSIFIERS[kind], steps=steps, seed=CLASSIFIER_SEED, size=size,
                          eval_count=min(2000, 4 * steps))
    clf = ensure_classifier(run_dir, spec, f"{kind} classifier")
    if clf.attributes != CLASSIFIERS[kind] or clf.size != size:
        raise UserError(f"{run_dir} holds a classifier for {len(clf.attributes)} attributes at {clf.size}px, not the "
                        f"'{kind}' one at {size}px; pass another --classifier-run")
    return clf


@dataclass
class DiagnosisOptions:
    ae: str = option(DEFAULT_AE, "sprites tasks: autoencoder run (trained first if missing)")
    classifier: str = option("shape", "diagnosed classifier f: trained for shape only or for all 13 attributes "
                                      "(default shape)", choices=tuple(sorted(CLASSIFIERS)))
    layer: str = option("last", "layer of f giving zΦ (default last)", choices=LAYERS)
    classifier_run: str | None = option(help="f's run folder (default runs/diagnosis/classifier_<kind>; trained "
                                             "there first when missing)")


def _pairs(req: PairRequest) -> TrainingPairs:
    data, o = req.data, req.options
    ae = sprite_ae(req)
    clf_dir = o.classifier_run or default_classifier_dir(o.classifier, req.preset)
    clf = diagnosed_classifier(o.classifier, clf_dir, data["classifier_steps"], ae.image_size)
    _, z = sprite_latents(o.ae, ae, "train", data["images"])
    cond = cached_features(clf_dir, LayerFeatures(clf.model, o.layer, ae.image_size), "train", data["images"])
    info = {"task": "diagnosis", "ae": o.ae, "data": data, "classifier": o.classifier, "layer": o.layer,
            "classifier_run": str(clf_dir)}
    return TrainingPairs(TensorPairs(cond.numpy(), z.numpy(), val_fraction=0.05, seed=req.seed, max_val=1000), info)


def _default_out(req: PairRequest) -> str:
    return f"runs/diagnosis/{req.options.classifier}-{req.options.layer}/{req.model}"


def _experts(config: dict) -> Experts:
    ae = load_ae(config["ae"])
    phi = LayerFeatures(load_oracle(config["classifier_run"]).model, config["layer"], ae.image_size)
    return Experts(source_encoder=phi, target_encoder=AEEncoderStage(ae), target_decoder=AEDecoderStage(ae),
                   info={"image_size": ae.image_size, "source_kind": "image", "warnings": []})


def _grid(result: RunResult) -> None:
    write_grid(result.run, result.request.seed)


TASKS = {"diagnosis": Task("diagnosis", "layers of a sprites classifier -> sprites AE: what each layer ignores "
                                        "(Fig. 5)", _pairs, DIAGNOSIS_PRESETS, DiagnosisOptions, _experts, _grid,
                           evaluate_run, DiagnosisEval, default_out=_default_out)}
