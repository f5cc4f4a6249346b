"""What one call of a stage must move and compute, counted from its ONNX graph at a given batch.

  weight_bytes      initializers and Constant nodes (int8 graphs: int8 weights + scales + zero points);
                    external data (graphs over 2 GB) is sized from the tensors' dims, never loaded
  activation_bytes  graph inputs plus every node output, sizes from shape inference with the batch (and
                    sequence length) fixed: onnxruntime's symbolic shape inference, onnx's own (with data
                    propagation) as fallback; tensors whose shape stays unknown are counted in `unknown`
  matmul_flops      MatMul / Gemm / MatMulInteger / DynamicQuantizeMatMul: 2·M·N·K (batched: 2·|out|·K);
                    Conv: 2·N·Cout·Hout·Wout·Cin/groups·kh·kw; ConvTranspose: 2·N·Cin·Hin·Win·Cout/groups·kh·kw
  elementwise_flops every other node: 1 flop per output element (reported, not used in the floor; the
                    bytes of those tensors are in activation_bytes already)
A DequantizeLinear of a constant weight (static QDQ graphs) is not an activation: onnxruntime fuses it
into the int8 kernel that reads the int8 weight, so its fp32 output is never materialised.
All activations are counted as if they went to memory: at small sizes they stay in cache, so the memory
floor overstates what must reach DRAM and is conservative (a run can beat it).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

MATMUL_OPS = {"MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "FusedMatMul"}
NO_FLOP_OPS = {"Constant", "Shape", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Gather", "Slice",
               "Concat", "Transpose", "Expand", "ConstantOfShape", "Cast", "Split"}


def _itemsize(elem_type: int) -> int:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def _fix_dims(model: onnx.ModelProto, dims: dict[str, int]) -> None:
    for value in model.graph.input:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in dims:
                d.dim_value = dims[d.dim_param]


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:                       # its failures have no common type; onnx's inference still helps
        return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    """name -> (shape or None when any dim is unknown, element type) for every typed tensor."""
    out = {}
    for v in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[v.name] = (None if None in dims or not t.HasField("shape") else tuple(dims), t.elem_type)
    return out


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def node_flops(node, shapes: dict) -> tuple[int, int]:
    """(matmul/conv flops, elementwise flops) of one node; 0 where a shape is unknown."""
    out = shapes.get(node.output[0], (None, 0))[0] if node.output else None
    if out is None or node.op_type in NO_FLOP_OPS:
        return 0, 0
    size = int(np.prod(out, dtype=np.int64))
    a = shapes.get(node.input[0], (None, 0))[0]
    if node.op_type in MATMUL_OPS and a:
        return 2 * size * a[-1], 0
    if node.op_type == "Gemm" and a:
        return 2 * size * (a[0] if _attr(node, "transA", 0) else a[-1]), 0
    w = shapes.get(node.input[1], (None, 0))[0] if len(node.input) > 1 else None
    if node.op_type == "Conv" and w:
        return 2 * size * int(np.prod(w[1:])), 0           # w: (Cout, Cin/groups, kh, kw)
    if node.op_type == "ConvTranspose" and a and w:
        return 2 * int(np.prod(a)) * int(np.prod(w[1:])), 0   # w: (Cin, Cout/groups, kh, kw)
    return 0, size


def _initializer_bytes(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64)) * _itemsize(t.data_type)


def _weight_bytes(model: onnx.ModelProto) -> int:
    total = sum(_initializer_bytes(i) for i in model.graph.initializer)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            total += numpy_helper.to_array(n.attribute[0].t).nbytes
    return int(total)


@lru_cache(maxsize=256)
def graph_cost(path: str, batch: int, seq: int | None = None) -> dict:
    """Bytes and flops of one call of the graph at `path` with batch `batch` (and sequence length `seq`)."""
    model = onnx.load(path, load_external_data=False)
    weight_bytes = _weight_bytes(model)
    consts = {i.name for i in model.graph.initializer}
    _fix_dims(model, {"batch": batch, **({"seq": seq} if seq else {})})
    inferred = _infer(model)
    shapes = _shapes(inferred)
    names = [v.name for v in model.graph.input]
    names += [o for n in inferred.graph.node if n.op_type != "Constant" and not _folded_weight(n, consts)
              for o in n.output if o]
    act, unknown = 0, 0
    for name in dict.fromkeys(names):
        shape, elem = shapes.get(name, (None, 0))
        if shape is None:
            unknown += 1
        else:
            act += int(np.prod(shape, dtype=np.int64)) * _itemsize(elem)
    mm = ew = 0
    for node in inferred.graph.node:
        f_mm, f_ew = node_flops(node, shapes)
        mm, ew = mm + f_mm, ew + f_ew
    return {"weight_bytes": weight_bytes, "activation_bytes": int(act), "bytes": weight_bytes + int(act),
            "matmul_flops": int(mm), "elementwise_flops": int(ew), "nodes": len(model.graph.node),
            "unknown": unknown}


def _folded_weight(node, consts: set[str]) -> bool:
    """A DequantizeLinear of an initializer: part of the int8 kernel after onnxruntime's QDQ fusion."""
    return node.op_type == "DequantizeLinear" and node.input[0] in consts


def add_costs(costs: list[dict]) -> dict:
    """The cost of a chain of stage calls (e.g. translate = source encoder + τ + decoder)."""
    keys = ("weight_bytes", "activation_bytes", "bytes", "matmul_flops", "elementwise_flops", "nodes", "unknown")
    return {k: sum(c[k] for c in costs) for k in keys}


def floor_ms(cost: dict, bandwidth_gbs: float, peak_gflops: float) -> dict:
    """max(bytes / bandwidth, flops / peak) in ms, with both terms and which one binds."""
    mem = cost["bytes"] / (bandwidth_gbs * 1e9) * 1e3
    compute = cost["matmul_flops"] / (peak_gflops * 1e9) * 1e3
    return {"ms": max(mem, compute), "memory_ms": mem, "compute_ms": compute,
            "bound": "memory" if mem >= compute else "compute"}


def optimized_nodes(path: str | Path, threads: int = 1) -> int:
    """Nodes onnxruntime actually runs after its ORT_ENABLE_ALL fusions (each is one kernel call)."""
    import tempfile

    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads, so.log_severity_level = threads, 3
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        # graphs over 2 GB: the optimised copy must keep its weights outside the protobuf too
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "opt.onnx.data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return len(onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node)
