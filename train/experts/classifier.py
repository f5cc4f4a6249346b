"""The oracle attribute classifier for Sprites: a small CNN that reads the 13 attributes off an image.

It is the measuring stick of later evaluations (attribute accuracy of reconstructions, of
translated and of generated images), so it is trained on fresh renders with mild corruptions
(blur, noise, slight colour jitter that never crosses a colour class) and on a share of textured
sprites, making it robust to blurry or imperfect inputs.

Training: train/experts/classifier_training.py (`python -m train.classifier`). Library API: `load_oracle(run)`
(or `ensure_oracle(run)`, which trains it first when missing) -> `Oracle` with `predict(images)` (0/1 array,
one-hot groups decided by argmax), `probabilities(images)` and `.model.features(x)`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from train.core.common import UserError, load_run_weights, read_json
from train.data import ATTRIBUTES, GROUPS
from train.data.sprites import to_tensor

DEFAULT_RUN = "runs/sprites/classifier"
# Targets beyond the 13 attributes: "textured", the renderer's style (the domain label of unpaired, Sec. D).
TARGETS = [*ATTRIBUTES, "textured"]
LAYERS = ("early", "middle", "last")     # the layers `LayerFeatures` exposes (model diagnosis, Sec. 4.2)


def labels(attributes: np.ndarray, textured: bool, names: list[str]) -> np.ndarray:
    """The columns `names` of [attributes | textured] for renders that all share one style."""
    full = np.concatenate([attributes, np.full((len(attributes), 1), float(textured), np.float32)], 1)
    return full[:, [TARGETS.index(n) for n in names]]


class AttributeNet(nn.Module):
    """Four stride-2 conv stages (size -> size/16; the last two add a stride-1 conv), a 4x4 pooled
    grid kept spatial (position matters), one hidden FC layer and a linear head, one logit per
    attribute. About 9 M multiply-adds per 64x64 image: cheap enough for shared CPUs."""

    def __init__(self, num_outputs: int, channels: tuple[int, ...] = (16, 32, 64, 128), hidden: int = 128):
        super().__init__()
        stages, c_in = [], 3
        for i, c in enumerate(channels):
            layers = [nn.Conv2d(c_in, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i >= 2:  # an extra stride-1 conv where the grid is small enough to be cheap
                layers += [nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*layers))
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 16, hidden), nn.ReLU(inplace=True))
        self.head = nn.Linear(hidden, num_outputs)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Intermediate activations: "early" (stage 1, size/2), "middle" (stage 3, size/8),
        "last" (the hidden vector before the head) and "logits"."""
        out = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == 0:
                out["early"] = x
            elif i == 2:
                out["middle"] = x
        out["last"] = self.hidden(self.pool(x))
        out["logits"] = self.head(out["last"])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["logits"]


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a batch (N,3,H,W) with one sigma in pixels, as a separable depthwise conv."""
    radius = max(1, int(3 * sigma + 0.5))
    r = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    k = (k / k.sum()).repeat(x.shape[1], 1)  # (C, taps)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k[:, None, None, :], groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k[:, None, :, None], groups=x.shape[1])


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild corruptions in [-1, 1] space: half the batch blended with a 1.2 px (at 64) blur, noise,
    brightness/contrast and per-channel shifts of a few percent (colour classes stay intact)."""
    n, size = x.shape[0], x.shape[-1]
    rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    amount = (rand(n, 1, 1, 1) * (rand(n, 1, 1, 1) < 0.5)).to(x.dtype)
    x = x + amount * (blur(x, 1.2 * size / 64) - x)
    x = x * (0.9 + 0.2 * rand(n, 1, 1, 1)) + 0.12 * (rand(n, 1, 1, 1) - 0.5) + 0.08 * (rand(n, 3, 1, 1) - 0.5)
    x = x + 0.06 * rand(n, 1, 1, 1) * torch.randn(x.shape, generator=g)
    return x.clamp(-1, 1)


def group_argmax(probs: np.ndarray, attributes: list[str]) -> np.ndarray:
    """Threshold at 0.5, except that each complete one-hot group (shape, colour) gets its argmax."""
    pred = (probs > 0.5).astype(np.float32)
    for names in GROUPS.values():
        if all(n in attributes for n in names):
            cols = [attributes.index(n) for n in names]
            pred[:, cols] = np.eye(len(cols), dtype=np.float32)[probs[:, cols].argmax(1)]
    return pred


class Oracle:
    """A frozen classifier. Images: uint8 (N,H,W,3) arrays/tensors or float tensors (N,3,H,W) in [-1, 1]."""

    def __init__(self, model: AttributeNet, config: dict):
        self.model = model.eval().requires_grad_(False)
        self.config = config
        self.attributes: list[str] = list(config["attributes"])
        self.size: int = int(config["size"])

    def _as_input(self, images) -> torch.Tensor:
        if isinstance(images, np.ndarray) or (torch.is_tensor(images) and images.dtype == torch.uint8):
            images = np.asarray(images)
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"expected uint8 images (N,H,W,3), got {images.dtype} {images.shape}")
            x = to_tensor(images)
        else:
            x = torch.as_tensor(images).float()
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"expected float images (N,3,H,W) in [-1, 1], got shape {tuple(x.shape)}")
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            raise ValueError(f"this oracle reads {self.size}x{self.size} images, got {x.shape[-2]}x{x.shape[-1]}")
        return x

    @torch.no_grad()
    def probabilities(self, images, batch_size: int = 256) -> np.ndarray:
        x = self._as_input(images)
        out = [torch.sigmoid(self.model(x[i:i + batch_size].cpu())) for i in range(0, len(x), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.attributes)), np.float32)

    def predict(self, images) -> np.ndarray:
        """(N, len(attributes)) float32 of 0/1; shape and colour are one-hot by construction."""
        return group_argmax(self.probabilities(images), self.attributes)


def load_oracle(run_dir: str | Path = DEFAULT_RUN) -> Oracle:
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    if config.get("kind") != "attribute_classifier":
        raise UserError(f"{run_dir}/config.json is not an attribute classifier run")
    model = AttributeNet(len(config["attributes"]), tuple(config["channels"]), config["hidden"])
    load_run_weights(model, run_dir)
    return Oracle(model, config)


class LayerFeatures(torch.nn.Module):
    """Φ: image (N, 3, H, W) in [-1, 1] -> zΦ, the activations of one layer of f (pooled as above)."""

    def __init__(self, classifier: torch.nn.Module, layer: str, image_size: int):
        super().__init__()
        if layer not in LAYERS:
            raise UserError(f"--layer must be one of {', '.join(LAYERS)}, got {layer!r}")
        self.net, self.layer, self.image_size = classifier, layer, image_size

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.all_layers(image)[self.layer]

    @torch.no_grad()
    def all_layers(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.net.features(image)
        return {"early": F.avg_pool2d(f["early"], 4), "middle": f["middle"], "last": f["last"]}
