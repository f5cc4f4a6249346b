"""Synthetic conditional densities with a known conditional entropy: data for the `features` task, and the gap.

  python -m train.synthetic --list                                   # the generators and their true entropies
  python -m train.synthetic --generator mixture --out runs/synthetic # write runs/synthetic/mixture/data
  python -m train.synthetic --generator all --train                  # train the default preset on every one

Each generator's data goes to OUT/NAME/data ({train,test}_{source,target}.npy and truth.json with H(zΘ|zΦ) in
nats per target dim). With --train, τ is trained on it with a `features` preset (OUT/NAME/cinn, as
`python -m train.cinn --task features` would) and evaluated on the test split (OUT/NAME/gap.json, and
OUT/gaps.json when several were named); the table shows the gap,
test NLL − H(zΘ|zΦ), which is KL(p‖q)/D >= 0. Generators (train/data/synthetic.py):
"""
from __future__ import annotations

import argparse
import contextlib
import json

from train.core.common import ArgParser, UserError, atomic_write_json, json_stdout, run_cli
from train.data.synthetic import GENERATORS, get, write_benchmark
from train.tasks.synthetic_gap import entropy_row, format_table, measure_gap


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:8s} {g.summary}" for name, g in GENERATORS.items())
    ap = ArgParser(prog="python -m train.synthetic", description=__doc__ + listing,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="base",
                    help=f"{' | '.join(GENERATORS)} | all, or several joined by commas (default base)")
    ap.add_argument("--list", action="store_true", help="print the generators' true entropies and exit")
    ap.add_argument("--out", default="runs/synthetic", help="root folder: OUT/NAME/data and OUT/NAME/cinn")
    ap.add_argument("--n", type=int, default=40_000, help="training pairs (10 %% of them validate)")
    ap.add_argument("--n-test", type=int, default=10_000, help="test pairs")
    ap.add_argument("--seed", type=int, default=0, help="draws the pairs and seeds training")
    ap.add_argument("--train", action="store_true", help="also train and evaluate τ on each generator")
    ap.add_argument("--preset", default="default", help="the `features` preset to train with (smoke | default | paper)")
    ap.add_argument("--steps", type=int, help="override the preset's training steps")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = list(GENERATORS) if args.generator == "all" else [get(n.strip()).name for n in args.generator.split(",")]
    if args.n < 20 or args.n_test < 2:
        raise UserError(f"--n must be >= 20 and --n-test >= 2 (got {args.n}, {args.n_test})")
    # with --json, progress and training logs go to stderr: stdout is the one JSON list of rows
    with json_stdout() if args.json else contextlib.nullcontext():
        if args.list:
            rows = [entropy_row(name) for name in GENERATORS]
        elif args.train:
            rows = []
            for name in names:
                rows.append(measure_gap(name, f"{args.out}/{name}", args.preset, args.n, args.n_test, args.seed,
                                        args.steps))
                atomic_write_json(f"{args.out}/{name}/gap.json", rows[-1])
                print(f"{name}: gap {rows[-1]['gap']:.4f} nats/dim", flush=True)
            if len(names) > 1:
                atomic_write_json(f"{args.out}/gaps.json", rows)
        else:
            rows = []
            for name in names:
                truth = write_benchmark(name, f"{args.out}/{name}/data", args.n, args.n_test, args.seed)
                print(f"wrote {args.out}/{name}/data/{{train,test}}_{{source,target}}.npy and truth.json", flush=True)
                rows.append({"generator": name, "source_shape": truth["source_shape"],
                             "target_dim": truth["target_dim"],
                             "conditional_entropy": truth["conditional_entropy_nats_per_dim"],
                             "standard_error": truth["standard_error"], "method": truth["method"]})
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    run_cli(main)
