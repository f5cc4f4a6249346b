"""Density: a short training reaches the known conditional entropy of a synthetic distribution."""
import torch

from train.core.flow import FlowConfig
from train.core.translator import TrainConfig, evaluate_nll, train
from train.data.pairs import TensorPairs
from train.data.synthetic import TARGET_DIM, sample_pairs, true_conditional_entropy


def test_short_training_reaches_true_conditional_entropy(tmp_path):
    c, z = sample_pairs(20_000, seed=0)
    c_test, z_test = sample_pairs(5_000, seed=1)
    truth = true_conditional_entropy("base")
    cfg = FlowConfig(TARGET_DIM, (4,), num_blocks=8, hidden=256).to_dict()
    model = train("cinn", cfg, TrainConfig(steps=1200, batch_size=256, lr=1e-3, val_every=600, ckpt_every=10**9),
                  TensorPairs(c, z), tmp_path / "run")
    nll = evaluate_nll(model, torch.from_numpy(c_test), torch.from_numpy(z_test))
    # NLL >= H(z|c) for any model (up to Monte-Carlo error); a good one is close
    assert truth - 0.01 < nll < truth + 0.05, (nll, truth)
