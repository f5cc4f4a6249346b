"""Model diagnosis end to end (Sec. 4.2 "Model Diagnosis", Fig. 5; MLP ablation of Sec. E, Fig. S4).

    python -m train.diagnosis                       # default preset -> runs/diagnosis/
    python -m train.diagnosis --preset smoke --out /tmp/diag

Trains (or reuses) one cINN per (classifier, layer) of the `diagnosis` task, 2 × 3 of them, and the
MLP baseline at `--mlp-layers` (default: the last layer), evaluates each with the oracle, and writes
OUT/summary.json (every evaluation plus the finding in numbers), OUT/diagnosis.png (rows = layers
as in Fig. 5, MLP rows below) and prints the invariance table as markdown.
"""
from __future__ import annotations

import argparse

from train.core.common import UserError, run_cli
from train.experts.classifier import LAYERS
from train.tasks.diagnosis import CLASSIFIERS
from train.tasks.diagnosis_sweep import Sweep, run_sweep
from train.tasks.sprites import DEFAULT_AE


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.diagnosis", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default", help="smoke | default | paper")
    p.add_argument("--out", help="output folder (default runs/diagnosis, runs/diagnosis-smoke for smoke)")
    p.add_argument("--ae", default=DEFAULT_AE, help="sprites autoencoder run (trained first if missing)")
    p.add_argument("--oracle", default="runs/sprites/classifier", help="the judge: a 13-attribute classifier run")
    p.add_argument("--classifiers", default="all,shape", help="comma-separated, from: all, shape")
    p.add_argument("--mlp-layers", default="last", help="layers that also get the MLP baseline ('' for none)")
    p.add_argument("--num-images", type=int, default=300, help="test images per evaluation (default 300)")
    p.add_argument("--samples", type=int, default=8, help="samples per test image (default 8)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    kinds = [k for k in args.classifiers.split(",") if k]
    mlp_layers = [m for m in args.mlp_layers.split(",") if m]
    if not kinds or any(k not in CLASSIFIERS for k in kinds) or any(m not in LAYERS for m in mlp_layers):
        raise UserError(f"--classifiers takes {', '.join(CLASSIFIERS)} and --mlp-layers {', '.join(LAYERS)}")
    out = args.out or f"runs/diagnosis{'-smoke' if args.preset == 'smoke' else ''}"
    run_sweep(Sweep(args.preset, out, args.ae, args.oracle, kinds, mlp_layers, args.num_images, args.samples,
                    args.seed))
    return 0


if __name__ == "__main__":
    run_cli(main)
