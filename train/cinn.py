"""Train the translator τ for a registered task: `python -m train.cinn --task NAME [options]`.

Examples:
  python -m train.cinn --task features --source zphi.npy --target ztheta.npy --out runs/mine/cinn
  python -m train.cinn --task features --source a.npz --source-key emb --target b.npy --preset smoke
  torchrun --nproc_per_node 2 -m train.cinn --task features --source ... --target ... --out ...
"""
from __future__ import annotations

import argparse
import math
from dataclasses import fields

import torch

from train.common import ArgParser, UserError, run_cli, seed_everything
from train.flow import FlowConfig, MLPConfig
from train.tasks import load_all
from train.trainer import TrainConfig, train


def build_parser() -> argparse.ArgumentParser:
    tasks = load_all()
    ap = ArgParser(prog="python -m train.cinn", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=sorted(tasks), help="registered translation task")
    ap.add_argument("--model", default="cinn", choices=["cinn", "mlp"],
                    help="cinn (default) or the deterministic MLP baseline of Sec. E")
    ap.add_argument("--out", help="run folder (default runs/<task>/<model>)")
    ap.add_argument("--preset", default="default", help="smoke | default | paper (sizes and steps)")
    ap.add_argument("--steps", type=int, help="override the preset's training steps")
    ap.add_argument("--batch-size", type=int, help="override the preset's (global) batch size")
    ap.add_argument("--lr", type=float, help="override the preset's learning rate")
    ap.add_argument("--target-noise", type=float,
                    help="override the preset's training noise on zΘ (cINN; in per-dimension std units, 0 = off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    for task in tasks.values():
        task.add_args(ap)
    return ap


def resolve_configs(args, task, cond_shape, target_dim) -> tuple[dict, TrainConfig]:
    if args.preset not in task.presets:
        raise UserError(f"unknown preset '{args.preset}' for task {task.name}; choose from {', '.join(task.presets)}")
    preset = task.presets[args.preset]
    flow = dict(preset["flow"])
    if flow.get("hidden") == "8d":                     # the paper's subnetwork width, Tab. S3a
        flow["hidden"] = 8 * target_dim
    if args.model == "cinn":
        model_cfg = FlowConfig(target_dim=target_dim, cond_shape=cond_shape, seed=args.seed, **flow).to_dict()
    else:
        keep = {f.name for f in fields(MLPConfig)} - {"hidden", "depth"}
        model_cfg = MLPConfig(target_dim=target_dim, cond_shape=cond_shape,
                              **{k: v for k, v in flow.items() if k in keep}).to_dict()
    tcfg = TrainConfig(**{**preset["train"], "seed": args.seed})
    for name in ("steps", "batch_size", "lr"):
        value = getattr(args, name)
        if value is not None:
            if not math.isfinite(value) or value <= 0:        # NaN passes a plain `<= 0`
                raise UserError(f"--{name.replace('_', '-')} must be positive and finite, got {value}")
            setattr(tcfg, name, value)
    if args.target_noise is not None:
        if not math.isfinite(args.target_noise) or args.target_noise < 0:
            raise UserError(f"--target-noise must be >= 0 and finite, got {args.target_noise}")
        tcfg.target_noise = args.target_noise
    tcfg.warmup = min(tcfg.warmup, max(1, tcfg.steps // 10))
    return model_cfg, tcfg


def main(argv=None):
    args = build_parser().parse_args(argv)
    seed_everything(args.seed)
    task = load_all()[args.task]
    source, info = task.make_source(args)
    model_cfg, tcfg = resolve_configs(args, task, source.cond_shape, source.target_dim)
    out = args.out or (task.default_out(args) if task.default_out else f"runs/{args.task}/{args.model}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available; use --device cpu")
    print(f"task {args.task}: zΦ {tuple(source.cond_shape)} -> zΘ ({source.target_dim},), model {args.model}, "
          f"preset {args.preset}, {tcfg.steps} steps, out {out}")
    info = {**info, "preset": args.preset}
    model = train(args.model, model_cfg, tcfg, source, out, resume=args.resume, run_info=info, device=args.device)
    if task.after_training is not None:
        task.after_training(out, model, args)


if __name__ == "__main__":
    run_cli(main)
