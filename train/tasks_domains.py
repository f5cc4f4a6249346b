"""Two sprite tasks between image domains, built from the parts of train/tasks_sprites.py (issue 6).

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

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train.ae import psnr
from train.classifier import ensure_oracle, labels
from train.common import UserError, read_json
from train.data.sprites import area_downsample, render_batch, to_tensor, to_uint8
from train.grids import save_grid
from train.sprite_eval import _diversity, load_task_run, mlp_baseline
from train.tasks import Experts, Task, add_arg_once, register
from train.tasks_sprites import (
    DEFAULT_AE,
    AEDecoderStage,
    AEEncoderStage,
    SpritePairs,
    derive_presets,
    encode_images,
    load_ae,
    sprite_latents,
)

LOWRES_AE, UNION_AE = "runs/superres/ae_lowres", "runs/unpaired/ae"
DOMAIN_CLASSIFIER = "runs/unpaired/domain_classifier"
LOW_SIZE = 16
DOMAINS = ("flat", "textured")          # zΦ of unpaired: one-hot over these
# flat-vs-textured classifier, trained by train/classifier.py when missing (~1 min on one thread)
DOMAIN_CLASSIFIER_ARGS = ("--attributes", "textured", "--textured-frac", "0.5", "--steps", "300", "--eval-count", "500")

# `data`: renders whose latents train τ, validation renders, the autoencoders' training options
# (`lowres_args`: extra `train.ae` options for f; `union_*`: for the union AE, fine-tuned from --ae).
_DATA = {
    "smoke": {"images": 256, "val_images": 64, "ae_preset": "smoke", "lowres_args": ["--steps", "20"],
              "union_args": [], "union_init": False},
    "default": {"images": 60000, "val_images": 1000, "ae_preset": "default", "lowres_args": [],
                "union_args": ["--steps", "1500", "--lr", "5e-4"], "union_init": True},
}
PRESETS = derive_presets(_DATA)


def _args(ap: argparse.ArgumentParser) -> None:
    add_arg_once(ap, "--ae", default=DEFAULT_AE, help="sprites tasks: autoencoder run (trained first if missing)")
    add_arg_once(ap, "--lowres-ae", default=LOWRES_AE,
                 help=f"superres: the {LOW_SIZE} px autoencoder f (trained first if missing)")
    add_arg_once(ap, "--union-ae", default=UNION_AE,
                 help="unpaired: autoencoder on flat + textured sprites (fine-tuned from --ae first if missing)")


def _data(args) -> dict:
    return PRESETS.get(args.preset, PRESETS["default"])["data"]


def lowres_ae(path: str, data: dict):
    """f, trained first (and said so) when missing."""
    return load_ae(path, "small", ("--task", "superres", "--size", str(LOW_SIZE), *data["lowres_args"]))


def union_ae(path: str, base: str, data: dict):
    """The autoencoder on both domains; when missing it is trained first, fine-tuned from `base`."""
    extra = ["--task", "unpaired", "--style", "union", *data["union_args"]]
    if data["union_init"] and not Path(path, "checkpoint.safetensors").is_file():
        load_ae(base, data["ae_preset"])                 # the flat AE it starts from, trained first if missing
        extra += ["--init", base]
    return load_ae(path, data["ae_preset"], tuple(extra))


def domain_onehot(domains) -> torch.Tensor:
    return F.one_hot(torch.as_tensor(domains, dtype=torch.long), len(DOMAINS)).float()


def _superres_source(args):
    data = _data(args)
    ae, low = load_ae(args.ae, data["ae_preset"]), lowres_ae(args.lowres_ae, data)
    if ae.image_size % low.image_size or low.image_size >= ae.image_size:
        raise UserError(f"--lowres-ae reads {low.image_size} px images; it must be a smaller divisor of the "
                        f"target AE's {ae.image_size} px")

    def pairs(split, count):
        _, z = sprite_latents(args.ae, ae, split, count)
        _, c = sprite_latents(args.lowres_ae, low, split, count, render_size=ae.image_size)
        return c, z

    (c, z), (vc, vz) = pairs("train", data["images"]), pairs("val", data["val_images"])
    info = {"task": "superres", "ae": args.ae, "lowres_ae": args.lowres_ae, "low_size": low.image_size, "data": data}
    return SpritePairs(c.unsqueeze(1), z, vc, vz), info


def _unpaired_source(args):
    if getattr(args, "model", "cinn") == "mlp":
        raise UserError("unpaired translation needs the cINN's residual v = τ⁻¹(Θ(y)|domain); the MLP baseline "
                        "maps the label alone to one image and cannot translate (App. D). Drop --model mlp")
    data = _data(args)
    ae = union_ae(args.union_ae, args.ae, data)

    def pairs(split, count):        # disjoint sprites per domain: the model never sees a matched pair
        half = count // 2
        _, z0 = sprite_latents(args.union_ae, ae, split, half)
        _, z1 = sprite_latents(args.union_ae, ae, split, count - half, style="textured", offset=half)
        return domain_onehot([0] * half + [1] * (count - half)), torch.cat([z0, z1])

    (c, z), (vc, vz) = pairs("train", data["images"]), pairs("val", data["val_images"])
    info = {"task": "unpaired", "ae": args.union_ae, "union_ae": args.union_ae, "base_ae": args.ae,
            "domains": list(DOMAINS), "data": data}
    return SpritePairs(c.unsqueeze(1), z, vc, vz), info


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
        low = lowres_ae(config["lowres_ae"], config["data"])
    translator, config = load_task_run(run_dir)
    return translator, config, low


def _experts(config: dict) -> Experts:
    ae = load_ae(config["ae"])
    info = {"image_size": ae.image_size, "warnings": []}
    if config["task"] == "superres":
        low = lowres_ae(config["lowres_ae"], config["data"])
        info["source_image_shape"] = [3, low.image_size, low.image_size]
        return Experts(AEEncoderStage(low), AEEncoderStage(ae), AEDecoderStage(ae), info)
    info["attribute_names"] = list(DOMAINS)
    return Experts(None, AEEncoderStage(ae), AEDecoderStage(ae), info)


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


def evaluate_superres(translator, low, oracle, n: int, seed: int, samples: int = 4) -> dict:
    """consistency_psnr: A(sample) vs x; attribute_agreement: the oracle's reading of each sample vs the
    sprite's true attributes; diversity: per-pixel std across 8 samples of one input (pixels in [0, 1])."""
    _, attrs, y, x, cond = superres_inputs(translator.ae.image_size, low, n)
    truth = labels(attrs, False, oracle.attributes)
    out = translator.sample(cond, samples, seed)
    return {**_superres_scores(out, samples, x, y, truth, oracle), "samples_per_image": samples,
            "diversity": _diversity(translator, cond[:50], 8, seed)}


def superres_references(translator, low, oracle, n: int) -> dict:
    """The same scores for the truth y, its AE reconstruction Λ(Θ(y)) (the ceiling of any τ) and bilinear
    up-sampling of x (no model)."""
    _, attrs, y, x, _ = superres_inputs(translator.ae.image_size, low, n)
    truth = labels(attrs, False, oracle.attributes)
    recon = translator._decode(encode_images(translator.ae, y))
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


def evaluate_unpaired(translator, oracle, domain_clf, n: int) -> dict:
    """Per direction on n test sprites: content_kept (the oracle's 13 attributes of the translation equal
    the sprite's true ones), domain_success (the domain classifier reads the target domain), the same
    for the back-translation, cycle PSNR, PSNR to the true render of the sprite in the other domain, and
    references (the AE reconstruction's content and domain read-outs)."""
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
    mean = lambda key: float(np.mean([d[key] for d in per.values()]))                   # noqa: E731
    return {"content_kept": mean("content_kept"), "domain_success": mean("domain_success"),
            "back_content_kept": mean("back_content_kept"), "back_domain_success": mean("back_domain_success"),
            "directions": per}


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


def _after(run_dir, model, args) -> None:
    print(f"writing grids to {Path(run_dir) / 'grids'}/")
    (_superres_grid if args.task == "superres" else _unpaired_grid)(run_dir)


def _evaluate(args) -> dict:
    ap = argparse.ArgumentParser(prog="python -m train.evaluate --task superres|unpaired")
    ap.add_argument("--domain-classifier", default=DOMAIN_CLASSIFIER,
                    help="unpaired: flat-vs-textured classifier run (trained first if missing)")
    opts, rest = ap.parse_known_args(args.extra)
    if rest:
        raise UserError(f"unknown evaluation options: {' '.join(rest)}")
    run = Path(args.run)
    translator, config, low = load_run(run)
    if args.task and args.task != config["task"]:
        raise UserError(f"{run} is a run of task '{config['task']}', not '{args.task}'")
    if args.num_images < 1:
        raise UserError(f"--num-images must be positive, got {args.num_images}")
    size, n = translator.ae.image_size, args.num_images
    oracle = ensure_oracle(args.oracle, size)
    result = {"task": config["task"], "run": str(run), "num_images": n}
    if config["task"] == "superres":
        def one(t):
            return evaluate_superres(t, low, oracle, n, args.seed)
        return {**result, **one(translator), "references": superres_references(translator, low, oracle, n),
                **mlp_baseline(run, translator, one)}
    domain_clf = ensure_oracle(opts.domain_classifier, size, DOMAIN_CLASSIFIER_ARGS)
    if domain_clf.attributes != ["textured"]:
        raise UserError(f"{opts.domain_classifier} reads {domain_clf.attributes}, not the style; pass a "
                        f"flat-vs-textured classifier (train.classifier --attributes textured)")
    return {**result, **evaluate_unpaired(translator, oracle, domain_clf, n)}


register(Task("superres", "16 px sprites AE -> 64 px sprites AE: generative superresolution (Fig. 4)", _args,
              _superres_source, PRESETS, _experts, _after, _evaluate))
register(Task("unpaired", "domain label -> AE on flat + textured sprites: unpaired translation (App. D)", _args,
              _unpaired_source, PRESETS, _experts, _after, _evaluate))
