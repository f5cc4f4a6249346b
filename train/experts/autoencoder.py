"""The autoencoder g = {Θ, Λ, γ} of Appendix F, scaled down for CPU training.

  Θ  `Encoder`:  residual down-sampling blocks -> (µ, log σ²) of zΘ ∈ R^d          (Tab. S2a)
  Λ  `Decoder`:  z -> 3×(FC, LReLU) -> FC -> softmax "class" vector -> embedding h;
                 FC(z) -> 4×4 grid -> residual up-sampling blocks whose normalisation gains and
                 biases come from [z, h] (BigGAN's class-conditional BatchNorm with the one-hot class
                 replaced by the softmax vector), optional non-local block, tanh output   (Tab. S2b)
  γ  `Autoencoder.log_gamma`: the learnable scalar output variance of Eq. 14.
  D  `PatchDiscriminator`: the PatchGAN of Eq. 15-17 (optional; off in the CPU presets).

Differences from the paper, all for CPU speed: widths of 32-128 channels instead of 64-2048, one
residual block per resolution instead of ResNet-101's 33 bottlenecks; the convolutions run at up to
half the image side: the encoder starts with a lossless space-to-depth (pixel_unshuffle) and the
decoder ends with a sub-pixel conv (pixel_shuffle), so every output pixel is still predicted; and
the encoder flattens its 4×4 grid into the FC head instead of average-pooling it, so object
position survives cheaply.

Expert API used by the rest of the project: `load_autoencoder(run)` (and `ensure_autoencoder` in
train/experts/ae_training.py, which trains it first when missing) give a frozen model with
`encode(images) -> z` (the mean µ unless `sample=True`) and `decode(z) -> images` in [-1, 1].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from train.core.common import UserError, load_run_weights, read_json


@dataclass
class AEConfig:
    image_size: int = 64                          # a power of two, >= 16
    latent_dim: int = 64                          # d, dimension of zΘ
    enc_channels: tuple[int, ...] = (32, 64, 128)   # encoder stages, each halves the resolution down to 4×4
    dec_channels: tuple[int, ...] = (128, 64, 32)   # decoder up-blocks from 4×4 upwards
    num_classes: int = 128                        # size of the softmax "class" vector (BigGAN: 1000)
    embed_dim: int = 64                           # h, the embedded class vector
    mlp_hidden: int = 128                         # width of the 3×(FC, LReLU) class MLP
    attention: bool = False                       # non-local block before the last up-block
    hires_blocks: int = 0                         # extra residual blocks at the decoder's highest resolution

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AEConfig":
        d = dict(d)
        d["enc_channels"], d["dec_channels"] = tuple(d["enc_channels"]), tuple(d["dec_channels"])
        d.setdefault("hires_blocks", 0)           # runs written before the field existed
        return cls(**d)

    def pixel_factor(self, stages: int) -> int:
        """Space-to-depth factor between the image and the 4·2^stages grid the conv stack works on."""
        return self.image_size // (4 << stages)

    def check(self) -> None:
        size = self.image_size
        if size < 16 or size & (size - 1):
            raise UserError(f"image size must be a power of two >= 16, got {size}")
        if self.hires_blocks < 0:
            raise UserError(f"hires_blocks must be >= 0, got {self.hires_blocks}")
        for name, chans in (("enc_channels", self.enc_channels), ("dec_channels", self.dec_channels)):
            if not chans or 4 << len(chans) > size:
                raise UserError(f"{name} has {len(chans)} stages; {size}px images allow 1 to "
                                f"{(size // 4).bit_length() - 1}")


class DownBlock(nn.Module):
    """ResNet BasicBlock that halves the resolution: two 3×3 convs plus a strided 1×1 shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Encoder(nn.Module):
    """Θ: image -> (µ, log σ²). Space-to-depth (lossless), stem conv, one DownBlock per stage, flatten the
    4×4 grid, FC."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        chans = cfg.enc_channels
        self.factor = cfg.pixel_factor(len(chans))
        self.stem = nn.Sequential(nn.Conv2d(3 * self.factor**2, chans[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(chans[0]), nn.ReLU())
        self.blocks = nn.Sequential(*[DownBlock(a, b) for a, b in zip((chans[0],) + chans[:-1], chans)])
        self.head = nn.Linear(chans[-1] * 16, 2 * cfg.latent_dim)

    def forward(self, x):
        x = F.pixel_unshuffle(x.contiguous(), self.factor)   # contiguous: channels-last input crashed backward
        mu, logvar = self.head(self.blocks(self.stem(x)).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)


class ConditionalBatchNorm(nn.Module):
    """BigGAN's conditional BatchNorm: per-channel gain 1 + W_g·c and bias W_b·c from the condition c."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(cond_dim, channels)
        self.bias = nn.Linear(cond_dim, channels)

    def forward(self, x, c):
        return self.bn(x) * (1 + self.gain(c))[:, :, None, None] + self.bias(c)[:, :, None, None]


class UpBlock(nn.Module):
    """BigGAN generator block: CBN, ReLU, 2× nearest up-sampling, conv, CBN, ReLU, conv; 1×1 shortcut."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int):
        super().__init__()
        self.norm1 = ConditionalBatchNorm(c_in, cond_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = ConditionalBatchNorm(c_out, cond_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x, c):
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        y = self.conv1(up(F.relu(self.norm1(x, c))))
        y = self.conv2(F.relu(self.norm2(y, c)))
        return y + self.shortcut(up(x))


class ResBlock(nn.Module):
    """UpBlock without the up-sampling: CBN, ReLU, conv, CBN, ReLU, conv plus the identity. Adds capacity at
    the decoder's highest resolution, where a small shape's corners are drawn."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm1 = ConditionalBatchNorm(channels, cond_dim)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = ConditionalBatchNorm(channels, cond_dim)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, c):
        return x + self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x, c))), c)))


class NonLocal(nn.Module):
    """SAGAN / BigGAN self-attention block with a learnable residual gate that starts at 0."""

    def __init__(self, channels: int):
        super().__init__()
        self.q = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.k = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.v = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.out = nn.Conv2d(channels // 2, channels, 1, bias=False)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        n, c, h, w = x.shape
        q = self.q(x).flatten(2).transpose(1, 2)
        k = F.max_pool2d(self.k(x), 2).flatten(2).transpose(1, 2)
        v = F.max_pool2d(self.v(x), 2).flatten(2).transpose(1, 2)
        att = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return x + self.gate * self.out(att.transpose(1, 2).reshape(n, c // 2, h, w))


class Decoder(nn.Module):
    """Λ: z -> image in [-1, 1] (Tab. S2b)."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        d, chans = cfg.latent_dim, cfg.dec_channels
        self.to_class = nn.Sequential(nn.Linear(d, cfg.mlp_hidden), nn.LeakyReLU(0.2),
                                      nn.Linear(cfg.mlp_hidden, cfg.mlp_hidden), nn.LeakyReLU(0.2),
                                      nn.Linear(cfg.mlp_hidden, cfg.mlp_hidden), nn.LeakyReLU(0.2),
                                      nn.Linear(cfg.mlp_hidden, cfg.num_classes))
        self.embed = nn.Linear(cfg.num_classes, cfg.embed_dim, bias=False)   # soft embedding lookup
        cond_dim = d + cfg.embed_dim
        self.fc = nn.Linear(d, chans[0] * 16)
        outs = chans[1:] + (chans[-1],)
        self.blocks = nn.ModuleList([UpBlock(a, b, cond_dim) for a, b in zip(chans, outs)])
        self.attention = NonLocal(chans[-1]) if cfg.attention else None
        self.hires = nn.ModuleList([ResBlock(outs[-1], cond_dim) for _ in range(cfg.hires_blocks)])
        self.out_norm = nn.BatchNorm2d(outs[-1])
        self.factor = cfg.pixel_factor(len(chans))
        self.out_conv = nn.Conv2d(outs[-1], 3 * self.factor**2, 3, padding=1)   # sub-pixel output

    def forward(self, z):
        h = self.embed(self.to_class(z).softmax(dim=1))
        c = torch.cat([z, h], dim=1)
        x = self.fc(z).view(len(z), -1, 4, 4)
        for i, block in enumerate(self.blocks):
            if self.attention is not None and i == len(self.blocks) - 1:
                x = self.attention(x)
            x = block(x, c)
        for block in self.hires:
            x = block(x, c)
        return torch.tanh(F.pixel_shuffle(self.out_conv(F.relu(self.out_norm(x))), self.factor))


class Autoencoder(nn.Module):
    """g = {Θ, Λ, γ}; as an expert (train/experts/base.py) `encode` is Θ, `decode` is Λ."""
    name = "sprites-autoencoder"

    def __init__(self, cfg: AEConfig):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.log_gamma = nn.Parameter(torch.zeros(()))   # log γ of Eq. 14

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def output_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def _check(self, images: torch.Tensor) -> None:
        if images.shape[1:] != (3, self.image_size, self.image_size):
            raise UserError(f"autoencoder expects images of shape (N, 3, {self.image_size}, {self.image_size}), "
                            f"got {tuple(images.shape)}")

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 3, H, W) in [-1, 1] -> the mean µ and std σ (N, d each) of q(z | y)."""
        self._check(images)
        mu, logvar = self.encoder(images)
        return mu, (0.5 * logvar).exp()

    def encode(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None):
        """Images (N, 3, H, W) in [-1, 1] -> z (N, d): the mean µ, or a reparameterised sample (Eq. 14)."""
        self._check(images)
        mu, logvar = self.encoder(images)
        if not sample:
            return mu
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + (0.5 * logvar).exp() * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, images: torch.Tensor):
        """Training pass: (reconstruction of a posterior sample, µ, log σ²)."""
        mu, logvar = self.encoder(images)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        return self.decoder(z), mu, logvar


class PatchDiscriminator(nn.Module):
    """PatchGAN of pix2pix [33]: a grid of real/fake logits, one per overlapping patch."""

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers + 1):
            c_next = channels * min(2 ** i, 8)
            mods += [nn.Conv2d(c, c_next, 4, 2 if i < layers else 1, 1, bias=False), nn.BatchNorm2d(c_next),
                     nn.LeakyReLU(0.2)]
            c = c_next
        mods.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x)


def load_autoencoder(run_dir: str | Path) -> Autoencoder:
    """The frozen expert g from RUN/config.json + RUN/checkpoint.safetensors: eval mode, no gradients."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    if "model" not in config:
        raise UserError(f"{run_dir}/config.json has no 'model' section; is this an autoencoder run?")
    model = Autoencoder(AEConfig.from_dict(config["model"]))
    load_run_weights(model, run_dir)
    return model.eval().requires_grad_(False)


class AEEncoderStage(nn.Module):
    """Θ as a graph: image (N, 3, H, W) in [-1, 1] -> z (the posterior mean)."""

    def __init__(self, ae):
        super().__init__()
        self.ae = ae

    def forward(self, image):
        return self.ae.encoder(image)[0]


class AEDecoderStage(nn.Module):
    """Λ as a graph: z -> image (N, 3, H, W) in [-1, 1]."""

    def __init__(self, ae):
        super().__init__()
        self.ae = ae

    def forward(self, z):
        return self.ae.decode(z)
