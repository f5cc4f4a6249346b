"""Evaluate a trained run and print one JSON object (with --json) or a readable summary.

  python -m train.evaluate --run runs/mine/cinn --source zphi.npy --target ztheta.npy --json
  python -m train.evaluate --task ae --run runs/attributes/ae --json
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
from pathlib import Path

import torch

from train.common import ArgParser, UserError, json_stdout, read_json, run_cli
from train.features import load_pairs
from train.flow import ConditionalINN
from train.tasks import load_all
from train.trainer import evaluate_nll, load_translator

# task -> "module:function"; each function takes the parsed args and returns a JSON-able dict.
EVALUATORS = {
    "features": "train.evaluate:evaluate_features",
    "ae": "train.evaluate:evaluate_ae",
}


@torch.no_grad()
def roundtrip_rel_err(model: ConditionalINN, cond: torch.Tensor, z: torch.Tensor, batch: int = 4096) -> float:
    """‖τ(τ⁻¹(z|c)|c) − z‖ / ‖z‖ over all pairs."""
    err = norm = 0.0
    for i in range(0, len(z), batch):
        zb, cb = z[i:i + batch], cond[i:i + batch]
        v, _ = model.inverse(zb, cb)
        err += float(((model(v, cb) - zb) ** 2).sum())
        norm += float((zb ** 2).sum())
    return math.sqrt(err / max(norm, 1e-30))


def evaluate_features(args) -> dict:
    if not args.source or not args.target:
        raise UserError("evaluating a features run needs --source FILE and --target FILE")
    model, config = load_translator(args.run)
    c, z = load_pairs(args.source, args.target, args.source_key, args.target_key)
    cfg = config["model"]
    if tuple(c.shape[1:]) != tuple(cfg["cond_shape"]) or z.shape[1] != cfg["target_dim"]:
        raise UserError(f"the run was trained on zΦ {tuple(cfg['cond_shape'])} -> zΘ ({cfg['target_dim']},) but the "
                        f"files hold {tuple(c.shape[1:])} -> ({z.shape[1]},)")
    cond, target = torch.from_numpy(c), torch.from_numpy(z)
    result = {"run": str(args.run), "kind": config["kind"], "num_samples": len(z), "target_dim": z.shape[1]}
    if isinstance(model, ConditionalINN):
        nats = evaluate_nll(model, cond, target)
        result.update(nll_nats_per_dim=nats, bits_per_dim=nats / math.log(2),
                      roundtrip_rel_err=roundtrip_rel_err(model, cond, target))
    else:
        result.update(mse=evaluate_nll(model, cond, target))
    return result


def evaluate_ae(args) -> dict:
    from train.ae import evaluate_ae as run
    return run(args.run, num_images=args.num_images)


def main(argv=None):
    ap = ArgParser(prog="python -m train.evaluate", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", help="ae, features or any registered task (default: the run's own task)")
    ap.add_argument("--run", required=True, help="run folder")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--source", help="features task: source feature file")
    ap.add_argument("--target", help="features task: target feature file")
    ap.add_argument("--source-key")
    ap.add_argument("--target-key")
    ap.add_argument("--num-images", type=int, default=1000, help="image tasks: test images to evaluate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--captions", help="text tasks: score a captions .jsonl file")
    ap.add_argument("--oracle", default="runs/sprites/classifier", help="sprites tasks: oracle classifier run")
    args, extra = ap.parse_known_args(argv)
    args.extra = extra     # task-specific options (e.g. --biggan, --text-encoder), parsed by the task
    if not Path(args.run).is_dir():
        raise UserError(f"run folder not found: {args.run}")
    task = args.task or read_json(Path(args.run) / "config.json").get("task", "features")
    registered = {name: t.evaluate for name, t in load_all().items() if t.evaluate is not None}
    if task not in EVALUATORS and task not in registered:
        raise UserError(f"no evaluation for task '{task}'; choose from {', '.join([*EVALUATORS, *registered])}")
    # with --json, whatever an evaluation prints first (e.g. training the unpaired task's domain classifier)
    # goes to stderr: stdout is the one JSON object scripts/experiments.py stores as eval.json
    with json_stdout() if args.json else contextlib.nullcontext():
        if task in EVALUATORS:
            module, func = EVALUATORS[task].split(":")
            result = getattr(importlib.import_module(module), func)(args)
        else:
            result = registered[task](args)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value:.5g}" if isinstance(value, float) else f"{key:>28}: {value}")


if __name__ == "__main__":
    run_cli(main)
