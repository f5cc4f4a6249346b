"""Train the translator τ for a task: `python -m train.cinn --task NAME [options]`.

Examples:
  python -m train.cinn --task features --source zphi.npy --target ztheta.npy --out runs/mine/cinn
  python -m train.cinn --task features --source a.npz --source-key emb --target b.npy --preset smoke
  python -m train.cinn --task docs/examples/my_experts.py:TASK --preset smoke    # your own experts
  torchrun --nproc_per_node 2 -m train.cinn --task features --source ... --target ... --out ...
"""
from __future__ import annotations

import argparse

from train.cli import add_option_flags, options_from, peek, resolve_task, task_epilog
from train.core.common import ArgParser, run_cli
from train.core.presets import TrainOverrides
from train.tasks.registry import BUILTIN
from train.tasks.run import TrainRequest, train_task


def build_parser(task=None) -> argparse.ArgumentParser:
    ap = ArgParser(prog="python -m train.cinn", description=__doc__, epilog=task_epilog(),
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help=f"{' | '.join(BUILTIN)} | FILE.py:NAME | package.module:NAME")
    ap.add_argument("--model", default="cinn", choices=["cinn", "mlp"],
                    help="cinn (default) or the deterministic MLP baseline of Sec. E")
    ap.add_argument("--out", help="run folder (default runs/<task>/<model>)")
    presets = " | ".join(task.presets) if task is not None else "smoke | default | paper"
    ap.add_argument("--preset", default="default", help=f"{presets} (sizes and steps)")
    ap.add_argument("--steps", type=int, help="override the preset's training steps")
    ap.add_argument("--batch-size", type=int, help="override the preset's (global) batch size")
    ap.add_argument("--lr", type=float, help="override the preset's learning rate")
    ap.add_argument("--target-noise", type=float,
                    help="override the preset's training noise on zΘ (cINN; in per-dimension std units, 0 = off)")
    ap.add_argument("--cond-noise", type=float,
                    help="override the preset's training noise on zΦ (cINN; in per-dimension std units, 0 = off)")
    ap.add_argument("--weight-decay", type=float,
                    help="override the preset's decoupled (AdamW) weight decay (0 = off)")
    ap.add_argument("--ema", type=float,
                    help="override the preset's weight averaging: decay of the moving average that is validated "
                         "and kept (0 = off, e.g. 0.999)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    if task is not None:
        add_option_flags(ap, task.options, f"{task.name} task")
    return ap


def main(argv=None):
    task = resolve_task(peek(argv, "--task")["task"])
    args = build_parser(task).parse_args(argv)
    overrides = TrainOverrides(args.steps, args.batch_size, args.lr, args.target_noise, cond_noise=args.cond_noise,
                               weight_decay=args.weight_decay, ema=args.ema)
    request = TrainRequest(task, options_from(args, task.options), args.preset, args.model, args.seed, args.out,
                           args.resume, args.device, overrides, task_ref=None if args.task in BUILTIN else args.task)
    train_task(request)


if __name__ == "__main__":
    run_cli(main)
