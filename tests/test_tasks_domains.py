"""superres and unpaired (train/tasks_domains.py): smoke runs through the CLI, prerequisite AEs trained
on demand, evaluation keys and ranges, and the behaviour the evaluations rest on."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from train import cinn, evaluate
from train.core.common import UserError
from train.data.sprites import area_downsample, render_batch, to_tensor, to_uint8
from train.eval.domains import DOMAINS, consistency_psnr, domain_onehot, evaluate_unpaired, load_run
from train.experts.ae_training import SpriteBatches
from train.experts.autoencoder import load_autoencoder
from train.experts.classifier import labels
from train.tasks.registry import all_tasks as load_all


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("domains")


@pytest.fixture(scope="module")
def oracle_run(work):
    from train.classifier import main as train_classifier
    train_classifier(["--out", str(work / "oracle"), "--steps", "5", "--eval-count", "20"])
    train_classifier(["--out", str(work / "domain"), "--steps", "5", "--eval-count", "20", "--attributes", "textured"])
    return work / "oracle", work / "domain"


def _run(work, task, model, *extra):
    out = work / task / model
    cinn.main(["--task", task, "--preset", "smoke", "--model", model, "--ae", str(work / "ae"),
               "--lowres-ae", str(work / "low"), "--union-ae", str(work / "union"), "--out", str(out), *extra])
    return out


def _evaluate(capsys, run, oracle_run, *extra):
    capsys.readouterr()
    evaluate.main(["--run", str(run), "--num-images", "12", "--oracle", str(oracle_run[0]), "--json", *extra])
    return json.loads(capsys.readouterr().out)


def test_registered_with_presets_and_hooks():
    tasks = load_all()
    for name in ("superres", "unpaired"):
        assert {"smoke", "default"} <= set(tasks[name].presets)
        assert tasks[name].experts and tasks[name].evaluate and tasks[name].after_training


def test_consistency_is_exact_for_the_truth_and_low_for_another_image():
    images, _, _ = render_batch(range(8), "test", 64)
    y = to_tensor(images)
    x = area_downsample(y, 16)
    assert consistency_psnr(x, y) >= 100                               # A(y) == x: identical
    assert consistency_psnr(x, y.roll(1, 0)) < 25                      # other sprites do not fit x
    native, _, _ = render_batch(range(8), "test", 16)
    # the renderer's own 16 px picture is close to A(y) but not what A makes: why inputs are A(y)
    assert 30 < consistency_psnr(to_tensor(native), y) < 60


def test_superres_smoke_trains_missing_aes_and_evaluates(work, oracle_run, capsys):
    run = _run(work, "superres", "cinn")
    _run(work, "superres", "mlp")
    low = load_autoencoder(work / "low")                              # trained on demand, at 16 px
    assert low.image_size == 16 and load_autoencoder(work / "ae").image_size == 64
    assert (run / "grids" / "samples.png").is_file()
    result = _evaluate(capsys, run, oracle_run)
    for r in (result, result["mlp"]):
        assert 0 < r["consistency_psnr"] <= 120 and 0 <= r["attribute_agreement"] <= 1 and r["diversity"] >= 0
    assert result["diversity"] > 0 and result["mlp"]["diversity"] == pytest.approx(0, abs=1e-6)
    assert result["references"]["ground_truth"]["consistency_psnr"] >= 100
    for fid in (result["fid"], result["mlp"]["fid"], result["fid_real"], result["fid_recon"]):
        assert np.isfinite(fid) and fid >= 0.0
    experts = load_all()["superres"].experts(json.loads((run / "config.json").read_text()))
    assert experts.info["source_image_shape"] == [3, 16, 16]


def test_unpaired_smoke_evaluates_and_refuses_the_mlp(work, oracle_run, capsys):
    run = _run(work, "unpaired", "cinn")
    assert (run / "grids" / "translation.png").is_file()
    assert json.loads((work / "union" / "config.json").read_text())["style"] == "union"
    with pytest.raises(UserError, match="residual"):
        _run(work, "unpaired", "mlp")
    result = _evaluate(capsys, run, oracle_run, "--domain-classifier", str(oracle_run[1]))
    for key in ("content_kept", "domain_success", "back_content_kept", "back_domain_success"):
        assert 0 <= result[key] <= 1, key
    assert set(result["directions"]) == {"flat_to_textured", "textured_to_flat"}
    for r in (result, *result["directions"].values()):
        assert all(np.isfinite(r[k]) and r[k] >= 0.0 for k in ("fid", "fid_edits", "fid_real", "fid_recon"))
    assert set(result["fid_reference"]) == {"flat", "textured"}
    translator, config, _ = load_run(run)
    x = to_tensor(render_batch(range(4), "test", 64)[0])
    c = domain_onehot([0] * 4)
    with torch.no_grad():                 # the cINN is invertible: keeping the label reconstructs Λ(Θ(y))
        assert torch.allclose(translator.edit(x, c, c), translator.ae.decode(translator.ae.encode(x)), atol=1e-4)


class _LookupDomain:
    """A domain 'classifier' that knows the exact textured renders of the test sprites."""
    attributes = ["textured"]

    def __init__(self, n):
        self.textured = {im.tobytes() for im in render_batch(range(n), "test", 64, "textured")[0]}

    def predict(self, images):
        return np.array([[float(im.tobytes() in self.textured)] for im in to_uint8(images)], np.float32)


class _Oracle:
    """Reads the true attributes of whichever test sprite it is shown (by exact pixels, either style)."""
    attributes = ["pos_left"]

    def __init__(self, n):
        self.truth = {}
        for style in DOMAINS:
            images, attrs, _ = render_batch(range(n), "test", 64, style)
            truth = labels(attrs, False, self.attributes)
            self.truth.update({im.tobytes(): t for im, t in zip(images, truth)})

    def predict(self, images):
        return np.stack([self.truth.get(im.tobytes(), np.full(1, -1.0)) for im in to_uint8(images)])


def test_unpaired_evaluation_tells_a_translation_from_a_copy():
    n = 6
    ae = SimpleNamespace(image_size=64)
    identity = SimpleNamespace(ae=ae, edit=lambda x, c, new: x)
    perfect = SimpleNamespace(ae=ae, edit=lambda x, c, new: to_tensor(        # the same sprite, other style
        render_batch(range(len(x)), "test", 64, DOMAINS[int(new[0].argmax())])[0]))
    copy = evaluate_unpaired(identity, _Oracle(n), _LookupDomain(n), n)
    good = evaluate_unpaired(perfect, _Oracle(n), _LookupDomain(n), n)
    assert copy["domain_success"] == 0 and copy["content_kept"] == 1
    assert good["domain_success"] == 1 and good["content_kept"] == 1 and good["back_domain_success"] == 1
    assert good["directions"]["textured_to_flat"]["psnr_to_other_domain_render"] >= 100


def test_union_batches_are_half_textured():
    images, _ = SpriteBatches(64, "union")(8, torch.Generator().manual_seed(3))
    idx = torch.randint(1_000_000, (8,), generator=torch.Generator().manual_seed(3)).tolist()
    assert torch.equal(images[:4], to_tensor(render_batch(idx[:4], "train", 64, "textured")[0]))
    assert torch.equal(images[4:], to_tensor(render_batch(idx[4:], "train", 64)[0]))


def test_domain_label_column():
    _, attrs, _ = render_batch(range(3), "test", 16)
    assert labels(attrs, True, ["textured"]).tolist() == [[1.0]] * 3
    assert labels(attrs, False, ["pos_left", "textured"])[:, 1].tolist() == [0.0] * 3
