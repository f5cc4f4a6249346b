"""Per-channel equalization of a flow graph's MatMul inputs before int8 (exact in fp32).

    equalize(models, feeds, alpha) -> (models, report)

Why: activations are quantized with ONE scale per tensor (what TensorRT's explicit quantization takes),
so a tensor whose channels span very different ranges spends most of int8's 255 steps on a few loud
channels and rounds the quiet ones to a handful of levels. Moving range from the activation into the
weight that multiplies it, channel by channel, costs nothing in fp32 and lets the per-channel int8
weights absorb it:

  * hidden layers, x -> MatMul(W1) + b1 -> LeakyReLU -> MatMul(W2): LeakyReLU is positively homogeneous,
    so dividing hidden channel j's column of W1 and b1[j] by s_j and multiplying row j of W2 by s_j is
    exact (cross-layer equalization, Nagel et al. 2019, "Data-Free Quantization", Sec. 4.1);
  * any other MatMul input x (a subnetwork's first layer, fed [x_half ; h]; the condition whitening; the
    embedder's first layer): an explicit fp32 Mul by 1/s before the MatMul and row j of W multiplied by
    s_j (the SmoothQuant form, Xiao et al. 2023).

Centering (`center`): a LeakyReLU output is almost all >= 0, so a symmetric (zero point 0, as TensorRT
needs) scale wastes half of int8 on values that never occur. Subtracting each channel's midpoint m_j
(an fp32 Add before the quantized MatMul) and adding m W to the MatMul's bias is exact and gives the
int8 grid the whole range: the effect of asymmetric uint8 activations, kept TensorRT-compatible.

s_j = a_j^alpha / w_j^(1 - alpha), with a_j the channel's largest |x| (half its width when centred) over
the calibration data of BOTH directions and w_j the largest |W[j, :]| (SmoothQuant's migration
strength). Both directions get the same s and m from the same union of ranges and the same initializer
names, so the int8 weights and scales stay identical in τ and τ⁻¹.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

S_MIN, S_MAX = 1e-3, 1e3     # a dead channel (a_j = 0) must not zero its weight row; clip s


def _consts(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


def _weighted_inputs(model: onnx.ModelProto) -> dict[str, list[str]]:
    """activation tensor -> the constant MatMul weights it is multiplied by."""
    consts = _consts(model)
    out: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] in consts and n.input[0] not in consts:
            out.setdefault(n.input[0], []).append(n.input[1])
    return out


def channel_ranges(model: onnx.ModelProto, tensors: list[str], feeds: dict[str, np.ndarray],
                   batch: int = 256) -> dict[str, np.ndarray]:
    """(2, channels): min and max per channel (last axis) of each named tensor over the feeds."""
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors
                          if t not in have)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(m, str(path))
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    n = len(next(iter(feeds.values())))
    out = {t: None for t in tensors}
    for i in range(0, n, batch):
        res = sess.run(tensors, {k: np.ascontiguousarray(x[i:i + batch]) for k, x in feeds.items()})
        for t, r in zip(tensors, res):
            r = r.reshape(-1, r.shape[-1])
            a = np.stack([r.min(0), r.max(0)])
            out[t] = a if out[t] is None else np.stack([np.minimum(out[t][0], a[0]), np.maximum(out[t][1], a[1])])
    return out


def _hidden_producer(model: onnx.ModelProto, x: str) -> tuple[str, str] | None:
    """(W1, b1) if x = LeakyRelu(MatMul(., W1) + b1) with constant W1, b1 and x's only use is one MatMul
    (then the scale can be folded into W1, b1 without an extra op)."""
    by_out = {o: n for n in model.graph.node for o in n.output}
    uses = sum(x in n.input for n in model.graph.node)
    consts = _consts(model)
    act = by_out.get(x)
    if uses != 1 or act is None or act.op_type != "LeakyRelu":
        return None
    add = by_out.get(act.input[0])
    if add is None or add.op_type != "Add":
        return None
    mm_out, b = (add.input[0], add.input[1]) if add.input[1] in consts else (add.input[1], add.input[0])
    mm = by_out.get(mm_out)
    if b not in consts or mm is None or mm.op_type != "MatMul" or mm.input[1] not in consts:
        return None
    if sum(mm_out in n.input for n in model.graph.node) != 1 or \
            sum(act.input[0] in n.input for n in model.graph.node) != 1:
        return None
    return mm.input[1], b


def scales(models: dict[str, onnx.ModelProto], feeds: dict[str, dict[str, np.ndarray]],
           alpha: float, center: bool) -> dict[tuple[str, ...], tuple[np.ndarray, np.ndarray | None]]:
    """(s, m) per MatMul input, keyed by the weights it feeds (the same key in both directions): the
    channel scale s and, with `center`, the per-channel midpoint m of x / s (None where not centered)."""
    seen_by_key: dict[tuple[str, ...], np.ndarray] = {}
    for role, model in models.items():
        wi = _weighted_inputs(model)
        seen = channel_ranges(model, list(wi), feeds[role])
        for x, weights in wi.items():
            key, r = tuple(sorted(weights)), seen[x]
            if key in seen_by_key:
                r = np.stack([np.minimum(seen_by_key[key][0], r[0]), np.maximum(seen_by_key[key][1], r[1])])
            seen_by_key[key] = r
    model = next(iter(models.values()))
    consts = _consts(model)
    out = {}
    for key, (lo, hi) in seen_by_key.items():
        a = (hi - lo) / 2 if center else np.maximum(-lo, hi)
        w = np.max([np.abs(numpy_helper.to_array(consts[k])).max(1) for k in key], axis=0)
        a = np.maximum(a, 1e-8 * max(a.max(), 1e-30))
        w = np.maximum(w, 1e-8 * max(w.max(), 1e-30))
        if alpha is None:
            s = np.ones_like(a, dtype=np.float32)
        else:
            s = a ** alpha / w ** (1 - alpha)
            s = s / np.exp(np.mean(np.log(s)))       # a constant factor changes nothing; keep s near 1
            s = np.clip(s, S_MIN, S_MAX).astype(np.float32)
        out[key] = (s, ((lo + hi) / 2 / s).astype(np.float32) if center else None)
    return out


def _bias_add(model: onnx.ModelProto, matmul_out: str) -> str | None:
    """The constant bias b of Add(matmul_out, b) when that Add is matmul_out's only use."""
    consts = _consts(model)
    uses = [n for n in model.graph.node if matmul_out in n.input]
    if len(uses) != 1 or uses[0].op_type != "Add":
        return None
    other = [i for i in uses[0].input if i != matmul_out]
    return other[0] if len(other) == 1 and other[0] in consts else None


def apply(model: onnx.ModelProto, by_key: dict, fold: bool = True) -> tuple[onnx.ModelProto, int]:
    """The equalized copy of `model` (the same function in fp32); also the number of fp32 nodes inserted."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    consts = _consts(m)
    arrays = {k: numpy_helper.to_array(v).copy() for k, v in consts.items()}
    changed: set[str] = set()
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    index = {o: i for i, n in enumerate(m.graph.node) for o in n.output}
    matmuls = {n.input[1]: n for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in consts}
    inserted = 0
    for x, weights in _weighted_inputs(m).items():
        if tuple(sorted(weights)) not in by_key:
            continue
        s, mid = by_key[tuple(sorted(weights))]
        biases = [_bias_add(m, matmuls[w].output[0]) for w in weights]
        if any(b is None for b in biases):
            mid = None                        # nowhere to put the centering's correction: do not center
        for w, b in zip(weights, biases):
            arrays[w] = arrays[w] * s[:, None]
            if mid is not None:               # (x/s - mid) W' + (b + mid W') = x W + b
                arrays[b] = arrays[b] + mid @ arrays[w]
                changed.add(b)
            changed.add(w)
        hidden = _hidden_producer(m, x) if fold else None
        name, y, ops = "eq." + "+".join(sorted(weights)), x, []
        if hidden is not None:                # LeakyReLU(y / s) = LeakyReLU(y) / s for s > 0
            w1, b1 = hidden
            arrays[w1] = arrays[w1] / s[None, :]
            arrays[b1] = arrays[b1] / s
            changed.update((w1, b1))
        else:
            m.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), name + ".inv_scale"))
            ops.append(helper.make_node("Mul", [y, name + ".inv_scale"], [name + ".scaled"], name=name + ".scale"))
            y = name + ".scaled"
        if mid is not None:
            m.graph.initializer.append(numpy_helper.from_array((-mid).astype(np.float32), name + ".neg_mid"))
            ops.append(helper.make_node("Add", [y, name + ".neg_mid"], [name + ".centered"], name=name + ".center"))
            y = name + ".centered"
        if not ops:
            continue
        for w in weights:
            matmuls[w].input[0] = y
        new_nodes.setdefault(index.get(x, -1), []).extend(ops)   # right after x's producer (-1: graph input)
        inserted += len(ops)
    for init in m.graph.initializer:
        if init.name in changed:
            init.CopyFrom(numpy_helper.from_array(arrays[init.name].astype(np.float32), init.name))
    nodes = list(new_nodes.get(-1, []))
    for i, n in enumerate(m.graph.node):
        nodes.append(n)
        nodes.extend(new_nodes.get(i, []))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m, inserted


def equalize(models: dict[str, onnx.ModelProto], feeds: dict[str, dict[str, np.ndarray]], alpha: float | None,
             center: bool = False, fold: bool = True) -> tuple[dict[str, onnx.ModelProto], dict]:
    """Both directions equalized with one set of scales and midpoints (see module doc); alpha None: no
    scaling (centering only)."""
    by_key = scales(models, feeds, alpha, center)
    out, report = {}, {"alpha": alpha, "center": center, "inputs": len(by_key)}
    for role, model in models.items():
        out[role], report[f"fp32_nodes_added_{role}"] = apply(model, by_key, fold)
    return out, report
