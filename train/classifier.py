"""Train the oracle attribute classifier for Sprites (model: train/experts/classifier.py).

    python -m train.classifier --data sprites                       # -> runs/sprites/classifier
    python -m train.classifier --data sprites --attributes shape_circle,shape_square,shape_triangle \\
        --out runs/sprites/shape_classifier                         # a shape-only classifier
    python -m train.classifier --out runs/sprites/classifier --resume   # finish an interrupted run

Outputs: RUN/checkpoint.safetensors, RUN/config.json, RUN/metrics.csv, RUN/eval.json.
"""
from __future__ import annotations

import argparse

from train.core.common import run_cli
from train.data import ATTRIBUTES
from train.experts.classifier import DEFAULT_RUN
from train.experts.classifier_training import ClassifierSpec, train_classifier


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.classifier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["sprites"], default="sprites", help="training data (rendered on the fly)")
    p.add_argument("--out", default=DEFAULT_RUN, help="run folder (default %(default)s)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attributes", default=",".join(ATTRIBUTES),
                   help="comma-separated targets, a subset of the 13 sprite attributes and 'textured' "
                        "(the style: a flat-vs-textured domain classifier) (default the 13 attributes)")
    p.add_argument("--textured-frac", type=float, default=0.25, help="share of textured training sprites")
    p.add_argument("--eval-count", type=int, default=2000, help="test renders for eval.json")
    p.add_argument("--ckpt-every", type=int, default=250, help="checkpoint interval in steps")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    args = p.parse_args(argv)
    spec = ClassifierSpec(attributes=[a.strip() for a in args.attributes.split(",") if a.strip()], steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr, size=args.size, seed=args.seed,
                          textured_frac=args.textured_frac, eval_count=args.eval_count, ckpt_every=args.ckpt_every)
    results = train_classifier(spec, args.out, resume=args.resume)
    columns = (("clean", 8), ("blurred", 9), ("textured", 10))
    print(f"{'attribute':<16}{'clean':>8}{'blurred':>9}{'textured':>10}")
    for a in spec.attributes:
        print(f"{a:<16}" + "".join(f"{results[k]['per_attribute'][a]:>{w}.4f}" for k, w in columns))
    print(f"{'mean':<16}" + "".join(f"{results[k]['mean']:>{w}.4f}" for k, w in columns))
    print(f"trained {spec.steps} steps in {results['train_seconds']:.0f}s; wrote {args.out}/checkpoint.safetensors "
          f"and eval.json")
    return 0


if __name__ == "__main__":
    run_cli(main)
