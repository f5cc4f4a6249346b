"""Evaluation of the autoencoder g: the oracle reads attributes off inputs and their reconstructions, and the
oracle FID of the reconstructions says how real they look (the ceiling of every sample decoded through g)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from train.core.common import UserError, atomic_write_json, read_json
from train.data import ATTRIBUTES, SHAPES
from train.data.sprites import render_batch, to_tensor
from train.eval.fid import OracleFID
from train.eval.metrics import psnr
from train.experts.autoencoder import load_autoencoder
from train.experts.classifier_training import ensure_oracle


def shape_readback(read_out: np.ndarray, attrs: np.ndarray, attributes: list[str]) -> dict:
    """Per true shape: the fraction of its reconstructions the oracle reads as that shape (None if none)."""
    out = {}
    for shape in SHAPES:
        truth = attrs[:, ATTRIBUTES.index(f"shape_{shape}")] == 1
        read = read_out[truth, attributes.index(f"shape_{shape}")]
        out[shape] = float(read.mean()) if len(read) else None
    return out


@torch.no_grad()
def evaluate_ae(run_dir: str | Path, num_images: int = 1000, oracle_dir: str | Path = "runs/sprites/classifier",
                batch_size: int = 250, fid: bool = True) -> dict:
    """Reconstruct the first `num_images` sprite test renders; the oracle reads attributes from the input and
    from its reconstruction. oracle_agreement: fraction of (image, attribute) pairs read identically;
    shape_readback: per true shape, the fraction of reconstructions read as that shape; fid_recon / fid_real:
    oracle FID (train/eval/fid.py) of the reconstructions / of the inputs against `num_images` other real
    renders (test sprites 5000..), both at N = num_images."""
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
    result = {
        "oracle_agreement": float(agree.mean()),
        "per_attribute_agreement": dict(zip(oracle.attributes, map(float, agree))),
        "shape_readback": shape_readback(read_out, attrs, list(oracle.attributes)),
        "psnr": psnr(recon, x),
        "oracle_accuracy_input": float((read_in == truth).mean()),            # oracle vs. ground truth
        "oracle_accuracy_reconstruction": float((read_out == truth).mean()),
        "num_images": num_images,
    }
    if fid and num_images >= 2:
        scorer = OracleFID(oracle, num_images, model.image_size)
        result.update(fid_recon=scorer(recon), fid_real=scorer(x), fid_reference=scorer.describe())
    return result


def report(run_dir: Path, num_images: int, oracle_dir: str) -> dict:
    """Evaluate, print a summary and write RUN/eval.json."""
    result = evaluate_ae(run_dir, num_images, oracle_dir)
    atomic_write_json(run_dir / "eval.json", result)
    per = "  ".join(f"{k} {v:.3f}" for k, v in result["per_attribute_agreement"].items())
    shapes = " / ".join(f"{k} {v:.3f}" for k, v in result["shape_readback"].items() if v is not None)
    fid = (f", oracle FID of reconstructions {result['fid_recon']:.1f} (real vs real {result['fid_real']:.1f}, "
           f"N={num_images})" if "fid_recon" in result else "")
    print(f"oracle agreement {result['oracle_agreement']:.4f} on {num_images} test sprites, PSNR "
          f"{result['psnr']:.2f} dB{fid} (written to {run_dir / 'eval.json'})\n"
          f"  shape read back as itself: {shapes}\n  {per}")
    return result
