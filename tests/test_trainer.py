"""The training loop and the features CLI: resume, checkpoints, errors, torchrun, evaluation JSON."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import train_args

from train import cinn, evaluate
from train.core.common import UserError, load_tensors
from train.data.pairs import TensorPairs
from train.data.synthetic import sample_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(args):
    """Run a CLI in a subprocess: exit code and stderr, as a user sees them."""
    p = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stderr


def test_smoke_training_writes_run_and_evaluates(pairs_dir, capsys):
    cinn.main(train_args(pairs_dir, pairs_dir / "run"))
    for name in ("checkpoint.safetensors", "config.json", "metrics.csv"):
        assert (pairs_dir / "run" / name).is_file()
    rows = (pairs_dir / "run" / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,train_loss,val_loss") and len(rows) == 3
    capsys.readouterr()
    evaluate.main(["--run", str(pairs_dir / "run"), "--source", str(pairs_dir / "c.npy"),
                   "--target", str(pairs_dir / "z.npy"), "--json"])
    result = json.loads(capsys.readouterr().out)
    for key in ("nll_nats_per_dim", "bits_per_dim", "roundtrip_rel_err", "num_samples"):
        assert key in result
    assert result["num_samples"] == 600 and result["roundtrip_rel_err"] < 1e-5
    assert abs(result["bits_per_dim"] - result["nll_nats_per_dim"] / np.log(2)) < 1e-9


def test_resume_equals_uninterrupted(pairs_dir, monkeypatch):
    cinn.main(train_args(pairs_dir, pairs_dir / "full"))
    original_batch = TensorPairs.batch
    calls = {"n": 0}

    def crashing_batch(self, size, generator):
        calls["n"] += 1
        if calls["n"] == 15:                 # dies after the step-10 checkpoint
            raise KeyboardInterrupt
        return original_batch(self, size, generator)

    monkeypatch.setattr(TensorPairs, "batch", crashing_batch)
    with pytest.raises(KeyboardInterrupt):
        cinn.main(train_args(pairs_dir, pairs_dir / "cut"))
    monkeypatch.setattr(TensorPairs, "batch", original_batch)
    assert int(load_tensors(pairs_dir / "cut" / "checkpoint.safetensors")["trainer.step"]) == 10
    cinn.main(train_args(pairs_dir, pairs_dir / "cut", "--resume"))
    full = load_tensors(pairs_dir / "full" / "checkpoint.safetensors")
    cut = load_tensors(pairs_dir / "cut" / "checkpoint.safetensors")
    for name, tensor in full.items():
        if name.startswith(("model.", "optim.")):
            assert torch.equal(tensor, cut[name]), name


def test_target_noise_changes_training_and_resumes_exactly(pairs_dir, monkeypatch):
    cinn.main(train_args(pairs_dir, pairs_dir / "plain"))
    cinn.main(train_args(pairs_dir, pairs_dir / "zero", "--target-noise", "0"))
    cinn.main(train_args(pairs_dir, pairs_dir / "noisy", "--target-noise", "0.5"))
    runs = {name: load_tensors(pairs_dir / name / "checkpoint.safetensors") for name in ("plain", "zero", "noisy")}
    weights = [k for k in runs["plain"] if k.startswith("model.blocks")]
    assert all(torch.equal(runs["plain"][k], runs["zero"][k]) for k in weights)        # 0 = off
    assert not all(torch.equal(runs["plain"][k], runs["noisy"][k]) for k in weights)
    assert json.loads((pairs_dir / "noisy" / "config.json").read_text())["train"]["target_noise"] == 0.5
    cut = _interrupted_then_resumed(pairs_dir, monkeypatch, "--target-noise", "0.5")
    assert all(torch.equal(runs["noisy"][k], cut[k]) for k in weights)   # resume repeats the same noise draws
    with pytest.raises(UserError, match="--target-noise must be >= 0"):
        cinn.main(train_args(pairs_dir, pairs_dir / "neg", "--target-noise", "-1"))


def test_weight_decay_flag_and_noise_floor_change_training(pairs_dir, monkeypatch):
    from train.core.presets import FEATURE_PRESETS
    cinn.main(train_args(pairs_dir, pairs_dir / "plain", "--target-noise", "0.5"))
    cinn.main(train_args(pairs_dir, pairs_dir / "decay", "--target-noise", "0.5", "--weight-decay", "0.5"))
    monkeypatch.setitem(FEATURE_PRESETS["smoke"]["train"], "target_noise_final", 0.2)
    cinn.main(train_args(pairs_dir, pairs_dir / "floor", "--target-noise", "0.5"))
    runs = {name: load_tensors(pairs_dir / name / "checkpoint.safetensors") for name in ("plain", "decay", "floor")}
    weights = [k for k in runs["plain"] if k.startswith("model.blocks")]
    for name in ("decay", "floor"):
        assert not all(torch.equal(runs["plain"][k], runs[name][k]) for k in weights), name
    assert json.loads((pairs_dir / "decay" / "config.json").read_text())["train"]["weight_decay"] == 0.5
    assert json.loads((pairs_dir / "floor" / "config.json").read_text())["train"]["target_noise_final"] == 0.2
    with pytest.raises(UserError, match="--weight-decay must be >= 0"):
        cinn.main(train_args(pairs_dir, pairs_dir / "neg", "--weight-decay", "-1"))


def test_noise_decay_can_end_early(pairs_dir, monkeypatch):
    from train.core.presets import FEATURE_PRESETS
    from train.core.translator import TrainConfig
    cinn.main(train_args(pairs_dir, pairs_dir / "plain", "--target-noise", "0.5"))
    monkeypatch.setitem(FEATURE_PRESETS["smoke"]["train"], "target_noise_until", 1.0)
    cinn.main(train_args(pairs_dir, pairs_dir / "full", "--target-noise", "0.5"))
    monkeypatch.setitem(FEATURE_PRESETS["smoke"]["train"], "target_noise_until", 0.5)
    cinn.main(train_args(pairs_dir, pairs_dir / "early", "--target-noise", "0.5"))
    runs = {name: load_tensors(pairs_dir / name / "checkpoint.safetensors") for name in ("plain", "full", "early")}
    weights = [k for k in runs["plain"] if k.startswith("model.blocks")]
    assert all(torch.equal(runs["plain"][k], runs["full"][k]) for k in weights)       # 1 = the schedule as before
    assert not all(torch.equal(runs["plain"][k], runs["early"][k]) for k in weights)
    assert json.loads((pairs_dir / "early" / "config.json").read_text())["train"]["target_noise_until"] == 0.5
    for bad in (0.0, 1.5):
        with pytest.raises(UserError, match="target_noise_until"):
            TrainConfig(target_noise_until=bad)


def test_non_finite_loss_stops_without_writing(pairs_dir, monkeypatch):
    original_batch = TensorPairs.batch

    def poisoned(self, size, generator):
        c, z = original_batch(self, size, generator)
        return c, z * float("nan")

    monkeypatch.setattr(TensorPairs, "batch", poisoned)
    with pytest.raises(UserError, match="non-finite loss at step 0"):
        cinn.main(train_args(pairs_dir, pairs_dir / "nan"))
    assert not (pairs_dir / "nan" / "checkpoint.safetensors").exists()


def test_existing_run_needs_resume(pairs_dir):
    cinn.main(train_args(pairs_dir, pairs_dir / "run"))
    with pytest.raises(UserError, match="--resume"):
        cinn.main(train_args(pairs_dir, pairs_dir / "run"))


def _bad_inputs(d):
    c, z = sample_pairs(50, seed=1)
    np.save(d / "short.npy", z[:40])
    nan = z.copy()
    nan[7, 2] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "empty.npy", np.zeros((0, 8), np.float32))
    np.savez(d / "two.npz", a=c, b=z)
    np.save(d / "wide.npy", np.concatenate([z, z], 1))
    np.save(d / "c50.npy", c)
    return {
        "row counts differ": ["--source", "c50.npy", "--target", "short.npy"],
        "NaN/Inf in 1 row": ["--source", "c50.npy", "--target", "nan.npy"],
        "at least one row": ["--source", "c50.npy", "--target", "empty.npy"],
        "choose one with --source-key": ["--source", "two.npz", "--target", "short.npy"],
        "key 'zz' not in": ["--source", "two.npz", "--source-key", "zz", "--target", "short.npy"],
        "not found": ["--source", "missing.npy", "--target", "short.npy"],
    }


def test_cli_errors_are_one_clear_line(tmp_path):
    for expected, args in _bad_inputs(tmp_path).items():
        args = [str(tmp_path / a) if a.endswith((".npy", ".npz")) else a for a in args]
        code, err = run_cli(["train.cinn", "--task", "features", "--preset", "smoke",
                             "--out", str(tmp_path / "o"), *args])
        assert code == 2, (expected, err)
        assert expected in err and "Traceback" not in err, (expected, err)
        assert len(err.strip().splitlines()) == 1, err


def test_resume_with_other_dims_is_refused(pairs_dir):
    cinn.main(train_args(pairs_dir, pairs_dir / "run"))
    np.save(pairs_dir / "z.npy", np.concatenate([np.load(pairs_dir / "z.npy")] * 2, 1))
    code, err = run_cli(["train.cinn", *train_args(pairs_dir, pairs_dir / "run", "--resume")])
    assert code == 2 and "model settings differ" in err and "Traceback" not in err


def test_torchrun_two_cpu_processes(pairs_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        "29533", "-m", "train.cinn", *train_args(pairs_dir, pairs_dir / "ddp")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    tensors = load_tensors(pairs_dir / "ddp" / "checkpoint.safetensors")
    assert int(tensors["trainer.step"]) == 20
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))


def test_weight_average_is_kept_and_resumes_exactly(pairs_dir, monkeypatch):
    cinn.main(train_args(pairs_dir, pairs_dir / "plain", "--ema", "0"))
    cinn.main(train_args(pairs_dir, pairs_dir / "ema", "--ema", "0.9"))
    plain = load_tensors(pairs_dir / "plain" / "checkpoint.safetensors")
    averaged = load_tensors(pairs_dir / "ema" / "checkpoint.safetensors")
    weights = [k for k in plain if k.startswith("model.blocks")]
    # the raw weights follow the same steps; only what is validated and kept (best.*) is the average
    assert all(torch.equal(plain[k], averaged[k]) for k in weights)
    assert any(k.startswith("ema.") for k in averaged) and not any(k.startswith("ema.") for k in plain)
    assert not all(torch.equal(plain["best." + k[6:]], averaged["best." + k[6:]]) for k in weights)
    cut = _interrupted_then_resumed(pairs_dir, monkeypatch, "--ema", "0.9")
    assert all(torch.equal(averaged[k], cut[k]) for k in averaged if k.startswith(("ema.", "best.")))
    assert json.loads((pairs_dir / "ema" / "config.json").read_text())["train"]["ema"] == 0.9


def _interrupted_then_resumed(pairs_dir, monkeypatch, *flags) -> dict:
    """The checkpoint of a run stopped by Ctrl-C at its 15th batch and then resumed with the same flags."""
    original_batch = TensorPairs.batch
    calls = {"n": 0}

    def crashing_batch(self, size, generator):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return original_batch(self, size, generator)

    monkeypatch.setattr(TensorPairs, "batch", crashing_batch)
    with pytest.raises(KeyboardInterrupt):
        cinn.main(train_args(pairs_dir, pairs_dir / "cut", *flags))
    monkeypatch.setattr(TensorPairs, "batch", original_batch)
    cinn.main(train_args(pairs_dir, pairs_dir / "cut", *flags, "--resume"))
    return load_tensors(pairs_dir / "cut" / "checkpoint.safetensors")
