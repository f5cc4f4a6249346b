"""runtime.Pipeline: parity with PyTorch for the same seed, image editing, batching, threads, every input
error, the torch-free import, and the CLI. Bundles come from test_export's session builders."""
import ast
import json
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import ATTRIBUTES, BLOCK_TORCH, ROOT, copy_bundle

import runtime
from runtime import Pipeline, PipelineError
from runtime.__main__ import main as cli
from runtime.pipeline import images_from_model
from train.core.translator import load_translator


def torch_images(x: torch.Tensor) -> np.ndarray:
    return images_from_model(x.numpy())



@pytest.fixture(scope="module")
def feats(bundles):
    return Pipeline.load(bundles.get("features"))


@pytest.fixture(scope="module")
def t2i(bundles):
    return Pipeline.load(bundles.get("text2image"))


@pytest.fixture(scope="module")
def attrs(bundles):
    return Pipeline.load(bundles.get("attributes"))


# ---- parity with PyTorch -------------------------------------------------------------------------------

def test_translate_features_same_seed_as_pytorch(feats, bundles):
    model, _ = load_translator(bundles.features_run())
    cond = np.load(bundles.get("features") / "validation/cond.npy")[:3]
    z = feats.translate(cond, num_samples=4, seed=7, temperature=0.8)
    v = np.random.default_rng(7).standard_normal((12, 8), dtype=np.float32) * np.float32(0.8)
    with torch.no_grad():
        ref = model(torch.from_numpy(v), torch.from_numpy(np.repeat(cond, 4, axis=0))).numpy()
    assert z.shape == (12, 8) and np.abs(z - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.array_equal(z, feats.translate(cond, num_samples=4, seed=7, temperature=0.8))
    assert not np.allclose(z, feats.translate(cond, num_samples=4, seed=8, temperature=0.8))
    assert np.array_equal(feats.translate(cond[1:2], num_samples=1, seed=3),
                          feats.flow_forward(np.random.default_rng(3).standard_normal((1, 8), dtype=np.float32),
                                             cond[1:2]))


def test_translate_text_to_images_matches_pytorch(t2i, bundles):
    enc, flow, ae = bundles.standins("text2image")
    texts = ["a small red circle", "two blue squares"]
    images = t2i.translate(texts, num_samples=3, seed=0)
    v = np.random.default_rng(0).standard_normal((6, 6), dtype=np.float32)
    with torch.no_grad():
        cond = enc.encode(texts).repeat_interleave(3, 0)
        ref = torch_images(ae.decode(flow(torch.from_numpy(v), cond)))
    assert images.dtype == np.uint8 and images.shape == (6, 16, 16, 3)
    assert np.abs(images.astype(float) - ref).mean() <= 1.0           # within 1/255 mean abs diff
    assert np.allclose(t2i.encode_source(texts[:1]), t2i.encode_source(texts)[:1], atol=1e-6)   # padding differs


def test_residual_and_transfer_match_pytorch(t2i, bundles):
    enc, flow, ae = bundles.standins("text2image")
    x = t2i.translate(["a red square"], num_samples=2, seed=1)
    src, new = ["a red square"] * 2, ["a blue circle"] * 2
    v = t2i.residual(x, src)
    out = t2i.transfer(x, src, new)
    with torch.no_grad():
        xt = torch.from_numpy(x.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
        rv, _ = flow.inverse(ae.encode(xt), enc.encode(src))
        ref = torch_images(ae.decode(flow(rv, enc.encode(new))))
    assert np.abs(v - rv.numpy()).max() <= 1e-4 * np.abs(rv.numpy()).max()
    assert out.shape == x.shape and np.abs(out.astype(float) - ref).mean() <= 1.0
    z = t2i.encode_target(x)                                           # latents work as targets too
    assert np.allclose(t2i.residual(z, src), v, atol=1e-5)
    v2, logdet = t2i.flow_inverse(z, t2i.encode_source(src))
    assert np.allclose(v2, v, atol=1e-5) and logdet.shape == (2,)
    assert t2i.decode_target(z).shape == (2, 16, 16, 3)


def test_batches_are_split_transparently(bundles, t2i):
    small = Pipeline.load(bundles.get("text2image"), max_batch=2)
    texts = ["a", "b c", "a long sentence with many words", "d", "e"]
    a, b = small.translate(texts, num_samples=3, seed=5), t2i.translate(texts, num_samples=3, seed=5)
    assert a.shape == b.shape == (15, 16, 16, 3) and np.abs(a.astype(int) - b).max() <= 1   # padding: float rounding
    x = t2i.translate(texts, seed=2)
    assert np.allclose(small.residual(x, texts), t2i.residual(x, texts), atol=1e-5)


def test_a_text_row_does_not_depend_on_its_batch(t2i):
    texts = ["a", "b c", "a long sentence with many words", "d"]
    v = np.random.default_rng(3).standard_normal((len(texts), t2i.latent_dim), dtype=np.float32)
    together = t2i.encode_source(texts)
    for i, text in enumerate(texts):                      # bit-identical alone and beside texts of other lengths
        assert np.array_equal(t2i.encode_source([text]), together[i:i + 1])
    batch = t2i.flow_forward(v, together)
    assert all(np.array_equal(t2i.flow_forward(v[i:i + 1], together[i:i + 1]), batch[i:i + 1]) for i in range(4))


def test_outputs_go_to_preallocated_buffers(bundles, attrs):
    """Every call writes into the same max-batch buffer of its stage; results never alias it."""
    p = Pipeline.load(bundles.get("attributes"), max_batch=4)
    cond = np.eye(len(ATTRIBUTES), dtype=np.float32)[[0, 1]]
    z1 = p.flow_forward(np.ones((2, p.latent_dim), np.float32), cond)
    keep = z1.copy()
    buffers = dict(p.backend._local.buffers)
    assert buffers[("flow_forward", "z")].shape() == [4, p.latent_dim]
    z2 = p.flow_forward(np.zeros((2, p.latent_dim), np.float32), cond)
    assert p.backend._local.buffers == buffers            # reused, not reallocated
    assert np.array_equal(z1, keep) and not np.array_equal(z1, z2)
    images = p.translate(cond, num_samples=5, seed=1)     # 10 rows: split into 4 + 4 + 2
    assert np.array_equal(images, attrs.translate(cond, num_samples=5, seed=1))


def test_precision_variants(bundles, tmp_path):
    p8 = Pipeline.load(bundles.get("features"), precision="int8")
    assert p8.precisions["flow_forward"] == "int8" and p8.check(repeats=2)["ok"]
    with pytest.raises(PipelineError, match="no fp16 stages"):
        Pipeline.load(bundles.get("features"), precision="fp16")
    from export.bundle import add_fp16_stages
    b = copy_bundle(bundles.get("text2image"), tmp_path / "b")
    add_fp16_stages(b)
    p16 = Pipeline.load(b, precision="fp16", backend="onnxruntime")
    assert set(p16.precisions.values()) == {"fp16"}
    report = p16.check(repeats=2)
    assert report["ok"], report["failures"]
    ref = Pipeline.load(b).translate(["a red square"], num_samples=4, seed=0)
    assert np.abs(p16.translate(["a red square"], num_samples=4, seed=0).astype(float) - ref).mean() <= 2.0


# ---- errors -----------------------------------------------------------------------------------------------

def test_text_input_errors(t2i):
    for bad, msg in (([], "empty list"), (["ok", "  "], r"source\[1\] is empty or whitespace"),
                     ("a string", "single string"), ([3], "not a string"), (np.zeros((1, 32)), "list of strings")):
        with pytest.raises(PipelineError, match=msg):
            t2i.translate(bad)
    with pytest.raises(PipelineError, match="num_samples"):
        t2i.translate(["a"], num_samples=0)
    for t in (0, -1.0, float("nan")):
        with pytest.raises(PipelineError, match="temperature"):
            t2i.translate(["a"], temperature=t)
    with pytest.raises(PipelineError, match="seed"):
        t2i.translate(["a"], seed=-1)


def test_long_text_is_truncated_with_one_warning(bundles):
    p = Pipeline.load(bundles.get("text2image"))
    long = "word " * 100
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = p.translate([long], seed=0)
        p.translate([long + "more"], seed=0)
    assert len([w for w in caught if "truncated" in str(w.message)]) == 1
    assert np.array_equal(a, p.translate(["word " * 40], seed=0))     # only the first 16 tokens count


def test_vector_and_image_input_errors(attrs, feats):
    for bad, msg in (([[1, 0, 1]], r"shape \(N, 5\)"), (np.zeros((0, 5)), "batch of zero"), ([], "empty"),
                     (np.array([["a"] * 5]), "numeric"), (np.full((1, 5), np.nan), "NaN/Inf"),
                     (np.array([[1, 0, 0, 1, np.inf]]), "NaN/Inf"), (np.zeros((1, 5), complex), "numeric")):
        with pytest.raises(PipelineError, match=msg):
            attrs.translate(bad)
    x = attrs.translate(np.eye(5)[:2], seed=0)
    for bad, msg in ((x[:, :8], "16x16 pixels"), (x[..., :1], "3 channels"), (x.astype(np.float32), "uint8"),
                     (x[:0], "N >= 1"), (np.concatenate([x, x[..., :1]], -1), "3 channels")):
        with pytest.raises(PipelineError, match=msg):
            attrs.encode_target(bad)
    with pytest.raises(PipelineError, match="2 rows but source has 1"):
        attrs.residual(x, np.eye(5)[:1])
    with pytest.raises(PipelineError, match="target latents"):
        feats.residual(np.zeros((1, 3), np.float32), np.zeros((1, 4), np.float32))
    with pytest.raises(PipelineError, match=r"cond must have shape \(N, 4\)"):
        feats.flow_forward(np.zeros((1, 8)), np.zeros((1, 5)))
    with pytest.raises(PipelineError, match="has no decoder"):
        feats.decode_target(np.zeros((1, 8)))


def test_image_editing_needs_a_target_encoder(bundles):
    p = Pipeline.load(bundles.get("decoder_only"))
    x = p.translate(np.zeros((1, 3)), seed=0)
    with pytest.raises(PipelineError, match="no target encoder"):
        p.residual(x, np.zeros((1, 3)))
    with pytest.raises(PipelineError, match="no target encoder"):
        p.transfer(x, np.zeros((1, 3)), np.ones((1, 3)))
    with pytest.raises(PipelineError, match="no target encoder"):
        p.encode_target(x)
    assert p.residual(np.zeros((1, 6)), np.zeros((1, 3))).shape == (1, 6)   # latents are fine


def test_bundle_errors(bundles, tmp_path):
    with pytest.raises(PipelineError, match="unknown backend 'cuda'"):
        Pipeline.load(bundles.get("features"), backend="cuda")
    with pytest.raises(PipelineError, match="not a bundle"):
        Pipeline.load(tmp_path)
    b = copy_bundle(bundles.get("features"), tmp_path / "b")
    with pytest.raises(PipelineError, match="no TensorRT engines|tensorrt"):
        Pipeline.load(b, backend="tensorrt")
    m = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**m, "schema_version": 99}))
    with pytest.raises(PipelineError, match=r"bundle schema 99 is newer than this runtime supports \(1\); update"):
        Pipeline.load(b)
    (b / "manifest.json").write_text(json.dumps(m))
    (b / "flow_inverse.onnx").write_bytes(b"not onnx")
    with pytest.raises(PipelineError, match="flow_inverse.onnx' fails its SHA-256"):
        Pipeline.load(b)


# ---- threads, imports ---------------------------------------------------------------------------------

def test_eight_threads_share_one_pipeline(t2i):
    jobs = [(["a red square", "blue circle"][i % 2:], i) for i in range(16)]
    serial = [t2i.translate(texts, num_samples=2, seed=seed) for texts, seed in jobs]
    results, errors = [None] * len(jobs), []

    def work(k):
        try:
            for i in range(k, len(jobs), 8):
                results[i] = t2i.translate(jobs[i][0], num_samples=2, seed=jobs[i][1])
        except Exception as e:       # surfaced by the assert below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(np.array_equal(a, b) for a, b in zip(results, serial))


def test_runtime_runs_with_torch_unimportable(bundles):
    bundle = str(bundles.get("text2image"))
    code = BLOCK_TORCH + (f"import runtime, numpy as np\np = runtime.Pipeline.load({bundle!r})\n"
                          "x = p.translate(['a small red circle'], num_samples=2, seed=0)\n"
                          "assert x.shape == (2, 16, 16, 3)\nimport torch\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "ImportError: blocked in this test: torch" in p.stderr      # got through translate, then `import torch`


def test_runtime_imports_only_allowed_modules():
    allowed = {"numpy", "onnxruntime", "tokenizers", "PIL", "tensorrt", "pycuda", "cuda", "runtime"}
    # serve.py imports PyTriton (the [serve] extra) inside serve() only; the test below keeps it out of `import`
    also = {"serve.py": {"pytriton"}}
    for path in Path(runtime.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                top = name.split(".")[0]
                assert top in allowed | also.get(path.name, set()) or top in sys.stdlib_module_names, \
                    f"{path.name} imports {name}"


def test_importing_the_runtime_and_its_cli_loads_no_serving_stack():
    code = ("import sys, runtime, runtime.serve, runtime.__main__\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pytriton', 'tritonclient', 'torch'}))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stderr


# ---- CLI ------------------------------------------------------------------------------------------------

def test_cli_translate_edit_check_info(bundles, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert cli(["translate", str(bundles.get("text2image")), "a small red circle", "two squares", "--num-samples",
                "3", "--seed", "0", "--out", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape == (32, 48, 3)
    ab = str(bundles.get("attributes"))
    src = json.dumps([{n: int(i == 0) for i, n in enumerate(ATTRIBUTES)}])
    assert cli(["translate", ab, "--source-json", src, "--seed", "1", "--out", str(tmp_path / "a.png")]) == 0
    attrs_file = tmp_path / "attrs.json"
    attrs_file.write_text(json.dumps({n: int(i == 0) for i, n in enumerate(ATTRIBUTES)}))
    assert cli(["edit", ab, "--image", str(tmp_path / "a.png"), "--attributes-json", str(attrs_file), "--set",
                "color_blue=1", "--set", "color_red=0", "--out", str(tmp_path / "e.png")]) == 0
    edited = np.asarray(Image.open(tmp_path / "e.png"))
    p = Pipeline.load(ab)
    x = np.asarray(Image.open(tmp_path / "a.png"))[None]
    new = np.array([[0, 1, 0, 0, 0]], np.float32)
    assert np.array_equal(edited, p.transfer(x, np.eye(5)[:1], new)[0])
    capsys.readouterr()
    assert cli(["check", str(bundles.get("text2image")), "--json", "--repeats", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["tokenizer_match"] and report["roundtrip_rel"] <= 1e-5
    assert set(report["latency_batch1_ms"]) >= {"flow_forward", "source_encoder", "translate_end_to_end"}
    assert cli(["check", str(bundles.get("features")), "--repeats", "2"]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli(["info", ab]) == 0 and "attribute_names" in capsys.readouterr().out


@pytest.mark.parametrize("args, msg", [
    (["translate", "{text2image}"], "give the text"),
    (["translate", "{text2image}", "a", "--num-samples", "0", "--out", "x.png"], "num_samples"),
    (["translate", "{text2image}", "   ", "--out", "x.png"], "empty or whitespace"),
    (["translate", "{attributes}", "--source-json", '[{"color_red": 1}]'], "missing"),
    (["edit", "{attributes}", "--image", "{attributes}/nope.png", "--out", "e.png"], "--attributes-json"),
    (["edit", "{features}", "--image", "x.png", "--out", "e.png"], "attribute bundle"),
    (["translate", "/nonexistent", "a"], "not a bundle"),
    (["check", "{features}", "--backend", "nope"], "invalid choice"),
])
def test_cli_errors_are_one_line_exit_2(bundles, capsys, args, msg):
    for name in ("text2image", "attributes", "features"):
        args = [a.replace("{" + name + "}", str(bundles.get(name))) for a in args]
    assert cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0]


def test_cli_subprocess(bundles, tmp_path):
    b = copy_bundle(bundles.get("features"), tmp_path / "b")
    shutil.rmtree(b / "validation")
    p = subprocess.run([sys.executable, "-m", "runtime", "info", str(b)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and "task features" in p.stdout
    p = subprocess.run([sys.executable, "-m", "runtime", "translate", str(b), "--source-json", "[[0, 0, 0, 0]]"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "validation/cond.npy' is missing" in p.stderr


# ---- fused graphs (one graph per chain) --------------------------------------------------------------------

def _roles_run(p: Pipeline) -> list[str]:
    """Record which stages a pipeline's backend runs."""
    seen, run = [], p.backend.run
    p.backend.run = lambda role, feeds, host=True: (seen.append(role), run(role, feeds, host))[1]
    return seen


@pytest.mark.parametrize("name", ["text2image", "attributes"])
def test_fused_graphs_are_used_and_match_the_chained_stages(bundles, name):
    b = bundles.get(name)
    fused, chained = Pipeline.load(b), Pipeline.load(b, fused=False)
    assert {"translate", "transfer"} <= set(fused.stages) and not {"translate", "transfer"} & set(chained.stages)
    eye = np.eye(len(ATTRIBUTES), dtype=np.float32)
    source = ["a red square", "two blue circles"] if name == "text2image" else eye[[0, 2]]
    new = ["a blue square", "a red circle"] if name == "text2image" else eye[[1, 3]]
    seen = _roles_run(fused)
    first = fused.translate(source[:1], seed=3)
    assert seen == ["translate"]
    ref = chained.translate(source[:1], seed=3)
    assert first.shape == ref.shape and np.abs(first.astype(int) - ref).max() <= 1
    seen.clear()
    images = fused.translate(source, seed=3)             # texts: Φ runs one row per call, so several are chained
    assert ("translate" in seen) == (name != "text2image")
    seen.clear()
    edited = fused.transfer(images, source, new)
    assert seen.count("transfer") == 1 and "flow_inverse" not in seen
    assert np.abs(edited.astype(int) - chained.transfer(images, source, new)).max() <= 1
    seen.clear()
    fused.translate(source, num_samples=2, seed=3)        # several samples: Φ once per source, chained
    assert "translate" not in seen and "flow_forward" in seen
    report = fused.check(repeats=1)
    assert report["ok"], report["failures"]
    assert set(report["fused_parity_max_rel"]) == {"translate", "transfer"}
    assert max(report["fused_parity_max_rel"].values()) <= 1e-4 and report["v_batch_dependence_max_abs"] <= 1e-5
    assert "translate_chained_end_to_end" in report["latency_batch1_ms"]
    assert chained.check(repeats=1)["fused_parity_max_rel"] == {}


def test_chained_stages_when_the_bundle_has_no_fused_graph_at_that_precision(bundles, tmp_path):
    from export.bundle import add_fp16_stages, write_manifest
    from runtime.manifest import read_manifest, select_stages
    b = copy_bundle(bundles.get("attributes"), tmp_path / "b")
    add_fp16_stages(b)
    m = read_manifest(b)
    assert "translate.fp16" not in m["stages"] and "translate" not in select_stages(m, "fp16")
    assert set(Pipeline.load(b, precision="fp16").precisions.values()) == {"fp16"}
    for name in ("translate", "transfer"):
        (b / m["stages"].pop(name)["file"]).unlink()
    write_manifest(b, m)
    p = Pipeline.load(b)
    assert not {"translate", "transfer"} & set(p.stages)
    seen = _roles_run(p)
    cond = np.eye(len(ATTRIBUTES), dtype=np.float32)[[0]]
    assert np.array_equal(p.translate(cond, seed=1), Pipeline.load(bundles.get("attributes")).translate(cond, seed=1))
    assert seen == ["flow_forward", "target_decoder"]


def test_int8_bundle_has_int8_fused_graphs_and_passes_check(bundles, tmp_path):
    from export.onnx import export_bundle, model_samples
    from train.experts.base import Experts
    _, flow, ae = bundles.standins("attributes")
    cond, z = (t.numpy() for t in model_samples(flow, 64))
    m = export_bundle(flow, Experts(target_encoder=ae, target_decoder=ae), tmp_path / "b", task="attributes",
                      cond=cond, z=z, origin="test", source={"run": None}, int8=True, int8_min_speedup=0)
    assert {"translate.int8", "transfer.int8"} <= set(m["stages"])
    assert m["stages"]["translate.int8"]["fused_from"] == ["flow_forward.int8", "target_decoder"]
    p = Pipeline.load(tmp_path / "b", precision="int8")
    assert p.precisions["translate"] == "int8" and p.precisions["flow_forward"] == "int8"
    report = p.check(repeats=1)
    assert report["ok"], report["failures"]
    assert abs(report["nll_drift_nats_per_dim"]) <= 0.003 and report["v_batch_dependence_max_abs"] <= 1e-5
    assert report["roundtrip_rel"] <= 1e-4
