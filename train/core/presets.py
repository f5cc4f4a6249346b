"""Presets, merged in one place: a task's named preset -> the model config, the TrainConfig and its data section.

A preset is a dict {"flow": FlowConfig overrides, "train": TrainConfig overrides, "data": task settings}.
`select` refuses an unknown name before anything is loaded or trained; `model_config` resolves the paper's
subnetwork width "8d" (8·D, Tab. S3a); `train_config` applies the command line's overrides.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from train.core.common import UserError
from train.core.flow import FlowConfig
from train.core.mlp import MLPConfig
from train.core.translator import TrainConfig

# `paper` follows Tab. S3a / G.1 (20 blocks, subnetworks of width 8·D and depth 4); the others are sized for
# a 2-core CPU.
FEATURE_PRESETS = {
    "smoke": {"flow": {"num_blocks": 2, "hidden": 32, "embed_hidden": 32},
              "train": {"steps": 20, "batch_size": 64, "val_every": 10, "ckpt_every": 10, "warmup": 5}},
    # measured on train.synthetic's seven generators (40 k pairs each, docs/results.md): weight decay lets twice
    # the steps pay - 3000 steps alone overfit (`other` 0.030 -> 0.041 nats/dim), 3000 steps with AdamW decay
    # 0.5 improved every generator (`other` 0.026, `neardet` 0.276 -> 0.225, `wide` 0.183 -> 0.151)
    # cond_affine "first": a condition-only affine layer before the blocks; better on neardet and heavy at two
    # seeds (-0.005/-0.008, -0.002/-0.004 nats/dim), no generator worse by more than 0.0023 (seed noise)
    # ema 0.999: validating and keeping the moving average of the weights improved all seven at two seeds
    # (wide -0.012/-0.010, the others -0.000..-0.004 nats/dim) for ~2 % time per step
    # lr 2e-3 with the average: neardet -0.019/-0.016, wide -0.003/-0.003, mixture -0.001/-0.001 at two seeds,
    # no generator worse by more than 0.0006
    "default": {"flow": {"num_blocks": 6, "hidden": 256, "depth": 2, "cond_affine": "first"},
                "train": {"steps": 3000, "batch_size": 256, "lr": 2e-3, "weight_decay": 0.5, "ema": 0.999,
                          "val_every": 100}},
    "paper": {"flow": {"num_blocks": 20, "hidden": "8d", "depth": 4},
              "train": {"steps": 20000, "batch_size": 25, "lr": 1e-4}},
}


@dataclass
class Preset:
    name: str
    flow: dict
    train: dict
    data: dict = field(default_factory=dict)


@dataclass
class TrainOverrides:
    """The command line's overrides of a preset's training settings (None = keep the preset's)."""
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    target_noise: float | None = None
    cond_noise: float | None = None
    weight_decay: float | None = None
    ema: float | None = None


def select(presets: dict, name: str, task: str) -> Preset:
    if name not in presets:
        raise UserError(f"unknown preset '{name}' for task {task}; choose from {', '.join(presets)}")
    p = presets[name]
    return Preset(name, dict(p["flow"]), dict(p["train"]), dict(p.get("data") or {}))


def derive(base: dict, data: dict[str, dict], flow: dict | None = None, **default_train) -> dict:
    """`base` presets with a task's own `data` section per preset (its `default` one where it names no other),
    `flow` added to every preset's flow settings and `default_train` overriding the default preset's training
    settings."""
    out = {name: {**p, "data": dict(data.get(name, data["default"])), "flow": {**p["flow"], **(flow or {})}}
           for name, p in base.items()}
    out["default"]["train"] = {**out["default"]["train"], **default_train}
    return out


def model_config(preset: Preset, model: str, cond_shape, target_dim: int, seed: int) -> dict:
    flow = dict(preset.flow)
    if flow.get("hidden") == "8d":                     # the paper's subnetwork width, Tab. S3a
        flow["hidden"] = 8 * target_dim
    if model == "cinn":
        return FlowConfig(target_dim=target_dim, cond_shape=cond_shape, seed=seed, **flow).to_dict()
    keep = {f.name for f in fields(MLPConfig)} - {"hidden", "depth"}
    return MLPConfig(target_dim=target_dim, cond_shape=cond_shape,
                     **{k: v for k, v in flow.items() if k in keep}).to_dict()


def train_config(preset: Preset, seed: int, overrides: TrainOverrides) -> TrainConfig:
    cfg = TrainConfig(**{**preset.train, "seed": seed})
    for name in ("steps", "batch_size", "lr"):
        value = getattr(overrides, name)
        if value is not None:
            if not math.isfinite(value) or value <= 0:        # NaN passes a plain `<= 0`
                raise UserError(f"--{name.replace('_', '-')} must be positive and finite, got {value}")
            setattr(cfg, name, value)
    for name in ("target_noise", "cond_noise", "weight_decay"):
        value = getattr(overrides, name)
        if value is not None:
            if not math.isfinite(value) or value < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0 and finite, got {value}")
            setattr(cfg, name, value)
    if overrides.ema is not None:
        if not 0 <= overrides.ema < 1:                           # NaN fails this too
            raise UserError(f"--ema must be in [0, 1) (0 = off, e.g. 0.999), got {overrides.ema}")
        cfg.ema = overrides.ema
    cfg.warmup = min(cfg.warmup, max(1, cfg.steps // 10))
    return cfg
