"""Execution backends behind one small interface: onnxruntime (any execution provider) and TensorRT.

    backend.run(role, feeds, host=True) -> {output name: array}
        `feeds` maps input names to numpy arrays, or to device values a previous `run(..., host=False)`
        returned, so chained stages keep their intermediates on the device.
    backend.max_batch    the largest batch one call takes (None: no limit); the Pipeline splits.
    backend.exclusive()  held around a chain of calls that pass device values.

Buffers: outputs are written into buffers preallocated for the max batch (on the session's device)
and bound for the rows of each call, so a chain of stages allocates nothing per call.

Thread safety: onnxruntime sessions take concurrent `run` calls; every call binds its own IOBinding
and every thread has its own output buffers, so `exclusive()` is a no-op there. The TensorRT backend
has one execution context, one stream and one set of preallocated buffers per stage, so `exclusive()`
is a re-entrant lock held for a whole chain and every `run` takes it too: threads queue, results
stay correct.

Imports here are lazy (onnxruntime, tensorrt, cuda-python / pycuda), so `export.trt --bundle` can use
`open_cuda` on a machine without onnxruntime.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np

from runtime.manifest import PipelineError, check_graph_io

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# int8 (QDQ) graphs: onnxruntime's MatMul+Add -> Gemm fusion runs before its QDQ fusions and leaves
# DequantizeLinear -> Gemm, fp32 math on weights dequantized every call (measured 2x slower than fp32);
# without it each MatMul becomes one MatMulIntegerToFloat (int8 kernel, fixed scales)
INT8_DISABLED_OPTIMIZERS = ("MatMulAddFusion",)


def disabled_optimizers(precision: str) -> list[str] | None:
    """The onnxruntime optimizers to switch off for a stage of this precision (InferenceSession's argument)."""
    return list(INT8_DISABLED_OPTIMIZERS) if precision == "int8" else None


class OrtBackend:
    """One onnxruntime InferenceSession per stage, best execution provider first (TensorRT EP, CUDA EP,
    CPU) unless `providers` is given. Sessions: graph optimisation ORT_ENABLE_ALL, sequential execution,
    `threads` intra-op threads (default 1: batch-1 latency is what matters, and on a shared 2-core
    machine one thread was 4x faster end to end than two; raise it for big batches on idle cores)."""

    name = "onnxruntime"
    max_batch = None

    def __init__(self, bundle_dir: str | Path, stages: dict[str, dict], providers=None, device: int = 0,
                 threads: int = 1, buffer_rows: int = 64):
        import onnxruntime as ort
        self._ort = ort
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in (*GPU_PROVIDERS, "CPUExecutionProvider") if p in available]
        missing = [p for p in providers if (p if isinstance(p, str) else p[0]) not in available]
        if missing:
            raise PipelineError(f"onnxruntime execution provider(s) {missing} not available here; "
                                f"available: {available}")
        providers = [(p, {"device_id": device}) if p in GPU_PROVIDERS else p for p in providers]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.sessions = {role: _open_session(ort, Path(bundle_dir), st, so, providers) for role, st in stages.items()}
        self.providers = next(iter(self.sessions.values())).get_providers()
        self._device = ("cuda", device) if self.providers[0] in GPU_PROVIDERS else ("cpu", 0)
        # output name -> (dtype, shape after the batch dim), or None where that shape is not static
        self._outputs = {role: {o.name: _static_tail(o) for o in s.get_outputs()} for role, s in self.sessions.items()}
        self.buffer_rows = buffer_rows
        self._local = threading.local()              # per thread: (role, output) -> preallocated OrtValue

    def exclusive(self):
        return contextlib.nullcontext()

    def _buffer(self, role: str, name: str, dtype: np.dtype, tail: tuple, rows: int):
        """This thread's max-batch buffer for one output, allocated on first use; None if `rows` exceed it."""
        if rows > self.buffer_rows:
            return None
        buffers = self._local.__dict__.setdefault("buffers", {})
        if (role, name) not in buffers:
            buffers[role, name] = self._ort.OrtValue.ortvalue_from_shape_and_type(
                [self.buffer_rows, *tail], dtype, *self._device)
        return buffers[role, name]

    def run(self, role: str, feeds: dict, host: bool = True) -> dict:
        sess = self.sessions[role]
        binding = sess.io_binding()
        rows = 0
        for name, value in feeds.items():
            if isinstance(value, self._ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
                rows = value.shape()[0]
            else:
                value = np.ascontiguousarray(value)
                binding.bind_cpu_input(name, value)
                rows = len(value)
        for name, spec in self._outputs[role].items():
            buf = self._buffer(role, name, *spec, rows) if spec is not None else None
            if buf is None:                          # dynamic shape or oversized batch: ORT allocates
                binding.bind_output(name, *self._device)
            else:
                binding.bind_output(name, *self._device, spec[0], [rows, *spec[1]], buf.data_ptr())
        try:
            sess.run_with_iobinding(binding)
        except Exception as e:       # a graph that loaded but cannot run these inputs: onnxruntime's own types
            raise PipelineError(f"stage {role} failed in onnxruntime: {' '.join(str(e).split())[:300]}") from None
        values = binding.copy_outputs_to_cpu() if host else binding.get_outputs()
        return dict(zip(self._outputs[role], values))


def _open_session(ort, bundle_dir: Path, stage: dict, options, providers):
    """An InferenceSession whose graph has exactly the inputs and outputs the manifest promises."""
    try:
        sess = ort.InferenceSession(str(bundle_dir / stage["file"]), options, providers=providers,
                                    disabled_optimizers=disabled_optimizers(stage["precision"]))
    except Exception as e:        # onnxruntime's errors (InvalidProtobuf, Fail, ...) share no useful base class
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PipelineError(f"{stage['file']} is not a graph onnxruntime can load ({reason[:200]}); "
                            f"re-export the bundle") from None
    check_graph_io(stage, sess.get_inputs(), sess.get_outputs())
    return sess


_ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}


def _static_tail(node_arg) -> tuple | None:
    """(numpy dtype, dims after the batch) of a graph output whose only free dim is the batch."""
    dtype, dims = _ONNX_TYPES.get(node_arg.type), node_arg.shape[1:]
    return (dtype, tuple(dims)) if dtype and all(isinstance(d, int) and d > 0 for d in dims) else None


class _CudaPython:
    """The few CUDA runtime calls the TensorRT backend needs, through cuda-python."""

    def __init__(self, rt, device: int):
        self.rt, self.device = rt, device
        self._check(rt.cudaSetDevice(device))
        prop = self._check(rt.cudaGetDeviceProperties(device))
        name = prop.name
        self.name = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).split("\x00")[0]
        self.compute_capability = f"{prop.major}.{prop.minor}"
        self._stream = self._check(rt.cudaStreamCreate())
        self.stream = int(self._stream)

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise PipelineError(f"CUDA error: {err}")
        return rest[0] if len(rest) == 1 else None

    @contextlib.contextmanager
    def activate(self):
        self._check(self.rt.cudaSetDevice(self.device))    # the current device is per host thread
        yield

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(nbytes, 1))))

    def h2d(self, ptr: int, arr: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, kind, self._stream))

    def d2h(self, arr: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, kind, self._stream))

    def sync(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self._stream))


class _PyCuda:
    """The same calls through pycuda (primary context, pushed around every use)."""

    def __init__(self, drv, device: int):
        self.drv = drv
        drv.init()
        dev = drv.Device(device)
        self.name, cc = dev.name(), dev.compute_capability()
        self.compute_capability = f"{cc[0]}.{cc[1]}"
        self._ctx = dev.retain_primary_context()
        self._allocations = []                 # pycuda frees memory when its object dies
        with self.activate():
            self._stream = drv.Stream()
        self.stream = self._stream.handle

    @contextlib.contextmanager
    def activate(self):
        self._ctx.push()
        try:
            yield
        finally:
            self.drv.Context.pop()

    def malloc(self, nbytes: int) -> int:
        self._allocations.append(self.drv.mem_alloc(max(nbytes, 1)))
        return int(self._allocations[-1])

    def h2d(self, ptr: int, arr: np.ndarray) -> None:
        self.drv.memcpy_htod_async(ptr, arr, self._stream)

    def d2h(self, arr: np.ndarray, ptr: int) -> None:
        self.drv.memcpy_dtoh_async(arr, ptr, self._stream)

    def sync(self) -> None:
        self._stream.synchronize()


def open_cuda(device: int = 0):
    """CUDA through cuda-python (`cuda.bindings.runtime`, or the older `cuda.cudart`) or pycuda."""
    try:
        from cuda.bindings import runtime as rt
    except ImportError:
        try:
            from cuda import cudart as rt
        except ImportError:
            rt = None
    if rt is None:
        try:
            import pycuda.driver as drv
        except ImportError:
            raise PipelineError("TensorRT needs cuda-python or pycuda for device memory: "
                                "pip install cuda-python") from None
    try:
        return _CudaPython(rt, device) if rt is not None else _PyCuda(drv, device)
    except Exception as e:     # no driver / no device: each library raises its own error type
        raise PipelineError(f"no usable CUDA device {device}: {e}") from None


class DeviceTensor(NamedTuple):
    """A stage output left on the GPU: valid until the same stage runs again (hold `exclusive()`)."""
    ptr: int
    shape: tuple
    dtype: np.dtype
    rows: int                                  # rows that are real data (the rest is batch padding)


class _TrtStage(NamedTuple):
    context: object
    inputs: dict                               # name -> (dtype, min shape, device ptr)
    outputs: dict                              # name -> (dtype, device ptr)


class TrtBackend:
    """Deserialized TensorRT plans (TensorRT >= 10 API: named I/O tensors, `set_input_shape`,
    `set_tensor_address`, `execute_async_v3`), one execution context per stage, buffers preallocated
    for the engines' max batch (and max sequence length), one CUDA stream. Batches below the
    profile's min batch are padded by repeating the last row; the padding is cut off on the way out."""

    name = "tensorrt"

    def __init__(self, bundle_dir: str | Path, manifest: dict, stages: dict[str, str], device: int = 0):
        info = manifest.get("tensorrt", {})
        missing = [name for name in stages.values() if name not in info.get("plans", {})]
        rebuild = f"build them on this machine with `python -m export.trt --bundle {bundle_dir}`"
        if missing:
            raise PipelineError(f"this bundle has no TensorRT engines for {', '.join(missing)}; {rebuild}")
        try:
            import tensorrt as trt
        except ImportError:
            raise PipelineError("backend 'tensorrt' needs the tensorrt package (TensorRT >= 10)") from None
        self.cuda = open_cuda(device)
        for what, built, here in (("TensorRT", info.get("version"), trt.__version__),
                                  ("GPU compute capability", info.get("compute_capability"),
                                   self.cuda.compute_capability)):
            if built != here:
                raise PipelineError(f"engines were built for {what} {built}, this machine has {here}; "
                                    f"rebuild with `python -m export.trt --bundle {bundle_dir}`")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._stages, self._lock = {}, threading.RLock()
        self._engines = []
        batches = []
        with self.cuda.activate():
            for role, name in stages.items():
                engine = runtime.deserialize_cuda_engine(Path(bundle_dir, info["plans"][name]["file"]).read_bytes())
                if engine is None:
                    raise PipelineError(f"TensorRT could not load the engine of {name}; {rebuild}")
                self._engines.append(engine)
                context = engine.create_execution_context()
                names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
                inputs, outputs = {}, {}
                for tname in names:
                    dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tname)))
                    if engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT:
                        lo, _, hi = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(tname, 0))
                        context.set_input_shape(tname, hi)
                        inputs[tname] = (dtype, lo, self.cuda.malloc(int(np.prod(hi)) * dtype.itemsize))
                        batches.append((lo[0], hi[0]))
                for tname in names:
                    if engine.get_tensor_mode(tname) == trt.TensorIOMode.OUTPUT:
                        shape = tuple(int(d) for d in context.get_tensor_shape(tname))
                        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tname)))
                        outputs[tname] = (dtype, self.cuda.malloc(int(np.prod(shape)) * dtype.itemsize))
                self._stages[role] = _TrtStage(context, inputs, outputs)
        self.min_batch = max(lo for lo, _ in batches)
        self.max_batch = min(hi for _, hi in batches)
        self.providers = [f"TensorRT {trt.__version__} on {self.cuda.name}"]

    def exclusive(self):
        return self._lock

    def run(self, role: str, feeds: dict, host: bool = True) -> dict:
        stage = self._stages[role]
        with self._lock, self.cuda.activate():
            rows = None
            for name, (dtype, lo, ptr) in stage.inputs.items():
                value = feeds[name]
                if isinstance(value, DeviceTensor):          # a previous stage's output: use it in place
                    rows, shape, ptr = value.rows, value.shape, value.ptr
                else:
                    arr = np.ascontiguousarray(value, dtype=dtype)
                    rows = len(arr)
                    if rows < lo[0]:
                        arr = np.concatenate([arr, np.repeat(arr[-1:], lo[0] - rows, axis=0)])
                    shape = arr.shape
                    self.cuda.h2d(ptr, arr)
                stage.context.set_input_shape(name, shape)
                stage.context.set_tensor_address(name, ptr)
            for name, (_, ptr) in stage.outputs.items():
                stage.context.set_tensor_address(name, ptr)
            if not stage.context.execute_async_v3(self.cuda.stream):
                raise PipelineError(f"TensorRT failed to run stage {role}")
            out = {}
            for name, (dtype, ptr) in stage.outputs.items():
                shape = tuple(int(d) for d in stage.context.get_tensor_shape(name))
                if host:
                    out[name] = np.empty(shape, dtype)
                    self.cuda.d2h(out[name], ptr)
                else:
                    out[name] = DeviceTensor(ptr, shape, dtype, rows)
            if host:
                self.cuda.sync()
                out = {name: arr[:rows] for name, arr in out.items()}
            return out
