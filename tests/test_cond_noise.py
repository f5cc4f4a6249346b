"""Training noise on the condition zΦ (TrainConfig.cond_noise, --cond-noise): off by default, deterministic,
and with a source's `condition_meanings` it leaves the linear readouts of those meanings untouched."""
import json

import pytest
import torch
from conftest import train_args

from train import cinn
from train.core.common import UserError, load_tensors
from train.core.flow import ConditionalINN, FlowConfig
from train.core.translator import protected_directions
from train.data.pairs import SpritePairs, attribute_directions


def test_cond_noise_is_off_by_default_and_changes_training(pairs_dir):
    cinn.main(train_args(pairs_dir, pairs_dir / "plain"))
    cinn.main(train_args(pairs_dir, pairs_dir / "zero", "--cond-noise", "0"))
    cinn.main(train_args(pairs_dir, pairs_dir / "noisy", "--cond-noise", "0.5"))
    cinn.main(train_args(pairs_dir, pairs_dir / "again", "--cond-noise", "0.5"))
    runs = {n: load_tensors(pairs_dir / n / "checkpoint.safetensors") for n in ("plain", "zero", "noisy", "again")}
    weights = [k for k in runs["plain"] if k.startswith("model.")]
    assert all(torch.equal(runs["plain"][k], runs["zero"][k]) for k in weights)        # 0 = off
    assert not all(torch.equal(runs["plain"][k], runs["noisy"][k]) for k in weights)
    assert all(torch.equal(runs["noisy"][k], runs["again"][k]) for k in weights)       # seeded
    assert json.loads((pairs_dir / "noisy" / "config.json").read_text())["train"]["cond_noise"] == 0.5
    with pytest.raises(UserError, match="--cond-noise must be >= 0"):
        cinn.main(train_args(pairs_dir, pairs_dir / "neg", "--cond-noise", "-1"))


def test_protected_noise_keeps_the_readouts_of_the_meanings():
    g = torch.Generator().manual_seed(0)
    n, k, d = 2000, 2, 24
    attrs = (torch.rand(n, 3, generator=g) < 0.5).float()
    mix = torch.randn(3, d, generator=g) * torch.tensor([1.0, 0.3, 0.05])[:, None]   # one faint meaning
    cond = (attrs @ mix)[:, None] + 0.2 * torch.randn(n, k, d, generator=g)
    cond[..., 0] = 0.7                                                               # a dimension that never varies
    meanings = attribute_directions(cond, attrs)
    assert meanings.shape == (3, d)
    assert torch.allclose(meanings[:, 1:], mix[:, 1:], atol=0.05) and not meanings[:, 0].any()
    source = SpritePairs(cond, torch.zeros(n, 4), cond[:10, 0], torch.zeros(10, 4), attributes=attrs)
    assert torch.equal(source.condition_meanings(), meanings)
    model = ConditionalINN(FlowConfig(target_dim=4, cond_shape=(d,), cond_whiten=1.0, num_blocks=1))
    model.set_standardization(*source.statistics())
    model.fit_condition_whitening(cond.flatten(0, 1))
    std = source.statistics()[1]
    noisy = std > std.max() * 1e-4
    assert not noisy[0] and noisy[1:].all()
    keep = protected_directions(model, source, noisy)
    assert keep.shape == (d, 3) and not keep[0].any()          # nothing moves into the constant dimension
    noise = torch.randn(500, d, generator=g) * std * noisy
    projected = noise - (noise @ keep) @ keep.T
    m = torch.diag(1 / model.cond_std)
    m = model.cond_whitening @ m                               # zΦ -> H's input, as ConditionalINN.embed
    readouts = m @ m.T @ meanings.T
    assert (projected @ readouts).abs().max() < 1e-4 * (noise @ readouts).abs().max()
    assert projected[:, 0].abs().max() == 0
    assert projected.norm() > 0.8 * noise.norm()               # most of the noise stays
    plain = SpritePairs(cond, torch.zeros(n, 4), cond[:10, 0], torch.zeros(10, 4))
    assert protected_directions(model, plain, noisy) is None   # no meanings: plain noise
