"""Your own experts, end to end: a complete example for docs/custom-experts.md.

Two small PyTorch models stand in for the pretrained networks you bring:
  Φ  TinyClassifier   a shape classifier on 32 px sprites; zΦ = its 32-d penultimate layer
  Θ/Λ TinyAutoencoder  an autoencoder of the same images; zΘ = its 16-d code, Λ its decoder
The cINN τ learns p(zΘ | zΦ): what the classifier's features leave open about the image (Sec. 3).

    python docs/examples/my_experts.py --out runs/my_experts          # "pretrain" both experts (a minute)
    MY_EXPERTS=runs/my_experts python -m train.cinn --task docs/examples/my_experts.py:TASK --preset smoke \\
        --out runs/my_experts/cinn
    MY_EXPERTS=runs/my_experts python -m export.onnx --task docs/examples/my_experts.py:TASK \\
        --run runs/my_experts/cinn --out engines/my_experts
    python -c "from runtime import Pipeline; print(Pipeline.load('engines/my_experts').translate(...).shape)"

With your own models, replace the two classes and `pretrain` by loading your weights in `load_source` /
`load_target`, and `sprites` by your data.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from train.data.sprites import SPLITS, render_batch, to_tensor
from train.tasks.custom import expert_task

SIZE = 32
SHAPES = 3                      # the first three attributes of a sprite are its one-hot shape


class TinyClassifier(nn.Module):
    """Image (N, 3, 32, 32) in [-1, 1] -> shape logits; `encode` gives the penultimate layer (the expert Φ)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(),
                                      nn.Flatten(), nn.Linear(32 * 8 * 8, 32), nn.ReLU())
        self.head = nn.Linear(32, SHAPES)

    def encode(self, x):
        return self.features(x)

    def forward(self, x):
        return self.head(self.features(x))


class TinyAutoencoder(nn.Module):
    """Image <-> a 16-d code: `encode` is Θ, `decode` is Λ."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(32 * 8 * 8, dim))
        self.dec_fc = nn.Linear(dim, 32 * 8 * 8)
        self.dec = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(16, 3, 4, 2, 1), nn.Tanh())

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return self.dec(self.dec_fc(z).view(-1, 32, 8, 8))


def sprites(split: str, count: int, offset: int = 0):
    """The first `count` sprites of a split: images (N, 3, 32, 32) in [-1, 1] and their 13 attributes."""
    start = SPLITS[split][0] + offset
    images, attrs, _ = render_batch(range(start, start + count), split, SIZE)
    return to_tensor(images), torch.from_numpy(attrs)


def pretrain(out: Path, steps: int = 300, seed: int = 0) -> None:
    """Stand-in for your own training: fit both experts briefly and save them as safetensors."""
    torch.manual_seed(seed)
    clf, ae = TinyClassifier(), TinyAutoencoder()
    opt = torch.optim.Adam([*clf.parameters(), *ae.parameters()], lr=2e-3)
    for step in range(steps):
        x, a = sprites("train", 64, offset=(step * 64) % 20000)
        loss = F.cross_entropy(clf(x), a[:, :SHAPES].argmax(1)) + F.l1_loss(ae.decode(ae.encode(x)), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out.mkdir(parents=True, exist_ok=True)
    save_file(clf.state_dict(), str(out / "classifier.safetensors"))
    save_file(ae.state_dict(), str(out / "autoencoder.safetensors"))
    print(f"saved both experts in {out} (last loss {loss.item():.3f})")


def _folder() -> Path:
    return Path(os.environ.get("MY_EXPERTS", "runs/my_experts"))


def load_source() -> nn.Module:
    model = TinyClassifier()
    model.load_state_dict(load_file(str(_folder() / "classifier.safetensors")))
    return model


def load_target() -> nn.Module:
    model = TinyAutoencoder()
    model.load_state_dict(load_file(str(_folder() / "autoencoder.safetensors")))
    return model


# The task: pairs (Φ(x), Θ(x)) over the sprites; export writes Φ, τ, τ⁻¹, Θ and Λ as ONNX stages.
TASK = expert_task("my_experts", source=load_source, target=load_target, inputs=lambda split, n: sprites(split, n)[0],
                   input_shape=(3, SIZE, SIZE), help="tiny classifier features -> tiny autoencoder (example)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="pretrain the two example experts")
    ap.add_argument("--out", default=str(_folder()))
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    pretrain(Path(args.out), args.steps)
