"""The model-diagnosis task (Sec. 4.2, Fig. 5): layer features, the invariance score, smoke runs, driver.
Fixtures ae_run (smoke AE) and oracle_run (5-step oracle) come from conftest.py."""
import json

import numpy as np
import pytest
import torch

from train import cinn, diagnosis, evaluate
from train.core.common import UserError, read_json
from train.data import ATTRIBUTES
from train.data.sprites import render_batch, to_tensor
from train.eval.diagnosis import measure
from train.eval.metrics import SCORED, invariance_scores, read_scored
from train.experts.classifier import AttributeNet, LayerFeatures
from train.tasks.registry import all_tasks as load_all


def _smoke(ae_run, tmp_path, kind, layer, model="cinn", clf=None):
    out = tmp_path / f"{kind}-{layer}" / model
    cinn.main(["--task", "diagnosis", "--preset", "smoke", "--ae", str(ae_run), "--classifier", kind, "--layer", layer,
               "--classifier-run", str(clf or tmp_path / f"classifier_{kind}"), "--out", str(out), "--model", model])
    return out


def test_registry_entry():
    task = load_all()["diagnosis"]
    assert {"smoke", "default"} <= set(task.presets)
    assert task.evaluate and task.after_training and task.experts and task.default_out


def test_layer_features_have_the_documented_shapes():
    net = AttributeNet(3).eval()
    images, _, _ = render_batch(range(2), "test", 64)
    x = to_tensor(images)
    expected = {"early": (16, 8, 8), "middle": (64, 8, 8), "last": (128,)}
    for layer, shape in expected.items():
        assert tuple(LayerFeatures(net, layer, 64)(x).shape) == (2, *shape)
    with torch.no_grad():                           # early = stage 1 (32x32) averaged over 4x4 blocks
        stage1 = net.features(x)["early"]
    assert torch.allclose(LayerFeatures(net, "early", 64)(x)[:, :, 1, 2], stage1[:, :, 4:8, 8:12].mean((2, 3)),
                          atol=1e-6)


class _ExactAE:
    """A stand-in AE whose latent is the attribute vector in ±1 and whose "image" shows it."""

    def encode(self, x):
        return x[:, 0, 0, :]

    def decode(self, z):
        return z[:, None, None, :].expand(-1, 3, 1, -1)


class _ExactOracle:
    def predict(self, x):
        return (x[:, 0, 0, :] > 0).float().numpy()


def _as_images(attrs):
    return np.repeat((attrs * 255).astype(np.uint8)[:, None, :, None], 3, axis=3)   # (N, 1, 13, 3)


def test_invariance_is_zero_when_fixed_and_one_when_free():
    """An exact reader: samples equal to the input give invariance 0, samples ignoring the condition
    give about 1, and a sampler that keeps only the shape is invariant to everything but the shape."""
    _, attrs, _ = render_batch(range(600), "test", 16)
    images, truth = _as_images(attrs), read_scored(attrs)
    pool = torch.from_numpy(attrs * 2 - 1)
    cond = pool.clone()
    ae, oracle = _ExactAE(), _ExactOracle()

    def identity(c, s, seed):
        return c.repeat_interleave(s, 0)

    def free(c, s, seed):                      # draw other images' latents: nothing is kept
        g = torch.Generator().manual_seed(seed)
        return pool[torch.randint(len(pool), (len(c) * s,), generator=g)]

    shape_cols = SCORED["shape"]

    def keep_shape(c, s, seed):
        z = free(c, s, seed)
        z[:, shape_cols] = c.repeat_interleave(s, 0)[:, shape_cols]
        return z

    fixed = measure(identity, ae, oracle, images, cond, truth, 6, 0)
    assert fixed["invariance"]["mean"] == 0 and fixed["error"]["mean"] == 0 and fixed["diversity"] == 0
    loose = measure(free, ae, oracle, images, cond, truth, 6, 0)
    for name in SCORED:
        assert 0.85 < loose["invariance"][name] < 1.15, (name, loose["invariance"])
    partial = measure(keep_shape, ae, oracle, images, cond, truth, 6, 0)
    assert partial["invariance"]["shape"] == 0 and partial["error"]["shape"] == 0
    assert min(v for k, v in partial["invariance"].items() if k not in ("shape", "mean")) > 0.85


def test_invariance_scores_by_hand():
    truth = np.array([[0], [1]])                       # two images, one binary attribute, p = (1/2, 1/2)
    reads = np.array([[[0], [0], [1], [1]], [[1], [1], [1], [1]]])
    scores = invariance_scores(reads, truth, names=["a"])
    # image 0: 4 of 6 pairs disagree; image 1: none -> 1/3; chance disagreement 1 - 1/4 - 1/4 = 1/2
    assert scores["pair_disagreement"]["a"] == pytest.approx(1 / 3)
    assert scores["invariance"]["a"] == pytest.approx(2 / 3)
    assert scores["error"]["a"] == pytest.approx(2 / 8)


def test_smoke_runs_evaluation_and_grids(ae_run, oracle_run, tmp_path, capsys):
    for layer, shape in (("early", [16, 8, 8]), ("middle", [64, 8, 8]), ("last", [128])):
        out = _smoke(ae_run, tmp_path, "shape", layer)
        assert read_json(out / "config.json")["model"]["cond_shape"] == shape
        assert (out / "grids" / "samples.png").is_file()
    assert "no shape classifier" in capsys.readouterr().err          # trained first, and said so (on stderr)
    _smoke(ae_run, tmp_path, "shape", "last", model="mlp")
    capsys.readouterr()
    evaluate.main(["--task", "diagnosis", "--run", str(tmp_path / "shape-last" / "cinn"), "--num-images", "12",
                   "--oracle", str(oracle_run), "--json", "--samples", "3"])
    result = json.loads(capsys.readouterr().out)
    assert (result["classifier"], result["layer"], result["samples"]) == ("shape", "last", 3)
    for key in ("invariance", "pair_disagreement", "error", "ae_error"):
        assert set(result[key]) == {*SCORED, "mean"}
        assert all(0 <= v <= 1 for v in result[key].values() if key != "invariance")
        assert all(0 <= v < 3 for v in result[key].values())
    assert result["latent_spread"] > 0 and result["diversity"] >= 0 and result["warnings"] == []
    assert set(result["mlp"]) == {"error", "latent_spread"}                # no invariance for one output


def test_judge_equal_to_diagnosed_network_is_flagged_and_wrong_classifier_refused(ae_run, tmp_path, capsys):
    out = _smoke(ae_run, tmp_path, "all", "middle")
    capsys.readouterr()
    evaluate.main(["--task", "diagnosis", "--run", str(out), "--num-images", "4", "--json", "--samples", "2",
                   "--oracle", str(tmp_path / "classifier_all")])
    assert "circular" in json.loads(capsys.readouterr().out)["warnings"][0]
    with pytest.raises(UserError, match="not the 'shape' one"):
        _smoke(ae_run, tmp_path, "shape", "last", clf=tmp_path / "classifier_all")


def test_driver_writes_summary_and_grid(ae_run, oracle_run, tmp_path):
    out = tmp_path / "diag"
    diagnosis.main(["--preset", "smoke", "--out", str(out), "--ae", str(ae_run), "--oracle", str(oracle_run),
                    "--classifiers", "shape", "--num-images", "6", "--samples", "2"])
    summary = read_json(out / "summary.json")
    assert set(summary["runs"]) == {"shape-early", "shape-middle", "shape-last"}
    assert summary["runs"]["shape-last"]["mlp"] and summary["runs"]["shape-early"]["mlp"] is None
    assert set(summary["finding"]["shape"]["mean_invariance"]) == {"early", "middle", "last"}
    assert (out / "diagnosis.png").is_file()
    assert len(ATTRIBUTES) == 13 and len(SCORED) == 7
