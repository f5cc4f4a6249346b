"""ONNX external data (graphs over protobuf's 2 GB limit, e.g. the paper-size flows): export writes the weights
to `<graph>.data`, the manifest hashes that file, the runtime loads it and refuses a missing or changed one,
and the benchmark's cost model sizes it without loading it. Small graphs are forced to use it."""
import json

import numpy as np
import onnx
import pytest
import torch

from bench.cost import graph_cost
from export import bundle as export_bundle_mod
from export.bundle import external_files, save_graph, stage_entry
from export.onnx import export_bundle
from runtime import Pipeline, PipelineError
from train.core.flow import ConditionalINN, FlowConfig
from train.experts.base import Experts


@pytest.fixture(scope="module")
def external_bundle(tmp_path_factory):
    """A tiny vector-source bundle exported with every graph's weights forced into external data."""
    torch.manual_seed(0)
    model = ConditionalINN(FlowConfig(target_dim=8, cond_shape=(5,), embed_dim=8, embed_hidden=16, num_blocks=2,
                                      hidden=16)).eval()
    for p in model.parameters():                       # not the identity that zero-initialised couplings start as
        p.data.add_(0.05 * torch.randn_like(p))
    cond = torch.randn(32, 5).numpy()
    with torch.no_grad():
        z = model(torch.randn(32, 8), torch.from_numpy(cond)).numpy()
    out = tmp_path_factory.mktemp("ext") / "bundle"
    mp = pytest.MonkeyPatch()
    mp.setattr(export_bundle_mod, "EXTERNAL_DATA_BYTES", 0)     # every graph counts as "too large"
    try:
        export_bundle(model, Experts(), out, task="features", cond=cond, z=z, origin="test", source={})
    finally:
        mp.undo()
    return out, model, cond, z


def test_export_writes_hashes_and_loads_external_data(external_bundle):
    out, model, cond, z = external_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    for role in ("flow_forward", "flow_inverse"):
        entry = manifest["stages"][role]
        assert list(entry["external_data"]) == [f"{role}.onnx.data"]
        assert (out / f"{role}.onnx.data").stat().st_size > 0
        assert external_files(out / f"{role}.onnx") == [f"{role}.onnx.data"]
    p = Pipeline.load(out, backend="onnxruntime")
    v = np.random.default_rng(0).standard_normal((4, 8), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(v), torch.from_numpy(cond[:4])).numpy()
    np.testing.assert_allclose(p.flow_forward(v, cond[:4]), ref, rtol=1e-4, atol=1e-5)


def test_runtime_refuses_missing_or_changed_external_data(external_bundle, tmp_path):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(external_bundle[0], out)
    data = out / "flow_inverse.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 1
    data.write_bytes(bytes(blob))
    with pytest.raises(PipelineError, match="flow_inverse.onnx.data' fails its SHA-256"):
        Pipeline.load(out, backend="onnxruntime")
    data.unlink()
    with pytest.raises(PipelineError, match="flow_inverse.onnx.data' is missing"):
        Pipeline.load(out, backend="onnxruntime")


def test_forced_external_small_graph_entry_and_cost(external_bundle, tmp_path):
    src = external_bundle[0] / "flow_forward.onnx"
    model = onnx.load(str(src))                                   # external data loaded into the proto
    inline, forced = tmp_path / "inline.onnx", tmp_path / "forced.onnx"
    save_graph(model, inline, external=False)
    onnx.save_model(onnx.load(str(inline)), str(forced), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="forced.onnx.data", size_threshold=0)
    assert "external_data" not in stage_entry(tmp_path, "inline.onnx", "flow_forward", "fp32")
    entry = stage_entry(tmp_path, "forced.onnx", "flow_forward", "fp32")
    assert list(entry["external_data"]) == ["forced.onnx.data"]
    assert len(entry["external_data"]["forced.onnx.data"]) == 64
    a, b = graph_cost(str(inline), 8), graph_cost(str(forced), 8)
    assert a["weight_bytes"] == b["weight_bytes"] > 0 and a["matmul_flops"] == b["matmul_flops"] > 0
