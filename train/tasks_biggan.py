"""The bert2biggan task (Sec. 4.1, Appendix G.2): caption x -> sentence encoder Φ -> zΦ -> τ -> zΘ -> BigGAN Λ.

  python -m train.cinn --task bert2biggan --biggan DIR [--text-encoder PATH] [--captions FILE]
  python -m train.evaluate --task bert2biggan --run runs/bert2biggan/cinn --json

Pairs (Eq. 24): a class c, one of its training captions x (re-drawn every batch), zΦ = Φ(x) (all captions
are encoded once at the start), zΘ = [z̃, ĥ] with z̃ BigGAN's truncated noise and ĥ the dequantizer's
stochastic reconstruction of W·c. The dequantizer is trained first and saved with the run.
"""
from __future__ import annotations

import argparse
import functools
import math
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from train import biggan as bg
from train.common import UserError, load_tensors, progress_interval, read_json, save_tensors
from train.experts import TextEncoder
from train.tasks import Experts, Task, add_arg_once, register
from train.trainer import evaluate_nll, load_translator

# `data`: classes used (evenly spaced over the 1000), train captions and held-out captions (evaluated; as many
# again from the other held-out templates for validation) per class, dequantizer steps and width.
PRESETS = {
    "smoke": {"flow": {"num_blocks": 2, "hidden": 32, "embed_hidden": 32},
              "train": {"steps": 20, "batch_size": 64, "val_every": 10, "ckpt_every": 10, "warmup": 5},
              "data": {"classes": 20, "train_captions": 4, "heldout_captions": 2,
                       "dequantizer_steps": 30, "dequantizer_width": 32}},
    "default": {"flow": {"num_blocks": 4, "hidden": 512, "depth": 2, "embed_dim": 128, "embed_hidden": 512},
                "train": {"steps": 1200, "batch_size": 256, "lr": 2e-3, "val_every": 200, "ckpt_every": 200},
                "data": {"classes": 1000, "train_captions": 8, "heldout_captions": 2,
                         "dequantizer_steps": 600, "dequantizer_width": 256}},
    "paper": {"flow": {"num_blocks": 20, "hidden": "8d", "depth": 4},
              "train": {"steps": 20000, "batch_size": 25, "lr": 1e-4},
              "data": {"classes": 1000, "train_captions": 12, "heldout_captions": 2,
                       "dequantizer_steps": 5000, "dequantizer_width": 4096}},
}
GRID_CLASSES = (1, 207, 779, 963, 937, 980)     # goldfish, golden retriever, school bus, pizza, broccoli, volcano


def _add_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("bert2biggan task")
    g.add_argument("--biggan", help="BigGAN-deep generator: DIR (config.json + pytorch_model.bin, the "
                                    "pytorch-pretrained-biggan format), biggan-deep-128|256|512 (only from that "
                                    "package's cache) or random:biggan-deep-128|256|512 (random weights, tests only)")
    g.add_argument("--truncation", type=float, default=0.4, help="BigGAN truncation of z̃ in (0, 1] (default 0.4)")
    add_arg_once(ap, "--text-encoder", help="sentence-transformers folder for Φ (default: bundled all-MiniLM-L6-v2)")
    add_arg_once(ap, "--captions", help="extra training captions: .jsonl {\"class\": i, \"text\": ...} "
                                        "or .tsv 'index<TAB>caption' (bert2biggan)")


@functools.lru_cache(maxsize=2)
def _text_encoder(path: str | None) -> TextEncoder:
    return TextEncoder(path)


def _class_subset(n: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, 999, n).round()})


def _heldout(classes: list[int], n: int, part: str) -> list[tuple[int, str]]:
    """Held-out-template captions: per class the first n are evaluated, the next n are the trainer's
    validation split (best-checkpoint selection), so model selection never sees an evaluated caption."""
    start = 0 if part == "eval" else n
    return [(c, t) for c in classes for t in bg.class_captions(c, 2 * n, "heldout")[start:start + n]]


def _encode(encoder: TextEncoder, texts: list[str], desc: str) -> torch.Tensor:
    """Encode (and cache) in length order, so batches pad little, then return the rows in `texts` order."""
    unique, chunk = sorted(set(texts), key=len), 256
    with tqdm(total=len(unique), desc=desc, unit="caption", mininterval=progress_interval()) as bar:
        for i in range(0, len(unique), chunk):
            bar.update(len(encoder.encode(unique[i:i + chunk])))
    return encoder.encode(texts)


class CaptionPairs:
    """PairSource of Eq. 24 pairs (zΦ, zΘ = [z̃, ĥ]); z̃ and ĥ are drawn afresh in every batch."""

    def __init__(self, w, dequantizer, truncation, emb, labels, val_emb, val_labels, seed: int):
        self.w, self.dequantizer, self.truncation = w, dequantizer, truncation
        order = torch.argsort(labels, stable=True)
        self.emb, labels = emb[order], labels[order]
        self.classes, self.counts = torch.unique_consecutive(labels, return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.cond_shape, self.target_dim = (emb.shape[1],), 2 * w.shape[1]
        self.val = (val_emb, self.targets(val_labels, torch.Generator().manual_seed(seed + 1)))
        self.seed = seed

    @torch.no_grad()
    def targets(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        z_tilde = bg.truncated_noise(len(labels), self.w.shape[1], self.truncation, gen)
        return torch.cat([z_tilde, self.dequantizer(self.w[labels], gen)], 1)

    def batch(self, size: int, generator: torch.Generator):
        ci = torch.randint(len(self.classes), (size,), generator=generator)
        j = self.starts[ci] + (torch.rand(size, generator=generator) * self.counts[ci]).long()
        return self.emb[j], self.targets(self.classes[ci], generator)

    def validation(self):
        return self.val

    def statistics(self):
        _, z = self.batch(8192, torch.Generator().manual_seed(self.seed + 2))
        return self.emb.mean(0), self.emb.std(0), z.mean(0), z.std(0)


def _make_source(args) -> tuple[CaptionPairs, dict]:
    if args.preset not in PRESETS:
        raise UserError(f"unknown preset '{args.preset}' for task bert2biggan; choose from {', '.join(PRESETS)}")
    if isinstance(args.biggan, dict):       # export.onnx rebuilding pairs from config.json: needs the run folder
        raise UserError("bert2biggan pairs need the run's dequantizer; use `python -m train.evaluate` for them")
    data = PRESETS[args.preset]["data"]
    if not 0 < args.truncation <= 1:
        raise UserError(f"--truncation must be in (0, 1], got {args.truncation}")
    user = bg.load_captions_file(args.captions) if args.captions else []
    biggan, binfo, warnings = bg.load_biggan(args.biggan)
    w = bg.class_embeddings(biggan)
    out = Path(args.out or f"runs/{args.task}/{args.model}")
    if args.resume:
        recorded = read_json(out / "config.json")
        _biggan_for(recorded, args.biggan)           # the same W, or the dequantized targets would not match
        dequantizer, dq_info = _load_dequantizer(out, recorded)
    else:
        if (out / "checkpoint.safetensors").exists():
            raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        t0 = time.perf_counter()
        dequantizer, dq_info = bg.train_dequantizer(w, data["dequantizer_steps"], data["dequantizer_width"],
                                                    seed=args.seed)
        dq_info.update(dequantizer.config, seconds=round(time.perf_counter() - t0, 1))
        save_tensors(out / "dequantizer.safetensors", dequantizer.state_dict())
        print(f"dequantizer (Tab. S4, width {dq_info['width']}): relative error {dq_info['rel_error']:.3f}, "
              f"nearest class {dq_info['nearest_class_acc']:.3f}, {dq_info['seconds']}s")
    classes = _class_subset(data["classes"])
    train = [(c, t) for c in classes for t in bg.class_captions(c, data["train_captions"], "train")] + user
    heldout = _heldout(classes, data["heldout_captions"], "val")
    encoder = _text_encoder(args.text_encoder)
    t0 = time.perf_counter()
    emb = _encode(encoder, [t for _, t in train], "encode train captions")
    val_emb = _encode(encoder, [t for _, t in heldout], "encode validation captions")
    seconds = time.perf_counter() - t0
    print(f"encoded {len(train) + len(heldout)} captions in {seconds:.1f}s with {encoder.name}")
    source = CaptionPairs(w, dequantizer, args.truncation, emb, torch.tensor([c for c, _ in train]),
                          val_emb, torch.tensor([c for c, _ in heldout]), args.seed)
    info = {"task": "bert2biggan", "warnings": list(warnings), "biggan": {**binfo, "truncation": args.truncation},
            "text_encoder": {"path": args.text_encoder, "name": encoder.name, "dim": encoder.output_dim},
            "dequantizer": dq_info,
            "data": {**data, "class_ids": classes, "train_pairs": len(train), "val_pairs": len(heldout),
                     "user_captions": str(args.captions) if args.captions else None,
                     "encode_seconds": round(seconds, 1)}}
    return source, info


def _load_dequantizer(run: Path, config: dict) -> tuple[bg.Dequantizer, dict]:
    info = config["dequantizer"]
    dq = bg.Dequantizer(info["dim"], info["width"], info["scale"], info["noise"])
    dq.load_state_dict(load_tensors(run / "dequantizer.safetensors"))
    return dq.eval().requires_grad_(False), info


def _biggan_for(config: dict, override: str | None):
    """The run's BigGAN (or `override`, e.g. the same weights in another folder), checked to have the class
    embeddings the run was trained on."""
    model, binfo, warnings = bg.load_biggan(override or config["biggan"]["source"])
    if binfo["embedding_sha256"] != config["biggan"]["embedding_sha256"]:
        raise UserError(f"--biggan {binfo['source']} is not the generator this run was trained with "
                        f"({config['biggan']['source']}): its class embeddings W differ")
    return model, binfo, list(warnings)


def experts(config: dict, biggan: str | None = None, text_encoder: str | None = None) -> Experts:
    model, binfo, warnings = _biggan_for(config, biggan)
    encoder = _text_encoder(text_encoder or config["text_encoder"]["path"])
    t = config["biggan"]["truncation"]
    return Experts(source_encoder=encoder, target_encoder=None, target_decoder=bg.BigGANDecoder(model, t),
                   info={"tokenizer_dir": encoder.path, "image_size": binfo["image_size"],
                         "split": [binfo["z_dim"], binfo["z_dim"]], "truncation": t, "warnings": warnings,
                         "biggan": {**config["biggan"], "source": binfo["source"]}})


def write_grid(path: Path, captions: list[str], images: torch.Tensor, header: list[str]) -> None:
    """Fig. 1 / S8 layout: per caption, its text above a row of its samples; `images` (N·k, 3, H, W) in
    [-1, 1], k = N·k / len(captions) samples per caption; header lines on top."""
    per_row = len(images) // len(captions)
    cell, pad, line = max(images.shape[-1], 128), 6, 13
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    width = per_row * (cell + pad) + pad
    chars = max(20, width // 7)
    blocks = [textwrap.wrap(f'"{c}"', chars) for c in captions]
    head = [w for h in header for w in textwrap.wrap(h, chars)]
    height = pad + len(head) * line + pad + sum(len(b) * line + cell + 2 * pad for b in blocks)
    canvas = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    y = pad
    for text in head:
        draw.text((pad, y), text, fill=(160, 0, 0), font=font)
        y += line
    y += pad
    for i, block in enumerate(blocks):
        for text in block:
            draw.text((pad, y), text, fill="black", font=font)
            y += line
        y += pad // 2
        for k in range(per_row):
            tile = Image.fromarray(arr[i * per_row + k]).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (pad + k * (cell + pad), y))
        y += cell + pad + pad // 2
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


@torch.no_grad()
def _after_training(run_dir, model, args, samples: int = 4) -> None:
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    ex = experts(config)
    ids = config["data"]["class_ids"]
    chosen = ([c for c in GRID_CLASSES if c in ids] + [c for c in ids if c not in GRID_CLASSES])[:6]
    captions = [bg.class_captions(c, 1, "heldout")[0] for c in chosen]
    z = model.sample(ex.source_encoder.encode(captions), samples, generator=torch.Generator().manual_seed(args.seed))
    images = ex.target_decoder(z)
    b = config["biggan"]
    header = [f"bert2biggan: held-out captions -> {samples} samples each; BigGAN {b['source']}, "
              f"truncation {b['truncation']}"]
    if b["random_init"]:
        header.append("random-init BigGAN: untrained generator, the images are noise by design")
    write_grid(run_dir / "grids" / "samples.png", captions, images, header)
    print(f"grid: {run_dir / 'grids' / 'samples.png'}")


@torch.no_grad()
def _class_accuracy(model, encoder, w, captions: list[tuple[int, str]], gen) -> tuple[float, float]:
    """Sample zΘ for each caption (Eq. 7) and rank the rows of W by cosine to its ĥ part."""
    z = model.sample(encoder.encode([t for _, t in captions]), 1, generator=gen)
    top = bg.nearest_classes(z[:, w.shape[1]:], w, 5)
    truth = torch.tensor([c for c, _ in captions])[:, None]
    return float((top[:, :1] == truth).any(1).float().mean()), float((top == truth).any(1).float().mean())


def _evaluate(args) -> dict:
    ap = argparse.ArgumentParser(prog="python -m train.evaluate --task bert2biggan")
    ap.add_argument("--biggan", help="BigGAN to use instead of the run's recorded one (same weights)")
    ap.add_argument("--text-encoder", help="text encoder folder instead of the run's recorded one")
    opts, rest = ap.parse_known_args(args.extra)
    if rest:
        raise UserError(f"unknown options for bert2biggan evaluation: {' '.join(rest)}")
    model, config = load_translator(args.run)
    biggan, _, warnings = _biggan_for(config, opts.biggan)
    w = bg.class_embeddings(biggan)
    dequantizer, _ = _load_dequantizer(Path(args.run), config)
    encoder = _text_encoder(opts.text_encoder or config["text_encoder"]["path"])
    data = config["data"]
    heldout = _heldout(data["class_ids"], data["heldout_captions"], "eval")
    train = [(c, bg.class_captions(c, 1, "train")[0]) for c in data["class_ids"]]
    gen = torch.Generator().manual_seed(args.seed)
    top1, top5 = _class_accuracy(model, encoder, w, heldout, gen)
    train1, train5 = _class_accuracy(model, encoder, w, train, gen)
    labels = torch.tensor([c for c, _ in heldout])
    z_tilde = bg.truncated_noise(len(labels), w.shape[1], config["biggan"]["truncation"], gen)
    z = torch.cat([z_tilde, dequantizer(w[labels], gen)], 1)
    nats = evaluate_nll(model, encoder.encode([t for _, t in heldout]), z)
    dq_top1 = float((bg.nearest_classes(z[:, w.shape[1]:], w, 1)[:, 0] == labels).float().mean())
    return {"run": str(args.run), "classes": len(data["class_ids"]), "heldout_captions": len(heldout),
            "class_top1": top1, "class_top5": top5, "train_template_top1": train1, "train_template_top5": train5,
            "dequantizer_top1": dq_top1, "nll_nats_per_dim": nats, "bits_per_dim": nats / math.log(2),
            "biggan": config["biggan"]["source"], "warnings": warnings}


register(Task("bert2biggan", "captions -> sentence encoder -> BigGAN-deep latent (Sec. 4.1)", _add_args,
              _make_source, presets=PRESETS, experts=experts, after_training=_after_training, evaluate=_evaluate))
