"""Editing, sampling, exemplar transfer, grids and the measured evaluation of the sprites tasks.

Editing (Sec. 4.3, Fig. 6):  v = τ⁻¹(Θ(y) | c),  y* = Λ(τ(v | c*))  with c* = c with attributes changed.
Exemplar transfer:          v from exemplar y with its own c, recombined with another image's c.
The deterministic MLP baseline (Sec. E) has no v: its "edit" is Λ(MLP(c*)).
An oracle classifier (train/classifier.py) reads attributes off every decoded image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from train.common import UserError
from train.data import ATTRIBUTES, GROUPS
from train.data.captions import load_captions_jsonl, make_caption
from train.data.sprites import SPLITS, render_batch, to_tensor, to_uint8
from train.flow import ConditionalINN
from train.grids import save_grid
from train.trainer import load_translator

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


class Translator:
    """A trained cINN (or MLP) plus the frozen AE: the image-level operations of the paper."""

    def __init__(self, model, ae, ae_dir: str):
        self.model, self.ae, self.ae_dir = model, ae, ae_dir
        self.invertible = isinstance(model, ConditionalINN)

    @torch.no_grad()
    def _decode(self, z, batch=256):
        return torch.cat([self.ae.decode(z[i:i + batch]) for i in range(0, len(z), batch)])

    @torch.no_grad()
    def residual(self, images: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """v = τ⁻¹(Θ(y) | c)."""
        return self.model.inverse(self.ae.encode(images), cond)[0]

    @torch.no_grad()
    def edit(self, images: torch.Tensor, cond: torch.Tensor, new_cond: torch.Tensor) -> torch.Tensor:
        if not self.invertible:
            return self._decode(self.model(new_cond))
        return self._decode(self.model(self.residual(images, cond), new_cond))

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, num_samples: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return self._decode(self.model.sample(cond, num_samples, temperature, generator=gen))


def load_task_run(run_dir: str | Path):
    from train.tasks_sprites import load_ae
    model, config = load_translator(run_dir)
    return Translator(model, load_ae(config["ae"]), config["ae"]), config


def _condition(config: dict, attributes: np.ndarray, split: str, seed: int, encoder=None):
    """zΦ for images with these attributes: the vector itself, or the embedding of one caption each."""
    if config["task"] == "attributes":
        return torch.from_numpy(attributes), None
    rng = np.random.default_rng(seed)
    texts = [make_caption(a, rng, split, partial_prob=0.0)[0] for a in attributes]
    return encoder.encode(texts), texts


def write_grids(run_dir: str | Path, model, num: int = 6, samples: int = 6, seed: int = 0) -> None:
    """PNGs in RUN/grids/: attribute edits (Fig. 6), samples per condition, exemplar transfer; for text,
    captions rendered above their samples (Fig. 1): held-out phrasing (samples.png) and training phrasing."""
    translator, config = load_task_run(run_dir)
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
        sampled = to_uint8(translator.sample(c, samples, seed))
        save_grid([list(sampled[i * samples:(i + 1) * samples]) for i in range(num)], out / "samples.png",
                  row_titles=[", ".join(a for a, on in zip(ATTRIBUTES, attrs[i]) if on) for i in range(num)],
                  header="samples L(t(v|c)), v ~ N(0, I)", scale=2)
        if not translator.invertible:          # the MLP has no residual to transfer
            return
        v = translator.residual(x, c)          # exemplar i's residual with image j's attributes
        rows = [[images[i]] + list(to_uint8(translator._decode(translator.model(v[i:i + 1].expand(num, -1), c))))
                for i in range(num)]
        save_grid([[np.full_like(images[0], 255)] + list(images)] + rows, out / "transfer.png",
                  header="exemplar transfer: row = exemplar's v, column = target's attributes", scale=2)
    else:
        from train.experts import TextEncoder
        encoder = TextEncoder(config["text_encoder"])
        for split, name in (("heldout", "samples.png"), ("train", "samples_train_phrasing.png")):
            cond, texts = _condition(config, attrs, split, seed, encoder)
            sampled = to_uint8(translator.sample(cond, samples, seed))
            save_grid([list(sampled[i * samples:(i + 1) * samples]) for i in range(num)], out / name,
                      row_titles=texts, header=f"{'held-out' if split == 'heldout' else 'training'}-phrased "
                      "captions -> samples", scale=2)


def _probe(v_train, y_train, v_test, y_test, steps: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Linear probe per attribute from v (Eq. 5-6: v should carry no information about zΦ)."""
    torch.manual_seed(0)
    mean, std = v_train.mean(0), v_train.std(0) + 1e-6
    lin = torch.nn.Linear(v_train.shape[1], y_train.shape[1])
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(lin((v_train - mean) / std), y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (((lin((v_test - mean) / std) > 0).float() == y_test).float().mean(0)).numpy()
    majority = (y_train.mean(0) > 0.5).float()
    return acc, (y_test == majority).float().mean(0).numpy()


def _diversity(translator, cond, samples: int, seed: int) -> float:
    """Mean over conditions of the per-pixel standard deviation across samples (pixels in [0, 1])."""
    imgs = (translator.sample(cond, samples, seed) + 1) / 2
    return float(imgs.reshape(len(cond), samples, -1).std(1).mean())


def evaluate_attributes(translator, oracle, n: int, seed: int) -> dict:
    start = SPLITS["test"][0]
    images, attrs, _ = render_batch(range(start, start + n), "test", translator.ae.image_size)
    x, c = to_tensor(images), torch.from_numpy(attrs)
    recon_read = oracle.predict(translator.edit(x, c, c))
    flip_ok, keep, keep_all = [], [], []
    for name in ATTRIBUTES:
        new = np.stack([flip(a, name) for a in attrs])
        read = oracle.predict(translator.edit(x, c, torch.from_numpy(new)))
        changed = new != attrs
        flip_ok.append(np.all((read == new) | ~changed, 1).mean())
        same = (read == recon_read) | changed
        keep.append((same.sum(1) - changed.sum(1)).mean() / (len(ATTRIBUTES) - changed.sum(1)).mean())
        keep_all.append(np.all(same, 1).mean())
    result = {"flip_success": float(np.mean(flip_ok)), "keep_rate": float(np.mean(keep)),
              "keep_all_rate": float(np.mean(keep_all)),
              "recon_agreement": float((recon_read == attrs).mean()),
              "per_attribute_flip_success": {a: float(f) for a, f in zip(ATTRIBUTES, flip_ok)},
              "diversity": _diversity(translator, c[:50], 8, seed)}
    if translator.invertible:
        from train.tasks_sprites import sprite_latents
        tr_attr, tr_z = sprite_latents(translator.ae_dir, translator.ae, "train", 5000)
        with torch.no_grad():
            v_train = translator.model.inverse(tr_z, tr_attr)[0]
            v_test = translator.residual(x, c)
        acc, base = _probe(v_train, tr_attr, v_test, c)
        result.update(probe_accuracy=float(acc.mean()), probe_baseline=float(base.mean()))
    else:
        result.update(probe_accuracy=None, probe_baseline=None)
    return result


def _score_captions(translator, oracle, encoder, texts, mentioned, seed) -> tuple[float, dict[str, float]]:
    """The oracle reads one sample per caption. Overall: share of the mentioned attribute entries read as
    mentioned (a mentioned colour contributes its five entries). Per attribute: share of the captions
    mentioning it whose sample shows the mentioned value (a one-hot group such as colour is one attribute)."""
    read = oracle.predict(translator.sample(encoder.encode(texts), 1, seed))
    hits = [read[i, ATTRIBUTES.index(a)] == v for i, m in enumerate(mentioned) for a, v in m.items()]
    group_of = {name: g for g, names in GROUPS.items() for name in names}
    per: dict[str, list[bool]] = {}
    for i, m in enumerate(mentioned):
        for a, v in m.items():
            if a not in group_of or v:        # a group is scored once, by its mentioned (1) value
                per.setdefault(group_of.get(a, a), []).append(bool(read[i, ATTRIBUTES.index(a)] == v))
    return (float(np.mean(hits)) if hits else float("nan")), {k: float(np.mean(v)) for k, v in per.items()}


def evaluate_text(translator, oracle, config, n: int, seed: int, captions_file: str | None) -> dict:
    from train.experts import TextEncoder
    encoder = TextEncoder(config["text_encoder"])
    start = SPLITS["test"][0]
    _, attrs, _ = render_batch(range(start, start + n), "test", translator.ae.image_size)
    rng = np.random.default_rng(seed)
    pairs = [make_caption(a, rng, "heldout") for a in attrs]
    acc, per = _score_captions(translator, oracle, encoder, [p[0] for p in pairs], [p[1] for p in pairs], seed)
    result = {"heldout_attribute_accuracy": acc, "heldout_per_attribute": per}
    cond, _ = _condition(config, attrs[:50], "heldout", seed, encoder)
    result["diversity"] = _diversity(translator, cond, 8, seed)
    if captions_file:
        items = load_captions_jsonl(captions_file)
        acc, per = _score_captions(translator, oracle, encoder, [t for t, _ in items], [m for _, m in items], seed)
        result.update(caption_attribute_accuracy=acc, caption_per_attribute=per)
    return result


def mlp_baseline(run: Path, translator: Translator, one) -> dict:
    """{"mlp": one(MLP translator)} for the MLP baseline (Sec. E) beside the run (RUN/../mlp), if trained."""
    mlp_dir = run.parent / "mlp"
    if not (mlp_dir / "checkpoint.safetensors").is_file():
        return {"mlp": None, "mlp_note": f"no MLP run in {mlp_dir}; train one with --model mlp"}
    mlp, _ = load_translator(mlp_dir)
    return {"mlp": one(Translator(mlp, translator.ae, translator.ae_dir))}


def evaluate_run(args) -> dict:
    """`python -m train.evaluate --task attributes|text2image --run runs/<task>/cinn --json`."""
    from train.classifier import ensure_oracle
    run = Path(args.run)
    translator, config = load_task_run(run)
    oracle = ensure_oracle(args.oracle, translator.ae.image_size)
    n = args.num_images

    def one(t):
        if config["task"] == "attributes":
            return evaluate_attributes(t, oracle, n, args.seed)
        return evaluate_text(t, oracle, config, n, args.seed, args.captions)

    result = {"task": config["task"], "run": str(run), "num_images": n, **one(translator),
              **mlp_baseline(run, translator, one)}
    if args.captions and config["task"] != "text2image":
        raise UserError("--captions applies to text tasks only")
    return result
