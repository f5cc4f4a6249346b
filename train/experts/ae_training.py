"""Training the autoencoder g of Appendix F (model: train/experts/autoencoder.py) with the one loop.

`train_autoencoder(AESpec, out)` is the library form of `python -m train.ae`; `ensure_autoencoder(run, spec)`
loads a run, training it first (and saying so) when it is missing.

Loss (Eq. 14, 16-18), per pixel:  L1(y, ŷ)·w / γ + log γ  +  kl_weight · KL(q(z|y) ‖ N(0, I))
  [+ disc_weight · λ · L_GAN with the adaptive λ of Eq. 17 once step >= disc_start].
w = 1 + mask_weight·silhouette + edge_weight·edge (sprites only; the renderer gives the mask): the
object covers ~10-35 % of a sprite, and without the weight a small CPU model spends its capacity
on the background first; `edge` is the 2-pixel band along the silhouette's outline, where shape
lives (a small square and a small circle differ only at their corners). A plain loss
re-weighting; nothing about the data changes.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from train.core.common import MetricsLog, UserError, atomic_write_json, lr_at, read_json, seed_everything
from train.core.loop import CHECKPOINT, Checkpointed, run_steps
from train.core.loop import resume as resume_checkpoint
from train.data.folders import AttributeFolderDataset, CelebADataset, ImageFolderDataset
from train.data.sprites import SPLITS, render_batch, to_tensor
from train.eval.metrics import psnr
from train.experts.autoencoder import AEConfig, Autoencoder, PatchDiscriminator, load_autoencoder
from train.experts.base import freeze


@dataclass
class AETrainConfig:
    steps: int = 4000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100              # linear warm-up steps, then cosine decay to lr·final_lr_frac
    final_lr_frac: float = 0.02
    betas: tuple[float, float] = (0.9, 0.99)   # Adam
    grad_clip: float = 5.0
    # on KL summed over z (nats per sample) vs the per-pixel L1 NLL; 1e-4 / 1e-3 widen the posterior but made
    # samples no cleaner and reconstructions worse (docs/results.md "KL weight", 2026-12-01)
    kl_weight: float = 1e-5
    mask_weight: float = 4.0       # extra L1 weight on the object's silhouette (sprites)
    edge_weight: float = 0.0       # extra L1 weight on a band around the silhouette's outline (sprites)
    corner_weight: float = 0.0     # extra L1 weight where that band is not locally straight: corners (sprites)
    size_balance: float = 0.0      # object weights ∝ (silhouette area)^-p, batch mean 1: small shapes count more
    disc_weight: float = 0.0       # 0 = no discriminator (CPU presets)
    disc_start: int = 0            # step at which the GAN loss switches on
    log_every: int = 25
    grid_every: int = 500
    ckpt_every: int = 500
    seed: int = 0


PRESETS: dict[str, tuple[AEConfig, AETrainConfig]] = {
    "smoke": (AEConfig(latent_dim=16, enc_channels=(8, 16, 16), dec_channels=(16, 16, 8), num_classes=16,
                       embed_dim=8, mlp_hidden=32),
              AETrainConfig(steps=6, batch_size=8, warmup=2, log_every=2, grid_every=3, ckpt_every=3)),
    # 4000 steps and a residual block at the decoder's 32×32 grid, outline weight 32: every shape reads back as
    # itself ≥ 0.965 (squares were 0.68 at 2000 steps without the block), oracle agreement 0.998, fid_recon 48
    # vs 79 (real vs real 43, N=1000); ~2.5-2.9× the old preset's CPU work. corner_weight / size_balance hurt
    # at 2000 steps and did not pay at 4000 (docs/results.md "Autoencoder g", 2026-11-30)
    "default": (AEConfig(hires_blocks=1), AETrainConfig(steps=4000, edge_weight=32.0)),
    # two stages for 16-32 px images (e.g. the low-res expert f of superres, Fig. 4); ~1.5 min on one thread
    "small": (AEConfig(latent_dim=32, enc_channels=(32, 64), dec_channels=(64, 32), num_classes=64, embed_dim=32,
                       mlp_hidden=64), AETrainConfig(steps=3000)),
}


def preset_summary(name: str) -> str:
    """One line on what a preset trains, from its settings (for --help)."""
    m, c = PRESETS[name]
    parts = [f"{c.steps} steps", f"latent {m.latent_dim}", f"decoder {'/'.join(map(str, m.dec_channels))}"]
    if m.hires_blocks:
        parts.append(f"+{m.hires_blocks} residual block(s) at the top resolution")
    parts += [f"{k} {getattr(c, k):g}" for k in ("edge_weight", "corner_weight", "size_balance", "disc_weight")
              if getattr(c, k)]
    parts.append(f"kl_weight {c.kl_weight:g}")
    return f"{name}: " + ", ".join(parts)


class SpriteBatches:
    """Training sprites rendered on the fly: images (N,3,H,W) in [-1, 1] and silhouettes (N,1,H,W)."""

    def __init__(self, size: int, style: str | None = None):
        self.size, self.count = size, SPLITS["train"][1] - SPLITS["train"][0]
        self.style = style      # None/"flat", "textured", or "union": half of every batch textured

    def __call__(self, n: int, gen: torch.Generator):
        idx = torch.randint(self.count, (n,), generator=gen).tolist()
        n_tex = {"textured": n, "union": n // 2}.get(self.style, 0)
        parts = [render_batch(idx[:n_tex], "train", self.size, "textured"),
                 render_batch(idx[n_tex:], "train", self.size)]
        images, masks = np.concatenate([p[0] for p in parts]), np.concatenate([p[2] for p in parts])
        return to_tensor(images), torch.from_numpy(masks).float()[:, None]


class DatasetBatches:
    """Random batches from a map-style dataset whose items hold an 'image'; no masks."""

    def __init__(self, dataset):
        if len(dataset) == 0:
            raise UserError("the training data holds no images")
        self.dataset = dataset

    def __call__(self, n: int, gen: torch.Generator):
        idx = torch.randint(len(self.dataset), (n,), generator=gen).tolist()
        return torch.stack([self.dataset[i]["image"] for i in idx]), None


def make_batches(data: str, root: str | None, attr_csv: str | None, size: int, style: str | None = None):
    if data == "sprites":
        return SpriteBatches(size, style)
    if root is None:
        raise UserError(f"--data {data} needs --data-root PATH")
    if data == "celeba":
        return DatasetBatches(CelebADataset(root, "train", size))
    return DatasetBatches(AttributeFolderDataset(root, attr_csv, size) if attr_csv else ImageFolderDataset(root, size))


def outline_band(mask: torch.Tensor) -> torch.Tensor:
    """1 on pixels within one pixel of the silhouette's outline (dilation minus erosion), else 0."""
    return F.max_pool2d(mask, 3, 1, 1) + F.max_pool2d(-mask, 3, 1, 1)


def corner_map(mask: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """In [0, 1] on outline pixels whose 7×7 neighbourhood is far from half inside (a straight edge gives
    0.36-0.64, a right angle's tip ~0.25 or ~0.75): the corners, where a small square turns into a circle."""
    inside = F.avg_pool2d(mask, 7, 1, 3, count_include_pad=False)
    return band * (((inside - 0.5).abs() - 0.14) / 0.1).clamp(0, 1)


def pixel_weights(mask: torch.Tensor, cfg: "AETrainConfig") -> torch.Tensor:
    """w = 1 + s·(mask_weight·silhouette + edge_weight·outline + corner_weight·corners), s per image (size
    balance: (area)^-p scaled to a batch mean of 1)."""
    band = outline_band(mask)
    obj = cfg.mask_weight * mask + cfg.edge_weight * band
    if cfg.corner_weight:
        obj = obj + cfg.corner_weight * corner_map(mask, band)
    if cfg.size_balance:
        scale = mask.mean((1, 2, 3), keepdim=True).clamp(min=1e-3) ** -cfg.size_balance
        obj = obj * scale / scale.mean()
    return 1.0 + obj


def adaptive_weight(rec_loss, gan_loss, last_layer: torch.Tensor, delta: float = 1e-4) -> torch.Tensor:
    """Eq. 17: λ = ‖∇_{Λ_L} L_rec‖ / (‖∇_{Λ_L} L_GAN‖ + δ), the gradient ratio at the decoder's last layer."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + delta)).clamp(0, 1e4).detach()


@torch.no_grad()
def save_reconstructions(model: Autoencoder, images: torch.Tensor, path: Path, seed: int) -> None:
    """Rows: inputs | reconstructions (posterior mean) | prior samples z ~ N(0, I)."""
    was_training = model.training
    model.eval()
    recon = model.decode(model.encode(images))
    prior = model.decode(torch.randn(len(images), model.latent_dim, generator=torch.Generator().manual_seed(seed)))
    model.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([images, recon, prior]).add(1).div(2).clamp(0, 1), path, nrow=len(images), padding=1)


def train(model_cfg: AEConfig, cfg: AETrainConfig, batches, out_dir: str | Path, resume: bool = False,
          run_info: dict | None = None, init: str | Path | None = None) -> Autoencoder:
    """Train g into out_dir (config.json, checkpoint.safetensors, metrics.csv, grids/); returns it in eval mode.
    `init`: start from the weights of that AE run (same model settings), i.e. fine-tune it."""
    out = Path(out_dir)
    ckpt = out / CHECKPOINT
    config = {"kind": "autoencoder", "model": model_cfg.to_dict(), "train": asdict(cfg), **(run_info or {})}
    if resume:
        old = read_json(out / "config.json")
        if AEConfig.from_dict(old.get("model", {})) != model_cfg:
            raise UserError(f"--resume: model settings differ from the run in {out} "
                            f"(was {old.get('model')}); resume with the same settings or choose another --out")
    elif ckpt.exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    seed_everything(cfg.seed)
    model = Autoencoder(model_cfg)
    if init and not resume:
        source = load_autoencoder(init)
        if source.cfg != model_cfg:
            raise UserError(f"--init: {init} has model settings {source.cfg.to_dict()}, not those of this run; "
                            f"pick the matching --preset/--size")
        model.load_state_dict(source.state_dict())
    model.to(memory_format=torch.channels_last)   # ~15 % faster convolutions on the CPU (measured, 1 thread)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    disc = PatchDiscriminator() if cfg.disc_weight > 0 else None
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=cfg.betas) if disc else None
    gen = torch.Generator().manual_seed(cfg.seed)
    fixed, _ = batches(8, torch.Generator().manual_seed(cfg.seed + 1))   # the same inputs in every grid
    ck = Checkpointed({"model": model, **({"disc": disc} if disc else {})},
                      {"optim": opt, **({"optim_d": opt_d} if disc else {})}, gen)
    start = resume_checkpoint(ck, ckpt) if resume else 0
    atomic_write_json(out / "config.json", config)

    log = MetricsLog(out / "metrics.csv", ["step", "loss", "l1", "kl", "gamma", "psnr", "gan", "lam", "lr",
                                           "images_per_s"], append=resume)
    t0, cpu0, seen = time.perf_counter(), time.process_time(), [0]

    def step_fn(step: int) -> dict:
        lr = lr_at(step, cfg)
        for o in (opt, opt_d) if disc else (opt,):
            for g in o.param_groups:
                g["lr"] = lr
        x, mask = batches(cfg.batch_size, gen)
        recon, mu, logvar = model(x)
        weight = 1.0 if mask is None else pixel_weights(mask, cfg)
        l1 = ((recon - x).abs() * weight).mean()
        rec_loss = l1 / model.log_gamma.exp() + model.log_gamma                       # Eq. 18
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        loss = rec_loss + cfg.kl_weight * kl                                           # Eq. 14
        gan, lam = torch.zeros(()), torch.zeros(())
        if disc and step >= cfg.disc_start:
            gan = F.softplus(-disc(recon)).mean()                                      # generator side of Eq. 15
            lam = adaptive_weight(rec_loss, gan, model.decoder.out_conv.weight)        # Eq. 17
            loss = loss + cfg.disc_weight * lam * gan                                  # Eq. 16
        if not torch.isfinite(loss):
            raise UserError(f"non-finite loss at step {step} (lr {lr:.2e}); stopped, nothing written for this "
                            f"step. Lower --lr or resume from the last checkpoint")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if disc and step >= cfg.disc_start:                                            # discriminator side
            d_loss = F.softplus(-disc(x)).mean() + F.softplus(disc(recon.detach())).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        seen[0] += len(x)
        return {"x": x, "recon": recon, "loss": loss, "l1": l1, "kl": kl, "gan": gan, "lam": lam, "lr": lr}

    def log_row(done: int, o: dict) -> dict:
        p = psnr(o["recon"].detach(), o["x"])
        rate = seen[0] / (time.perf_counter() - t0)
        log.write(step=done, loss=f"{o['loss'].item():.5f}", l1=f"{o['l1'].item():.5f}", kl=f"{o['kl'].item():.2f}",
                  gamma=f"{model.log_gamma.exp().item():.4f}", psnr=f"{p:.2f}", gan=f"{o['gan'].item():.4f}",
                  lam=f"{o['lam'].item():.4f}", lr=f"{o['lr']:.3e}", images_per_s=f"{rate:.1f}")
        return {"loss": f"{o['loss'].item():.3f}", "psnr": f"{p:.1f}", "kl": f"{o['kl'].item():.0f}"}

    def grid(done: int, _) -> None:
        save_reconstructions(model, fixed, out / "grids" / f"step{done:06d}.png", cfg.seed)

    model.train()
    run_steps(step_fn, start=start, steps=cfg.steps, ck=ck, path=ckpt, ckpt_every=cfg.ckpt_every,
              hooks=[(cfg.log_every, log_row), (cfg.grid_every, grid)], desc="train ae")
    seen = seen[0]
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"done: {cfg.steps - start} steps in {elapsed:.1f}s wall, {cpu:.1f}s CPU, {torch.get_num_threads()} "
          f"threads ({(cfg.steps - start) / max(elapsed, 1e-9):.2f} steps/s, {seen / max(elapsed, 1e-9):.1f} "
          f"images/s); checkpoint {ckpt}")
    return model.to(memory_format=torch.contiguous_format).eval()   # as load_autoencoder gives it


@dataclass
class AESpec:
    """What to train: the library form of the `python -m train.ae` options (None = the preset's value)."""
    preset: str = "default"
    size: int = 64
    data: str = "sprites"                 # sprites | celeba | folder
    data_root: str | None = None
    attr_csv: str | None = None
    style: str = "flat"                   # sprites: flat | textured | union
    init: str | None = None               # fine-tune from this AE run (same settings)
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    edge_weight: float | None = None
    kl_weight: float | None = None
    seed: int | None = None
    task: str = "attributes"              # recorded in config.json: the task the AE serves

    def describe(self) -> str:
        changed = {k: v for k, v in asdict(self).items() if v != getattr(AESpec, k, None) and k != "preset"}
        return f"preset '{self.preset}'" + "".join(f", {k} {v}" for k, v in changed.items())


def train_autoencoder(spec: AESpec, out: str | Path, resume: bool = False) -> Autoencoder:
    """Check `spec`, then train g into `out` (or continue it with `resume`)."""
    if spec.preset not in PRESETS:
        raise UserError(f"unknown autoencoder preset '{spec.preset}'; choose from {', '.join(PRESETS)}")
    model_cfg, cfg = PRESETS[spec.preset]
    model_cfg = replace(model_cfg, image_size=spec.size)
    model_cfg.check()
    overrides = {"steps": spec.steps, "batch_size": spec.batch_size, "lr": spec.lr, "seed": spec.seed,
                 "edge_weight": spec.edge_weight, "kl_weight": spec.kl_weight}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if cfg.steps < 1 or cfg.batch_size < 1 or not cfg.lr > 0 or cfg.lr == float("inf"):     # NaN fails `> 0`
        raise UserError("--steps, --batch-size and --lr must be positive (and --lr finite)")
    if not 0 <= cfg.kl_weight < float("inf"):                                               # NaN fails too
        raise UserError(f"--kl-weight must be a finite number >= 0, not {cfg.kl_weight}")
    if spec.data != "folder" and spec.attr_csv:
        raise UserError("--attr-csv only applies to --data folder")
    if spec.data != "sprites" and spec.style != "flat":
        raise UserError("--style only applies to --data sprites")
    batches = make_batches(spec.data, spec.data_root, spec.attr_csv, spec.size, spec.style)
    info = {"task": spec.task, "preset": spec.preset, "data": spec.data, "data_root": spec.data_root}
    if spec.style != "flat" or spec.init:
        info.update(style=spec.style, init=spec.init)
    return train(model_cfg, cfg, batches, out, resume=resume, run_info=info, init=spec.init)


def ensure_autoencoder(run_dir: str | Path = "runs/attributes/ae", spec: AESpec | None = None) -> Autoencoder:
    """Load the trained autoencoder, training it first (on sprites, as `spec` says) when the run is missing."""
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).is_file():
        spec = spec or AESpec()
        print(f"no autoencoder in {run_dir}; training one now ({spec.describe()})", file=sys.stderr)
        train_autoencoder(spec, run_dir)
    return load_autoencoder(run_dir)


def load_ae(run_dir: str | Path, spec: AESpec | None = None) -> Autoencoder:
    """The frozen expert g of a sprites task (trained first, as `spec` says, when missing)."""
    return freeze(ensure_autoencoder(run_dir, spec))
