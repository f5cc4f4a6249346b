"""Oracle classifier: a smoke run through the CLI, checkpoint round trip, input kinds, errors."""
import json

import numpy as np
import pytest
import torch

from train.classifier import main
from train.core.common import UserError
from train.data import ATTRIBUTES
from train.data.sprites import render_batch, to_tensor
from train.experts.classifier import AttributeNet, augment, group_argmax, load_oracle
from train.experts.classifier_training import ClassifierSpec, ensure_oracle


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clf")
    assert main(["--data", "sprites", "--out", str(out), "--steps", "3", "--size", "32", "--batch-size", "8",
                 "--eval-count", "16"]) == 0
    return out


def test_smoke_run_writes_checkpoint_config_metrics_and_eval(run):
    for name in ("checkpoint.safetensors", "config.json", "metrics.csv", "eval.json"):
        assert (run / name).is_file()
    results = json.loads((run / "eval.json").read_text())
    assert set(results["clean"]["per_attribute"]) == set(ATTRIBUTES)
    assert 0.0 <= results["clean"]["mean"] <= 1.0 and results["count"] == 16
    assert json.loads((run / "config.json").read_text())["size"] == 32
    assert (run / "metrics.csv").read_text().splitlines()[0] == "step,loss,accuracy,lr,seconds"


def test_round_trip_and_both_input_kinds(run):
    images, _, _ = render_batch(range(10), "val", 32)
    a, b = load_oracle(run), load_oracle(run)
    pred = a.predict(images)
    assert pred.shape == (10, 13) and pred.dtype == np.float32 and set(np.unique(pred)) <= {0.0, 1.0}
    assert np.array_equal(pred, b.predict(images))
    assert np.array_equal(pred, a.predict(to_tensor(images)))
    assert np.array_equal(pred, a.predict(torch.from_numpy(images)))
    assert np.allclose(a.probabilities(images), b.probabilities(to_tensor(images)), atol=1e-6)
    assert (pred[:, :3].sum(1) == 1).all() and (pred[:, 3:8].sum(1) == 1).all()
    with pytest.raises(ValueError, match="reads 32x32"):
        a.predict(render_batch(range(2), "val", 64)[0])
    with pytest.raises(ValueError, match="uint8 images"):
        a.predict(images[..., 0])


def test_ensure_oracle_loads_existing_and_checks_size(run):
    assert ensure_oracle(run, size=32).size == 32
    with pytest.raises(UserError, match="reads 32px images, not 64px"):
        ensure_oracle(run, size=64)


def test_features_and_subset_classifier(tmp_path):
    net = AttributeNet(3).eval()
    feats = net.features(torch.zeros(2, 3, 64, 64))
    assert feats["early"].shape[-1] == 32 and feats["middle"].shape[-1] == 8
    assert feats["last"].shape == (2, 128) and feats["logits"].shape == (2, 3)
    out = tmp_path / "shapes"
    main(["--out", str(out), "--steps", "2", "--size", "32", "--batch-size", "4", "--eval-count", "4",
          "--attributes", "shape_circle,shape_square,shape_triangle"])
    oracle = load_oracle(out)
    pred = oracle.predict(render_batch(range(5), "test", 32)[0])
    assert oracle.attributes == ATTRIBUTES[:3] and pred.shape == (5, 3) and (pred.sum(1) == 1).all()


def test_group_argmax_and_augment_keep_ranges():
    probs = np.full((1, 13), 0.2, np.float32)
    probs[0, [0, 1]] = [0.6, 0.7]
    pred = group_argmax(probs, ATTRIBUTES)
    assert pred[0, :3].tolist() == [0, 1, 0] and pred[0, 3:8].sum() == 1 and pred[0, 8:].sum() == 0
    x = to_tensor(render_batch(range(4), "train", 32)[0])
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1 and (y - x).abs().mean() < 0.2


def test_cli_errors(tmp_path):
    with pytest.raises(UserError, match="--attributes must be distinct names"):
        main(["--out", str(tmp_path), "--attributes", "shape_circle,wings"])
    with pytest.raises(UserError, match="--size"):
        main(["--out", str(tmp_path), "--size", "8"])
    with pytest.raises(UserError, match="not an attribute classifier"):
        (tmp_path / "config.json").write_text("{}")
        load_oracle(tmp_path)
    with pytest.raises(UserError, match="missing file"):
        load_oracle(tmp_path / "nothing")


def test_ensure_oracle_trains_when_missing(tmp_path, monkeypatch, run, capsys):
    calls = []

    def fake_train(spec, out, resume=False):
        calls.append((spec, out, resume))
        for name in ("checkpoint.safetensors", "config.json"):
            (tmp_path / "new" / name).parent.mkdir(exist_ok=True)
            (tmp_path / "new" / name).write_bytes((run / name).read_bytes())

    monkeypatch.setattr("train.experts.classifier_training.train_classifier", fake_train)
    oracle = ensure_oracle(tmp_path / "new", size=32)
    assert calls == [(ClassifierSpec(size=32), tmp_path / "new", False)]     # the default recipe, a library call
    assert oracle.size == 32 and "training it now" in capsys.readouterr().err


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    from train.core.common import load_tensors
    from train.experts import classifier_training
    from train.experts.classifier_training import ClassifierSpec, train_classifier

    spec = ClassifierSpec(steps=4, batch_size=4, size=32, eval_count=4, ckpt_every=2)
    train_classifier(spec, tmp_path / "whole")
    calls, real = [], classifier_training.augment

    def interrupted(x, g):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(x, g)

    monkeypatch.setattr(classifier_training, "augment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(spec, tmp_path / "part")
    monkeypatch.setattr(classifier_training, "augment", real)
    assert not (tmp_path / "part" / "eval.json").exists()
    assert ensure_oracle(tmp_path / "part", size=32)      # an unfinished run is finished, not loaded half-trained
    whole, part = load_tensors(tmp_path / "whole" / "checkpoint.safetensors"), \
        load_tensors(tmp_path / "part" / "checkpoint.safetensors")
    assert all(torch.equal(whole[k], part[k]) for k in whole if k.startswith("model."))
