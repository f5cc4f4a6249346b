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

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from train.common import UserError, load_tensors, progress_interval, save_tensors
from train.data import ATTRIBUTES, GROUPS
from train.data.sprites import SPLITS, first_test_renders, render_batch, to_tensor, to_uint8
from train.tasks import Experts, Task, TensorPairs, add_arg_once, register
from train.tasks_sprites import DEFAULT_AE, AEDecoderStage, AEEncoderStage, load_ae, sprite_latents

LAYERS = ("early", "middle", "last")
CLASSIFIERS = {"all": list(ATTRIBUTES), "shape": list(GROUPS["shape"])}
CLASSIFIER_SEED = 1             # the oracle runs/sprites/classifier has seed 0
# attributes as the oracle scores them: the one-hot groups as one categorical attribute each
SCORED = {**{g: [ATTRIBUTES.index(n) for n in names] for g, names in GROUPS.items()},
          **{a: [ATTRIBUTES.index(a)] for a in ATTRIBUTES if not any(a in n for n in GROUPS.values())}}

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


def ensure_classifier(kind: str, run_dir: str | Path, steps: int, size: int):
    """The diagnosed classifier f, trained first (and said so) when `run_dir` holds none."""
    from train.classifier import load_oracle
    from train.classifier import main as train_classifier
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.safetensors").is_file():
        print(f"no {kind} classifier in {run_dir}; training one now ({steps} steps, seed {CLASSIFIER_SEED})")
        train_classifier(["--out", str(run_dir), "--attributes", ",".join(CLASSIFIERS[kind]), "--steps", str(steps),
                          "--seed", str(CLASSIFIER_SEED), "--size", str(size),
                          "--eval-count", str(min(2000, 4 * steps))])
    clf = load_oracle(run_dir)
    if clf.attributes != CLASSIFIERS[kind] or clf.size != size:
        raise UserError(f"{run_dir} holds a classifier for {len(clf.attributes)} attributes at {clf.size}px, not the "
                        f"'{kind}' one at {size}px; pass another --classifier-run")
    return clf


class LayerFeatures(torch.nn.Module):
    """Φ: image (N, 3, H, W) in [-1, 1] -> zΦ, the activations of one layer of f (pooled as above)."""

    def __init__(self, classifier: torch.nn.Module, layer: str, image_size: int):
        super().__init__()
        if layer not in LAYERS:
            raise UserError(f"--layer must be one of {', '.join(LAYERS)}, got {layer!r}")
        self.net, self.layer, self.image_size = classifier, layer, image_size

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.all_layers(image)[self.layer]

    @torch.no_grad()
    def all_layers(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.net.features(image)
        return {"early": F.avg_pool2d(f["early"], 4), "middle": f["middle"], "last": f["last"]}


def layer_features(phi: LayerFeatures, images_uint8: np.ndarray, batch: int = 500) -> dict[str, torch.Tensor]:
    x = to_tensor(images_uint8)
    parts = [phi.all_layers(x[i:i + batch]) for i in range(0, len(x), batch)]
    return {k: torch.cat([p[k] for p in parts]) for k in LAYERS}


def cached_features(clf_dir: str | Path, phi: LayerFeatures, split: str, count: int) -> torch.Tensor:
    """zΦ of the first `count` renders of `split` (the renders `sprite_latents` encodes), all layers
    computed at once and cached as float16 in CLASSIFIER_RUN/features/."""
    path = Path(clf_dir) / "features" / f"{split}_{count}_{phi.layer}.safetensors"
    if not path.is_file():
        start, parts = SPLITS[split][0], []
        for i in tqdm(range(0, count, 1000), desc=f"{Path(clf_dir).name} features", mininterval=progress_interval()):
            images, _, _ = render_batch(range(start + i, start + min(count, i + 1000)), split, phi.image_size)
            parts.append(layer_features(phi, images))
        for layer in LAYERS:
            save_tensors(path.with_name(f"{split}_{count}_{layer}.safetensors"),
                         {"features": torch.cat([p[layer] for p in parts]).half()})
    return load_tensors(path)["features"].float()


def _args(ap: argparse.ArgumentParser) -> None:
    add_arg_once(ap, "--ae", default=DEFAULT_AE, help="sprites tasks: autoencoder run (trained first if missing)")
    g = ap.add_argument_group("diagnosis task")
    g.add_argument("--classifier", choices=sorted(CLASSIFIERS), default="shape",
                   help="diagnosed classifier f: trained for shape only or for all 13 attributes (default shape)")
    g.add_argument("--layer", choices=LAYERS, default="last", help="layer of f giving zΦ (default last)")
    g.add_argument("--classifier-run", help="f's run folder (default runs/diagnosis/classifier_<kind>; "
                                            "trained there first when missing)")


def _source(args):
    data = DIAGNOSIS_PRESETS.get(args.preset, DIAGNOSIS_PRESETS["default"])["data"]
    ae = load_ae(args.ae, data["ae_preset"])
    clf_dir = args.classifier_run or default_classifier_dir(args.classifier, args.preset)
    clf = ensure_classifier(args.classifier, clf_dir, data["classifier_steps"], ae.image_size)
    _, z = sprite_latents(args.ae, ae, "train", data["images"])
    cond = cached_features(clf_dir, LayerFeatures(clf.model, args.layer, ae.image_size), "train", data["images"])
    info = {"task": "diagnosis", "ae": args.ae, "data": data, "classifier": args.classifier, "layer": args.layer,
            "classifier_run": str(clf_dir)}
    return TensorPairs(cond.numpy(), z.numpy(), val_fraction=0.05, seed=args.seed, max_val=1000), info


def _default_out(args) -> str:
    return f"runs/diagnosis/{args.classifier}-{args.layer}/{args.model}"


def _experts(config: dict) -> Experts:
    from train.classifier import load_oracle
    ae = load_ae(config["ae"])
    phi = LayerFeatures(load_oracle(config["classifier_run"]).model, config["layer"], ae.image_size)
    return Experts(source_encoder=phi, target_encoder=AEEncoderStage(ae), target_decoder=AEDecoderStage(ae),
                   info={"image_size": ae.image_size, "source_kind": "image", "warnings": []})


def load_run(run_dir: str | Path):
    """(translator, phi, config) of a trained diagnosis run (cINN or MLP)."""
    from train.sprite_eval import load_task_run
    translator, config = load_task_run(run_dir)
    return translator, _experts(config).source_encoder, config


def sample_rows(translator, phi: LayerFeatures, images: np.ndarray, samples: int, seed: int) -> list[list]:
    """One row per image: the input x, then Λ(τ(v|Φ(x))) for `samples` draws of v (Eq. 7, Fig. 5)."""
    cond = layer_features(phi, images)[phi.layer]
    out = to_uint8(translator.sample(cond, samples, seed))
    return [[images[i], *out[i * samples:(i + 1) * samples]] for i in range(len(images))]


def _after(out, model, args, num: int = 6, samples: int = 8) -> None:
    from train.grids import save_grid
    translator, phi, config = load_run(out)
    images, _, _ = first_test_renders(num, phi.image_size)
    path = Path(out) / "grids" / "samples.png"
    save_grid(sample_rows(translator, phi, images, samples, args.seed), path, col_titles=["input x"],
              header=f"{config['classifier']} classifier, {config['layer']} layer: x | L(t(v|zPhi(x)))", scale=2)
    print(f"wrote {path}")


def read_scored(pred: np.ndarray) -> np.ndarray:
    """(N, 13) 0/1 oracle readings or attribute vectors -> (N, len(SCORED)) integer class per attribute."""
    return np.stack([pred[:, cols].argmax(1) if len(cols) > 1 else pred[:, cols[0]].astype(int)
                     for cols in SCORED.values()], 1)


def invariance_scores(reads: np.ndarray, truth: np.ndarray, names=tuple(SCORED)) -> dict:
    """reads (N, S, A) classes of S samples per image, truth (N, A) the images' own classes.
    `pair_disagreement`: share of an image's sample pairs that disagree; `invariance`: the same divided
    by 1 - Σ_k p_k² (p = class frequencies of the N images); `error`: share of samples ≠ the truth."""
    n, s, _ = reads.shape
    result = {"invariance": {}, "pair_disagreement": {}, "error": {}}
    for j, name in enumerate(names):
        classes = range(int(max(reads[..., j].max(), truth[:, j].max())) + 1)
        counts = np.stack([(reads[:, :, j] == v).sum(1) for v in classes], 1)       # (N, classes)
        pairs = ((s * s - (counts ** 2).sum(1)) / (s * (s - 1))).mean() if s > 1 else 0.0
        p = np.bincount(truth[:, j]) / n
        result["pair_disagreement"][name] = float(pairs)
        result["invariance"][name] = float(pairs / max(1 - (p ** 2).sum(), 1e-9))
        result["error"][name] = float((reads[:, :, j] != truth[:, j:j + 1]).mean())
    for scores in result.values():
        scores["mean"] = float(np.mean(list(scores.values())))
    return result


@torch.no_grad()
def measure(sample_fn, ae, oracle, images: np.ndarray, cond: torch.Tensor, truth: np.ndarray, samples: int,
            seed: int, chunk: int = 100) -> dict:
    """Draw `samples` zΘ per condition with `sample_fn(cond, samples, seed) -> (n·samples, D)`, decode with
    Λ and read with the oracle: `invariance_scores` against `truth` (N, A), the pixel diversity across
    the samples of one condition, and the latent spread (std over all outputs / std of Θ(images), mean
    over dims: about 1 for faithful samples, towards 0 when every output is the mean)."""
    reads, zs, div, ref = [], [], [], []
    for k, i in enumerate(range(0, len(images), chunk)):
        z = sample_fn(cond[i:i + chunk], samples, seed + k)
        x = ae.decode(z)
        reads.append(read_scored(oracle.predict(x)).reshape(-1, samples, len(SCORED)))
        zs.append(z)
        ref.append(ae.encode(to_tensor(images[i:i + chunk])))
        div.append(((x + 1) / 2).reshape(-1, samples, x[0].numel()).std(1).mean(1) if samples > 1 else
                   torch.zeros(len(x)))
    result = invariance_scores(np.concatenate(reads), truth)
    if samples == 1:                     # one output per condition: nothing can vary
        del result["invariance"], result["pair_disagreement"]
    else:
        result["diversity"] = float(torch.cat(div).mean())
    result["latent_spread"] = float((torch.cat(zs).std(0) / torch.cat(ref).std(0).clamp_min(1e-6)).mean())
    return result


def _seeded(model):
    return lambda c, s, seed: model.sample(c, s, generator=torch.Generator().manual_seed(seed))


def evaluate_run(args) -> dict:
    """`python -m train.evaluate --task diagnosis --run DIR --json [--samples S]`: invariance per attribute
    of the cINN run, the AE's own reconstruction as a reference, and the MLP beside it when RUN/../mlp
    holds one (its single output per zΦ: error and latent spread)."""
    from train.classifier import ensure_oracle
    from train.trainer import load_translator
    extra = argparse.ArgumentParser(prog="train.evaluate --task diagnosis")
    extra.add_argument("--samples", type=int, default=8, help="samples per test image (default 8)")
    opts = extra.parse_args(getattr(args, "extra", []))
    if opts.samples < 2 or args.num_images < 2:
        raise UserError("--samples and --num-images must be at least 2 to measure invariance")
    run = Path(args.run)
    translator, phi, config = load_run(run)
    if not translator.invertible:
        raise UserError(f"{run} is an MLP run; evaluate its cINN run (the MLP in ../mlp is scored beside it)")
    oracle = ensure_oracle(args.oracle, phi.image_size)
    if oracle.attributes != list(ATTRIBUTES):
        raise UserError(f"the oracle {args.oracle} must read all 13 attributes; pass --oracle runs/sprites/classifier")
    warnings = []
    if Path(args.oracle).resolve() == Path(config["classifier_run"]).resolve():
        warnings.append("the oracle is the diagnosed classifier itself, so the scores are circular")
    images, attrs, _ = first_test_renders(args.num_images, phi.image_size)
    cond, truth, ae = layer_features(phi, images)[phi.layer], read_scored(attrs), translator.ae
    result = {"task": "diagnosis", "run": str(run), "classifier": config["classifier"], "layer": config["layer"],
              "classifier_run": config["classifier_run"], "oracle": str(args.oracle), "num_images": len(images),
              "samples": opts.samples, "seed": args.seed, "warnings": warnings,
              **measure(_seeded(translator.model), ae, oracle, images, cond, truth, opts.samples, args.seed)}
    # the identity condition zΦ = Θ(x): what the oracle reads off Λ(Θ(x)), the floor of every error
    recon = measure(lambda c, s, seed: c.repeat_interleave(s, 0), ae, oracle, images,
                    torch.cat([ae.encode(to_tensor(images[i:i + 500])) for i in range(0, len(images), 500)]),
                    truth, 1, args.seed)
    result["ae_error"] = recon["error"]
    mlp_dir = run.parent / "mlp"
    result["mlp"] = None
    if (mlp_dir / "checkpoint.safetensors").is_file():
        mlp, mlp_config = load_translator(mlp_dir)
        if (mlp_config.get("classifier"), mlp_config.get("layer")) != (config["classifier"], config["layer"]):
            raise UserError(f"{mlp_dir} was trained on another classifier or layer than {run}")
        result["mlp"] = measure(lambda c, s, seed: mlp.sample(c, s), ae, oracle, images, cond, truth, 1, args.seed)
    else:
        result["mlp_note"] = f"no MLP run in {mlp_dir}; train one with --model mlp"
    return result


register(Task("diagnosis", "layers of a sprites classifier -> sprites AE: what each layer ignores (Fig. 5)",
              _args, _source, DIAGNOSIS_PRESETS, _experts, _after, evaluate_run, default_out=_default_out))
