"""Small shared pieces of the training room: user-facing errors, atomic checkpoints, metric logs.

Every CLI in `train/` wraps its `main` with `run_cli`, so bad input ends with one clear line and a
non-zero exit code instead of a traceback from deep inside a library.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file


class UserError(Exception):
    """A problem with the user's input or environment; printed as one line, exit code 2."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are one line (a UserError) instead of the usage block; --help is unchanged."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


@contextlib.contextmanager
def json_stdout():
    """For `--json` commands: everything printed inside (progress, tables, subprocesses) goes to stderr,
    so stdout carries only the one JSON object printed after the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def progress_interval() -> float:
    """tqdm refresh interval: lively on a terminal, sparse in logs (CI, pipes)."""
    return 0.5 if sys.stderr.isatty() else 30.0


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temp file in the same folder, then rename: a crash never leaves half a file
    (a kill -9 can leave the temp file itself; `clean_stale_temps` removes those on the next start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # after writing: mkstemp makes 0600, and safetensors recreates the file (0600 again)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the atomic writer's leftovers (`.NAME.*.tmp`) from a run folder, e.g. after a kill -9.
    Call only where no other process writes into `folder`."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file() and not p.is_symlink()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_json(path: str | Path, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    _atomic_write(Path(path), write)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Atomic safetensors write. Every value must be finite: a NaN checkpoint is never written."""
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"refusing to write a checkpoint with non-finite values in '{name}'")
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    _atomic_write(Path(path), lambda tmp: save_file(flat, tmp, metadata=meta))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return load_file(str(path))


def load_run_weights(model: torch.nn.Module, run_dir: str | Path) -> torch.nn.Module:
    """Load RUN/checkpoint.safetensors into `model`: the best-validation weights (`best.*`) where the
    trainer kept them, else the last ones (`model.*`); a mismatch with the config is a clear error."""
    tensors = load_tensors(Path(run_dir) / "checkpoint.safetensors")
    prefix = "best." if any(k.startswith("best.") for k in tensors) else "model."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint in {run_dir} does not match its config (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    return model


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def pack_rng_state() -> dict[str, torch.Tensor]:
    """RNG states as tensors, so `--resume` continues the exact random stream."""
    np_state = np.random.get_state()
    return {
        "rng.torch": torch.get_rng_state(),
        "rng.numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "rng.numpy_pos": torch.tensor([np_state[2]], dtype=torch.int64),
        "rng.python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
    }


def unpack_rng_state(t: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(t["rng.torch"])
    np.random.set_state(("MT19937", t["rng.numpy_keys"].numpy().astype(np.uint32), int(t["rng.numpy_pos"][0]), 0, 0.0))
    random.setstate((3, tuple(int(x) for x in t["rng.python"].tolist()), None))


class MetricsLog:
    """Append-only `metrics.csv`; the header is fixed by the first row written."""

    def __init__(self, path: str | Path, fields: list[str], append: bool = False):
        self.path = Path(path)
        self.fields = fields
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not (append and self.path.exists()):
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(fields)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.fields])


def lr_at(step: int, cfg) -> float:
    """Linear warm-up over `cfg.warmup` steps, then cosine decay to `cfg.lr * cfg.final_lr_frac`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.final_lr_frac + (1 - cfg.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def optim_tensors(opt: torch.optim.Optimizer, prefix: str = "optim") -> dict[str, torch.Tensor]:
    """An optimizer's state as flat tensors `prefix.<param index>.<key>`, for a safetensors checkpoint."""
    return {f"{prefix}.{i}.{k}": torch.as_tensor(v) for i, s in opt.state_dict()["state"].items() for k, v in s.items()}


def load_optim(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str = "optim") -> None:
    sd = opt.state_dict()
    sd["state"] = {}
    for name, val in tensors.items():
        if name.startswith(prefix + "."):
            _, idx, key = name.split(".", 2)
            sd["state"].setdefault(int(idx), {})[key] = val
    opt.load_state_dict(sd)
