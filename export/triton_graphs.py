"""The small ONNX graphs export.triton puts around a bundle's stages so that its sampling ensemble does what
runtime.Pipeline.translate does by default, server-side:

    condition_projection  cond (B, C) -> cond (B, C): runtime/condition_bank.py's ConditionBank.project (cosine
                          similarity to the bank's unit rows, first argmax, the float16 row where the best similarity
                          is below min_similarity, else the condition unchanged)
    best_of_split         v (B, n, D) -> v_0 .. v_{n-1} (B, D): candidate j of each row, for n flow_forward steps
    best_of_select        z_j, v_j = τ⁻¹(z_j), logdet_j -> z (B, D): runtime/sampling.py's most_likely (score in
                          float64, first argmax), so the flow stages themselves (ONNX or TensorRT) run unchanged

Each is (onnx.ModelProto, inputs, outputs) with tensor specs in the manifest's form ({"name", "shape", "dtype"}).
Imports no torch.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.condition_bank import ConditionBank

OPSET, IR_VERSION = 17, 8          # as the bundle's own stage graphs (export.onnx DEFAULT_OPSET): loads where they do


def _spec(name: str, shape: list, dtype: str = "float32") -> dict:
    return {"name": name, "shape": ["batch", *shape], "dtype": dtype}


def _model(nodes: list, inputs: list[dict], outputs: list[dict], initializers: list, name: str) -> onnx.ModelProto:
    types = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}

    def info(spec):
        return helper.make_tensor_value_info(spec["name"], types[spec["dtype"]],
                                             ["batch" if d == "batch" else int(d) for d in spec["shape"]])
    graph = helper.make_graph(nodes, name, [info(s) for s in inputs], [info(s) for s in outputs], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="export.triton")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def condition_projection(rows: np.ndarray, min_similarity: float) -> tuple[onnx.ModelProto, list, list]:
    """The bank as a graph: unit rows as ConditionBank computes them (same numpy, same float32 values)."""
    bank = ConditionBank(rows, min_similarity)
    c = bank.rows.shape[1]
    inits = [_const("unit_t", np.ascontiguousarray(bank.unit.T)), _const("rows16", bank.rows.astype(np.float16)),
             _const("eps", np.float32(1e-12)), _const("threshold", np.float32(bank.min_similarity)),
             _const("axis1", np.array([1], np.int64))]
    nodes = [
        helper.make_node("Mul", ["cond", "cond"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axis1"], ["sumsq"], keepdims=1),
        helper.make_node("Sqrt", ["sumsq"], ["norm"]),
        helper.make_node("Max", ["norm", "eps"], ["norm_eps"]),
        helper.make_node("Div", ["cond", "norm_eps"], ["q"]),
        helper.make_node("MatMul", ["q", "unit_t"], ["sim"]),
        helper.make_node("ArgMax", ["sim"], ["index"], axis=1, keepdims=1, select_last_index=0),   # first, as numpy
        helper.make_node("GatherElements", ["sim", "index"], ["best"], axis=1),
        helper.make_node("Less", ["best", "threshold"], ["moved"]),                 # strict: at the threshold stays
        helper.make_node("Squeeze", ["index", "axis1"], ["index_flat"]),
        helper.make_node("Cast", ["rows16"], ["rows32"], to=TensorProto.FLOAT),     # float16 -> float32: exact
        helper.make_node("Gather", ["rows32", "index_flat"], ["nearest"], axis=0),
        helper.make_node("Where", ["moved", "nearest", "cond"], ["projected"]),
    ]
    inputs, outputs = [_spec("cond", [c])], [_spec("projected", [c])]
    return _model(nodes, inputs, outputs, inits, "condition_projection"), inputs, outputs


def best_of_split(n: int, dim: int) -> tuple[onnx.ModelProto, list, list]:
    inputs, outputs = [_spec("v", [n, dim])], [_spec(f"v_{j}", [dim]) for j in range(n)]
    inits = [_const(f"j{j}", np.int64(j)) for j in range(n)]
    nodes = [helper.make_node("Gather", ["v", f"j{j}"], [f"v_{j}"], axis=1) for j in range(n)]
    return _model(nodes, inputs, outputs, inits, "best_of_split"), inputs, outputs


def best_of_select(n: int, dim: int) -> tuple[onnx.ModelProto, list, list]:
    """log p(z_j | c) = -0.5 |v_j|² + logdet_j in float64 (as most_likely); the first best candidate's z."""
    inputs = [_spec(f"{what}_{j}", [dim]) for what in ("z", "v") for j in range(n)] + \
        [_spec(f"logdet_{j}", []) for j in range(n)]
    inits = [_const("axis1", np.array([1], np.int64)), _const("half", np.float64(-0.5)),
             _const("col", np.array([-1, 1], np.int64)), _const("pick_shape", np.array([1, 1, dim], np.int64))]
    nodes = []
    for j in range(n):
        nodes += [helper.make_node("Cast", [f"v_{j}"], [f"v64_{j}"], to=TensorProto.DOUBLE),
                  helper.make_node("Mul", [f"v64_{j}", f"v64_{j}"], [f"sq_{j}"]),       # exact: 24-bit squares
                  helper.make_node("ReduceSum", [f"sq_{j}", "axis1"], [f"sumsq_{j}"], keepdims=1),
                  helper.make_node("Mul", [f"sumsq_{j}", "half"], [f"gauss_{j}"]),
                  helper.make_node("Cast", [f"logdet_{j}"], [f"ld64_{j}"], to=TensorProto.DOUBLE),
                  helper.make_node("Reshape", [f"ld64_{j}", "col"], [f"ldcol_{j}"]),
                  helper.make_node("Add", [f"gauss_{j}", f"ldcol_{j}"], [f"score_{j}"]),
                  helper.make_node("Unsqueeze", [f"z_{j}", "axis1"], [f"zz_{j}"])]
    nodes += [helper.make_node("Concat", [f"score_{j}" for j in range(n)], ["scores"], axis=1),
              helper.make_node("ArgMax", ["scores"], ["best"], axis=1, keepdims=1, select_last_index=0),
              helper.make_node("Concat", [f"zz_{j}" for j in range(n)], ["candidates"], axis=1),      # (B, n, D)
              helper.make_node("Unsqueeze", ["best", "axis1"], ["best3"]),                             # (B, 1, 1)
              helper.make_node("Expand", ["best3", "pick_shape"], ["index"]),                          # (B, 1, D)
              helper.make_node("GatherElements", ["candidates", "index"], ["picked"], axis=1),       # a copy
              helper.make_node("Squeeze", ["picked", "axis1"], ["z"])]
    return _model(nodes, inputs, [_spec("z", [dim])], inits, "best_of_select"), inputs, [_spec("z", [dim])]
