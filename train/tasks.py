"""The task registry: one entry per translation task, no copy of the pipeline per task.

A task names its source expert Φ, its target expert Θ/Λ, where its (zΦ, zΘ) pairs come from, and its
presets. `python -m train.cinn --task NAME` works for every entry; later tasks only add entries.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from train.features import load_pairs

# Presets: overrides of FlowConfig / TrainConfig defaults. `paper` follows Tab. S3a / G.1
# (20 blocks, subnetworks of width 8·D and depth 4); the others are sized for a 2-core CPU.
FEATURE_PRESETS = {
    "smoke": {"flow": {"num_blocks": 2, "hidden": 32, "embed_hidden": 32},
              "train": {"steps": 20, "batch_size": 64, "val_every": 10, "ckpt_every": 10, "warmup": 5}},
    # sized on the synthetic 4-D -> 8-D benchmark (40 k pairs): longer or wider runs overfit
    "default": {"flow": {"num_blocks": 6, "hidden": 256, "depth": 2},
                "train": {"steps": 1500, "batch_size": 256, "lr": 1e-3, "val_every": 100}},
    "paper": {"flow": {"num_blocks": 20, "hidden": "8d", "depth": 4},
              "train": {"steps": 20000, "batch_size": 25, "lr": 1e-4}},
}


class TensorPairs:
    """A PairSource over aligned in-memory arrays, with a held-out validation split."""

    def __init__(self, cond: np.ndarray, target: np.ndarray, val_fraction: float = 0.1, seed: int = 0,
                 max_val: int = 5000):
        n = len(target)
        perm = np.random.default_rng(seed).permutation(n)
        n_val = min(max_val, int(round(n * val_fraction))) if n >= 20 else 0
        self.val_idx, self.train_idx = perm[:n_val], perm[n_val:]
        self.cond = torch.from_numpy(cond)
        self.target = torch.from_numpy(target)
        self.cond_shape = tuple(cond.shape[1:])
        self.target_dim = target.shape[1]

    def batch(self, size: int, generator: torch.Generator):
        idx = torch.from_numpy(self.train_idx)[torch.randint(len(self.train_idx), (size,), generator=generator)]
        return self.cond[idx], self.target[idx]

    def validation(self):
        idx = self.val_idx if len(self.val_idx) else self.train_idx[:1000]
        return self.cond[idx], self.target[idx]

    def statistics(self):
        z = self.target[self.train_idx]
        return (*condition_statistics(self.cond[self.train_idx]), z.mean(0), z.std(0))


def condition_statistics(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of conditions (N, *cond_shape) in cond_shape: spatial conditions (N, C, H, W) are
    standardised per channel, vectors per dim."""
    dims = (0, 2, 3) if c.dim() == 4 else (0,)
    cm, cs = c.mean(dims, keepdim=True)[0], c.std(dims, keepdim=True)[0]
    if c.dim() == 4:
        cm, cs = cm.expand(c.shape[1:]), cs.expand(c.shape[1:])
    return cm, cs


@dataclass
class Experts:
    """The frozen experts of a trained task, as export and evaluation need them. Any may be None:
    `source_encoder` Φ (raw input -> zΦ; None when zΦ is given directly, e.g. an attribute vector),
    `target_encoder` Θ (image -> zΘ), `target_decoder` Λ (zΘ -> image)."""
    source_encoder: torch.nn.Module | None = None
    target_encoder: torch.nn.Module | None = None
    target_decoder: torch.nn.Module | None = None
    info: dict = field(default_factory=dict)     # e.g. tokenizer folder, image size, warnings


@dataclass
class Task:
    """A registry entry. `make_source(args)` returns the PairSource and run info for config.json;
    `experts(config)` rebuilds the frozen experts from a run's config; `after_training(run_dir, model,
    args)` writes grids; `evaluate(args)` returns the task's evaluation dict."""
    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    make_source: Callable[[argparse.Namespace], tuple[object, dict]]
    presets: dict = field(default_factory=lambda: FEATURE_PRESETS)
    experts: Callable[[dict], Experts] | None = None
    after_training: Callable | None = None
    evaluate: Callable | None = None
    default_out: Callable[[argparse.Namespace], str] | None = None   # run folder when --out is not given


def add_arg_once(ap: argparse.ArgumentParser, *flags, **kwargs) -> None:
    """Tasks share some options (e.g. --text-encoder); the first task to declare one defines it."""
    if not any(f in ap._option_string_actions for f in flags):
        ap.add_argument(*flags, **kwargs)


def _features_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("features task")
    g.add_argument("--source", help="source features zΦ (.npy/.npz/.safetensors), rows aligned with --target")
    g.add_argument("--target", help="target features zΘ, shape (rows, D)")
    g.add_argument("--source-key", help="array name inside a .npz/.safetensors source file")
    g.add_argument("--target-key", help="array name inside a .npz/.safetensors target file")


def _features_source(args):
    from train.common import UserError
    if not args.source or not args.target:
        raise UserError("--task features needs --source FILE and --target FILE (aligned feature files)")
    c, z = load_pairs(args.source, args.target, args.source_key, args.target_key)
    info = {"task": "features", "data": {"source": str(args.source), "target": str(args.target),
                                         "source_key": args.source_key, "target_key": args.target_key,
                                         "rows": len(z)}}
    return TensorPairs(c, z, seed=args.seed), info


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name} registered twice")
    TASKS[task.name] = task
    return task


register(Task("features", "any two aligned feature files (the plug-and-play case)", _features_args,
              _features_source, experts=lambda config: Experts()))

# Modules that register further tasks when imported (each adds entries with `register`).
TASK_MODULES = [
    "train.tasks_sprites",
    "train.tasks_biggan",
    "train.tasks_spatial",
    "train.tasks_diagnosis",
    "train.tasks_domains",
]


def load_all() -> dict[str, Task]:
    import importlib
    for module in TASK_MODULES:
        importlib.import_module(module)
    return TASKS
