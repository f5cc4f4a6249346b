"""TensorRT engines for a bundle, one serialized plan per stage.

    python -m export.trt --bundle engines/NAME [--precision fp32|fp16] [--min-batch 1 --opt-batch 8
                         --max-batch 64] [--workspace-gb 2] [--device 0]
    python -m export.trt --task NAME [--run runs/NAME/cinn] [...]      # exports the ONNX bundle first if missing

Precision lives in the ONNX graph, and networks are strongly typed (TensorRT >= 10; TensorRT 11 removed
the FP16/INT8 builder flags, JetPack still ships 10 — a graph-typed build works on both).
`--precision fp16` therefore first writes STAGE.fp16.onnx for every fp32 stage (`to_fp16`, inputs and
outputs kept fp32): in the flow graphs only the subnetworks' Gemm/MatMul and LeakyReLU run in fp16 —
the soft-clamped scales, exp, the coupling arithmetic and the log-det stay fp32, so τ and τ⁻¹ still
invert each other to float rounding; in the experts, normalisations, reductions, Div/Pow/Sqrt,
exp/log and softmax stay fp32. (onnxconverter-common's converter was tried first: it returns fp16
graph outputs despite keep_io_types, rounds multi-consumer inputs through fp16 and leaves type
conflicts on shared initializers; `to_fp16` is a small allow-list converter instead and needs only
onnx.) These graphs run under onnxruntime as well, so their parity and round trip are measured on CPU.

Each plan: trt.OnnxParser into a strongly typed network, one optimization profile over the batch axis
(and 1..max_tokens over the sequence axis), a workspace limit, TF32 off for fp32 builds, a timing
cache kept beside the bundle (timing.cache), `build_serialized_network`; STAGE.plan is written next to
its ONNX and the manifest's `tensorrt` section records TensorRT version, GPU name, compute
capability, and per plan its profile and SHA-256 (the runtime refuses plans from another TensorRT
version or GPU).

Without TensorRT or a CUDA device the ONNX bundle (and its fp16 graphs) is still written, then one
line says what is missing and how to build on the target; exit code 2. This module never imports
torch on the --bundle path: a Jetson needs only tensorrt, onnx, numpy and cuda-python or pycuda.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.bundle import ExportError, add_fp16_stages, write_manifest
from runtime.backends import open_cuda
from runtime.manifest import PipelineError, read_manifest


def _profile_dims(spec: dict, batch: int, seq: int) -> tuple[int, ...]:
    return tuple(batch if d == "batch" else seq if d == "seq" else int(d) for d in spec["shape"])


def build_engines(bundle: Path, precision: str, batches: tuple[int, int, int], workspace_gb: float,
                  device: int = 0) -> dict:
    """Build STAGE.plan for every stage of `precision` and record them in the manifest."""
    how = f"the ONNX bundle {bundle} is ready; on the target run `python -m export.trt --bundle {bundle}`"
    try:
        import tensorrt as trt
    except ImportError:
        raise ExportError(f"TensorRT is not installed here (needs tensorrt >= 10 and a CUDA GPU); {how}") from None
    try:
        cuda = open_cuda(device)
    except PipelineError as e:
        raise ExportError(f"{e}; {how}") from None
    manifest = read_manifest(bundle)
    stages = {n: st for n, st in manifest["stages"].items() if st["precision"] == precision}
    max_tokens = int(manifest.get("tokenizer", {}).get("max_tokens", 1))
    seqs = (1, min(16, max_tokens), max_tokens)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_file = bundle / "timing.cache"
    old = manifest.get("tensorrt", {})
    same_target = old.get("version") == trt.__version__ and old.get("compute_capability") == cuda.compute_capability
    plans = dict(old.get("plans", {})) if same_target else {}
    for name, st in stages.items():
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(bundle / st["file"])):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT cannot parse {st['file']}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)     # fp32 engines compute in fp32, for parity
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        config.set_timing_cache(cache, False)
        profile = builder.create_optimization_profile()
        for spec in st["inputs"]:
            profile.set_shape(spec["name"], *(_profile_dims(spec, b, s) for b, s in zip(batches, seqs)))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ExportError(f"TensorRT failed to build {st['file']} (see its log above)")
        (bundle / f"{name}.plan").write_bytes(bytes(plan))
        cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
        plans[name] = {"file": f"{name}.plan", "sha256": "", "min_batch": batches[0], "opt_batch": batches[1],
                       "max_batch": batches[2], "seq": list(seqs) if "tokenizer" in manifest else None,
                       "workspace_gb": workspace_gb}
        print(f"built {name}.plan ({(bundle / f'{name}.plan').stat().st_size / 1e6:.1f} MB)")
    manifest["tensorrt"] = {"version": trt.__version__, "gpu": cuda.name, "compute_capability": cuda.compute_capability,
                            "plans": plans}
    return write_manifest(bundle, manifest)


class _Parser(argparse.ArgumentParser):
    def error(self, message):           # one line, not the usage block (train.common's needs torch; --bundle not)
        raise ExportError(f"{message} (see {self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m export.trt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="an existing bundle folder (no torch needed)")
    src.add_argument("--task", help="export the task's ONNX bundle first when it is missing")
    ap.add_argument("--run", help="with --task: the cINN run (default runs/TASK/cinn)")
    ap.add_argument("--out", help="with --task: the bundle folder (default engines/TASK)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--min-batch", type=int, default=1)
    ap.add_argument("--opt-batch", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--workspace-gb", type=float, default=2.0)
    ap.add_argument("--device", type=int, default=0)
    try:
        args = ap.parse_args(argv)
        batches = (args.min_batch, args.opt_batch, args.max_batch)
        if not 1 <= batches[0] <= batches[1] <= batches[2] or args.workspace_gb <= 0:
            raise ExportError("need 1 <= --min-batch <= --opt-batch <= --max-batch and --workspace-gb > 0")
        bundle = Path(args.bundle or args.out or f"engines/{args.task}")
        if args.task and not (bundle / "manifest.json").is_file():
            from export.onnx import main as export_onnx  # the training stack is needed only here
            from train.core.errors import UserError  # torch-free; onnx export (above) is the only torch user
            try:
                export_onnx(["--task", args.task, "--out", str(bundle)] + (["--run", args.run] if args.run else []))
            except UserError as e:
                raise ExportError(str(e)) from None
        if args.precision == "fp16":
            add_fp16_stages(bundle)
            print(f"wrote fp16 graphs to {bundle}")
        m = build_engines(bundle, args.precision, batches, args.workspace_gb, args.device)
        print(f"TensorRT {m['tensorrt']['version']} engines for {m['tensorrt']['gpu']} "
              f"(sm {m['tensorrt']['compute_capability']}) in {bundle}")
        return 0
    except (ExportError, PipelineError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
