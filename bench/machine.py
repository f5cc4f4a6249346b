"""The machine a benchmark ran on, and its floors, measured in the same run as the numbers they judge.

Floors (all best of N, so a busy neighbour can only make them look worse, never better):
  read_bandwidth_gbs       single-thread read bandwidth: the fastest of three reductions over one large
                           array (float32 max, int64 sum over the same bytes, float32 dot with itself
                           with BLAS held to 1 thread). Used by every CPU row's memory floor.
  sgemm_gflops[threads]    torch.mm of two n x n float32 matrices, at 1 thread and at all threads.
  ort_matmul_gflops        onnxruntime MatMul (fp32) and its quantize_dynamic int8 form (MatMulInteger),
                           n x n x n, 1 intra-op thread: the kernels the runtime's graphs use.
`overhead_session` builds graphs with nothing to compute (one Identity node; a chain of 100 tiny Adds): the
suite times them beside each bundle's flow calls as the cost of an onnxruntime call and of one kernel.
The fp32 compute floor of a row uses the best fp32 peak at that row's thread count (torch sgemm, and at
1 thread also onnxruntime's MatMul); int8 rows use onnxruntime's int8 MatMul peak.
"""
from __future__ import annotations

import os
import platform
import socket
import tempfile
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path

import numpy as np

PACKAGES = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "FrEIA", "tensorrt", "pytest-benchmark")


def cpu_model() -> str:
    """The `model name` line of /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cores() -> dict:
    """Logical CPUs and the ones this process may run on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"logical": os.cpu_count(), "usable": usable}


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def versions() -> dict:
    """Python and the installed versions of the packages a result depends on (absent ones omitted)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def host_info() -> dict:
    """Host, date, CPU model, cores, platform and versions: the header of a results file."""
    now = datetime.now().astimezone()
    return {"host": socket.gethostname(), "date": now.isoformat(timespec="seconds"), "cpu_model": cpu_model(),
            "cores": cores(), "platform": platform.platform(), "versions": versions()}


def _best_s(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> dict:
    """Single-thread read bandwidth in GB/s (1e9 B/s), best of three reductions, each best of N."""
    from threadpoolctl import threadpool_limits
    a = np.ones(megabytes * 2 ** 20 // 4, dtype=np.float32)
    with threadpool_limits(1):
        runs = {"float32_max": _best_s(a.max, repeats),
                "int64_sum": _best_s(a.view(np.int64).sum, repeats),
                "float32_dot_self": _best_s(lambda: np.dot(a, a), repeats)}
    gbs = {name: a.nbytes / s / 1e9 for name, s in runs.items()}
    return {"megabytes": megabytes, "repeats": repeats, "by_reduction_gbs": gbs, "gbs": max(gbs.values())}


def sgemm_gflops(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """torch.mm float32 n x n x n at `threads` intra-op threads, GFLOP/s (2 n^3 flops)."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        return 2 * n ** 3 / _best_s(lambda: torch.mm(a, b), repeats) / 1e9
    finally:
        torch.set_num_threads(old)


def ort_session(path: str | Path, threads: int = 1):
    """A CPU session with the runtime's options (ORT_ENABLE_ALL, sequential, `threads` intra-op, and the
    optimizers the runtime switches off for int8 graphs, named `*.int8.onnx`)."""
    import onnxruntime as ort

    from runtime.backends import disabled_optimizers
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads, so.intra_op_num_threads, so.log_severity_level = 1, threads, 3
    precision = "int8" if ".int8." in Path(path).name else "fp32"
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled_optimizers(precision))


def _matmul_graph(path: Path, n: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def ort_matmul_gflops(n: int = 1024, repeats: int = 5) -> dict:
    """onnxruntime fp32 MatMul and its quantize_dynamic (int8 weights) form at 1 thread, GFLOP/s."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic
    x = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "mm.onnx", Path(tmp) / "mm.int8.onnx"
        _matmul_graph(fp32, n)
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        out = {}
        for name, path in (("fp32", fp32), ("int8", int8)):
            sess = ort_session(path)
            out[name] = 2 * n ** 3 / _best_s(lambda s=sess: s.run(None, {"x": x}), repeats) / 1e9
    return out


def overhead_session(dim: int = 8, adds: int = 0, threads: int = 1):
    """An onnxruntime session of a graph with no real work: one Identity node (adds=0: the cost of a call),
    or a chain of `adds` Add(x, x) nodes on a (batch, dim) input (the cost of a kernel launch, by difference)."""
    import onnx
    from onnx import TensorProto, helper
    names = ["x"] + [f"a{i}" for i in range(adds)]
    nodes = [helper.make_node("Add", [a, a], [b]) for a, b in zip(names, names[1:])]
    nodes.append(helper.make_node("Identity", [names[-1]], ["y"]))
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", dim]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "overhead", io[:1], io[1:])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overhead.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return ort_session(path, threads)


def floors(quick: bool = False) -> dict:
    """Every floor above, measured now. Quick mode uses smaller arrays and fewer repeats."""
    reps = 3 if quick else 7
    all_threads = cores()["usable"]
    n = 512 if quick else 1024
    sgemm = {"n": n, "1": sgemm_gflops(1, n, reps), str(all_threads): sgemm_gflops(all_threads, n, reps)}
    return {"read_bandwidth": read_bandwidth(256 if quick else 512, reps), "sgemm_gflops": sgemm,
            "ort_matmul_gflops": {"n": n, **ort_matmul_gflops(n, reps)}}


def fp32_peak_gflops(fl: dict, threads: int) -> float:
    """Best fp32 matmul peak measured at `threads` (torch sgemm; at 1 thread also onnxruntime MatMul)."""
    sg = fl["sgemm_gflops"]
    peak = sg.get(str(threads)) or max(v for k, v in sg.items() if k != "n")
    return max(peak, fl["ort_matmul_gflops"]["fp32"]) if threads == 1 else peak


def int8_peak_gflops(fl: dict) -> float:
    """onnxruntime's int8 MatMul peak (1 thread), the compute floor of int8 graphs."""
    return fl["ort_matmul_gflops"]["int8"]


# ---- peak resident memory ----------------------------------------------------------------------------

def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0, `echo 5 > /proc/self/clear_refs`); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """VmHWM of this process in MiB (ru_maxrss where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
