"""Train the autoencoder g of Appendix F and evaluate it with the oracle (a thin skin over train/experts/).

    python -m train.ae --task attributes                       # default preset on sprites
    python -m train.ae --task attributes --preset smoke --out /tmp/ae
    python -m train.ae --data folder --data-root PATH --out runs/faces/ae
    python -m train.ae --eval --out runs/attributes/ae         # only evaluate a finished run
    python -m train.ae --task superres --size 16 --preset small --out runs/superres/ae_lowres
    python -m train.ae --task unpaired --style union --init runs/attributes/ae --steps 1500 --lr 5e-4

The loss (Eq. 14, 16-18) and the training live in train/experts/ae_training.py; the model in
train/experts/autoencoder.py; the evaluation in train/eval/ae.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from train.core.common import UserError, run_cli
from train.eval.ae import report
from train.experts.ae_training import PRESETS, AESpec, preset_summary, train_autoencoder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.ae", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="attributes", help="names the default run folder runs/<task>/ae")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="; ".join(preset_summary(n) for n in PRESETS) + " (default: default)")
    p.add_argument("--data", choices=["sprites", "celeba", "folder"], default="sprites")
    p.add_argument("--data-root", help="CelebA root or image folder (--data celeba|folder)")
    p.add_argument("--attr-csv", help="attribute CSV for --data folder (optional; images only are used)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default %(default)s)")
    p.add_argument("--style", choices=["flat", "textured", "union"], default="flat",
                   help="sprites: flat, textured, or their union (half of every batch each; default %(default)s)")
    p.add_argument("--init", help="start from the weights of this AE run (same settings): fine-tuning")
    p.add_argument("--out", help="run folder (default runs/<task>/ae)")
    p.add_argument("--steps", type=int, help="optimizer steps (default from the preset)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--edge-weight", type=float, help="sprites: extra loss weight on the silhouette outline")
    p.add_argument("--kl-weight", type=float,
                   help="weight of KL(q(z|y) || N(0, I)), summed over z, against the per-pixel L1 "
                        "(default from the preset)")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's choice; 1 is best on a busy CPU)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--eval", action="store_true",
                   help="only evaluate the finished run in --out: oracle agreement, per-shape read-back, PSNR, "
                        "oracle FID of the reconstructions (fid_recon) -> RUN/eval.json")
    p.add_argument("--eval-images", type=int, default=1000, help="sprite test images for the evaluation")
    p.add_argument("--oracle", default="runs/sprites/classifier", help="oracle classifier run folder")
    args = p.parse_args(argv)

    out = Path(args.out or f"runs/{args.task}/ae")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.eval:
        report(out, args.eval_images, args.oracle)
        return 0
    spec = AESpec(preset=args.preset, size=args.size, data=args.data, data_root=args.data_root,
                  attr_csv=args.attr_csv, style=args.style, init=args.init, steps=args.steps,
                  batch_size=args.batch_size, lr=args.lr, edge_weight=args.edge_weight, kl_weight=args.kl_weight,
                  seed=args.seed,
                  task=args.task)
    train_autoencoder(spec, out, resume=args.resume)
    if args.data == "sprites" and Path(args.oracle, "checkpoint.safetensors").is_file():
        try:
            report(out, args.eval_images, args.oracle)
        except UserError as e:
            print(f"evaluation skipped: {e}")
    return 0


if __name__ == "__main__":
    run_cli(main)
