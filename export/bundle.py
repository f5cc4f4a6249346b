"""Everything about a bundle that needs no torch, shared by `export.onnx` and `export.trt` (whose
`--bundle` path runs on machines without a training stack):

  manifest writing   stage entries read from the ONNX graphs themselves, SHA-256 of every file
                     (a graph's external-data file too), validation against the runtime's schema, atomic writes;
  graph saving       `save_graph`: one file, or graph + `<file>.data` when the weights pass protobuf's 2 GB
                     limit (paper-size flows), so every writer of a bundle handles both;
  int8 helpers       Gemm -> MatMul + Add (the form the quantizers handle), a latency probe (the int8
                     flow graphs themselves: export.quantize);
  fp16 graphs        `to_fp16`, an allow-list converter (fp32 I/O, fp16 inside where it is safe);
  condition bank     `condition_bank.npy` beside the engines (runtime/condition_bank.py).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.condition_bank import BANK_FILE, bank_problem
from runtime.manifest import FUSED_ROLES, MANIFEST, read_manifest, sha256_file, stage_name, validate_manifest

BANK_CHOSEN_BY = "docs/results.md, text2image: 'Projecting the condition onto the training conditions'"


class ExportError(Exception):
    """A bundle cannot be written as asked; the CLIs print it as one line and exit with code 2."""


DTYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.INT64: "int64",
          TensorProto.INT32: "int32", TensorProto.UINT8: "uint8", TensorProto.INT8: "int8",
          TensorProto.BOOL: "bool"}


def _tensor_spec(value: onnx.ValueInfoProto) -> dict:
    t = value.type.tensor_type
    shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
    return {"name": value.name, "shape": shape, "dtype": DTYPES[t.elem_type]}


# protobuf cannot serialise a message over 2 GiB; stay well below it (the graph itself adds a little)
EXTERNAL_DATA_BYTES = 1_800_000_000


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers held inside `model` (loaded external data included)."""
    return sum(len(t.raw_data) or numpy_helper.to_array(t).nbytes
               for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL)


def save_graph(model: onnx.ModelProto, path: str | Path, external: bool | None = None) -> None:
    """Save `model` to `path`; with `external` (default: when its weights pass EXTERNAL_DATA_BYTES) every
    initializer over 1 KB goes to one file `<name>.data` beside it, which onnxruntime reads from there."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)                 # onnx appends to an existing data file
    if external is None:
        external = tensor_bytes(model) > EXTERNAL_DATA_BYTES
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        data.chmod(0o644)                        # readable like the graph beside it
    else:
        onnx.save_model(model, str(path))


def external_files(path: str | Path) -> list[str]:
    """The external-data files a graph names, relative to its folder (empty for a self-contained graph)."""
    model = onnx.load(str(path), load_external_data=False)
    found = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            found.add(next(e.value for e in t.external_data if e.key == "location"))
    return sorted(found)


def stage_entry(bundle_dir: str | Path, file: str, role: str, precision: str) -> dict:
    """A manifest stage entry; I/O names, shapes and dtypes (and the exporter used) come from the graph;
    its external-data files (if any) are listed with their SHA-256 so the runtime verifies them too."""
    model = onnx.load(str(Path(bundle_dir) / file), load_external_data=False)
    entry = {"file": file, "role": role, "precision": precision,
             "inputs": [_tensor_spec(v) for v in model.graph.input],
             "outputs": [_tensor_spec(v) for v in model.graph.output], "sha256": sha256_file(Path(bundle_dir) / file)}
    external = [str(Path(file).parent / f) for f in external_files(Path(bundle_dir) / file)]
    if external:
        entry["external_data"] = hash_tree(bundle_dir, external)
    entry.update({p.key: p.value for p in model.metadata_props if p.key == "exporter"})
    return entry


def hash_tree(bundle_dir: str | Path, files: list[str]) -> dict[str, str]:
    return {f: sha256_file(Path(bundle_dir) / f) for f in sorted(files)}


def rehash(bundle_dir: str | Path, manifest: dict) -> dict:
    """Recompute every SHA-256 the manifest records from the files on disk."""
    for entry in manifest["stages"].values():
        entry["sha256"] = sha256_file(Path(bundle_dir) / entry["file"])
        if entry.get("external_data"):
            entry["external_data"] = hash_tree(bundle_dir, list(entry["external_data"]))
    for section in ("tokenizer", "validation", "condition_bank"):
        if section in manifest:
            manifest[section]["files"] = hash_tree(bundle_dir, list(manifest[section]["files"]))
    for plan in manifest.get("tensorrt", {}).get("plans", {}).values():
        plan["sha256"] = sha256_file(Path(bundle_dir) / plan["file"])
    return manifest


def write_condition_bank(bundle_dir: str | Path, conditions: np.ndarray, min_similarity: float,
                         cond_shape: list[int]) -> dict:
    """BANK_FILE (float16 rows, a plain .npy) in the bundle and the manifest's `condition_bank` section."""
    problem = bank_problem(conditions, min_similarity, cond_shape[0] if len(cond_shape) == 1 else -1)
    if problem:
        raise ExportError(f"the run's condition bank {problem}; retrain the run or export with --no-condition-bank")
    np.save(Path(bundle_dir) / BANK_FILE, np.ascontiguousarray(conditions, np.float16), allow_pickle=False)
    return {"files": hash_tree(bundle_dir, [BANK_FILE]), "count": len(conditions),
            "min_similarity": float(min_similarity), "chosen_by": BANK_CHOSEN_BY}


def write_manifest(bundle_dir: str | Path, manifest: dict) -> dict:
    """Rehash, validate against the runtime's schema, and write manifest.json atomically."""
    manifest = rehash(bundle_dir, manifest)
    validate_manifest(manifest, writing=True)
    path = Path(bundle_dir) / MANIFEST
    fd, tmp = tempfile.mkstemp(dir=bundle_dir, prefix=".manifest.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)                      # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest


def session(path: Path, threads: int = 1, precision: str = "fp32"):
    """A CPU onnxruntime session as the export checks use it (imported lazily: not needed on Jetson);
    int8 stages with the runtime's optimizer settings."""
    import onnxruntime as ort

    from runtime.backends import disabled_optimizers
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled_optimizers(precision))


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Gemm(x, W, b) with constant W -> MatMul(x, Wᵀ) + Add(b), the form quantize_dynamic handles."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes = []
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type != "Gemm" or n.input[1] not in inits or attrs.get("transA", 0) or \
                attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        w_name = n.input[1] + "_kn"
        w = w.T if attrs.get("transB", 0) else w
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        nodes.append(helper.make_node("MatMul", [n.input[0], w_name], [n.output[0] + "_mm"], name=n.name + "_matmul"))
        nodes.append(helper.make_node("Add", [n.output[0] + "_mm", n.input[2]], [n.output[0]], name=n.name + "_bias")
                     if len(n.input) > 2 else helper.make_node("Identity", [n.output[0] + "_mm"], [n.output[0]]))
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return model


def median_latency(sess, feed: dict, reps: int = 200) -> float:
    """Median seconds of one `sess.run` on `feed` (after a warm-up)."""
    for _ in range(20):
        sess.run(None, feed)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


FP16 = TensorProto.FLOAT16
# Ops that run in fp16. Flow graphs: only the subnetworks' linear layers and activations; the scales, exp,
# coupling arithmetic and log-det stay fp32. Experts: ops whose float inputs and outputs share one type
# and that are safe in fp16; normalisations, reductions, Div/Pow/Sqrt, exp/log, softmax stay fp32.
FP16_FLOW_OPS = frozenset({"Gemm", "MatMul", "LeakyRelu"})
FP16_EXPERT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Relu", "LeakyRelu",
                             "Tanh", "Sigmoid", "Erf", "Gelu", "BatchNormalization", "MaxPool", "AveragePool",
                             "DepthToSpace", "SpaceToDepth", "Transpose", "Reshape", "Flatten", "Squeeze",
                             "Unsqueeze", "Concat", "Slice", "Split", "Gather", "Identity", "Where", "Expand"})


def to_fp16(model: onnx.ModelProto, fp16_ops: frozenset[str]) -> onnx.ModelProto:
    """Run the nodes whose op is in `fp16_ops` in fp16, everything else in fp32; graph inputs and
    outputs keep their types. Constants and weights feeding fp16 nodes are stored in fp16 (clipped to
    ±65504, so e.g. an attention mask's "-inf" stays finite); a Cast is inserted wherever a tensor
    crosses between the two regions, one per tensor and direction."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = model.graph
    floats = {v.name for v in (*g.input, *g.output, *g.value_info) if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    static = {i.name: numpy_helper.to_array(i) for i in g.initializer if i.data_type == TensorProto.FLOAT}
    static.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
                   if n.op_type == "Constant" and n.attribute[0].name == "value"
                   and n.attribute[0].t.data_type == TensorProto.FLOAT})
    floats |= set(static)
    outputs, renamed = {o.name for o in g.output}, {}
    for n in g.node:                               # fp16 producers of graph outputs write to a temporary
        if n.op_type in fp16_ops:
            for i, o in enumerate(n.output):
                if o in outputs:
                    renamed[o] = n.output[i] = f"{o}::fp16"
    floats |= set(renamed.values())
    nodes, half, made = [], set(renamed.values()), {}

    def cast(name: str, to: int) -> str:
        if (name, to) not in made:
            made[name, to] = f"{name}::{'fp16' if to == FP16 else 'fp32'}"
            if to == FP16 and name in static:
                value = np.clip(static[name], -65504, 65504).astype(np.float16)
                g.initializer.append(numpy_helper.from_array(value, made[name, to]))
            else:
                nodes.append(helper.make_node("Cast", [name], [made[name, to]], to=to))
        return made[name, to]

    for n in g.node:
        fp16 = n.op_type in fp16_ops
        for i, x in enumerate(n.input):
            x = n.input[i] = renamed.get(x, x)
            if fp16 and x in floats and x not in half:
                n.input[i] = cast(x, FP16)
            elif not fp16 and x in half:
                n.input[i] = cast(x, TensorProto.FLOAT)
        nodes.append(n)
        if fp16:
            half.update(o for o in n.output if o in floats)
    nodes += [helper.make_node("Cast", [tmp], [name], to=TensorProto.FLOAT) for name, tmp in renamed.items()]
    used = {x for n in nodes for x in n.input} | outputs
    nodes = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]
    used = {x for n in nodes for x in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.node[:], g.initializer[:], g.value_info[:]
    g.node.extend(nodes)
    g.initializer.extend(kept)
    return model


def fp16_variant(src: Path, dst: Path, flow: bool) -> None:
    """Write the fp16 graph of one stage (I/O stay fp32) and check it."""
    model = to_fp16(onnx.load(str(src)), FP16_FLOW_OPS if flow else FP16_EXPERT_OPS)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))


def add_fp16_stages(bundle: Path) -> dict:
    """STAGE.fp16.onnx for every fp32 stage, registered in the manifest; returns the manifest. Fused graphs
    are skipped: their flow part would get the experts' fp16 op list (fp16 runs chain the stages)."""
    manifest = read_manifest(bundle)
    for name, st in list(manifest["stages"].items()):
        if st["precision"] == "fp32" and st["role"] not in FUSED_ROLES:
            file = f"{name}.fp16.onnx"
            fp16_variant(bundle / st["file"], bundle / file, flow=st["role"].startswith("flow_"))
            manifest["stages"][stage_name(st["role"], "fp16")] = stage_entry(bundle, file, st["role"], "fp16")
    return write_manifest(bundle, manifest)
