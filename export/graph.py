"""One stage to one ONNX graph, and its check against the PyTorch module (used by export/onnx.py).

`export_graph` runs torch.onnx.export in eval mode with a dynamic batch axis on every input and output: the
TorchScript exporter first, the dynamo exporter where it cannot express the module or its graph is wrong at
another batch size; then onnx.checker with full shape inference. `check_parity` compares the graph with the
module through onnxruntime (max |a-b| / max |b| <= PARITY_TOL).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from export.bundle import save_graph, session
from runtime.manifest import max_rel
from train.core.common import UserError
from train.core.flow import ConditionalINN

PARITY_TOL = 1e-4


class FlowStage(nn.Module):
    """τ or τ⁻¹ of one ConditionalINN as `forward`; both directions name their weights alike."""

    def __init__(self, flow: ConditionalINN, inverse: bool):
        super().__init__()
        self.flow, self.inverse = flow, inverse

    def forward(self, x, cond):
        return self.flow.inverse(x, cond) if self.inverse else self.flow(x, cond)


class ExpertStage(nn.Module):
    """`expert.<method>(x)` as `forward`, so the exporter sees exactly one single-input stage."""

    def __init__(self, expert: nn.Module, method: str):
        super().__init__()
        self.expert, self.method = expert, method

    def forward(self, x):
        return getattr(self.expert, self.method)(x)


def expert_method(module: nn.Module, name: str) -> str:
    return name if callable(getattr(module, name, None)) else "forward"


@contextlib.contextmanager
def _quiet_stdout():
    """Silence file descriptor 1 (C++ writes there directly, past sys.stdout)."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _other_batch_ok(path: Path, module: nn.Module, args: tuple, names) -> bool:
    """Does the graph still match the module at a batch size other than the traced one? (Tracing can
    bake a `len(x)` into the graph as a constant.)"""
    feeds = {n: np.concatenate([a.numpy(), a[:1].numpy()]) for n, a in zip(names, args)}
    try:
        got = session(path).run(None, feeds)
    except Exception:                                  # onnxruntime's errors have no common base class
        return False
    with torch.no_grad():
        ref = module(*(torch.from_numpy(x) for x in feeds.values()))
    return all(max_rel(g, r.numpy()) <= PARITY_TOL for g, r in zip(got, ref if isinstance(ref, tuple) else (ref,)))


def export_graph(module: nn.Module, args: tuple, path: Path, inputs, outputs, opset: int,
                 seq_inputs: tuple[str, ...] = ()) -> None:
    """torch.onnx.export in eval mode, every I/O with a dynamic batch axis: the TorchScript exporter
    first (predictable for these graphs); if it cannot express the module (e.g. a `view(len(z), -1, ...)`
    before a BatchNorm) or its graph is wrong at another batch size, the torch.export-based one. Then
    onnx.checker with full shape inference. The graph's metadata `exporter` says which one wrote it.
    Weights over protobuf's 2 GB limit go to one `<file>.data` beside the graph (`save_graph`); the
    exporters write them as one file per tensor, so they export into a scratch folder first."""
    dynamic = {n: {0: "batch", 1: "seq"} if n in seq_inputs else {0: "batch"} for n in (*inputs, *outputs)}
    common = dict(input_names=list(inputs), output_names=list(outputs), dynamic_axes=dynamic, opset_version=opset)
    module = module.eval()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as scratch:
        raw = Path(scratch) / path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)   # shape-derived ints; parity checks below
            warnings.simplefilter("ignore", DeprecationWarning)        # "legacy TorchScript-based exporter"
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")   # notes; parity decides
            warnings.filterwarnings("ignore", message=".*dynamic_axes.*")
            try:
                with _quiet_stdout():              # on failure it prints its whole IR graph (from C++)
                    torch.onnx.export(module, args, str(raw), dynamo=False, **common)
                ok = _other_batch_ok(raw, module, args, inputs)
                problem = None if ok else "its graph fails at another batch size"
            except RuntimeError as e:
                problem = str(e).splitlines()[0][:120]
            used = "torchscript"
            if problem:
                print(f"note: {path.name}: TorchScript exporter: {problem}; using the dynamo exporter")
                torch.onnx.export(module, args, str(raw), dynamo=True, external_data=False, verbose=False, **common)
                used = "dynamo"
            ref = module(*args)
        model = onnx.load(str(raw))                 # pulls in any external data the exporter wrote
    for value, r in zip(model.graph.output, ref if isinstance(ref, tuple) else (ref,)):
        for dim, size in zip(value.type.tensor_type.shape.dim[1:], r.shape[1:]):
            dim.dim_value = int(size)       # the exporter leaves some static output dims symbolic
    onnx.helper.set_model_props(model, {"exporter": used})
    save_graph(model, path)
    del model
    onnx.checker.check_model(str(path), full_check=True)     # by path: works past protobuf's 2 GB limit


def check_parity(path: Path, module: nn.Module, feeds: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Max relative error of the graph against `module` for each named feed set (e.g. real, random)."""
    sess, report = session(path), {}
    for label, feed in feeds.items():
        got = sess.run(None, feed)
        with torch.no_grad():
            ref = module(*(torch.from_numpy(x) for x in feed.values()))
        ref = ref if isinstance(ref, tuple) else (ref,)
        report[label] = max(max_rel(g, r.numpy()) for g, r in zip(got, ref))
        if report[label] > PARITY_TOL:
            raise UserError(f"{path.name}: ONNX output differs from PyTorch on {label} inputs "
                            f"(max rel err {report[label]:.2e} > {PARITY_TOL:g}); not writing the bundle")
    return report
