"""The one training loop: steps, progress, periodic hooks, checkpoints, resume and RNG state, written once.

The cINN (train/core/translator.py), the autoencoder (train/experts/ae_training.py) and the classifier
(train/experts/classifier_training.py) each set up their model, optimizer and data exactly as before and
hand `run_steps` one function that performs a single optimisation step. Everything a run needs to
continue exactly where it stopped goes into RUN/checkpoint.safetensors through a `Checkpointed`:

  <prefix>.*        the weights of each module (model., disc., ...)
  optim.* ...       each optimizer's state (`optim_tensors`)
  rng.*             torch / numpy / python global RNG states and `rng.batch`, the batch generator
  trainer.step      optimizer steps done
  extra tensors     e.g. the cINN's best-validation weights (best.*)
  metadata "state"  JSON state that is not a tensor (an LR scheduler, a numpy Generator)
  metadata "param_groups"  each optimizer's hyperparameters (a scheduler such as OneCycleLR changes lr and betas)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from safetensors import safe_open
from tqdm import tqdm

from train.core.common import (
    UserError,
    load_optim,
    load_tensors,
    optim_tensors,
    pack_rng_state,
    progress_interval,
    save_tensors,
    unpack_rng_state,
)

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class Checkpointed:
    """What one run checkpoints: modules and optimizers by prefix, the batch generator, and optional extras."""
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    generator: torch.Generator
    extra_tensors: Callable[[], dict[str, torch.Tensor]] | None = None
    load_extra: Callable[[dict[str, torch.Tensor]], None] | None = None
    state: Callable[[], dict] | None = None                  # JSON-able state (schedulers, numpy generators)
    load_state: Callable[[dict], None] | None = None
    metadata: dict = field(default_factory=dict)             # constant metadata, e.g. {"kind": ...}


def save_checkpoint(ck: Checkpointed, path: str | Path, step: int) -> None:
    tensors = {f"{prefix}.{k}": v for prefix, m in ck.modules.items() for k, v in m.state_dict().items()}
    for prefix, opt in ck.optimizers.items():
        tensors.update(optim_tensors(opt, prefix))
    tensors.update(pack_rng_state())
    tensors["rng.batch"] = ck.generator.get_state()
    tensors["trainer.step"] = torch.tensor([step])
    if ck.extra_tensors is not None:
        tensors.update(ck.extra_tensors())
    meta = dict(ck.metadata)
    meta["param_groups"] = {prefix: [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
                            for prefix, opt in ck.optimizers.items()}
    if ck.state is not None:
        meta["state"] = ck.state()
    save_tensors(path, tensors, metadata=meta)


def checkpoint_metadata(path: str | Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def resume(ck: Checkpointed, path: str | Path) -> int:
    """Load everything `save_checkpoint` wrote back into `ck` (and the global RNGs); returns the step."""
    tensors = load_tensors(path)
    for prefix, module in ck.modules.items():
        state = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        if not state:
            raise UserError(f"{path} holds no '{prefix}' weights; resume with the settings the run was trained with")
        module.load_state_dict(state)
    meta = checkpoint_metadata(path)
    for prefix, opt in ck.optimizers.items():
        load_optim(opt, tensors, prefix)
        for group, saved in zip(opt.param_groups, meta.get("param_groups", {}).get(prefix, [])):
            group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    ck.generator.set_state(tensors["rng.batch"])
    unpack_rng_state(tensors)
    if ck.load_extra is not None:
        ck.load_extra(tensors)
    if ck.load_state is not None:
        state = meta.get("state")
        if state is None:
            raise UserError(f"{path} was written without its training state; it cannot be resumed")
        ck.load_state(state)
    return int(tensors["trainer.step"].item())


def checkpoint_step(run_dir: str | Path) -> int | None:
    """Optimizer steps done by the run in `run_dir` (None without a checkpoint), read without loading weights."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        return int(f.get_tensor("trainer.step").item()) if "trainer.step" in f.keys() else None


Hook = Callable[[int, dict], dict | None]     # (steps done, the step's outputs) -> progress-bar postfix or None


def run_steps(step_fn: Callable[[int], dict], *, start: int, steps: int, ck: Checkpointed | None,
              path: str | Path, ckpt_every: int, hooks: list[tuple[int, Hook]], desc: str,
              enabled: bool = True) -> None:
    """Call `step_fn(step)` for step = start .. steps-1. After each, every hook whose interval divides the
    steps done (or at the last step) runs in list order, then the checkpoint is written every `ckpt_every`
    steps and at the end. `enabled=False` (other DDP ranks) runs the steps only."""
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not enabled, desc=desc,
               dynamic_ncols=True, mininterval=progress_interval())
    for step in bar:
        out = step_fn(step)
        done = step + 1
        if not enabled:
            continue
        for every, hook in hooks:
            if done % every == 0 or done == steps:
                postfix = hook(done, out)
                if postfix:
                    bar.set_postfix(**postfix)
        if ck is not None and (done % ckpt_every == 0 or done == steps):
            save_checkpoint(ck, path, done)
