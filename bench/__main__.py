"""The benchmark suite.

    python -m bench [--task NAME] [--bundle DIR ...] [--quick] [--threads 1] [--out bench/results]
                    [--backends pytorch,ort-fp32,...] [--batches 1,8,64] [--no-training] [--no-rss]

Bundles: every folder under engines/ with a manifest.json, or the --bundle folders; --task keeps one
task's. For each:
every stage x backend x batch (PyTorch eager, onnxruntime fp32 and int8, TensorRT fp32/fp16 where a GPU
and TensorRT exist; skipped backends are listed with the reason), median / p99 latency, throughput,
peak RSS, and the floor of each number from this run's machine floors; then cINN vs FrEIA training
throughput and the verdict on each target. Writes OUT/<host>-<date>.json, .md and .png.
--quick: a few rounds, small floors, a tiny training comparison (checks the suite runs, numbers noisy).
--render JSON: re-judge a saved run's targets (e.g. after a change to bench.targets) without measuring.
--paper [bench.paper options]: a paper-size bert2biggan flow (random init, ~2 GB per direction in fp32, ONNX
external data) in fp32 vs static int8 instead of the bundles; `python -m bench.paper --help` for its options.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.cases import BACKENDS, discover
from bench.report import write_all
from bench.suite import BATCHES, run_suite
from bench.targets import evaluate_targets


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--paper" in argv:
        from bench.paper import main as paper_main
        return paper_main([a for a in argv if a != "--paper"])
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", help="only bundles of this task")
    ap.add_argument("--bundle", action="append", help="bundle folder (repeatable; default: all under engines/)")
    ap.add_argument("--quick", action="store_true", help="few rounds: checks the suite runs, numbers are noisy")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime / torch intra-op threads (runtime default 1)")
    ap.add_argument("--out", default="bench/results", help="results folder")
    ap.add_argument("--runs", default="runs", help="where the bundles' training runs are (manifest source.run is "
                                                   "a run's name under it), for the PyTorch rows; default runs/")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--compile-batches", default="1",
                    help="batches at which the pytorch-compile peer is timed (default 1: each batch is a separate "
                         "inductor compile, minutes per module on a small CPU)")
    ap.add_argument("--no-training", action="store_true", help="skip the cINN vs FrEIA training comparison")
    ap.add_argument("--train-threads", type=int, default=1,
                    help="torch threads of the training comparison (default 1: on a shared 2-core machine a second "
                         "thread made both models slower)")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    ap.add_argument("--render", metavar="JSON", help="measure nothing: re-judge the targets of a results JSON and "
                                                     "rewrite its .json/.md/.png beside it")
    args = ap.parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        results["targets"] = evaluate_targets(results)
        print("wrote " + ", ".join(str(p) for p in write_all(results, Path(args.render).parent).values()))
        return 0
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or min(args.threads, args.train_threads) < 1:
        ap.error(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}" if unknown
                 else "--threads and --train-threads must be >= 1")
    bundles = discover(args.bundle, args.task)
    if not bundles:
        print("no bundles found (no manifest.json under engines/); pass --bundle DIR or export one with "
              "`python -m export.onnx --task NAME`", file=sys.stderr)
        return 2
    print(f"benchmarking {', '.join(map(str, bundles))}", flush=True)
    results = run_suite(bundles, quick=args.quick, threads=args.threads, batches=_ints(args.batches),
                        backends=backends, training=not args.no_training, rss=not args.no_rss,
                        train_threads=args.train_threads, compile_batches=_ints(args.compile_batches),
                        runs=args.runs)
    paths = write_all(results, args.out)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
