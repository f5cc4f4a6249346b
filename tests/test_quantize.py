"""export.equalize (per-channel equalization before int8) and the finer int8 tensor groups of export.quantize,
on a small flow exported here (no bundle needed)."""
import numpy as np
import onnx
import pytest
import torch

from export.bundle import gemm_to_matmul, session
from export.equalize import channel_ranges, equalize
from export.graph import FlowStage, export_graph
from export.quantize import weight_groups
from runtime.manifest import max_rel
from tests.test_export import tiny_flow


@pytest.fixture(scope="module")
def flow_graphs(tmp_path_factory):
    """The MatMul-form τ and τ⁻¹ of a small whitened flow, and feeds for both (real-looking pairs)."""
    tmp = tmp_path_factory.mktemp("eq")
    flow = tiny_flow(6, (8,), whiten=1.0)
    torch.manual_seed(1)
    cond = (torch.randn(256, 8) * torch.linspace(0.1, 4, 8)).numpy()      # channels of very different ranges
    z = (torch.randn(256, 6) * 2 + 1).numpy()
    models = {}
    for role, inverse in (("flow_forward", False), ("flow_inverse", True)):
        path = tmp / f"{role}.onnx"
        export_graph(FlowStage(flow, inverse), (torch.from_numpy(z[:3]), torch.from_numpy(cond[:3])), path,
                     ("z", "cond") if inverse else ("v", "cond"), ("v", "logdet") if inverse else ("z",), 17)
        models[role] = gemm_to_matmul(onnx.load(str(path)))
    v = session(tmp / "flow_inverse.onnx").run(None, {"z": z, "cond": cond})[0]
    feeds = {"flow_inverse": {"z": z, "cond": cond}, "flow_forward": {"v": v, "cond": cond}}
    return tmp, models, feeds


def _run(tmp, model, name, feeds):
    onnx.save(model, str(tmp / name))
    return session(tmp / name).run(None, feeds)


@pytest.mark.parametrize("alpha,center", [(0.8, True), (1.0, False), (None, True)])
def test_equalization_leaves_the_fp32_flow_unchanged(flow_graphs, alpha, center):
    """Scaling hidden channels through LeakyReLU, the explicit Mul / centering Add before the other MatMul inputs,
    and the bias corrections are exact up to float rounding, in both directions."""
    tmp, models, feeds = flow_graphs
    eq, report = equalize(models, feeds, alpha, center)
    for role in models:
        ref = _run(tmp, models[role], f"{role}.ref.onnx", feeds[role])
        got = _run(tmp, eq[role], f"{role}.eq.onnx", feeds[role])
        for a, b in zip(got, ref):
            assert max_rel(a, b) < 1e-5
    assert report["fp32_nodes_added_flow_inverse"] > 0
    a = {i.name: onnx.numpy_helper.to_array(i) for i in models["flow_inverse"].graph.initializer}
    b = {i.name: onnx.numpy_helper.to_array(i) for i in eq["flow_inverse"].graph.initializer}
    assert any(not np.array_equal(a[k], b[k]) for k in a)          # it did change the weights / biases


def test_equalization_gives_both_directions_the_same_weights(flow_graphs):
    """One set of scales from the union of both directions' ranges: a weight is equalized alike in τ and τ⁻¹
    (else their int8 weights and scales could not be identical)."""
    _, models, feeds = flow_graphs
    eq, _ = equalize(models, feeds, 0.8, True)
    fwd = {i.name: onnx.numpy_helper.to_array(i) for i in eq["flow_forward"].graph.initializer}
    inv = {i.name: onnx.numpy_helper.to_array(i) for i in eq["flow_inverse"].graph.initializer}
    shared = [k for k in fwd.keys() & inv.keys() if k.endswith("_kn") or k.startswith("eq.")]
    assert shared and all(np.array_equal(fwd[k], inv[k]) for k in shared)


def test_full_equalization_evens_out_channel_ranges(flow_graphs):
    """alpha = 1 with centering: every channel of every MatMul input spans the same width (up to the clip
    of s), where the raw graph's channels differ by orders of magnitude. That is what lets one per-tensor
    int8 scale serve them all."""
    _, models, feeds = flow_graphs
    eq, _ = equalize(models, feeds, 1.0, True)

    def spreads(model):
        inputs = sorted({n.input[0] for n in model.graph.node if n.op_type == "MatMul"
                         and n.input[1] in {i.name for i in model.graph.initializer}})
        r = channel_ranges(model, inputs, feeds["flow_inverse"])
        return [float((x[1] - x[0]).max() / max((x[1] - x[0]).min(), 1e-12)) for x in r.values()]

    before, after = spreads(models["flow_inverse"]), spreads(eq["flow_inverse"])
    assert max(before) > 10 and max(after) < 1.01


def test_int8_groups_split_each_block_into_first_hidden_and_last_layers(flow_graphs):
    _, models, _ = flow_graphs
    groups = weight_groups(models["flow_inverse"])
    kinds = {g.rsplit(".", 1)[-1] for g in groups.values() if g.startswith("block.")}
    assert kinds == {"in", "hidden", "out"} and {"whitening", "embedder"} <= set(groups.values())
    assert all(g.endswith(".out") for w, g in groups.items() if ".st.4." in w)
