"""Grids and the measured evaluation of the spatial sprites tasks (train/tasks/spatial.py).

exemplar (Sec. 4.3, Fig. 7a):  samples Λ(τ(v | Φ(x))), v ~ N(0, I), and exemplar-guided synthesis
                               Λ(τ(τ⁻¹(Θ(y) | Φ(y)) | Φ(x))), Φ = the pooled object mask.
shape (App. C, Fig. 7b / S1):  y* = Λ(τ(v | Θ(x))), v = τ⁻¹(Θ(y) | Θ(y)): y's shape, x's appearance.
The MLP baseline (Sec. E) has no v: its outputs are Λ(MLP(zΦ)) whatever the exemplar / shape image.

Measurements read the outputs with the oracle attribute classifier (runs/sprites/classifier) and, for
masks, with `read_mask`. "Follows" scores are taken on the pairs whose two source images differ in
that factor: the share of outputs the oracle reads with the value of the image it should come from.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from train.core.common import UserError
from train.data import ATTRIBUTES, GROUPS
from train.data.deform import deform, mask_condition, read_mask
from train.data.latents import encode_images
from train.data.sprites import SPLITS, first_test_renders, to_tensor, to_uint8
from train.eval.fid import OracleFID
from train.eval.grids import save_grid
from train.eval.metrics import diversity, iou
from train.eval.translator import load_task_run, mlp_baseline
from train.experts.classifier_training import ensure_oracle

LAYOUT = ["shape", "pos_left", "pos_top", "size_large"]     # what a mask fixes; what d destroys (App. C)
STYLE = ["color", "bg_dark", "style_outline"]               # appearance: neither in the mask nor touched by d


def factor_values(attrs: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 13) 0/1 attributes -> per factor an (N,) int: the one-hot groups as an index, the rest as 0/1."""
    out = {g: attrs[:, [ATTRIBUTES.index(a) for a in names]].argmax(1) for g, names in GROUPS.items()}
    grouped = {a for names in GROUPS.values() for a in names}
    out.update({a: attrs[:, ATTRIBUTES.index(a)].astype(int) for a in ATTRIBUTES if a not in grouped})
    return out


def follows(read: np.ndarray, source: np.ndarray, other: np.ndarray, factors: list[str]) -> dict[str, float | None]:
    """Per factor, among pairs where `source` and `other` differ in it: the share of outputs read with the
    source's value (1 = always from the source, 0 = never; None when no pair differs)."""
    r, s, o = factor_values(read), factor_values(source), factor_values(other)
    out = {}
    for f in factors:
        differ = s[f] != o[f]
        out[f] = float((r[f][differ] == s[f][differ]).mean()) if differ.any() else None
    return out


def _mean(scores: dict) -> float:
    return float(np.mean([v for v in scores.values() if v is not None]))


def _tile(mask: torch.Tensor, size: int) -> np.ndarray:
    """A pooled mask (1, s, s) in [0, 1] as a grey (size, size, 3) uint8 tile."""
    up = torch.nn.functional.interpolate(mask[None], size=size, mode="nearest")[0]
    return to_uint8(up.expand(3, -1, -1)[None] * 2 - 1)[0]


def write_grids(run_dir: str | Path, num: int = 6, columns: int = 5, seed: int = 0) -> None:
    """PNGs in RUN/grids/. exemplar: transfer.png (mask | samples | one column per exemplar, Fig. 7a).
    shape: transfer.png (rows = shape images y, columns = appearance images x, Fig. 7b), samples.png
    (random v with each x's appearance), deformations.png (y and draws of d(y))."""
    translator, config = load_task_run(run_dir)
    out, size = Path(run_dir) / "grids", translator.ae.image_size
    print(f"writing grids to {out}/")
    images, _, masks = first_test_renders(num + columns, size)
    blank = np.full_like(images[0], 255)
    top = [images[num + j] for j in range(columns)]
    if config["task"] == "exemplar":
        cond = mask_condition(masks, config["mask_size"])
        x = to_tensor(images)
        samples = to_uint8(translator.sample(cond[:num], 3, seed)).reshape(num, 3, size, size, 3)
        rows = [[blank] * 4 + top]
        for i in range(num):
            moved = translator.edit(x[num:], cond[num:], cond[i:i + 1].expand(columns, -1, -1, -1))
            rows.append([_tile(cond[i], size), *samples[i], *to_uint8(moved)])
        save_grid(rows, out / "transfer.png", scale=2,
                  col_titles=["mask Phi(x)", *["sample"] * 3, *[f"exemplar {j + 1}" for j in range(columns)]],
                  header="exemplar-guided synthesis: mask | samples L(t(v|Phi(x))) | L(t(v_exemplar|Phi(x)))")
        return
    z = encode_images(translator.ae, images)
    rows = [[blank] + top]
    for i in range(num):
        moved = translator.edit(to_tensor(images[i:i + 1]).expand(columns, -1, -1, -1), z[i:i + 1].expand(columns, -1),
                                z[num:])
        rows.append([images[i], *to_uint8(moved)])
    save_grid(rows, out / "transfer.png", scale=2,
              header="shape of the row image y, appearance of the column image x: L(t(t^-1(Th(y)|Th(y)) | Th(x)))")
    samples = to_uint8(translator.sample(z[num:], num, seed)).reshape(columns, num, size, size, 3)
    save_grid([[top[j], *samples[j]] for j in range(columns)], out / "samples.png", scale=2,
              header="appearance x | samples L(t(v|Th(x))), v ~ N(0, I)")
    idx = list(range(SPLITS["test"][0], SPLITS["test"][0] + num))
    draws = [deform(images[:num], idx, config["deform_seed"], k) for k in range(columns)]
    save_grid([[images[i], *[d[i] for d in draws]] for i in range(num)], out / "deformations.png", scale=2,
              header="y | draws of the deformation d(y) (the training inputs of Phi = Theta o d)")


def evaluate_exemplar(translator, oracle, config: dict, images, attrs, masks, seed: int,
                      fid: OracleFID | None = None) -> dict:
    """Masks of x = the first half of the renders, exemplars y = the second half (pair i: x_i, y_i).
    With `fid`: `fid` of the samples (one per mask) and `fid_edits` of the exemplar transfers."""
    n = len(images) // 2
    cond = mask_condition(masks, config["mask_size"])
    sampled = to_uint8(translator.sample(cond[:n], 1, seed))
    moved = to_uint8(translator.edit(to_tensor(images[n:]), cond[n:], cond[:n]))
    read = oracle.predict(moved)
    style = follows(read, attrs[n:], attrs[:n], STYLE)
    layout = follows(read, attrs[:n], attrs[n:], LAYOUT)
    result = {"mask_iou": float(iou(read_mask(sampled), masks[:n]).mean()),
              "mask_iou_transfer": float(iou(read_mask(moved), masks[:n]).mean()),
              "style_transfer": _mean(style), "layout_from_mask": _mean(layout),
              "per_factor": {"style_from_exemplar": style, "layout_from_mask": layout},
              "diversity": diversity(translator, cond[:50], 8, seed)}
    if fid is not None:
        result.update(fid=fid(sampled), fid_edits=fid(moved))
    return result


def evaluate_shape(translator, oracle, config: dict, images, attrs, seed: int, fid: OracleFID | None = None) -> dict:
    """Shape images y = the first half of the renders, appearance images x = the second half.
    With `fid`: `fid` of samples with each x's appearance and `fid_edits` of the recombinations (Θ(x))."""
    n = len(images) // 2
    z = encode_images(translator.ae, images)
    start = SPLITS["test"][0]
    z_dx = encode_images(translator.ae, deform(images[n:], range(start + n, start + 2 * n), seed))

    edits = []                              # the outputs of each scores() call, for fid_edits

    def scores(appearance):
        edits.append(translator.edit(to_tensor(images[:n]), z[:n], appearance))
        read = oracle.predict(edits[-1])
        shape = follows(read, attrs[:n], attrs[n:], LAYOUT)
        kept = follows(read, attrs[n:], attrs[:n], STYLE)
        return {"shape_from_exemplar": _mean(shape), "appearance_kept": _mean(kept),
                "per_factor": {"shape_from_exemplar": shape, "appearance_kept": kept}}

    # App. C recombines with Θ(x); `deformed_appearance` conditions on Θ(d(x)) instead, as in training
    result = {**scores(z[n:]), "deformed_appearance": scores(z_dx),
              "diversity": diversity(translator, z[n:n + 50], 8, seed)}
    if fid is not None:
        result.update(fid=fid(translator.sample(z[n:], 1, seed)), fid_edits=fid(edits[0]))
    return result


def evaluate_run(req) -> dict:
    """`python -m train.evaluate --task exemplar|shape --run runs/<task>/cinn --json` (an EvalRequest)."""
    run = Path(req.run)
    translator, config = load_task_run(run)
    if config.get("task") not in ("exemplar", "shape"):
        raise UserError(f"{run} is a run of task '{config.get('task')}', not exemplar or shape")
    size, n = translator.ae.image_size, req.num_images
    oracle = ensure_oracle(req.oracle, size)
    images, attrs, masks = first_test_renders(2 * n, size)
    fid = OracleFID(oracle, n, size, scored=2 * n)
    result = {"task": config["task"], "run": str(run), "num_pairs": n}
    if config["task"] == "exemplar":
        def one(t):
            return evaluate_exemplar(t, oracle, config, images, attrs, masks, req.seed, fid)
        recon = to_uint8(translator.decode(encode_images(translator.ae, images[:n])))
        result["reference"] = {"mask_reader_iou_renders": float(iou(read_mask(images[:n]), masks[:n]).mean()),
                               "mask_iou_ae_reconstruction": float(iou(read_mask(recon), masks[:n]).mean())}
    else:
        def one(t):
            return evaluate_shape(t, oracle, config, images, attrs, req.seed, fid)
        start = SPLITS["test"][0]
        # what d leaves readable: the oracle on d(y) against y's attributes (position -> 0.5 = destroyed)
        seen = factor_values(oracle.predict(deform(images[:n], range(start, start + n), req.seed)))
        truth = factor_values(attrs[:n])
        result["deformation_keeps"] = {f: float((seen[f] == truth[f]).mean()) for f in LAYOUT + STYLE}
    return {**result, **one(translator), **fid.references(images[:n], translator),
            **mlp_baseline(run, translator, one)}
