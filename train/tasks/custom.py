"""A task from your own two pretrained experts, without editing the project (docs/custom-experts.md).

    TASK = expert_task("mine", source=load_phi, target=load_theta, inputs=my_images, input_shape=(3, 32, 32))

  source  () -> a module with `encode(x) -> zΦ` (Φ, e.g. a classifier's penultimate layer)
  target  () -> a module with `encode(x) -> zΘ` and `decode(zΘ) -> x` (Θ and Λ, e.g. an autoencoder)
  inputs  (split, count) -> the first `count` inputs x of "train" or "val", a float tensor both experts read

Both experts are frozen (eval mode, no gradients) and their outputs on the inputs are the training pairs
(zΦ(x), Θ(x)). The experts are called afresh from the run's config, so `source` / `target` must rebuild the
same modules every time (load weights from a file, not from a random init).
"""
from __future__ import annotations

from typing import Callable

import torch

from train.core.presets import FEATURE_PRESETS, derive
from train.data.pairs import SpritePairs
from train.experts.base import DecodeStage, EncodeStage, Experts, freeze
from train.tasks.contract import PairRequest, Task, TrainingPairs

DATA = {"smoke": {"images": 256, "val_images": 64, "batch": 256},
        "default": {"images": 20000, "val_images": 1000, "batch": 256}}


@torch.no_grad()
def encode_all(expert, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([expert.encode(x[i:i + batch]) for i in range(0, len(x), batch)])


def expert_task(name: str, source: Callable[[], torch.nn.Module], target: Callable[[], torch.nn.Module],
                inputs: Callable[[str, int], torch.Tensor], input_shape: tuple[int, int, int],
                help: str = "", presets: dict | None = None) -> Task:
    """A Task whose pairs are (source.encode(x), target.encode(x)) over `inputs` and whose bundle has the
    stages source_encoder = source.encode, target_encoder = target.encode, target_decoder = target.decode."""

    def pairs(req: PairRequest) -> TrainingPairs:
        phi, theta = freeze(source()), freeze(target())
        n, n_val, batch = req.data["images"], req.data["val_images"], req.data["batch"]
        x, x_val = inputs("train", n), inputs("val", n_val)
        cond, z = encode_all(phi, x, batch), encode_all(theta, x, batch)
        val_cond, val_z = encode_all(phi, x_val, batch), encode_all(theta, x_val, batch)
        info = {"task": name, "data": req.data, "input_shape": list(input_shape)}
        return TrainingPairs(SpritePairs(cond.unsqueeze(1), z, val_cond, val_z), info)

    def experts(config: dict) -> Experts:
        phi, theta = freeze(source()), freeze(target())
        info = {"source_kind": "image", "source_image_shape": list(input_shape), "image_size": input_shape[-1],
                "warnings": []}
        return Experts(EncodeStage(phi), EncodeStage(theta), DecodeStage(theta), info)

    return Task(name, help or f"{name}: your own experts", pairs, presets or derive(FEATURE_PRESETS, DATA),
                experts=experts)
