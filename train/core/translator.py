"""Training τ (and the MLP baseline) on (zΦ, zΘ) pairs: plain PyTorch, no framework, the one loop of loop.py.

It trains on any `PairSource` (something that hands out (zΦ, zΘ) batches); tasks differ only in
their pair source. The experts never see a gradient: pair sources return detached tensors.

Runs unchanged under `torchrun --nproc_per_node N` (DistributedDataParallel; gloo on CPU, nccl on
GPU); rank 0 logs and writes. The global batch is split across ranks.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn as nn

from train.core.common import (
    MetricsLog,
    UserError,
    atomic_write_json,
    clean_stale_temps,
    load_run_weights,
    lr_at,
    read_json,
)
from train.core.flow import ConditionalINN, FlowConfig
from train.core.loop import CHECKPOINT, Checkpointed, run_steps
from train.core.loop import resume as resume_checkpoint
from train.core.mlp import MLPConfig, MLPTranslator

WHITEN_SAMPLES = 16384     # training conditions drawn to fit FlowConfig.cond_whiten's covariance (384-d: plenty)


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 100              # linear warm-up steps, then cosine decay to lr·final_lr_frac
    final_lr_frac: float = 0.02
    weight_decay: float = 0.0      # decoupled (AdamW): each step shrinks every weight by lr·weight_decay
    grad_clip: float = 10.0
    val_every: int = 250
    ckpt_every: int = 1000
    seed: int = 0
    # cINN only: std of Gaussian noise added to each training target zΘ at the first step, in units of its
    # per-dimension std, decaying linearly to `target_noise_final` at the last (0 = off). See `train` below.
    target_noise: float = 0.0
    target_noise_final: float = 0.0
    target_noise_until: float = 1.0  # share of the steps the decay takes; the floor holds after it (1 = the last)
    # cINN only: std of Gaussian noise added to each training condition zΦ, in units of its per-dimension
    # std (dimensions that never vary get none); constant over training (0 = off). See `train` below.
    cond_noise: float = 0.0
    # exponential moving average of the weights (Polyak averaging; 0 = off): validation, the best-validation
    # pick and the run's weights use the average, decay min(ema, (1 + t) / (10 + t)) at step t - the second
    # term (a window growing with t) rules until t = 9000 for ema 0.999, so 0.999 and 0.9995 give the same run
    ema: float = 0.0

    def __post_init__(self):
        if not 0 < self.target_noise_until <= 1:
            raise UserError(f"target_noise_until is the share of the steps the target noise decays over: "
                            f"choose a value in (0, 1], got {self.target_noise_until}")


class PairSource(Protocol):
    cond_shape: tuple[int, ...]
    target_dim: int

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...
    def validation(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def statistics(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...


class Objective(nn.Module):
    """Wraps a translator so DistributedDataParallel sees the loss as `forward`: Eq. 4 for the cINN
    (mean NLL in nats per sample), MSE for the MLP baseline."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, cond, z):
        if isinstance(self.model, ConditionalINN):
            return self.model.nll(z, cond).mean()
        return self.model.loss(z, cond).mean()


def build_model(kind: str, model_cfg: dict) -> nn.Module:
    if kind == "cinn":
        return ConditionalINN(FlowConfig.from_dict(model_cfg))
    if kind == "mlp":
        return MLPTranslator(MLPConfig.from_dict(model_cfg))
    raise UserError(f"unknown model kind '{kind}' (expected cinn or mlp)")


def load_translator(run_dir: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a trained τ (or MLP) from RUN/config.json + RUN/checkpoint.safetensors, in eval mode."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    model = build_model(config["kind"], config["model"])
    load_run_weights(model, run_dir)
    return model.eval(), config


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def evaluate_nll(model: nn.Module, cond: torch.Tensor, z: torch.Tensor, batch: int = 4096) -> float:
    """Mean per-dim loss on held-out pairs: NLL nats/dim (cINN) or MSE (MLP)."""
    obj = Objective(model)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(z), batch):
            total += obj(cond[i:i + batch], z[i:i + batch]).item() * len(z[i:i + batch])
    per_sample = total / len(z)
    return per_sample / z.shape[1] if isinstance(model, ConditionalINN) else per_sample


def protected_directions(model: nn.Module, source, noisy: torch.Tensor) -> torch.Tensor | None:
    """(c, k) orthonormal directions of zΦ along which condition noise would move the linear readouts of
    the source's `condition_meanings()` as H sees them (after standardising / whitening), or None.
    `noisy`: the dimensions that get noise (a dimension that never varies gets none, and the projection
    must not move noise into it: H's standardisation would blow it up)."""
    meanings = getattr(source, "condition_meanings", lambda: None)()
    if meanings is None or len(model.cfg.cond_shape) != 1:
        return None
    m = torch.diag(1 / model.cond_std)                      # zΦ -> H's input is (zΦ - mean) @ W @ m
    if model.cond_whitening is not None:
        m = model.cond_whitening @ m
    r = (m @ m.T @ meanings.T.to(m)).double()                # readout r of a meaning d: noise n moves it by n·r
    r[~noisy.cpu()] = 0
    u, s, _ = torch.linalg.svd(r, full_matrices=False)
    u[~noisy.cpu()] = 0                                      # exactly: SVD leaves ~1e-17 there
    return u[:, s > s.max() * 1e-6].float()


def train(kind: str, model_cfg: dict, cfg: TrainConfig, source: PairSource, out_dir: str | Path,
          resume: bool = False, run_info: dict | None = None, device: str = "cpu") -> nn.Module:
    """Train and checkpoint a translator; returns it (eval mode). `run_info` goes into config.json."""
    out = Path(out_dir)
    rank, world = _dist_info()
    is_main = rank == 0
    ckpt = out / CHECKPOINT
    resume_run = resume
    config = {"kind": kind, "model": model_cfg, "train": asdict(cfg), **(run_info or {})}
    if is_main and out.is_dir():
        stale = clean_stale_temps(out)              # a killed run's half-written checkpoint temp files
        if stale:
            print(f"note: removed {len(stale)} stale temp file(s) from {out}: {', '.join(p.name for p in stale)}",
                  file=sys.stderr)
    if resume:
        old = read_json(out / "config.json")
        if old["model"] != json.loads(json.dumps(model_cfg)):
            raise UserError(f"--resume: model settings differ from the run in {out} "
                            f"(was {old['model']}); resume with the same settings or start a new --out")
    elif ckpt.exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    model = build_model(kind, model_cfg).to(device)
    # AdamW, not Adam's L2 term: Adam divides that term by the gradient scale, so it barely regularises the
    # weights with large NLL gradients; with weight_decay 0 the two are the same update
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    best = {"val": math.inf, "state": None}        # model selection on the held-out split (early stopping)
    ema = {}                                        # name -> averaged tensor (cfg.ema > 0 only)

    def best_tensors() -> dict:
        out = {f"ema.{k}": v for k, v in ema.items()}
        if best["state"] is None:
            return out
        return {**out, "trainer.best_val": torch.tensor([best["val"]]),
                **{f"best.{k}": v for k, v in best["state"].items()}}

    def load_best(tensors: dict) -> None:
        best["val"] = float(tensors["trainer.best_val"].item()) if "trainer.best_val" in tensors else math.inf
        best["state"] = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
        ema.update({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})

    ck = Checkpointed({"model": model}, {"optim": opt}, gen, extra_tensors=best_tensors, load_extra=load_best)
    start = 0
    if resume_run:
        start = resume_checkpoint(ck, ckpt)
    else:
        model.set_standardization(*source.statistics())
        if kind == "cinn":
            if model.cfg.cond_whiten is not None:
                fit_batch = source.batch(WHITEN_SAMPLES, torch.Generator().manual_seed(cfg.seed + 1))
                model.fit_condition_whitening(fit_batch[0])
            # ActNorm data-dependent init, before DDP broadcasts rank 0's weights
            model.train()
            with torch.no_grad():
                c0, z0 = source.batch(max(cfg.batch_size, 512), torch.Generator().manual_seed(cfg.seed))
                model.inverse(z0.to(device), c0.to(device))
    if cfg.ema and not ema:
        ema.update({k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()})
    if is_main:
        atomic_write_json(out / "config.json", config)
    objective: nn.Module = Objective(model)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective)

    val_c, val_z = source.validation()
    log = MetricsLog(out / "metrics.csv", ["step", "train_loss", "val_loss", "lr", "samples_per_s"],
                     append=resume_run) if is_main else None
    per_rank = max(1, cfg.batch_size // world)
    cond_scale = None
    if cfg.cond_noise and kind == "cinn":
        std = source.statistics()[1]
        cond_scale = (cfg.cond_noise * std * (std > std.max() * 1e-4)).to(device)   # constant dims stay so
    keep = protected_directions(model, source, cond_scale > 0) if cond_scale is not None else None
    t0, seen, val_loss = time.perf_counter(), [0], [float("nan")]

    def step_fn(step: int) -> dict:
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        cond, z = source.batch(per_rank, gen)
        cond, z = cond.to(device), z.to(device)
        if cfg.target_noise and kind == "cinn":
            # Some conditions leave directions of zΘ without variance (a circle has no rotation, a square
            # has one); τ⁻¹ then squeezes their residuals near v = 0, where τ(v | other condition) lands
            # between the modes (a square's mean over rotations decodes as a circle). Noise gives every
            # direction variance to spread over N(0, I) while the flow takes shape; it decays to 0 so the
            # final τ fits the clean targets (constant noise left v on clean data at std 0.5 and
            # predictive of c). Validation stays on the clean targets.
            left = max(0.0, 1 - step / (cfg.target_noise_until * cfg.steps))
            sigma = cfg.target_noise_final + (cfg.target_noise - cfg.target_noise_final) * left
            z = z + sigma * model.target_std * torch.randn(z.shape, generator=gen).to(device)
        if cond_scale is not None:
            # Directions in which the training conditions barely vary carry little meaning, but whitening
            # scales them up and H may still lean on them; unseen phrasings stray exactly there (text2image:
            # held-out captions have 6-17x the training variance past the top 64 principal directions).
            # Noise of about equal size in every dimension drowns those directions and leaves the high-variance
            # ones nearly as they were; `keep` spares the readouts of what the condition says. On text2image it
            # trades held-out realism for attribute accuracy (docs/results.md), so no preset turns it on.
            noise = cond_scale * torch.randn(cond.shape, generator=gen).to(device)
            if keep is not None:
                noise = noise - (noise @ keep) @ keep.T
            cond = cond + noise
        loss = objective(cond, z)
        if not torch.isfinite(loss):
            raise UserError(f"non-finite loss at step {step} (lr {lr:.2e}); nothing was written for this step. "
                            f"Lower --lr or check the features for extreme values")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if ema:
            decay = min(cfg.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if k in ema:
                        ema[k].lerp_(v, 1 - decay)
        seen[0] += per_rank * world
        return {"loss": loss, "lr": lr, "dim": z.shape[1]}

    def validate(done: int, out_: dict) -> dict:
        model.eval()
        current = {k: v.detach().clone() for k, v in model.state_dict().items()} if ema else None
        if ema:
            model.load_state_dict(ema, strict=False)           # judge (and keep) the averaged weights
        val_loss[0] = evaluate_nll(model, val_c.to(device), val_z.to(device))
        if val_loss[0] < best["val"]:
            best["val"] = val_loss[0]
            best["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if current is not None:
            model.load_state_dict(current)
        model.train()
        rate = seen[0] / (time.perf_counter() - t0)
        loss = out_["loss"].item()
        log.write(step=done, train_loss=f"{loss / (out_['dim'] if kind == 'cinn' else 1):.5f}",
                  val_loss=f"{val_loss[0]:.5f}", lr=f"{out_['lr']:.3e}", samples_per_s=f"{rate:.0f}")
        return {"loss": f"{loss:.3f}", "val": f"{val_loss[0]:.4f}", "sps": f"{rate:.0f}"}

    model.train()
    run_steps(step_fn, start=start, steps=cfg.steps, ck=ck, path=ckpt, ckpt_every=cfg.ckpt_every,
              hooks=[(cfg.val_every, validate)], desc=f"train {kind}", enabled=is_main)
    best_val, best_state, seen, val_loss = best["val"], best["state"], seen[0], val_loss[0]
    if is_main:
        elapsed = time.perf_counter() - t0
        unit = "nats/dim" if kind == "cinn" else "mse"
        print(f"done: {cfg.steps - start} steps in {elapsed:.1f}s ({seen / max(elapsed, 1e-9):.0f} samples/s), "
              f"last val {unit} {val_loss:.4f}, best {best_val:.4f} (kept as the run's weights); checkpoint {ckpt}")
    if world > 1:
        dist.barrier()
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()
