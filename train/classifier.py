"""Oracle attribute classifier for Sprites: a small CNN that reads the 13 attributes off an image.

It is the measuring stick of later evaluations (attribute accuracy of reconstructions, of
translated and of generated images), so it is trained on fresh renders with mild corruptions
(blur, noise, slight colour jitter that never crosses a colour class) and on a share of textured
sprites, making it robust to blurry or imperfect inputs.

    python -m train.classifier --data sprites                       # -> runs/sprites/classifier
    python -m train.classifier --data sprites --attributes shape_circle,shape_square,shape_triangle \
        --out runs/sprites/shape_classifier                         # a shape-only classifier

Library API: `load_oracle(run)` / `ensure_oracle(run)` -> `Oracle` with `predict(images)` (0/1
array, one-hot groups decided by argmax), `probabilities(images)` and `.model.features(x)`.
Outputs: RUN/checkpoint.safetensors, RUN/config.json, RUN/metrics.csv, RUN/eval.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from train.common import (
    MetricsLog,
    UserError,
    atomic_write_json,
    load_run_weights,
    read_json,
    run_cli,
    save_tensors,
    seed_everything,
)
from train.data import ATTRIBUTES, GROUPS
from train.data.sprites import SPLITS, render_batch, to_tensor

DEFAULT_RUN = "runs/sprites/classifier"
# Targets beyond the 13 attributes: "textured", the renderer's style (the domain label of unpaired, Sec. D).
TARGETS = [*ATTRIBUTES, "textured"]


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


def ensure_oracle(run_dir: str | Path = DEFAULT_RUN, size: int = 64, train_args: tuple[str, ...] = ()) -> Oracle:
    """Load the oracle, training it first when the run is missing: the default recipe, changed by the
    `python -m train.classifier` options `train_args` (e.g. ("--attributes", "textured"))."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.safetensors").is_file():
        extra = f" {' '.join(train_args)}" if train_args else ""
        print(f"no classifier in {run_dir}; training one now (size {size}{extra}, a few minutes)")
        main(["--data", "sprites", "--out", str(run_dir), "--size", str(size), *train_args])
    oracle = load_oracle(run_dir)
    if oracle.size != size:
        raise UserError(f"the oracle in {run_dir} reads {oracle.size}px images, not {size}px; "
                        f"train one with --size {size} into another folder")
    return oracle


def evaluate(oracle: Oracle, count: int) -> dict:
    """Per-attribute accuracy on the first `count` test renders: clean, blurred (sigma 1 px at 64)
    and textured."""
    images, attrs, _ = render_batch(range(count), "test", oracle.size)
    textured, _, _ = render_batch(range(count), "test", oracle.size, style="textured")
    blurred = blur(to_tensor(images), oracle.size / 64)
    result = {}
    for name, inputs in (("clean", images), ("blurred", blurred), ("textured", textured)):
        correct = (oracle.predict(inputs) == labels(attrs, name == "textured", oracle.attributes)).mean(0)
        result[name] = {"mean": float(correct.mean()),
                        "per_attribute": dict(zip(oracle.attributes, map(float, correct)))}
    result["count"] = count
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=["sprites"], default="sprites", help="training data (rendered on the fly)")
    p.add_argument("--out", default=DEFAULT_RUN, help="run folder (default %(default)s)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attributes", default=",".join(ATTRIBUTES),
                   help="comma-separated targets, a subset of the 13 sprite attributes and 'textured' "
                        "(the style: a flat-vs-textured domain classifier) (default the 13 attributes)")
    p.add_argument("--textured-frac", type=float, default=0.25, help="share of textured training sprites")
    p.add_argument("--eval-count", type=int, default=2000, help="test renders for eval.json")
    args = p.parse_args(argv)

    attributes = [a.strip() for a in args.attributes.split(",") if a.strip()]
    unknown = [a for a in attributes if a not in TARGETS]
    if unknown or not attributes or len(set(attributes)) != len(attributes):
        raise UserError(f"--attributes must be distinct names from: {', '.join(TARGETS)} "
                        f"(got {unknown or attributes})")
    if args.steps < 1 or args.batch_size < 2 or args.eval_count < 1:
        raise UserError("--steps and --eval-count must be >= 1 and --batch-size >= 2")
    if args.size < 16 or args.size > 256:
        raise UserError(f"--size must be between 16 and 256, got {args.size}")
    if not 0.0 <= args.textured_frac <= 1.0:
        raise UserError(f"--textured-frac must be in [0, 1], got {args.textured_frac}")

    out = Path(args.out)
    g = seed_everything(args.seed)
    config = {"kind": "attribute_classifier", "data": args.data, "attributes": attributes, "size": args.size,
              "channels": [16, 32, 64, 128], "hidden": 128, "steps": args.steps, "batch_size": args.batch_size,
              "lr": args.lr, "seed": args.seed, "textured_frac": args.textured_frac}
    model = AttributeNet(len(attributes), tuple(config["channels"]), config["hidden"])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    log = MetricsLog(out / "metrics.csv", ["step", "loss", "accuracy", "lr", "seconds"])
    rng = np.random.default_rng(args.seed)
    n_train = SPLITS["train"][1] - SPLITS["train"][0]
    n_textured = int(round(args.batch_size * args.textured_frac))

    start = time.time()
    model.train()
    for step in (bar := tqdm(range(1, args.steps + 1), desc="classifier", mininterval=2.0)):
        idx = rng.integers(0, n_train, args.batch_size)
        flat, y_flat, _ = render_batch(idx[n_textured:], "train", args.size)
        tex, y_tex, _ = render_batch(idx[:n_textured], "train", args.size, style="textured")
        x = augment(to_tensor(np.concatenate([tex, flat])), g)
        y = torch.from_numpy(np.concatenate([labels(y_tex, True, attributes), labels(y_flat, False, attributes)]))
        logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == args.steps:
            acc = float(((logits > 0).float() == y).float().mean())
            log.write(step=step, loss=f"{loss.item():.5f}", accuracy=f"{acc:.4f}",
                      lr=f"{sched.get_last_lr()[0]:.2e}", seconds=f"{time.time() - start:.1f}")
            bar.set_postfix(loss=f"{loss.item():.4f}", acc=f"{acc:.3f}")
    train_seconds = time.time() - start

    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_tensors(out / "checkpoint.safetensors", state, metadata={"kind": "attribute_classifier"})
    atomic_write_json(out / "config.json", config)

    results = evaluate(Oracle(model, config), args.eval_count)
    results["train_seconds"] = round(train_seconds, 1)
    atomic_write_json(out / "eval.json", results)
    print(f"{'attribute':<16}{'clean':>8}{'blurred':>9}{'textured':>10}")
    for a in attributes:
        print(f"{a:<16}" + "".join(f"{results[k]['per_attribute'][a]:>{w}.4f}"
                                   for k, w in (("clean", 8), ("blurred", 9), ("textured", 10))))
    print(f"{'mean':<16}" + "".join(f"{results[k]['mean']:>{w}.4f}"
                                    for k, w in (("clean", 8), ("blurred", 9), ("textured", 10))))
    print(f"trained {args.steps} steps in {train_seconds:.0f}s; wrote {out}/checkpoint.safetensors and eval.json")
    return 0


if __name__ == "__main__":
    run_cli(main)
