"""`python -m export.triton`: every config.pbtxt parses as Triton's ModelConfig, stage tensors match the ONNX graphs,
ensembles pass the wiring rules Triton's loader applies (core/src/ensemble_scheduler/ensemble_utils.cc), and the
ensembles, run step by step on onnxruntime with the client recipe, reproduce runtime.Pipeline byte for byte.
Structural: no GPU Triton here to serve the repository."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from test_export import BLOCK_TORCH, ROOT

from export.triton import main as export_triton
from export.triton import parse_configs, replay_ensemble, write_repository
from runtime import Pipeline
from runtime.manifest import MANIFEST, sha256_file

text_format = pytest.importorskip("google.protobuf.text_format")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                  onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.UINT8: "TYPE_UINT8"}
TASKS = ("text2image", "attributes", "features")


@pytest.fixture(scope="module")
def task_bundles(bundles):
    """Task name -> bundle folder, from the session's small bundles (conftest.py)."""
    return {task: bundles.get(task) for task in TASKS}


@pytest.fixture(scope="module")
def repo(task_bundles, tmp_path_factory):
    out = tmp_path_factory.mktemp("model_repository")
    models = {task: write_repository(path, out, max_batch=16, delay_us=500, instances=2) for task, path in
              task_bundles.items()}
    return out, models, parse_configs(out, [m for names in models.values() for m in names])


def graph_tensors(values) -> dict[str, tuple[str, list]]:
    """name -> (Triton type, dims without the batch axis; symbolic dims as -1) from an ONNX graph's I/O."""
    out = {}
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        assert dims and dims[0] == -1, f"{v.name}: the batch axis must be dynamic"
        out[v.name] = (ONNX_TO_TRITON[t.elem_type], dims[1:])
    return out


def config_tensors(tensors) -> dict[str, tuple[str, list]]:
    return {t.name: (model_config_pb2.DataType.Name(t.data_type),
                     list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)) for t in tensors}


def test_models_written_per_bundle(repo, task_bundles):
    out, models, configs = repo
    assert models["text2image"] == ["text2image_flow_forward", "text2image_flow_inverse", "text2image_source_encoder",
                                    "text2image_target_decoder", "text2image_target_encoder", "text2image",
                                    "text2image_edit"]
    assert set(models["attributes"]) == {"attributes", "attributes_edit", "attributes_flow_forward",
                                         "attributes_flow_inverse", "attributes_target_decoder",
                                         "attributes_target_encoder"}
    assert set(models["features"]) == {"features", "features_flow_forward", "features_flow_inverse"}   # no Λ, no edit
    assert (out / "text2image" / "tokenizer.json").read_bytes() == \
        (task_bundles["text2image"] / "tokenizer/tokenizer.json").read_bytes()
    info = json.loads((out / "text2image" / "client.json").read_text())
    assert info["tokenizer"]["max_tokens"] == 16 and info["latent_dim"] == 6
    assert info["default_temperature"] == 1.0          # the test bundle's manifest `sampling` (no measured choice)
    assert set(info["models"]) == {"text2image", "text2image_edit"}


def test_stage_configs_match_the_onnx_graphs(repo, task_bundles):
    out, models, configs = repo
    for task, names in models.items():
        manifest = json.loads((task_bundles[task] / MANIFEST).read_text())
        for name in names:
            cfg = configs[name]
            assert cfg.name == name and cfg.max_batch_size == 16
            if cfg.platform == "ensemble":
                continue
            role = name[len(task) + 1:]
            file = out / name / "1" / "model.onnx"
            assert cfg.platform == "onnxruntime_onnx" and sha256_file(file) == manifest["stages"][role]["sha256"]
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
            gpu = model_config_pb2.ModelInstanceGroup.KIND_GPU
            assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, gpu)]
            graph = onnx.load(str(file)).graph
            assert config_tensors(cfg.input) == graph_tensors(graph.input), name
            assert config_tensors(cfg.output) == graph_tensors(graph.output), name


def test_ensembles_pass_tritons_wiring_rules(repo):
    """What Triton checks when it loads an ensemble: every step input mapped to a known tensor of the same type
    and shape, every mapped name a real input/output, composing max_batch_size >= the ensemble's, and every
    ensemble output produced."""
    check_wiring(repo[2])


def check_wiring(configs: dict) -> None:
    """Triton's ensemble loading checks on parsed configs (name -> ModelConfig), as in the test above."""
    for name, cfg in configs.items():
        if cfg.platform != "ensemble":
            continue
        tensors = config_tensors(cfg.input)
        for step in cfg.ensemble_scheduling.step:
            sub = configs[step.model_name]
            assert sub.max_batch_size >= cfg.max_batch_size
            ins, outs = config_tensors(sub.input), config_tensors(sub.output)
            assert set(step.input_map) == set(ins), (name, step.model_name)
            for key, tensor in step.input_map.items():
                assert tensors[tensor] == ins[key], (name, step.model_name, key)       # known already: in order
            for key, tensor in step.output_map.items():
                assert key in outs and tensor not in tensors, (name, step.model_name, key)
                tensors[tensor] = outs[key]
        for key, spec in config_tensors(cfg.output).items():
            assert tensors.get(key) == spec, (name, key)


def to_uint8(y: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((y + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def test_ensembles_reproduce_the_pipeline(repo, task_bundles):
    out, models, configs = repo
    from tokenizers import Tokenizer
    p = Pipeline.load(task_bundles["text2image"])
    info = json.loads((out / "text2image" / "client.json").read_text())
    tok = Tokenizer.from_file(str(out / "text2image" / info["tokenizer"]["file"]))
    tok.enable_truncation(max_length=info["tokenizer"]["max_tokens"])
    enc = tok.encode("a red square")
    ids, mask = np.array([enc.ids], np.int64), np.array([enc.attention_mask], np.int64)
    v = np.random.default_rng(5).standard_normal((1, 6), dtype=np.float32) * np.float32(0.8)
    y = replay_ensemble(out, configs["text2image"], {"input_ids": ids, "attention_mask": mask, "v": v})["image"]
    image = to_uint8(y)
    assert np.array_equal(image, p.translate(["a red square"], seed=5, temperature=0.8))
    enc2 = tok.encode("a blue circle")
    x = (image.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)
    y = replay_ensemble(out, configs["text2image_edit"], {
        "image": x, "input_ids": ids, "attention_mask": mask, "new_input_ids": np.array([enc2.ids], np.int64),
        "new_attention_mask": np.array([enc2.attention_mask], np.int64)})["edited_image"]
    assert np.array_equal(to_uint8(y), p.transfer(image, ["a red square"], ["a blue circle"]))
    f = Pipeline.load(task_bundles["features"])
    cond = np.load(task_bundles["features"] / "validation/cond.npy")[:3]
    v = np.random.default_rng(1).standard_normal((3, 8), dtype=np.float32)
    z = replay_ensemble(out, configs["features"], {"cond": cond, "v": v})["z"]
    assert np.array_equal(z, f.translate(cond, seed=1))


def test_int8_and_tensorrt_variants(task_bundles, tmp_path):
    names = write_repository(task_bundles["features"], tmp_path / "r8", precision="int8", kind="cpu")
    cfg = parse_configs(tmp_path / "r8", names)
    manifest = json.loads((task_bundles["features"] / MANIFEST).read_text())
    assert sha256_file(tmp_path / "r8/features_flow_forward/1/model.onnx") == \
        manifest["stages"]["flow_forward.int8"]["sha256"]
    assert cfg["features_flow_forward"].instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    with pytest.raises(ValueError, match="no TensorRT plans for .*python -m export.trt --bundle"):
        write_repository(task_bundles["features"], tmp_path / "rt", backend="tensorrt")
    # a bundle as export.trt leaves it (plan bytes stand in: nothing here deserializes them)
    b = tmp_path / "b"
    subprocess.run(["cp", "-r", str(task_bundles["features"]), str(b)], check=True)
    plans = {}
    for name in ("flow_forward", "flow_inverse"):
        (b / f"{name}.plan").write_bytes(name.encode() * 100)
        plans[name] = {"file": f"{name}.plan", "sha256": sha256_file(b / f"{name}.plan"), "min_batch": 1,
                       "opt_batch": 8, "max_batch": 32, "seq": None, "workspace_gb": 1}
    (b / MANIFEST).write_text(json.dumps({**manifest, "tensorrt": {"version": "10.0", "plans": plans}}))
    names = write_repository(b, tmp_path / "rt", backend="tensorrt", max_batch=64)
    cfg = parse_configs(tmp_path / "rt", names)
    assert cfg["features_flow_forward"].platform == "tensorrt_plan" and cfg["features"].max_batch_size == 32
    assert (tmp_path / "rt/features_flow_inverse/1/model.plan").read_bytes() == b"flow_inverse" * 100


def test_cli_without_torch_and_its_errors(task_bundles, tmp_path, capsys):
    code = BLOCK_TORCH + ("import sys\nfrom export.triton import main\n"
                          f"sys.exit(main(['--bundle', {str(task_bundles['attributes'])!r}, '--out', "
                          f"{str(tmp_path / 'r')!r}]))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "wrote 6 models" in p.stdout and "parses as Triton's ModelConfig" in p.stdout, \
        p.stderr
    assert export_triton(["--bundle", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a bundle" in err[0]
    assert export_triton(["--bundle", str(task_bundles["text2image"]), "--out", str(tmp_path / "r"),
                          "--precision", "fp16"]) == 2
    assert "no fp16 stages" in capsys.readouterr().err
