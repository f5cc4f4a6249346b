"""Evaluation of the autoencoder g: the oracle reads attributes off inputs and their reconstructions."""
from __future__ import annotations

from pathlib import Path

import torch

from train.core.common import UserError, atomic_write_json, read_json
from train.data import ATTRIBUTES
from train.data.sprites import render_batch, to_tensor
from train.eval.metrics import psnr
from train.experts.autoencoder import load_autoencoder
from train.experts.classifier_training import ensure_oracle


@torch.no_grad()
def evaluate_ae(run_dir: str | Path, num_images: int = 1000, oracle_dir: str | Path = "runs/sprites/classifier",
                batch_size: int = 250) -> dict:
    """Reconstruct the first `num_images` sprite test renders; the oracle reads attributes from the input and
    from its reconstruction. oracle_agreement: fraction of (image, attribute) pairs read identically."""
    model = load_autoencoder(run_dir)
    data = read_json(Path(run_dir) / "config.json").get("data", "sprites")
    if data != "sprites":
        raise UserError(f"{run_dir} was trained on '{data}'; oracle agreement is defined for sprites runs only")
    if num_images < 1:
        raise UserError(f"num_images must be positive, got {num_images}")
    oracle = ensure_oracle(oracle_dir, size=model.image_size)
    images, attrs, _ = render_batch(range(num_images), "test", model.image_size)
    x = to_tensor(images)
    recon = torch.cat([model.decode(model.encode(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])
    read_in, read_out = oracle.predict(x), oracle.predict(recon)
    agree = (read_in == read_out).mean(0)
    truth = attrs[:, [ATTRIBUTES.index(a) for a in oracle.attributes]]
    return {
        "oracle_agreement": float(agree.mean()),
        "per_attribute_agreement": dict(zip(oracle.attributes, map(float, agree))),
        "psnr": psnr(recon, x),
        "oracle_accuracy_input": float((read_in == truth).mean()),            # oracle vs. ground truth
        "oracle_accuracy_reconstruction": float((read_out == truth).mean()),
        "num_images": num_images,
    }


def report(run_dir: Path, num_images: int, oracle_dir: str) -> dict:
    """Evaluate, print a summary and write RUN/eval.json."""
    result = evaluate_ae(run_dir, num_images, oracle_dir)
    atomic_write_json(run_dir / "eval.json", result)
    per = "  ".join(f"{k} {v:.3f}" for k, v in result["per_attribute_agreement"].items())
    print(f"oracle agreement {result['oracle_agreement']:.4f} on {num_images} test sprites, PSNR "
          f"{result['psnr']:.2f} dB (written to {run_dir / 'eval.json'})\n  {per}")
    return result
