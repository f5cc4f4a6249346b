"""export.triton's sampling ensemble does what runtime.Pipeline.translate does by default: the condition projected
onto the bundle's condition bank (export/triton_graphs.py's condition_projection), the most likely of best_of
candidates, `cycles` autoencoder round trips. The graphs are checked against runtime/condition_bank.py and
runtime/sampling.py, and the ensemble, run step by step on onnxruntime, against Pipeline.translate row for row."""
import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from test_export import BLOCK_TORCH, ROOT
from test_export_triton import check_wiring, to_uint8

from export import onnx as export_onnx
from export.onnx import export_bundle
from export.triton import main as export_triton
from export.triton import parse_configs, replay_ensemble, write_repository
from export.triton_graphs import best_of_select, best_of_split, condition_projection
from runtime import Pipeline
from runtime.condition_bank import ConditionBank
from runtime.inputs import seeded_rng
from runtime.manifest import MANIFEST
from runtime.sampling import most_likely
from train.core.condition_bank import ConditionBank as TrainBank
from train.experts.base import Experts

TEXTS = ["a red square", "a small blue circle on the left"]
NEW = ["somebody painted a tiny tile up high"]          # unseen phrasing: projected onto a training caption


def session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def project(rows: np.ndarray, threshold: float, cond: np.ndarray) -> np.ndarray:
    return session(condition_projection(rows, threshold)[0]).run(None, {"cond": cond})[0]


def test_projection_graph_equals_the_runtime_bank():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((500, 32)).astype(np.float16)
    cond = np.concatenate([rows[:40].astype(np.float32) + 0.3 * rng.standard_normal((40, 32), dtype=np.float32),
                           rng.standard_normal((60, 32), dtype=np.float32), np.zeros((1, 32), np.float32)])
    ref, moved = ConditionBank(rows, 0.6).project(cond)
    assert 30 < moved.sum() < 80                                   # both branches taken
    np.testing.assert_array_equal(project(rows, 0.6, cond), ref)
    np.testing.assert_array_equal(project(rows, 0.6, cond[57:58])[0], ref[57])   # a row never depends on its batch


def test_projection_ties_take_the_first_row_and_the_threshold_keeps_the_condition():
    """Cases with exact float32 similarities, so numpy and onnxruntime must agree on them bit for bit."""
    e = np.eye(8, dtype=np.float16)
    rows = e[[2, 1, 0]]
    tie = np.array([[1, 1, 0, 0, 0, 0, 0, 0]], np.float32)          # rows 1 and 2 (e1, e0) equally similar
    for threshold, expect in ((0.9, e[1]), (0.5, tie[0])):        # moved to the first of the tied rows / kept
        ref = ConditionBank(rows, threshold).project(tie)[0]
        np.testing.assert_array_equal(ref[0], expect)
        np.testing.assert_array_equal(project(rows, threshold, tie), ref)
    at = np.array([[3, 0, 0, 4, 0, 0, 0, 0]], np.float32)           # cosine with e0: exactly float32(0.6)
    above = float(np.nextafter(np.float32(0.6), np.float32(1)))
    for threshold, expect in ((0.6, at[0]), (above, e[0])):        # best == threshold: kept (strict <)
        ref = ConditionBank(rows, threshold).project(at)[0]
        np.testing.assert_array_equal(ref[0], expect)
        np.testing.assert_array_equal(project(rows, threshold, at), ref)


def test_best_of_graphs_equal_most_likely():
    rng = np.random.default_rng(1)
    n, d, b = 4, 6, 10
    v, z = (rng.standard_normal((b * n, d), dtype=np.float32) for _ in range(2))
    logdet = rng.standard_normal(b * n, dtype=np.float32)
    logdet[4:8] = logdet[0]                                         # candidates with equal scores: the first
    v[4:8], z[5] = v[0], z[0] + 1
    split = session(best_of_split(n, d)[0]).run(None, {"v": v.reshape(b, n, d)})
    assert all(np.array_equal(split[j], v[j::n]) for j in range(n))
    feeds = {**{f"z_{j}": z[j::n] for j in range(n)}, **{f"v_{j}": v[j::n] for j in range(n)},
             **{f"logdet_{j}": logdet[j::n] for j in range(n)}}
    picked = session(best_of_select(n, d)[0]).run(None, feeds)[0]
    np.testing.assert_array_equal(picked, most_likely(z, v, logdet, n))
    np.testing.assert_array_equal(picked[1], z[4])


@pytest.fixture(scope="module")
def banked(bundles, tmp_path_factory):
    """The tiny text2image bundle with a two-caption condition bank and best-of-3 + one AE cycle as its default."""
    enc, flow, ae = bundles.standins("text2image")
    out = tmp_path_factory.mktemp("triton-banked") / "text2image"
    cond, z = (t.numpy() for t in export_onnx.model_samples(flow, 64))
    experts = Experts(source_encoder=enc, target_encoder=ae, target_decoder=ae, info={"validation_texts": TEXTS})
    export_bundle(flow, experts, out, task="text2image", cond=cond, z=z, origin="model samples (test)",
                  source={"run": None, "stand_in": True}, condition_bank=TrainBank(enc.encode(TEXTS), 0.99999))
    m = json.loads((out / MANIFEST).read_text())
    m["sampling"] = {**m["sampling"], "temperature": 1.5, "best_of": 3, "cycles": 1}
    (out / MANIFEST).write_text(json.dumps(m))
    return out


def client_call(out, info: dict, cfg, texts: list[str], samples: int, seed: int) -> np.ndarray:
    """client.json's recipe: one draw per call, a request per text (its rows share one length: no padding)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(out / "text2image" / info["tokenizer"]["file"]))
    tok.enable_truncation(max_length=info["tokenizer"]["max_tokens"])
    n, d, rows = info["best_of"], info["latent_dim"], len(texts) * samples
    v = (seeded_rng(seed).standard_normal((rows * n, d), dtype=np.float32)
         * np.float32(info["default_temperature"])).reshape((rows, n, d) if n > 1 else (rows, d))
    images = []
    for i, text in enumerate(texts):
        enc = tok.encode(text)
        feeds = {"input_ids": np.array([enc.ids] * samples, np.int64), "v": v[i * samples:(i + 1) * samples],
                 "attention_mask": np.array([enc.attention_mask] * samples, np.int64)}
        images.append(to_uint8(replay_ensemble(out, cfg, feeds)["image"]))
    return np.concatenate(images)


def test_the_sampling_ensemble_reproduces_translate(banked, tmp_path):
    out = tmp_path / "repo"
    names = write_repository(banked, out, max_batch=16)
    assert {"text2image_condition_projection", "text2image_best_of_split", "text2image_best_of_select"} <= set(names)
    configs = parse_configs(out, names)
    check_wiring(configs)
    info = json.loads((out / "text2image" / "client.json").read_text())
    assert (info["best_of"], info["cycles"], info["default_temperature"]) == (3, 1, 1.5)
    assert info["condition_bank"].startswith("applied server-side")
    assert info["models"]["text2image"]["inputs"]["v"] == ["TYPE_FP32", [3, 6]]
    p = Pipeline.load(banked)
    texts = TEXTS + NEW
    served = client_call(out, info, configs["text2image"], texts, 2, seed=7)
    np.testing.assert_array_equal(served, p.translate(texts, num_samples=2, seed=7))
    # what is being reproduced matters: without projection, selection or the cycle the rows differ
    exact = Pipeline.load(banked, project=False)
    assert not np.array_equal(served[4:], exact.translate(NEW, num_samples=2, seed=7))
    assert not np.array_equal(served, p.translate(texts, num_samples=2, seed=7, best_of=3, cycles=0))
    assert not np.array_equal(served, p.translate(texts, num_samples=2, seed=7, best_of=1, cycles=1))
    # the plain ensemble, when asked for: exact condition, one candidate, no cycle, v (N, D)
    assert export_triton(["--bundle", str(banked), "--out", str(tmp_path / "plain"), "--best-of", "1",
                          "--cycles", "0", "--no-project"]) == 0
    names = json.loads((tmp_path / "plain" / "text2image" / "client.json").read_text())
    assert names["best_of"] == 1 and names["condition_bank"].startswith("not applied")
    plain = parse_configs(tmp_path / "plain", ["text2image"])["text2image"]
    assert [s.model_name for s in plain.ensemble_scheduling.step] == [
        "text2image_source_encoder", "text2image_flow_forward", "text2image_target_decoder"]
    np.testing.assert_array_equal(client_call(tmp_path / "plain", names, plain, NEW, 2, seed=3),
                                  exact.translate(NEW, num_samples=2, seed=3, best_of=1, cycles=0))


def test_best_of_without_a_decoder_returns_the_selected_latent(bundles, tmp_path):
    f = Pipeline.load(bundles.get("features"))
    names = write_repository(bundles.get("features"), tmp_path, best_of=2)
    configs = parse_configs(tmp_path, names)
    check_wiring(configs)
    cond = np.load(bundles.get("features") / "validation/cond.npy")[:5]
    v = (seeded_rng(2).standard_normal((10, 8), dtype=np.float32) * np.float32(f.default_temperature)).reshape(5, 2, 8)
    z = replay_ensemble(tmp_path, configs["features"], {"cond": cond, "v": v})["z"]
    np.testing.assert_array_equal(z, f.translate(cond, seed=2, best_of=2))
    with pytest.raises(ValueError, match="cycles needs a bundle with a target encoder and decoder"):
        write_repository(bundles.get("features"), tmp_path / "x", cycles=1)


def test_without_onnx_the_plain_ensembles_still_export_and_the_rest_says_what_to_install(banked, tmp_path):
    """The lean install (`pip install .`) has onnxruntime but not onnx, which builds the small graphs."""
    block = BLOCK_TORCH.replace("'sentence_transformers')", "'sentence_transformers', 'onnx')")
    assert "'onnx'" in block

    def cli(*extra):
        args = ["--bundle", str(banked), *extra]
        code = block + f"import sys\nfrom export.triton import main\nsys.exit(main({args!r}))"
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    p = cli("--out", str(tmp_path / "r"))
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and "pip install onnx" in err[0] and "--best-of 1" in err[0], p.stderr
    p = cli("--out", str(tmp_path / "r"), "--best-of", "1", "--cycles", "0", "--no-project")
    assert p.returncode == 0 and "wrote 7 models" in p.stdout, p.stderr
