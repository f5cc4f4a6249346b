"""Grids and the measured evaluation of model diagnosis (train/tasks/diagnosis.py; Sec. 4.2, Fig. 5).

Invariance of attribute a over N test images with S samples each: the fraction of sample pairs of one image
whose oracle readings of a disagree, divided by the disagreement of two independent test images
(`invariance_scores` in metrics.py): 0 = a is fixed by zΦ, 1 = a is as free as in the data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from train.core.common import UserError
from train.core.translator import load_translator
from train.data import ATTRIBUTES
from train.data.latents import layer_features
from train.data.sprites import first_test_renders, to_tensor, to_uint8
from train.eval.grids import save_grid
from train.eval.metrics import SCORED, invariance_scores, read_scored
from train.eval.translator import load_task_run
from train.experts.classifier import LayerFeatures, load_oracle
from train.experts.classifier_training import ensure_oracle


@dataclass
class DiagnosisEval:
    """Evaluation options of diagnosis."""
    samples: int = 8        # samples per test image


def load_run(run_dir: str | Path):
    """(translator, phi, config) of a trained diagnosis run (cINN or MLP)."""
    translator, config = load_task_run(run_dir)
    phi = LayerFeatures(load_oracle(config["classifier_run"]).model, config["layer"], translator.ae.image_size)
    return translator, phi, config


def sample_rows(translator, phi: LayerFeatures, images: np.ndarray, samples: int, seed: int) -> list[list]:
    """One row per image: the input x, then Λ(τ(v|Φ(x))) for `samples` draws of v (Eq. 7, Fig. 5)."""
    cond = layer_features(phi, images)[phi.layer]
    out = to_uint8(translator.sample(cond, samples, seed))
    return [[images[i], *out[i * samples:(i + 1) * samples]] for i in range(len(images))]


def write_grid(out, seed: int, num: int = 6, samples: int = 8) -> None:
    """RUN/grids/samples.png: test inputs x and samples Λ(τ(v|Φ(x))) (Fig. 5)."""
    translator, phi, config = load_run(out)
    images, _, _ = first_test_renders(num, phi.image_size)
    path = Path(out) / "grids" / "samples.png"
    save_grid(sample_rows(translator, phi, images, samples, seed), path, col_titles=["input x"],
              header=f"{config['classifier']} classifier, {config['layer']} layer: x | L(t(v|zPhi(x)))", scale=2)
    print(f"wrote {path}")


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


def evaluate_run(req) -> dict:
    """`python -m train.evaluate --task diagnosis --run DIR --json [--samples S]`: invariance per attribute
    of the cINN run, the AE's own reconstruction as a reference, and the MLP beside it when RUN/../mlp
    holds one (its single output per zΦ: error and latent spread). An EvalRequest with DiagnosisEval options."""
    opts = req.options
    if opts.samples < 2 or req.num_images < 2:
        raise UserError("--samples and --num-images must be at least 2 to measure invariance")
    run = Path(req.run)
    translator, phi, config = load_run(run)
    if not translator.invertible:
        raise UserError(f"{run} is an MLP run; evaluate its cINN run (the MLP in ../mlp is scored beside it)")
    oracle = ensure_oracle(req.oracle, phi.image_size)
    if oracle.attributes != list(ATTRIBUTES):
        raise UserError(f"the oracle {req.oracle} must read all 13 attributes; pass --oracle runs/sprites/classifier")
    warnings = []
    if Path(req.oracle).resolve() == Path(config["classifier_run"]).resolve():
        warnings.append("the oracle is the diagnosed classifier itself, so the scores are circular")
    images, attrs, _ = first_test_renders(req.num_images, phi.image_size)
    cond, truth, ae = layer_features(phi, images)[phi.layer], read_scored(attrs), translator.ae
    result = {"task": "diagnosis", "run": str(run), "classifier": config["classifier"], "layer": config["layer"],
              "classifier_run": config["classifier_run"], "oracle": str(req.oracle), "num_images": len(images),
              "samples": opts.samples, "seed": req.seed, "warnings": warnings,
              **measure(_seeded(translator.model), ae, oracle, images, cond, truth, opts.samples, req.seed)}
    # the identity condition zΦ = Θ(x): what the oracle reads off Λ(Θ(x)), the floor of every error
    recon = measure(lambda c, s, seed: c.repeat_interleave(s, 0), ae, oracle, images,
                    torch.cat([ae.encode(to_tensor(images[i:i + 500])) for i in range(0, len(images), 500)]),
                    truth, 1, req.seed)
    result["ae_error"] = recon["error"]
    mlp_dir = run.parent / "mlp"
    result["mlp"] = None
    if (mlp_dir / "checkpoint.safetensors").is_file():
        mlp, mlp_config = load_translator(mlp_dir)
        if (mlp_config.get("classifier"), mlp_config.get("layer")) != (config["classifier"], config["layer"]):
            raise UserError(f"{mlp_dir} was trained on another classifier or layer than {run}")
        result["mlp"] = measure(lambda c, s, seed: mlp.sample(c, s), ae, oracle, images, cond, truth, 1, req.seed)
    else:
        result["mlp_note"] = f"no MLP run in {mlp_dir}; train one with --model mlp"
    return result
