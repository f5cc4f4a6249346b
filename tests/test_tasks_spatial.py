"""The spatial sprites tasks (exemplar, shape): the deformation d, the mask reader, smoke runs, evaluation.
ae_run and oracle_run come from conftest.py."""
import json

import numpy as np
import pytest
import torch

from train import evaluate
from train.data import ATTRIBUTES
from train.data.deform import deform, deformation, mask_condition, read_mask
from train.data.latents import deformed_latents, encode_images
from train.data.sprites import SPLITS, render_batch
from train.eval.metrics import iou
from train.eval.spatial import follows
from train.experts.ae_training import load_ae
from train.tasks.registry import all_tasks as load_all


@pytest.fixture(scope="module")
def renders():
    start = SPLITS["test"][0]
    return render_batch(range(start, start + 64), "test", 64)


def test_deformation_is_reproducible_from_its_seed(renders):
    images = renders[0][:8]
    idx = range(8)
    same = deform(images, idx, seed=3), deform(images, idx, seed=3)
    assert np.array_equal(*same)
    assert np.array_equal(deformation(3, 5, 1)[0], deformation(3, 5, 1)[0])
    for other in (deform(images, idx, seed=4), deform(images, idx, seed=3, draw=1), deform(images, range(1, 9), 3)):
        assert all(not np.array_equal(a, b) for a, b in zip(same[0], other))      # every image warped anew


def test_deformation_destroys_position_and_keeps_colour(renders):
    images, attrs, masks = renders
    moved = deform(images, range(len(images)), seed=0)
    seen = read_mask(moved)
    assert seen.reshape(len(seen), -1).any(1).mean() > 0.9                          # the object stays in view
    assert iou(seen, masks).mean() < 0.5                                           # ... but elsewhere
    # left/right: the mask's centroid switches sides about half the time (flips, rotation)
    xs = np.arange(64)
    left_before = (masks * xs).sum((1, 2)) / masks.sum((1, 2)) < 32
    left_after = (seen * xs).sum((1, 2)) / np.maximum(seen.sum((1, 2)), 1) < 32
    assert 0.25 < (left_before != left_after).mean() < 0.75
    filled = attrs[:, ATTRIBUTES.index("style_outline")] == 0
    for i in np.flatnonzero(filled & seen.reshape(len(seen), -1).any(1))[:10]:      # the object's colour survives
        before, after = np.median(images[i][masks[i]], 0), np.median(moved[i][seen[i]], 0)
        assert np.abs(before.astype(int) - after.astype(int)).max() < 40


def test_mask_reader_recovers_render_masks(renders):
    images, attrs, masks = renders
    scores = iou(read_mask(images), masks)
    outlined = attrs[:, ATTRIBUTES.index("style_outline")] == 1
    assert outlined.any() and (~outlined).any()
    assert scores.mean() > 0.97 and scores[outlined].mean() > 0.97     # outline interiors are filled
    assert iou(read_mask(images), np.roll(masks, 1, 0)).mean() < 0.5      # another image's mask does not fit
    flat = np.full((2, 64, 64, 3), 128, np.uint8)
    assert not read_mask(flat).any()                                    # no object, no mask


def test_mask_condition_keeps_coverage(renders):
    masks = renders[2]
    cond = mask_condition(masks, 16)
    assert cond.shape == (64, 1, 16, 16) and 0 <= cond.min() and cond.max() <= 1
    assert torch.allclose(cond.mean((1, 2, 3)), torch.from_numpy(masks.mean((1, 2)).astype(np.float32)), atol=1e-6)


def test_follows_scores_the_source_on_differing_pairs():
    a = np.zeros((4, len(ATTRIBUTES)), np.float32)
    a[:, ATTRIBUTES.index("color_red")] = 1
    b = a.copy()
    b[:, ATTRIBUTES.index("color_red")], b[:, ATTRIBUTES.index("color_blue")] = 0, 1
    b[:2, ATTRIBUTES.index("bg_dark")] = 1
    assert follows(a, a, b, ["color", "bg_dark", "pos_left"]) == {"color": 1.0, "bg_dark": 1.0, "pos_left": None}
    assert follows(b, a, b, ["color", "bg_dark"]) == {"color": 0.0, "bg_dark": 0.0}


def test_cached_deformed_latents_differ_per_draw(ae_run):
    ae = load_ae(str(ae_run))
    z = deformed_latents(str(ae_run), ae, "val", 6, 2, seed=1)
    assert z.shape == (6, 2, ae.latent_dim) and not torch.allclose(z[:, 0], z[:, 1])
    images, _, _ = render_batch(range(SPLITS["val"][0], SPLITS["val"][0] + 6), "val", ae.image_size)
    direct = encode_images(ae, deform(images, range(SPLITS["val"][0], SPLITS["val"][0] + 6), 1, draw=1))
    assert torch.allclose(deformed_latents(str(ae_run), ae, "val", 6, 2, seed=1)[:, 1], direct, atol=1e-5)


@pytest.mark.parametrize("task", ["exemplar", "shape"])
def test_smoke_run_and_evaluation_keys(task, ae_run, train_smoke, oracle_run, tmp_path, capsys):
    out = train_smoke(task, tmp_path)
    assert (out / "grids" / "transfer.png").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == task
    latent = load_ae(str(ae_run)).latent_dim
    assert tuple(config["model"]["cond_shape"]) == ((1, 16, 16) if task == "exemplar" else (latent,))
    experts = load_all()[task].experts(config)
    assert (experts.source_encoder is None) == (task == "exemplar")
    capsys.readouterr()
    evaluate.main(["--task", task, "--run", str(out), "--num-images", "20", "--oracle", str(oracle_run), "--json"])
    result = json.loads(capsys.readouterr().out)
    keys = ["mask_iou", "style_transfer"] if task == "exemplar" else ["shape_from_exemplar", "appearance_kept"]
    for key in keys + ["diversity"]:
        assert 0.0 <= result[key] <= 1.0 and 0.0 <= result["mlp"][key] <= 1.0, key
    assert result["mlp"]["diversity"] == pytest.approx(0.0, abs=1e-6)             # a deterministic MLP cannot vary
    for fid in (result["fid"], result["fid_edits"], result["fid_real"], result["fid_recon"],
                result["mlp"]["fid"], result["mlp"]["fid_edits"]):
        assert np.isfinite(fid) and fid >= 0.0
    assert result["fid_reference"]["reference_count"] == 20
    if task == "exemplar":
        assert result["reference"]["mask_reader_iou_renders"] > 0.97
    else:
        assert set(result["deformation_keeps"]) == {"shape", "pos_left", "pos_top", "size_large", "color",
                                                    "bg_dark", "style_outline"}
