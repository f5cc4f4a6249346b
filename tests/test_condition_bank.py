"""The condition bank: off-support conditions projected onto a run's training conditions before τ samples
(train/core/condition_bank.py on the train side, export's condition_bank.npy, runtime/condition_bank.py)."""
import json
import shutil

import numpy as np
import pytest
import torch

from export import onnx as export_onnx
from export.bundle import write_manifest
from export.onnx import export_bundle
from runtime import Pipeline
from runtime.condition_bank import BANK_FILE
from runtime.condition_bank import ConditionBank as RuntimeBank
from runtime.inputs import seeded_rng
from runtime.manifest import PipelineError, read_manifest
from runtime.serve import TranslateModel
from train import cinn, evaluate
from train.core.common import UserError, save_tensors
from train.core.condition_bank import BANK_FILE as RUN_BANK_FILE
from train.core.condition_bank import ConditionBank, load_condition_bank, min_similarity_of, write_condition_bank
from train.experts.base import Experts


def clustered(n: int = 400, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Conditions around four directions, like captions around their meanings."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:4]
    return centres[torch.arange(n) % 4] + 0.1 * torch.randn(n, dim, generator=g)


def test_training_conditions_stay_and_far_ones_move_to_their_nearest(tmp_path):
    rows = clustered()
    written = write_condition_bank(tmp_path, rows.reshape(200, 2, -1), "test rows")
    bank = load_condition_bank(tmp_path)
    assert bank.describe() == written.describe() == {"count": 400, "min_similarity": bank.min_similarity}
    assert torch.equal(bank.conditions, rows.half().float())             # float16 rows, as a bundle ships them
    out, moved = bank.project(bank.conditions)                           # each training row is its own nearest
    assert not moved.any() and torch.equal(out, bank.conditions)
    near = torch.eye(16)[:4] + 0.02                                       # on the support: unchanged
    assert not bank.project(near)[1].any()
    far = torch.eye(16)[8:12] + 0.3 * torch.eye(16)[:4]                  # off every cluster: replaced
    out, moved = bank.project(far)
    unit = torch.nn.functional.normalize
    assert moved.all() and torch.equal(out, bank.conditions[(unit(far, dim=1) @ unit(bank.conditions, dim=1).T)
                                                            .argmax(1)])


def test_min_similarity_is_a_low_quantile_of_leave_one_out_neighbours():
    rows = clustered()
    threshold = min_similarity_of(rows)
    unit = torch.nn.functional.normalize(rows, dim=1)
    sim = (unit @ unit.T).fill_diagonal_(-1)                             # leave one out: a row is not its own
    assert 0 < threshold < 0.999 and (sim.max(1).values < threshold).float().mean() <= 0.01


def test_a_broken_run_bank_is_refused_with_one_message(tmp_path):
    assert load_condition_bank(tmp_path) is None                          # no bank: exact conditions, no error
    (tmp_path / RUN_BANK_FILE).write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="is not a condition bank"):
        load_condition_bank(tmp_path)
    save_tensors(tmp_path / RUN_BANK_FILE, {"conditions": torch.ones(3, 4)})      # no min_similarity
    with pytest.raises(UserError, match="is not a condition bank"):
        load_condition_bank(tmp_path)
    with pytest.raises(UserError, match="finite, non-zero rows"):
        ConditionBank(torch.zeros(3, 4), 0.5)


def test_the_numpy_twin_projects_exactly_like_the_torch_bank():
    bank = ConditionBank(clustered().half(), min_similarity_of(clustered().half()))
    twin = RuntimeBank(bank.conditions.half().numpy(), bank.min_similarity)
    queries = torch.cat([clustered(40, seed=1), torch.randn(40, 16, generator=torch.Generator().manual_seed(2))])
    ours, moved = bank.project(queries)
    theirs, twin_moved = twin.project(queries.numpy())
    assert 0 < moved.sum() < len(queries)
    np.testing.assert_array_equal(twin_moved, moved.numpy())
    np.testing.assert_array_equal(theirs, ours.numpy())
    for i in (0, 45, 79):                                                  # a row's answer never depends on its batch
        np.testing.assert_array_equal(twin.project(queries[i:i + 1].numpy())[0][0], theirs[i])


TEXTS = ["a red square", "a small blue circle on the left"]
NEW = ["somebody painted a tiny tile up high"]


@pytest.fixture(scope="module")
def banked(bundles, tmp_path_factory):
    """The tiny text2image bundle exported with a bank of two captions' embeddings (the stand-in encoder's
    embeddings are all alike, hence a threshold close to 1)."""
    enc, flow, ae = bundles.standins("text2image")
    rows = enc.encode(TEXTS)
    out = tmp_path_factory.mktemp("banked") / "text2image"
    cond, z = (t.numpy() for t in export_onnx.model_samples(flow, 64))
    experts = Experts(source_encoder=enc, target_encoder=ae, target_decoder=ae, info={"validation_texts": TEXTS})
    export_bundle(flow, experts, out, task="text2image", cond=cond, z=z, origin="model samples (test)",
                  source={"run": None, "stand_in": True}, condition_bank=ConditionBank(rows, 0.99999))
    return out


def test_translate_samples_from_the_projected_condition(banked):
    m = read_manifest(banked)
    assert m["condition_bank"]["count"] == 2 and BANK_FILE in m["condition_bank"]["files"]
    p, exact = Pipeline.load(banked), Pipeline.load(banked, project=False)
    assert exact.condition_bank is None and p.condition_bank is not None
    cond = exact.encode_source(TEXTS + NEW)
    projected = p.project(cond)
    np.testing.assert_array_equal(projected[:2], cond[:2])              # training conditions pass unchanged
    unit = cond / np.linalg.norm(cond, axis=1, keepdims=True)
    nearest = int(np.argmax(unit[:2] @ unit[2]))
    np.testing.assert_array_equal(projected[2], cond[nearest].astype(np.float16).astype(np.float32))
    # one text (the fused graph's case) and several: both sample τ from the projected condition, same v
    v = seeded_rng(5).standard_normal((1, p.latent_dim), dtype=np.float32) * np.float32(p.default_temperature)
    np.testing.assert_array_equal(p.translate(NEW, seed=5), exact._generate(v, projected[2:]))
    np.testing.assert_array_equal(p.translate(TEXTS, seed=1), exact.translate(TEXTS, seed=1))
    # the server's rows go through the same projection
    served = TranslateModel(p).infer([{"source": np.array([[NEW[0].encode()]], dtype=object),
                                       "seed": np.array([[5]], dtype=np.int64)}])[0]
    np.testing.assert_array_equal(next(iter(served.values())), p.translate(NEW, seed=5))
    # τ⁻¹ keeps the exact condition: it must explain the given target
    image = p.translate(TEXTS[:1], seed=0)
    np.testing.assert_array_equal(p.residual(image, NEW), exact.residual(image, NEW))


@pytest.mark.parametrize("bad, message", [
    (np.array([{"a": 1}] * 2, dtype=object), "not a plain numeric .npy"),
    (np.ones((2, 5), np.float16), r"must be an array \(count >= 1, 32\)"),
    (np.full((2, 32), np.nan, np.float16), "finite floats"),
    (np.ones((3, 32), np.float16), "'condition_bank.count' says 2"),
])
def test_a_malformed_bundle_bank_is_refused_with_one_message(banked, tmp_path, bad, message):
    copy = shutil.copytree(banked, tmp_path / "bundle")
    np.save(copy / BANK_FILE, bad, allow_pickle=True)
    with pytest.raises(PipelineError, match="fails its SHA-256 check"):
        Pipeline.load(copy)
    write_manifest(copy, read_manifest(copy))              # rehashed: now the content itself is what is wrong
    with pytest.raises(PipelineError, match=message):
        Pipeline.load(copy)
    assert Pipeline.load(copy, project=False).condition_bank is None


def test_a_manifest_bank_section_without_files_is_refused(banked, tmp_path):
    copy = shutil.copytree(banked, tmp_path / "bundle")
    m = json.loads((copy / "manifest.json").read_text())
    del m["condition_bank"]["files"]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PipelineError, match="'condition_bank.files'"):
        read_manifest(copy)


def test_text2image_runs_store_their_bank_and_evaluate_through_it(ae_run, oracle_run, tmp_path, capsys):
    out = tmp_path / "text2image" / "cinn"
    cinn.main(["--task", "text2image", "--preset", "smoke", "--ae", str(ae_run), "--out", str(out)])
    bank = load_condition_bank(out)
    assert bank.describe()["count"] == 256 * 2                             # smoke: 256 images x 2 captions
    capsys.readouterr()
    args = ["--run", str(out), "--num-images", "8", "--oracle", str(oracle_run), "--json"]
    evaluate.main(args)
    projected = json.loads(capsys.readouterr().out)["condition_projection"]
    assert projected["count"] == 512 and 0 <= projected["moved_train_phrasing"] <= projected["moved_heldout"] <= 1
    evaluate.main(args + ["--condition", "exact"])
    assert json.loads(capsys.readouterr().out)["condition_projection"].startswith("exact")
    # export ships it (and leaves it out when asked); the features run of the same CLI has none
    bundle = tmp_path / "bundle"
    export_onnx.main(["--task", "text2image", "--run", str(out), "--out", str(bundle), "--no-fuse"])
    m = read_manifest(bundle)
    assert m["condition_bank"]["count"] == 512
    assert np.array_equal(np.load(bundle / BANK_FILE), bank.conditions.half().numpy())
