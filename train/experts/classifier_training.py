"""Training the attribute classifier (train/experts/classifier.py) with the one loop, and "load or train".

It is trained on fresh renders with mild corruptions (`augment`) and a share of textured sprites, so the
oracle stays robust on blurry or imperfect inputs. Outputs: RUN/checkpoint.safetensors, RUN/config.json,
RUN/metrics.csv, RUN/eval.json. `ensure_oracle(run)` loads a finished run and trains (or finishes) it first
when it is missing or was interrupted.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train.core.common import MetricsLog, UserError, atomic_write_json, read_json, seed_everything
from train.core.loop import CHECKPOINT, Checkpointed, checkpoint_step, run_steps
from train.core.loop import resume as resume_checkpoint
from train.data import ATTRIBUTES
from train.data.sprites import SPLITS, render_batch, to_tensor
from train.experts.classifier import DEFAULT_RUN, TARGETS, AttributeNet, Oracle, augment, blur, labels, load_oracle


@dataclass
class ClassifierSpec:
    """What to train: the library form of the `python -m train.classifier` options."""
    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTES))
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-3
    size: int = 64
    seed: int = 0
    textured_frac: float = 0.25          # share of textured training sprites
    eval_count: int = 2000               # test renders for eval.json
    ckpt_every: int = 250

    def check(self) -> None:
        unknown = [a for a in self.attributes if a not in TARGETS]
        if unknown or not self.attributes or len(set(self.attributes)) != len(self.attributes):
            raise UserError(f"--attributes must be distinct names from: {', '.join(TARGETS)} "
                            f"(got {unknown or self.attributes})")
        if self.steps < 1 or self.batch_size < 2 or self.eval_count < 1 or self.ckpt_every < 1:
            raise UserError("--steps, --eval-count and --ckpt-every must be >= 1 and --batch-size >= 2")
        if self.size < 16 or self.size > 256:
            raise UserError(f"--size must be between 16 and 256, got {self.size}")
        if not 0.0 <= self.textured_frac <= 1.0:
            raise UserError(f"--textured-frac must be in [0, 1], got {self.textured_frac}")


def evaluate_classifier(oracle: Oracle, count: int) -> dict:
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


def train_classifier(spec: ClassifierSpec, out: str | Path, resume: bool = False) -> dict:
    """Train into `out` (or continue an interrupted run with `resume`); returns the evaluation (eval.json)."""
    spec.check()
    out = Path(out)
    ckpt = out / CHECKPOINT
    if not resume and ckpt.exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    g = seed_everything(spec.seed)
    attributes = list(spec.attributes)
    config = {"kind": "attribute_classifier", "data": "sprites", "attributes": attributes, "size": spec.size,
              "channels": [16, 32, 64, 128], "hidden": 128, "steps": spec.steps, "batch_size": spec.batch_size,
              "lr": spec.lr, "seed": spec.seed, "textured_frac": spec.textured_frac}
    if resume:
        old = read_json(out / "config.json")
        if {k: old.get(k) for k in config} != config:
            raise UserError(f"--resume: settings differ from the run in {out}; resume with the same settings")
    model = AttributeNet(len(attributes), tuple(config["channels"]), config["hidden"])
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.steps, pct_start=0.1)
    rng = np.random.default_rng(spec.seed)

    def load_state(state: dict) -> None:
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state = state["numpy_rng"]

    ck = Checkpointed({"model": model}, {"optim": opt}, g, metadata={"kind": "attribute_classifier"},
                      state=lambda: {"sched": sched.state_dict(), "numpy_rng": rng.bit_generator.state},
                      load_state=load_state)
    start = resume_checkpoint(ck, ckpt) if resume else 0
    atomic_write_json(out / "config.json", config)
    log = MetricsLog(out / "metrics.csv", ["step", "loss", "accuracy", "lr", "seconds"], append=resume)
    n_train = SPLITS["train"][1] - SPLITS["train"][0]
    n_textured = int(round(spec.batch_size * spec.textured_frac))
    t0 = time.time()

    def step_fn(step: int) -> dict:
        idx = rng.integers(0, n_train, spec.batch_size)
        flat, y_flat, _ = render_batch(idx[n_textured:], "train", spec.size)
        tex, y_tex, _ = render_batch(idx[:n_textured], "train", spec.size, style="textured")
        x = augment(to_tensor(np.concatenate([tex, flat])), g)
        y = torch.from_numpy(np.concatenate([labels(y_tex, True, attributes), labels(y_flat, False, attributes)]))
        logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {"logits": logits, "y": y, "loss": loss}

    def log_row(done: int, o: dict) -> dict:
        acc = float(((o["logits"] > 0).float() == o["y"]).float().mean())
        log.write(step=done, loss=f"{o['loss'].item():.5f}", accuracy=f"{acc:.4f}",
                  lr=f"{sched.get_last_lr()[0]:.2e}", seconds=f"{time.time() - t0:.1f}")
        return {"loss": f"{o['loss'].item():.4f}", "acc": f"{acc:.3f}"}

    model.train()
    run_steps(step_fn, start=start, steps=spec.steps, ck=ck, path=ckpt, ckpt_every=spec.ckpt_every,
              hooks=[(25, log_row)], desc="classifier")
    results = evaluate_classifier(Oracle(model, config), spec.eval_count)
    results["train_seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "eval.json", results)
    return results


def is_finished(run_dir: Path) -> bool:
    if not (run_dir / "config.json").is_file():
        return False
    step = checkpoint_step(run_dir)
    # a run written before the shared loop has no trainer.step; it was only ever saved when finished
    return (run_dir / CHECKPOINT).is_file() and (step is None or step >= read_json(run_dir / "config.json")["steps"])


def ensure_classifier(run_dir: str | Path, spec: ClassifierSpec, what: str = "classifier") -> Oracle:
    """Load the classifier in `run_dir`; train it first (or finish an interrupted run) as `spec` says."""
    run_dir = Path(run_dir)
    if not is_finished(run_dir):
        resume = (run_dir / CHECKPOINT).is_file()
        if resume:          # finish the interrupted run with its own settings
            config = read_json(run_dir / "config.json")
            spec = ClassifierSpec(**{k: config[k] for k in ("attributes", "steps", "batch_size", "lr", "size", "seed",
                                                            "textured_frac")}, eval_count=spec.eval_count)
        print(f"{'an unfinished' if resume else 'no'} {what} in {run_dir}; training it now (size {spec.size}, "
              f"{spec.steps} steps, seed {spec.seed}, {len(spec.attributes)} attributes)", file=sys.stderr)
        train_classifier(spec, run_dir, resume=resume)
    return load_oracle(run_dir)


def ensure_oracle(run_dir: str | Path = DEFAULT_RUN, size: int = 64, spec: ClassifierSpec | None = None) -> Oracle:
    """Load the oracle, training it first when the run is missing: the default recipe at `size`, or `spec`."""
    spec = spec or ClassifierSpec(size=size)
    oracle = ensure_classifier(run_dir, spec, "classifier")
    if oracle.size != size:
        raise UserError(f"the oracle in {run_dir} reads {oracle.size}px images, not {size}px; "
                        f"train one with --size {size} into another folder")
    return oracle
