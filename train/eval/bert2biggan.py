"""The bert2biggan task's grids and evaluation (train/tasks/bert2biggan.py; Sec. 4.1, Fig. 1 / S8)."""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from train.core.common import read_json
from train.core.translator import evaluate_nll, load_translator
from train.data.imagenet import class_captions, heldout_captions
from train.experts.biggan import biggan_experts, biggan_for_run, class_embeddings, truncated_noise
from train.experts.dequantizer import load_dequantizer, nearest_classes
from train.experts.text import cached_text_encoder

GRID_CLASSES = (1, 207, 779, 963, 937, 980)     # goldfish, golden retriever, school bus, pizza, broccoli, volcano


@dataclass
class BigGANEval:
    """Evaluation options of bert2biggan."""
    biggan: str | None = None           # BigGAN to use instead of the run's recorded one (same weights)
    text_encoder: str | None = None     # text encoder folder instead of the run's recorded one


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
def write_samples_grid(run_dir, model, seed: int, samples: int = 4) -> None:
    """RUN/grids/samples.png: held-out captions of up to six classes, `samples` images each (Fig. 1 / S8)."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    ex = biggan_experts(config)
    ids = config["data"]["class_ids"]
    chosen = ([c for c in GRID_CLASSES if c in ids] + [c for c in ids if c not in GRID_CLASSES])[:6]
    captions = [class_captions(c, 1, "heldout")[0] for c in chosen]
    z = model.sample(ex.source_encoder.encode(captions), samples, generator=torch.Generator().manual_seed(seed))
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
    top = nearest_classes(z[:, w.shape[1]:], w, 5)
    truth = torch.tensor([c for c, _ in captions])[:, None]
    return float((top[:, :1] == truth).any(1).float().mean()), float((top == truth).any(1).float().mean())


def evaluate_run(req) -> dict:
    """`python -m train.evaluate --task bert2biggan --run DIR --json` (an EvalRequest; options: BigGANEval):
    class accuracy of samples for held-out and training-template captions, NLL of held-out pairs."""
    opts = req.options
    model, config = load_translator(req.run)
    biggan, _, warnings = biggan_for_run(config, opts.biggan)
    w = class_embeddings(biggan)
    dequantizer, _ = load_dequantizer(Path(req.run), config)
    encoder = cached_text_encoder(opts.text_encoder or config["text_encoder"]["path"])
    data = config["data"]
    heldout = heldout_captions(data["class_ids"], data["heldout_captions"], "eval")
    train = [(c, class_captions(c, 1, "train")[0]) for c in data["class_ids"]]
    gen = torch.Generator().manual_seed(req.seed)
    top1, top5 = _class_accuracy(model, encoder, w, heldout, gen)
    train1, train5 = _class_accuracy(model, encoder, w, train, gen)
    labels = torch.tensor([c for c, _ in heldout])
    z_tilde = truncated_noise(len(labels), w.shape[1], config["biggan"]["truncation"], gen)
    z = torch.cat([z_tilde, dequantizer(w[labels], gen)], 1)
    nats = evaluate_nll(model, encoder.encode([t for _, t in heldout]), z)
    dq_top1 = float((nearest_classes(z[:, w.shape[1]:], w, 1)[:, 0] == labels).float().mean())
    return {"run": str(req.run), "classes": len(data["class_ids"]), "heldout_captions": len(heldout),
            "class_top1": top1, "class_top5": top5, "train_template_top1": train1, "train_template_top5": train5,
            "dequantizer_top1": dq_top1, "nll_nats_per_dim": nats, "bits_per_dim": nats / math.log(2),
            "biggan": config["biggan"]["source"], "warnings": warnings}
