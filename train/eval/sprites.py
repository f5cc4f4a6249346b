"""Grids and the measured evaluation of attributes and text2image (train/tasks/sprites.py).

Editing (Sec. 4.3, Fig. 6):  v = τ⁻¹(Θ(y) | c),  y* = Λ(τ(v | c*))  with c* = c with attributes changed.
Exemplar transfer:          v from exemplar y with its own c, recombined with another image's c.
An oracle classifier (train/experts/classifier.py) reads attributes off every decoded image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from train.core.common import UserError
from train.core.condition_bank import load_condition_bank
from train.data import ATTRIBUTES, GROUPS
from train.data.captions import load_captions_jsonl, make_caption
from train.data.latents import sprite_latents
from train.data.sprites import SPLITS, render_batch, to_tensor, to_uint8
from train.eval.fid import OracleFID
from train.eval.grids import save_grid
from train.eval.metrics import diversity, probe
from train.eval.translator import load_task_run, mlp_baseline
from train.experts.classifier_training import ensure_oracle
from train.experts.text import TextEncoder

GROUP_OF = {name: g for g, names in GROUPS.items() for name in names}


def flip(c: np.ndarray, name: str) -> np.ndarray:
    """c* = c with `name` changed: binary attributes toggle; a one-hot member that is off is switched on
    (its group mates off); one that is on hands over to the next member of its group."""
    out = c.copy()
    i = ATTRIBUTES.index(name)
    group = GROUP_OF.get(name)
    if group is None:
        out[i] = 1 - out[i]
        return out
    members = [ATTRIBUTES.index(m) for m in GROUPS[group]]
    on = members[(members.index(i) + 1) % len(members)] if c[i] == 1 else i
    out[members] = 0
    out[on] = 1
    return out


def _condition(config: dict, attributes: np.ndarray, split: str, seed: int, encoder=None):
    """zΦ for images with these attributes: the vector itself, or the embedding of one caption each."""
    if config["task"] == "attributes":
        return torch.from_numpy(attributes), None
    rng = np.random.default_rng(seed)
    texts = [make_caption(a, rng, split, partial_prob=0.0)[0] for a in attributes]
    return encoder.encode(texts), texts


def write_grids(run_dir: str | Path, model, num: int = 6, samples: int = 6, seed: int = 0,
                temperature: float = 1.0, best_of: int = 1, cycles: int = 0) -> None:
    """PNGs in RUN/grids/: attribute edits (Fig. 6), samples per condition, exemplar transfer; for text,
    captions rendered above their samples (Fig. 1): held-out phrasing (samples.png) and training phrasing;
    text conditions projected onto the run's condition bank where it has one (train/core/condition_bank.py)."""
    translator, config = load_task_run(run_dir)
    translator.best_of, translator.cycles = best_of, cycles
    out = Path(run_dir) / "grids"
    print(f"writing grids to {out}/")
    start = SPLITS["test"][0]
    images, attrs, _ = render_batch(range(start, start + num), "test", translator.ae.image_size)
    x = to_tensor(images)
    if config["task"] == "attributes":
        c = torch.from_numpy(attrs)
        rows = []
        for i in range(num):
            new = torch.from_numpy(np.stack([attrs[i]] + [flip(attrs[i], a) for a in ATTRIBUTES]))
            edits = translator.edit(x[i:i + 1].expand(len(new), -1, -1, -1), c[i:i + 1].expand(len(new), -1), new)
            rows.append([images[i], *to_uint8(edits)])
        save_grid(rows, out / "edits.png", col_titles=["input", "recon", *[a.split("_", 1)[1] for a in ATTRIBUTES]],
                  header="attribute editing: input | recon L(t(v|c)) | each attribute flipped", scale=2)
        sampled = to_uint8(translator.sample(c, samples, seed, temperature))
        save_grid([list(sampled[i * samples:(i + 1) * samples]) for i in range(num)], out / "samples.png",
                  row_titles=[", ".join(a for a, on in zip(ATTRIBUTES, attrs[i]) if on) for i in range(num)],
                  header=f"samples L(t(v|c)), v ~ N(0, I) x temperature {temperature:g}", scale=2)
        if not translator.invertible:          # the MLP has no residual to transfer
            return
        v = translator.residual(x, c)          # exemplar i's residual with image j's attributes
        rows = [[images[i]] + list(to_uint8(translator.decode(translator.model(v[i:i + 1].expand(num, -1), c))))
                for i in range(num)]
        save_grid([[np.full_like(images[0], 255)] + list(images)] + rows, out / "transfer.png",
                  header="exemplar transfer: row = exemplar's v, column = target's attributes", scale=2)
    else:
        encoder, project = TextEncoder(config["text_encoder"]), projection(load_condition_bank(run_dir))
        for split, name in (("heldout", "samples.png"), ("train", "samples_train_phrasing.png")):
            cond, texts = _condition(config, attrs, split, seed, encoder)
            sampled = to_uint8(translator.sample(project(cond), samples, seed, temperature))
            save_grid([list(sampled[i * samples:(i + 1) * samples]) for i in range(num)], out / name,
                      row_titles=texts, header=f"{'held-out' if split == 'heldout' else 'training'}-phrased "
                      "captions -> samples", scale=2)


def evaluate_attributes(translator, oracle, n: int, seed: int, fid: OracleFID | None = None,
                        temperature: float = 1.0) -> dict:
    """With `fid`: also `fid` (one sample per test attribute vector) and `fid_edits` (image i edited by
    flipping attribute i mod 13: n edits, one per image, so at the same N as `fid`). Samples (`fid`,
    `sample_accuracy`, `diversity`) draw v ~ N(0, temperature² I); edits keep the image's own v."""
    start = SPLITS["test"][0]
    images, attrs, _ = render_batch(range(start, start + n), "test", translator.ae.image_size)
    x, c = to_tensor(images), torch.from_numpy(attrs)
    recon_read = oracle.predict(translator.edit(x, c, c))
    flip_ok, keep, keep_all = [], [], []
    edits = torch.empty_like(x)
    for k, name in enumerate(ATTRIBUTES):
        new = np.stack([flip(a, name) for a in attrs])
        edited = translator.edit(x, c, torch.from_numpy(new))
        edits[k::len(ATTRIBUTES)] = edited[k::len(ATTRIBUTES)]
        read = oracle.predict(edited)
        changed = new != attrs
        flip_ok.append(np.all((read == new) | ~changed, 1).mean())
        same = (read == recon_read) | changed
        keep.append((same.sum(1) - changed.sum(1)).mean() / (len(ATTRIBUTES) - changed.sum(1)).mean())
        keep_all.append(np.all(same, 1).mean())
    result = {"flip_success": float(np.mean(flip_ok)), "keep_rate": float(np.mean(keep)),
              "keep_all_rate": float(np.mean(keep_all)),
              "recon_agreement": float((recon_read == attrs).mean()),
              "per_attribute_flip_success": {a: float(f) for a, f in zip(ATTRIBUTES, flip_ok)},
              "diversity": diversity(translator, c[:50], 8, seed, temperature)}
    samples = translator.sample(c, 1, seed, temperature)
    read = oracle.predict(samples)              # share of attribute entries of a sample read as asked
    result.update(sample_accuracy=float((read == attrs).mean()), sample_all_rate=float((read == attrs).all(1).mean()))
    if translator.invertible:
        tr_attr, tr_z = sprite_latents(translator.ae_dir, translator.ae, "train", 5000)
        with torch.no_grad():
            v_train = translator.model.inverse(tr_z, tr_attr)[0]
            v_test = translator.residual(x, c)
        acc, base = probe(v_train, tr_attr, v_test, c)
        result.update(probe_accuracy=float(acc.mean()), probe_baseline=float(base.mean()))
    else:
        result.update(probe_accuracy=None, probe_baseline=None)
    if fid is not None:
        result.update(fid=fid(samples), fid_edits=fid(edits))
    return result


def projection(bank):
    """zΦ -> zΦ with off-support rows replaced by their nearest training condition; the identity without a bank."""
    return (lambda c: bank.project(c)[0]) if bank is not None else (lambda c: c)


def _score_captions(translator, oracle, encoder, texts, mentioned, seed,
                    temperature: float = 1.0, project=projection(None)) -> tuple[float, dict[str, float]]:
    """The oracle reads one sample per caption. Overall: share of the mentioned attribute entries read as
    mentioned (a mentioned colour contributes its five entries). Per attribute: share of the captions
    mentioning it whose sample shows the mentioned value (a one-hot group such as colour is one attribute)."""
    return _score_reads(oracle.predict(translator.sample(project(encoder.encode(texts)), 1, seed, temperature)),
                        mentioned)


def _score_reads(read, mentioned) -> tuple[float, dict[str, float]]:
    hits = [read[i, ATTRIBUTES.index(a)] == v for i, m in enumerate(mentioned) for a, v in m.items()]
    group_of = {name: g for g, names in GROUPS.items() for name in names}
    per: dict[str, list[bool]] = {}
    for i, m in enumerate(mentioned):
        for a, v in m.items():
            if a not in group_of or v:        # a group is scored once, by its mentioned (1) value
                per.setdefault(group_of.get(a, a), []).append(bool(read[i, ATTRIBUTES.index(a)] == v))
    return (float(np.mean(hits)) if hits else float("nan")), {k: float(np.mean(v)) for k, v in per.items()}


def evaluate_text(translator, oracle, config, n: int, seed: int, captions_file: str | None,
                  fid: OracleFID | None = None, temperature: float = 1.0, bank=None) -> dict:
    """With `fid`: also `fid` of the samples of the held-out-phrased captions (one per test sprite), and
    `fid_train_phrasing` of those of training-phrased captions of the same sprites (`train_phrasing_*`:
    their accuracy). Every sample draws v ~ N(0, temperature² I), from conditions projected onto `bank`
    (a ConditionBank, or None: the exact caption embeddings); `condition_projection` says how many moved."""
    encoder, project = TextEncoder(config["text_encoder"]), projection(bank)
    moved: dict[str, float] = {}

    def project_counted(c, key: str):           # projects once and keeps the share of rows it moved
        if bank is None:
            return c
        c, rows = bank.project(c)
        moved[key] = float(rows.float().mean())
        return c

    start = SPLITS["test"][0]
    _, attrs, _ = render_batch(range(start, start + n), "test", translator.ae.image_size)
    rng = np.random.default_rng(seed)
    pairs = [make_caption(a, rng, "heldout") for a in attrs]
    cond = encoder.encode([p[0] for p in pairs])
    samples = translator.sample(project_counted(cond, "moved_heldout"), 1, seed, temperature)
    acc, per = _score_reads(oracle.predict(samples), [p[1] for p in pairs])
    result = {"heldout_attribute_accuracy": acc, "heldout_per_attribute": per}
    # the same sprites in training phrasing (as many partial captions): what the language costs, apart
    train_pairs = [make_caption(a, rng, "train") for a in attrs]
    train_cond = encoder.encode([p[0] for p in train_pairs])
    train_samples = translator.sample(project_counted(train_cond, "moved_train_phrasing"), 1, seed, temperature)
    acc, per = _score_reads(oracle.predict(train_samples), [p[1] for p in train_pairs])
    result.update(train_phrasing_attribute_accuracy=acc, train_phrasing_per_attribute=per)
    if fid is not None:
        result.update(fid=fid(samples), fid_train_phrasing=fid(train_samples))
    result["condition_projection"] = "exact (no condition bank)" if bank is None else {**bank.describe(), **moved}
    cond, _ = _condition(config, attrs[:50], "heldout", seed, encoder)
    result["diversity"] = diversity(translator, project(cond), 8, seed, temperature)
    if captions_file:
        items = load_captions_jsonl(captions_file)
        acc, per = _score_captions(translator, oracle, encoder, [t for t, _ in items], [m for _, m in items], seed,
                                   temperature, project)
        result.update(caption_attribute_accuracy=acc, caption_per_attribute=per)
    return result


def evaluate_run(req, temperature: float = 1.0, exact_condition: bool = False, best_of: int = 1,
                 cycles: int = 0) -> dict:
    """`python -m train.evaluate --task attributes|text2image --run runs/<task>/cinn --json` (an EvalRequest);
    samples at `temperature` (train/tasks/sprites.py passes the task's default unless --temperature is given).
    text2image samples from conditions projected onto the run's condition bank where it has one (also for the
    MLP baseline beside it: the same training conditions), unless `exact_condition`; each sample the most likely
    of `best_of` draws, then `cycles` times z -> Θ(Λ(z)) (train/core/selection.py; edits keep each image's own v)."""
    for flag, n, low in (("--best-of", best_of, 1), ("--cycles", cycles, 0)):
        if isinstance(n, bool) or not isinstance(n, int) or n < low:
            raise UserError(f"{flag} must be an integer >= {low}, got {n!r}")
    run = Path(req.run)
    translator, config = load_task_run(run)
    translator.best_of, translator.cycles = best_of, cycles
    if req.captions and config["task"] != "text2image":
        raise UserError("--captions applies to text tasks only")
    oracle = ensure_oracle(req.oracle, translator.ae.image_size)
    n = req.num_images
    fid = OracleFID(oracle, n, translator.ae.image_size)
    bank = None if exact_condition else load_condition_bank(run)

    def one(t):
        if config["task"] == "attributes":
            return evaluate_attributes(t, oracle, n, req.seed, fid, temperature)
        return evaluate_text(t, oracle, config, n, req.seed, req.captions, fid, temperature, bank)

    start = SPLITS["test"][0]
    real = render_batch(range(start, start + n), "test", translator.ae.image_size)[0]
    return {"task": config["task"], "run": str(run), "num_images": n, "temperature": temperature, "best_of": best_of,
            "cycles": cycles, **one(translator),
            **fid.references(real, translator), **mlp_baseline(run, translator, one)}
