"""What gets measured: bundles, their stage calls, the inputs at each batch, and every backend.

Stages are the runtime's calls (`runtime.Pipeline`): encode_source, flow_forward, flow_inverse,
encode_target, decode_target, and translate (source -> one sample each, end to end). Inputs come from
the bundle's own validation/ arrays, rows repeated cyclically up to the batch.

Backends, each a dict stage -> callable(inputs) that returns numpy like the runtime does:
  pytorch    the trained modules, same weights: the run named by the manifest's `source.run`, rebuilt
             with `load_translator` + `Task.experts(config)` (checkpoint SHA-256 checked against the
             manifest); torch intra-op threads = the runtime's `threads`, inference_mode.
  pytorch-compile  the same modules under torch.compile (inductor, CPU; bench.compiled), compile time
             recorded apart from the latency.
  ort-fp32   runtime.Pipeline on onnxruntime, fp32 stages.
  ort-int8   the same with the int8 flow stages (only the calls that touch the flow are measured: the
             other stages are the same fp32 graphs as ort-fp32).
  trt-fp32 / trt-fp16   runtime.Pipeline on TensorRT plans.
A backend that cannot run raises `Skip` with the reason, which the results record.
"""
from __future__ import annotations

from pathlib import Path

from bench.types import BACKENDS, FLOW_STAGES, STAGES, BundleData, Skip, checkpoint_of, discover  # noqa: F401
from runtime import Pipeline, PipelineError


def pipeline_calls(p: Pipeline, stages: list[str]) -> dict:
    """The runtime's stage calls on the bench inputs."""
    calls = {"encode_source": lambda x: p.encode_source(x["source"]),
             "flow_forward": lambda x: p.flow_forward(x["v"], x["cond"]),
             "flow_inverse": lambda x: p.flow_inverse(x["z"], x["cond"]),
             "encode_target": lambda x: p.encode_target(x["images"]),
             "decode_target": lambda x: p.decode_target(x["z"]),
             "translate": lambda x: p.translate(x["source"], seed=0)}
    return {s: calls[s] for s in stages}


def _trt(data: BundleData, precision: str) -> dict:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        gpu = "" if Path("/dev/nvidia0").exists() else " and this machine has no NVIDIA GPU"
        raise Skip(f"TensorRT is not installed{gpu}") from None
    if "tensorrt" not in data.manifest:
        raise Skip(f"the bundle has no TensorRT plans (build them on a GPU: python -m export.trt --bundle {data.dir})")
    try:
        return pipeline_calls(Pipeline.load(data.dir, backend="tensorrt", precision=precision), data.stages)
    except PipelineError as e:
        raise Skip(str(e)) from None


def open_backend(data: BundleData, backend: str, threads: int = 1) -> dict:
    """stage -> callable for one backend on one bundle, or Skip with the reason."""
    if backend == "pytorch":
        from bench.eager import torch_calls  # lazy: torch stays out of onnxruntime-only processes
        return torch_calls(data, threads)
    if backend == "pytorch-compile":
        from bench.compiled import compiled_calls  # lazy, as eager above
        return compiled_calls(data, threads)
    if backend == "ort-fp32":
        return pipeline_calls(Pipeline.load(data.dir, backend="onnxruntime", threads=threads), data.stages)
    if backend == "ort-int8":
        if not data.has_int8:
            raise Skip(f"no int8 flow stages (export with --precision int8: python -m export.onnx --task "
                       f"{data.manifest['task']} --precision int8)")
        p = Pipeline.load(data.dir, backend="onnxruntime", precision="int8", threads=threads)
        return pipeline_calls(p, [s for s in data.stages if s in FLOW_STAGES])
    if backend in ("trt-fp32", "trt-fp16"):
        return _trt(data, backend.split("-")[1])
    raise ValueError(f"unknown backend {backend}")


def precision_of(backend: str) -> str:
    """The graphs' precision a backend runs (PyTorch runs the fp32 math)."""
    return "fp32" if backend.startswith("pytorch") else backend.split("-")[1]
