"""Grids and the measured evaluation of superres and unpaired (train/tasks/domains.py).

superres (Fig. 4):  consistency ‖A(y*) − x‖ as PSNR, the oracle's attribute agreement with the truth, and the
                    references ground truth / AE reconstruction / bilinear up-sampling.
unpaired (App. D):  per direction, the oracle's content kept and a flat-vs-textured classifier's domain success,
                    for the translation and its back-translation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train.core.common import UserError, read_json
from train.data.latents import encode_images
from train.data.sprites import area_downsample, render_batch, to_tensor, to_uint8
from train.eval.fid import OracleFID
from train.eval.grids import save_grid
from train.eval.metrics import diversity, psnr
from train.eval.translator import load_task_run, mlp_baseline
from train.experts.autoencoder import load_autoencoder
from train.experts.base import freeze
from train.experts.classifier import labels
from train.experts.classifier_training import ClassifierSpec, ensure_oracle

DOMAINS = ("flat", "textured")          # zΦ of unpaired: one-hot over these
DOMAIN_CLASSIFIER = "runs/unpaired/domain_classifier"


def domain_classifier_spec(size: int) -> ClassifierSpec:
    """The flat-vs-textured classifier, trained when missing (~1 min on one thread)."""
    return ClassifierSpec(attributes=["textured"], textured_frac=0.5, steps=300, eval_count=500, size=size)


@dataclass
class DomainEval:
    """Evaluation options of superres / unpaired."""
    domain_classifier: str = DOMAIN_CLASSIFIER


def domain_onehot(domains) -> torch.Tensor:
    return F.one_hot(torch.as_tensor(domains, dtype=torch.long), len(DOMAINS)).float()


def _require(path: str, run, what: str) -> None:
    if not Path(path, "checkpoint.safetensors").is_file():
        raise UserError(f"{run} was trained on the {what} in {path}, which is missing; restore it or retrain the run")


def load_run(run_dir):
    """(Translator over the 64 px AE, config, f or None) of a superres / unpaired run."""
    config = read_json(Path(run_dir) / "config.json")
    if config.get("task") not in ("superres", "unpaired"):
        raise UserError(f"{run_dir} is a run of task '{config.get('task')}', not superres or unpaired")
    _require(config["ae"], run_dir, "autoencoder")
    low = None
    if config["task"] == "superres":
        _require(config["lowres_ae"], run_dir, "low-res autoencoder")
        low = freeze(load_autoencoder(config["lowres_ae"]))
    translator, config = load_task_run(run_dir)
    return translator, config, low


# ---------------------------------------------------------------- superres: inputs, grids, evaluation
def superres_inputs(size: int, low, n: int, offset: int = 0):
    """Test sprites offset..offset+n-1: uint8 renders, attributes, y (N,3,size,size), x = A(y), zΦ = f(x)."""
    images, attrs, _ = render_batch(range(offset, offset + n), "test", size)
    y = to_tensor(images)
    x = area_downsample(y, low.image_size)
    return images, attrs, y, x, encode_images(low, x)


def consistency_psnr(low: torch.Tensor, images: torch.Tensor) -> float:
    """PSNR (dB) between low-res inputs x and A(images): outputs down-sampled exactly as x was made
    (120 dB, the cap of `psnr`, means identical)."""
    return psnr(area_downsample(images, low.shape[-1]), low)


def _superres_scores(out, k: int, x, y, truth, oracle) -> dict:
    """Scores of k outputs per input (rows i·k .. i·k+k-1 belong to input i)."""
    return {"consistency_psnr": consistency_psnr(x.repeat_interleave(k, 0), out),
            "attribute_agreement": float((oracle.predict(out) == np.repeat(truth, k, 0)).mean()),
            "psnr_to_ground_truth": psnr(out, y.repeat_interleave(k, 0))}


def evaluate_superres(translator, low, oracle, n: int, seed: int, samples: int = 4,
                      fid: OracleFID | None = None) -> dict:
    """consistency_psnr: A(sample) vs x; attribute_agreement: the oracle's reading of each sample vs the
    sprite's true attributes; diversity: per-pixel std across 8 samples of one input (pixels in [0, 1]).
    With `fid`: `fid` of the first sample of each input (n images, the reference's N)."""
    _, attrs, y, x, cond = superres_inputs(translator.ae.image_size, low, n)
    truth = labels(attrs, False, oracle.attributes)
    out = translator.sample(cond, samples, seed)
    result = {**_superres_scores(out, samples, x, y, truth, oracle), "samples_per_image": samples,
              "diversity": diversity(translator, cond[:50], 8, seed)}
    if fid is not None:
        result["fid"] = fid(out[::samples])
    return result


def superres_references(translator, low, oracle, n: int) -> dict:
    """The same scores for the truth y, its AE reconstruction Λ(Θ(y)) (the ceiling of any τ) and bilinear
    up-sampling of x (no model)."""
    _, attrs, y, x, _ = superres_inputs(translator.ae.image_size, low, n)
    truth = labels(attrs, False, oracle.attributes)
    recon = translator.decode(encode_images(translator.ae, y))
    bilinear = F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)
    return {name: _superres_scores(img, 1, x, y, truth, oracle)
            for name, img in (("ground_truth", y), ("reconstruction", recon), ("bilinear", bilinear))}


def _superres_grid(run_dir, num: int = 6, samples: int = 6, seed: int = 0) -> None:
    translator, _, low = load_run(run_dir)
    size = translator.ae.image_size
    images, _, _, x, cond = superres_inputs(size, low, num)
    sampled = to_uint8(translator.sample(cond, samples, seed))
    up = to_uint8(F.interpolate(x, size=(size, size), mode="nearest"))
    rows = [[up[i], *sampled[i * samples:(i + 1) * samples], images[i]] for i in range(num)]
    save_grid(rows, Path(run_dir) / "grids" / "samples.png", scale=2,
              col_titles=[f"{low.image_size}px in", *[f"sample {k + 1}" for k in range(samples)], "truth"],
              header=f"superresolution {low.image_size} -> {size} px: input | samples L(t(v|f(x))), v ~ N(0, I) | "
                     f"ground truth")


# ---------------------------------------------------------------- unpaired: translation, grids, evaluation
@torch.no_grad()
def translate(translator, x: torch.Tensor, src: int) -> tuple[torch.Tensor, torch.Tensor]:
    """App. D: images x of domain `src` -> v = τ⁻¹(Θ(x)|src) -> Λ(τ(v|other)); then the result translated back."""
    c, c_new = domain_onehot([src] * len(x)), domain_onehot([1 - src] * len(x))
    out = translator.edit(x, c, c_new)
    return out, translator.edit(out, c_new, c)


def evaluate_unpaired(translator, oracle, domain_clf, n: int, fids: dict[str, OracleFID] | None = None,
                      seed: int = 0) -> dict:
    """Per direction on n test sprites: content_kept (the oracle's 13 attributes of the translation equal
    the sprite's true ones), domain_success (the domain classifier reads the target domain), the same
    for the back-translation, cycle PSNR, PSNR to the true render of the sprite in the other domain, and
    references (the AE reconstruction's content and domain read-outs). With `fids` (one OracleFID per
    domain), per direction against the target domain's real renders: `fid` of samples Λ(τ(v | target)),
    `fid_edits` of the translations, `fid_real` of the true renders there, `fid_recon` of their AE
    reconstructions; the top level holds their means over both directions."""
    size, per = translator.ae.image_size, {}
    for src in (0, 1):
        images, attrs, _ = render_batch(range(n), "test", size, DOMAINS[src])
        x = to_tensor(images)
        truth = labels(attrs, False, oracle.attributes)
        out, back = translate(translator, x, src)
        with torch.no_grad():
            recon = translator.edit(x, domain_onehot([src] * n), domain_onehot([src] * n))
        twin = to_tensor(render_batch(range(n), "test", size, DOMAINS[1 - src])[0])
        kept = lambda img: float((oracle.predict(img) == truth).mean())                     # noqa: E731
        reads = lambda img, d: float((domain_clf.predict(img)[:, 0] == d).mean())           # noqa: E731
        per[f"{DOMAINS[src]}_to_{DOMAINS[1 - src]}"] = {
            "content_kept": kept(out), "domain_success": reads(out, 1 - src),
            "back_content_kept": kept(back), "back_domain_success": reads(back, src), "cycle_psnr": psnr(back, x),
            "psnr_to_other_domain_render": psnr(out, twin),
            "reconstruction_content_kept": kept(recon), "reconstruction_domain_accuracy": reads(recon, src),
            "input_domain_accuracy": reads(x, src)}
        if fids is not None:
            fid = fids[DOMAINS[1 - src]]
            per[f"{DOMAINS[src]}_to_{DOMAINS[1 - src]}"].update(
                fid=fid(translator.sample(domain_onehot([1 - src] * n), 1, seed)), fid_edits=fid(out),
                **{k: v for k, v in fid.references(twin, translator).items() if k != "fid_reference"})
    mean = lambda key: float(np.mean([d[key] for d in per.values()]))                   # noqa: E731
    result = {"content_kept": mean("content_kept"), "domain_success": mean("domain_success"),
              "back_content_kept": mean("back_content_kept"), "back_domain_success": mean("back_domain_success"),
              "directions": per}
    if fids is not None:
        result.update({k: mean(k) for k in ("fid", "fid_edits", "fid_real", "fid_recon")},
                      fid_reference={d: f.describe() for d, f in fids.items()})
    return result


def _unpaired_grid(run_dir, num: int = 6) -> None:
    translator, _, _ = load_run(run_dir)
    size, cols = translator.ae.image_size, []
    for src in (0, 1):       # different sprites per domain, as the data are unpaired
        images, _, _ = render_batch(range(src * num, (src + 1) * num), "test", size, DOMAINS[src])
        cols.append([images, *map(to_uint8, translate(translator, to_tensor(images), src))])
    rows = [[part[i] for block in cols for part in block] for i in range(num)]
    save_grid(rows, Path(run_dir) / "grids" / "translation.png", scale=2,
              col_titles=["flat in", "textured", "back", "textured in", "flat", "back"],
              header="unpaired (App. D): y -> v = t^-1(T(y)|d) -> L(t(v|d')) -> back to d")


def write_grids(run_dir) -> None:
    print(f"writing grids to {Path(run_dir) / 'grids'}/")
    task = read_json(Path(run_dir) / "config.json")["task"]
    (_superres_grid if task == "superres" else _unpaired_grid)(run_dir)


def evaluate_run(req) -> dict:
    """`python -m train.evaluate --task superres|unpaired --run DIR --json` (an EvalRequest; options: DomainEval)."""
    opts = req.options
    run = Path(req.run)
    translator, config, low = load_run(run)
    if req.num_images < 1:
        raise UserError(f"--num-images must be positive, got {req.num_images}")
    size, n = translator.ae.image_size, req.num_images
    oracle = ensure_oracle(req.oracle, size)
    result = {"task": config["task"], "run": str(run), "num_images": n}
    if config["task"] == "superres":
        fid = OracleFID(oracle, n, size)

        def one(t):
            return evaluate_superres(t, low, oracle, n, req.seed, fid=fid)
        real = superres_inputs(size, low, n)[0]
        return {**result, **one(translator), "references": superres_references(translator, low, oracle, n),
                **fid.references(real, translator), **mlp_baseline(run, translator, one)}
    domain_clf = ensure_oracle(opts.domain_classifier, size, domain_classifier_spec(size))
    if domain_clf.attributes != ["textured"]:
        raise UserError(f"{opts.domain_classifier} reads {domain_clf.attributes}, not the style; pass a "
                        f"flat-vs-textured classifier (train.classifier --attributes textured)")
    fids = {d: OracleFID(oracle, n, size, d) for d in DOMAINS}
    return {**result, **evaluate_unpaired(translator, oracle, domain_clf, n, fids, req.seed)}
