"""Training τ for a task, as a library call: `python -m train.cinn` is this plus argument parsing.

  select the preset (an unknown name is refused before anything is loaded or trained) -> the task's pairs
  -> model config and TrainConfig (train/core/presets.py) -> the one loop (train/core/translator.py)
  -> the task's grids.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from train.core.common import UserError, seed_everything
from train.core.presets import TrainOverrides, model_config, select, train_config
from train.core.translator import train
from train.tasks.contract import NoOptions, PairRequest, RunResult, Task


@dataclass
class TrainRequest:
    task: Task
    options: Any = field(default_factory=NoOptions)   # an instance of task.options
    preset: str = "default"
    model: str = "cinn"                  # cinn | mlp (the deterministic baseline of Sec. E)
    seed: int = 0
    out: str | None = None               # default: the task's default_out, else runs/<task>/<model>
    resume: bool = False
    device: str = "cpu"
    overrides: TrainOverrides = field(default_factory=TrainOverrides)
    task_ref: str | None = None          # FILE.py:NAME of a task that is not built in, for config.json


def train_task(req: TrainRequest) -> tuple[torch.nn.Module, Path]:
    """Train (or resume) one run; returns the trained model (best validation weights, eval mode) and its folder."""
    task = req.task
    if req.model not in ("cinn", "mlp"):
        raise UserError(f"--model must be cinn or mlp, got {req.model!r}")
    if req.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available; use --device cpu")
    seed_everything(req.seed)
    preset = select(task.presets, req.preset, task.name)
    pair_req = PairRequest(task.name, preset.name, preset.data, req.options, req.seed, req.model, None, req.resume)
    out = Path(req.out or (task.default_out(pair_req) if task.default_out else f"runs/{task.name}/{req.model}"))
    pair_req.out = out
    pairs = task.pairs(pair_req)
    source = pairs.source
    model_cfg = model_config(preset, req.model, source.cond_shape, source.target_dim, req.seed)
    tcfg = train_config(preset, req.seed, req.overrides)
    print(f"task {task.name}: zΦ {tuple(source.cond_shape)} -> zΘ ({source.target_dim},), model {req.model}, "
          f"preset {preset.name}, {tcfg.steps} steps, out {out}")
    info = {**pairs.info, "preset": preset.name}
    if req.task_ref:
        info["task_ref"] = req.task_ref
    model = train(req.model, model_cfg, tcfg, source, out, resume=req.resume, run_info=info, device=req.device)
    if task.after_training is not None:
        task.after_training(RunResult(out, model, pair_req))
    return model, out
