"""Evaluate a trained run and print one JSON object (with --json) or a readable summary.

  python -m train.evaluate --run runs/mine/cinn --source zphi.npy --target ztheta.npy --json
  python -m train.evaluate --task ae --run runs/attributes/ae --json
  python -m train.evaluate --run runs/diagnosis/shape-last/cinn --samples 8 --json
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
from pathlib import Path

from train.cli import add_option_flags, options_from, peek, task_epilog
from train.core.common import ArgParser, UserError, json_stdout, read_json, run_cli
from train.eval.ae import evaluate_ae
from train.tasks.contract import EvalRequest
from train.tasks.registry import task_of_run

# evaluations of runs that are not translation tasks: name -> "module:function(args) -> dict"
EVALUATORS = {"ae": "train.evaluate:evaluate_autoencoder"}


def build_parser(task=None) -> argparse.ArgumentParser:
    ap = ArgParser(prog="python -m train.evaluate", description=__doc__, epilog=task_epilog(),
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", help="ae, or the run's task (default: the one its config.json records)")
    ap.add_argument("--run", required=True, help="run folder")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--num-images", type=int, default=1000, help="image tasks: test images to evaluate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--captions", help="text tasks: score a captions .jsonl file")
    ap.add_argument("--oracle", default="runs/sprites/classifier", help="sprites tasks: oracle classifier run")
    if task is not None:
        add_option_flags(ap, task.eval_options, f"{task.name} evaluation")
    return ap


def evaluate_autoencoder(args) -> dict:
    return evaluate_ae(args.run, num_images=args.num_images, oracle_dir=args.oracle)


def main(argv=None):
    first = peek(argv, "--task", "--run")
    if first["run"] is not None and not Path(first["run"]).is_dir():
        raise UserError(f"run folder not found: {first['run']}")
    task, config = None, None
    if first["task"] not in EVALUATORS and first["run"] is not None:
        config = read_json(Path(first["run"]) / "config.json")
        task = task_of_run(config, first["task"])
        if config.get("task", task.name) != task.name:
            raise UserError(f"{first['run']} is a run of task '{config['task']}', not '{task.name}'")
        if task.evaluate is None:
            raise UserError(f"task '{task.name}' defines no evaluation")
    args = build_parser(task).parse_args(argv)
    # with --json, whatever an evaluation prints first (e.g. training the unpaired task's domain classifier)
    # goes to stderr: stdout is the one JSON object scripts store as eval.json
    with json_stdout() if args.json else contextlib.nullcontext():
        if task is None:
            module, func = EVALUATORS[args.task].split(":")
            result = getattr(importlib.import_module(module), func)(args)
        else:
            request = EvalRequest(Path(args.run), config, args.num_images, args.seed, args.oracle, args.captions,
                                  options_from(args, task.eval_options))
            result = task.evaluate(request)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value:.5g}" if isinstance(value, float) else f"{key:>28}: {value}")


if __name__ == "__main__":
    run_cli(main)
