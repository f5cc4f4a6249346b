"""The bert2biggan task (Sec. 4.1, Appendix G.2): caption x -> sentence encoder Φ -> zΦ -> τ -> zΘ -> BigGAN Λ.

  python -m train.cinn --task bert2biggan --biggan DIR [--text-encoder PATH] [--captions FILE]
  python -m train.evaluate --task bert2biggan --run runs/bert2biggan/cinn --json

Pairs (Eq. 24): a class c, one of its training captions x (re-drawn every batch), zΦ = Φ(x) (all captions
are encoded once at the start), zΘ = [z̃, ĥ] with z̃ BigGAN's truncated noise and ĥ the dequantizer's
stochastic reconstruction of W·c. The dequantizer is trained first and saved with the run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from train.core.common import UserError, progress_interval, read_json, save_tensors
from train.data.imagenet import class_captions, class_subset, heldout_captions, load_captions_file
from train.eval.bert2biggan import BigGANEval, evaluate_run, write_samples_grid
from train.experts.biggan import biggan_experts, biggan_for_run, class_embeddings, load_biggan, truncated_noise
from train.experts.dequantizer import load_dequantizer, train_dequantizer
from train.experts.text import TextEncoder, cached_text_encoder
from train.tasks.contract import PairRequest, RunResult, Task, TrainingPairs, option

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


@dataclass
class BigGANOptions:
    biggan: str | None = option(help="BigGAN-deep generator: DIR (config.json + pytorch_model.bin, the "
                                     "pytorch-pretrained-biggan format), biggan-deep-128|256|512 (only from that "
                                     "package's cache) or random:biggan-deep-128|256|512 (random weights, tests only)")
    truncation: float = option(0.4, "BigGAN truncation of z̃ in (0, 1] (default 0.4)")
    text_encoder: str | None = option(help="sentence-transformers folder for Φ (default: bundled all-MiniLM-L6-v2)")
    captions: str | None = option(help="extra training captions: .jsonl {\"class\": i, \"text\": ...} or .tsv "
                                       "'index<TAB>caption'")


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
        z_tilde = truncated_noise(len(labels), self.w.shape[1], self.truncation, gen)
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


def _pairs(req: PairRequest) -> TrainingPairs:
    args, data = req.options, req.data
    if not 0 < args.truncation <= 1:
        raise UserError(f"--truncation must be in (0, 1], got {args.truncation}")
    user = load_captions_file(args.captions) if args.captions else []
    biggan, binfo, warnings = load_biggan(args.biggan)
    w = class_embeddings(biggan)
    out = Path(req.out or f"runs/{req.task}/{req.model}")
    if req.resume:
        recorded = read_json(out / "config.json")
        biggan_for_run(recorded, args.biggan)           # the same W, or the dequantized targets would not match
        dequantizer, dq_info = load_dequantizer(out, recorded)
    else:
        if (out / "checkpoint.safetensors").exists():
            raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        t0 = time.perf_counter()
        dequantizer, dq_info = train_dequantizer(w, data["dequantizer_steps"], data["dequantizer_width"],
                                                    seed=req.seed)
        dq_info.update(dequantizer.config, seconds=round(time.perf_counter() - t0, 1))
        save_tensors(out / "dequantizer.safetensors", dequantizer.state_dict())
        print(f"dequantizer (Tab. S4, width {dq_info['width']}): relative error {dq_info['rel_error']:.3f}, "
              f"nearest class {dq_info['nearest_class_acc']:.3f}, {dq_info['seconds']}s")
    classes = class_subset(data["classes"])
    train = [(c, t) for c in classes for t in class_captions(c, data["train_captions"], "train")] + user
    heldout = heldout_captions(classes, data["heldout_captions"], "val")
    encoder = cached_text_encoder(args.text_encoder)
    t0 = time.perf_counter()
    emb = _encode(encoder, [t for _, t in train], "encode train captions")
    val_emb = _encode(encoder, [t for _, t in heldout], "encode validation captions")
    seconds = time.perf_counter() - t0
    print(f"encoded {len(train) + len(heldout)} captions in {seconds:.1f}s with {encoder.name}")
    source = CaptionPairs(w, dequantizer, args.truncation, emb, torch.tensor([c for c, _ in train]),
                          val_emb, torch.tensor([c for c, _ in heldout]), req.seed)
    info = {"task": "bert2biggan", "warnings": list(warnings), "biggan": {**binfo, "truncation": args.truncation},
            "text_encoder": {"path": args.text_encoder, "name": encoder.name, "dim": encoder.output_dim},
            "dequantizer": dq_info,
            "data": {**data, "class_ids": classes, "train_pairs": len(train), "val_pairs": len(heldout),
                     "user_captions": str(args.captions) if args.captions else None,
                     "encode_seconds": round(seconds, 1)}}
    return TrainingPairs(source, info)


def _recorded_request(config: dict) -> PairRequest:
    raise UserError("bert2biggan pairs need the run's dequantizer; use `python -m train.evaluate` for them")


def _grid(result: RunResult) -> None:
    write_samples_grid(result.run, result.model, result.request.seed)


TASKS = {"bert2biggan": Task("bert2biggan", "captions -> sentence encoder -> BigGAN-deep latent (Sec. 4.1)", _pairs,
                             PRESETS, BigGANOptions, biggan_experts, _grid, evaluate_run, BigGANEval,
                             recorded_request=_recorded_request)}
