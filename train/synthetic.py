"""Write the synthetic conditional-density benchmark (train/data/synthetic.py) for the `features` task.

    python -m train.synthetic --out runs/synthetic/data [--n 40000] [--n-test 10000] [--seed 0]
"""
from __future__ import annotations

import argparse

from train.core.common import run_cli
from train.data.synthetic import write_benchmark


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.synthetic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/synthetic/data", help="output folder")
    ap.add_argument("--n", type=int, default=40_000, help="training pairs")
    ap.add_argument("--n-test", type=int, default=10_000, help="test pairs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    h = write_benchmark(args.out, args.n, args.n_test, args.seed)
    print(f"wrote {args.out}/{{train,test}}_{{source,target}}.npy; true H(z|c) = {h:.4f} nats/dim")
    return 0


if __name__ == "__main__":
    run_cli(main)
