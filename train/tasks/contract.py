"""The task contract: what a translation task is, in dataclasses (no argparse below the command line).

A task names where its (zΦ, zΘ) pairs come from, its frozen experts Φ and Θ/Λ, its presets and, optionally,
grids after training and an evaluation. `python -m train.cinn --task NAME`, `train.evaluate` and
`export.onnx` work for every task, built-in or defined in the user's own file (`--task my_tasks.py:TASK`).

  options        a dataclass type; each field is a --flag of train.cinn (and export/evaluate read the run's
                 recorded values back into it). Help text goes in the field's metadata (`option(...)`).
  pairs          PairRequest -> TrainingPairs (the pair source and what config.json records)
  experts        config.json dict -> Experts (the frozen modules export writes as stages)
  after_training RunResult -> None (grids)
  evaluate       EvalRequest -> dict (JSON-able); eval_options: a dataclass type of its own flags
  validation_pairs  config.json dict -> (cond, z): the held-out pairs export stores in a bundle; by default
                 the pair source is rebuilt (`rebuild_pairs`) and its validation split taken
  recorded_request  config.json dict -> PairRequest: how a run's pairs are rebuilt (export's validation and
                 int8 calibration pairs); by default the run's preset, seed and top-level option keys
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from train.core.presets import FEATURE_PRESETS
from train.experts.base import Experts


def option(default: Any = None, help: str = "", choices: tuple | None = None, type: Callable | None = None) -> Any:
    """A task option: a dataclass field that train.cinn turns into `--name-with-dashes`."""
    return field(default=default, metadata={"help": help, "choices": choices, "type": type})


@dataclass
class NoOptions:
    """A task without options of its own."""


@dataclass
class PairRequest:
    """What a task gets to build its training pairs."""
    task: str
    preset: str
    data: dict                          # the selected preset's `data` section
    options: Any = field(default_factory=NoOptions)     # an instance of the task's `options` dataclass
    seed: int = 0
    model: str = "cinn"                 # cinn | mlp
    out: Path | None = None             # the run folder (tasks that keep files beside the weights)
    resume: bool = False


@dataclass
class TrainingPairs:
    source: Any                         # a PairSource (train/core/translator.py)
    info: dict                          # recorded in the run's config.json


@dataclass
class RunResult:
    """A finished training run, as `after_training` sees it."""
    run: Path
    model: torch.nn.Module
    request: PairRequest


@dataclass
class EvalRequest:
    run: Path
    config: dict                        # the run's config.json
    num_images: int = 1000
    seed: int = 0
    oracle: str = "runs/sprites/classifier"
    captions: str | None = None
    options: Any = field(default_factory=NoOptions)     # an instance of the task's `eval_options`


@dataclass
class Task:
    name: str
    help: str
    pairs: Callable[[PairRequest], TrainingPairs]
    presets: dict = field(default_factory=lambda: FEATURE_PRESETS)
    options: type = NoOptions
    experts: Callable[[dict], Experts] | None = None
    after_training: Callable[[RunResult], None] | None = None
    evaluate: Callable[[EvalRequest], dict] | None = None
    eval_options: type = NoOptions
    default_out: Callable[[PairRequest], str] | None = None       # run folder when --out is not given
    validation_pairs: Callable[[dict], tuple[torch.Tensor, torch.Tensor]] | None = None
    recorded_request: Callable[[dict], PairRequest] | None = None

    def recorded_options(self, config: dict) -> Any:
        """The task's options as a run recorded them in config.json (defaults for the ones it did not)."""
        known = {f.name for f in dataclasses.fields(self.options)}
        return self.options(**{k: v for k, v in config.items() if k in known})

    def rebuild_pairs(self, config: dict) -> TrainingPairs:
        """The run's pairs, rebuilt from what it recorded in config.json (the frozen experts give the same pairs)."""
        if self.recorded_request is not None:
            return self.pairs(self.recorded_request(config))
        preset = config.get("preset", "default")
        data = config["data"] if isinstance(config.get("data"), dict) else {}
        request = PairRequest(self.name, preset, data, self.recorded_options(config), seed=config["train"]["seed"],
                              model=config.get("kind", "cinn"))
        return self.pairs(request)

    def held_out_pairs(self, config: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The run's held-out (cond, z) pairs: the task's own hook, else its rebuilt pair source's split."""
        if self.validation_pairs is not None:
            return self.validation_pairs(config)
        return self.rebuild_pairs(config).source.validation()
