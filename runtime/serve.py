"""Serve bundles on NVIDIA Triton Inference Server (through PyTriton): `python -m runtime serve ENGINES_DIR`.

Every bundle under ENGINES_DIR (a folder with manifest.json; ENGINES_DIR may itself be one) becomes:

    TASK       inputs  source      text: BYTES [1]; vector: FP32 [cond dim]; image: UINT8 [H, W, C]
                       seed        INT64 [1], >= 0
                       temperature FP32 [1], optional, default: the bundle's (manifest sampling.temperature)
               output  image       UINT8 [H, W, C]; bundles without a decoder: z FP32 [D]
    TASK_edit  inputs  image (UINT8 [H, W, C]), source, new_source (as above)       (bundles with a target encoder)
               output  image (Pipeline.transfer of that row)

One sample per row: row r's residual is default_rng(seed_r).standard_normal((1, D), float32) * temperature_r, so
its result equals `Pipeline.translate([source_r], num_samples=1, seed=seed_r, temperature=temperature_r)` whatever
rows Triton's dynamic batcher put beside it: the source encoder runs one row at a time (its floats depend on the
batch), flow and decoder on the merged batch.

Errors: Triton rejects a wrong dtype or shape itself, per request, before batching. Content errors (NaN, empty
text, undecodable bytes, a negative seed) raise the Pipeline's PipelineError; PyTriton answers the whole merged
batch with that one error, so requests the batcher merged with a bad one fail with it (their clients retry).

Pitfalls handled here (measured with nvidia-pytriton 0.7 / tritonserver 2.51 on a pyenv Python): the Python
backend stub needs libpython's folder on LD_LIBRARY_PATH; PyTriton copies tritonserver into PYTRITON_HOME
(default ~/.cache, here a temp folder); SIGINT/SIGTERM must end `serve` through `Triton.stop()` or tritonserver
is orphaned. PyTriton is imported only inside `serve`, so `import runtime` stays lean.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

import numpy as np

from runtime.inputs import as_float_batch, check_temperature, check_texts, seeded_rng
from runtime.manifest import MANIFEST, PipelineError
from runtime.pipeline import Pipeline


def find_bundles(engines_dir: str | Path) -> dict[str, Path]:
    """Model name (the bundle's folder name) -> bundle folder; ENGINES_DIR may itself be a bundle."""
    root = Path(engines_dir)
    if not root.is_dir():
        raise PipelineError(f"{engines_dir} is not a folder; give the folder holding the exported bundles "
                            f"(e.g. engines/)")
    if (root / MANIFEST).is_file():
        return {root.resolve().name: root}
    found = {d.name: d for d in sorted(root.iterdir()) if (d / MANIFEST).is_file()}
    if not found:
        raise PipelineError(f"no bundles under {engines_dir} (a bundle is a folder with {MANIFEST}; build one with "
                            f"`python -m export.onnx --task NAME`)")
    return found


# ---- request rows -> Pipeline calls -------------------------------------------------------------------

def _source_spec(p: Pipeline) -> tuple[type, tuple[int, ...]]:
    if p.source_kind == "text":
        return bytes, (1,)
    if p.source_kind == "image":
        img = p.manifest["source_image"]
        return np.uint8, (*img["size"], img["channels"])
    return np.float32, p.cond_shape


def _output_spec(p: Pipeline) -> tuple[str, type, tuple[int, ...]]:
    return ("image", np.uint8, p.image_shape) if p.has_decoder else ("z", np.float32, (p.latent_dim,))


def _decode_texts(column: np.ndarray, name: str) -> list[str]:
    texts = []
    for i, item in enumerate(column.reshape(len(column), -1)[:, 0]):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PipelineError(f"{name}[{i}] is not UTF-8 text ({e.reason} at byte {e.start}); send the text "
                                    f"UTF-8 encoded") from None
        texts.append(item)
    return check_texts(texts)


def _rows(p: Pipeline, column: np.ndarray, name: str):
    """One request's source column, validated as Pipeline.translate would (row indices within the request)."""
    if p.source_kind == "text":
        return _decode_texts(column, name)
    if p.source_kind == "vector":
        return as_float_batch(column, p.cond_shape, name)
    return column


def encode_rows(p: Pipeline, sources: list) -> np.ndarray:
    """zΦ for each row exactly as encoding that row alone gives: the source encoder runs one row at a time (each
    distinct text once), because its floats depend on the batch (padding to the longest text, and on MiniLM even
    the batch size alone: measured up to 2e-8 apart). Vectors pass through; flow and decoder take the whole batch
    (bit-identical per row at any batch size on onnxruntime CPU, tested)."""
    if p.source_kind == "vector":
        return np.concatenate(sources)
    rows = [t for group in sources for t in group] if p.source_kind == "text" else list(np.concatenate(sources))
    if p.source_kind == "image":
        return np.concatenate([p.encode_source(x[None]) for x in rows])
    encoded = {text: p.encode_source([text]) for text in dict.fromkeys(rows)}
    return np.concatenate([encoded[text] for text in rows])


def residuals(p: Pipeline, seeds: np.ndarray, temperatures: np.ndarray, best_of: int = 1) -> np.ndarray:
    """Row r: default_rng(seed_r).standard_normal((best_of, D)) * temperature_r, as translate draws for one sample
    (best_of candidates of it: rows r*best_of ... r*best_of + best_of - 1)."""
    return np.concatenate([seeded_rng(int(s)).standard_normal((best_of, p.latent_dim), dtype=np.float32)
                           * np.float32(t) for s, t in zip(seeds, temperatures)])


def _seeds_and_temperatures(request, default: float) -> tuple[np.ndarray, np.ndarray]:
    seeds = np.asarray(request["seed"]).reshape(-1)
    for i, s in enumerate(seeds):
        if s < 0:
            raise PipelineError(f"seed[{i}] must be an integer >= 0, got {int(s)}")
    if "temperature" not in request.keys():
        return seeds, np.full(len(seeds), default, np.float32)
    temperatures = np.asarray(request["temperature"], np.float32).reshape(-1)
    for t in temperatures:
        check_temperature(float(t))
    return seeds, temperatures


def _split(out: np.ndarray, name: str, sizes: list[int]) -> list[dict[str, np.ndarray]]:
    return [{name: part} for part in np.split(out, np.cumsum(sizes)[:-1])]


class RequestError(PipelineError):
    """A PipelineError on its way to the client. PyTriton formats `error.__traceback__` into the message it sends;
    this one has none, so the client reads the problem, not the server's stack (the server log keeps it)."""

    @property
    def __traceback__(self):
        return None

    @__traceback__.setter
    def __traceback__(self, _):
        pass


class _RowModel:
    def __call__(self, requests) -> list[dict[str, np.ndarray]]:
        try:
            return self.infer(requests)
        except PipelineError as e:
            raise RequestError(str(e)) from None


class TranslateModel(_RowModel):
    """Infer function of model TASK: a list of requests (rows merged by the batcher) -> one response each."""

    def __init__(self, pipeline: Pipeline):
        self.p = pipeline
        dtype, shape = _source_spec(pipeline)
        self.inputs = [("source", dtype, shape, False), ("seed", np.int64, (1,), False),
                       ("temperature", np.float32, (1,), True)]
        self.outputs = [_output_spec(pipeline)]

    def infer(self, requests) -> list[dict[str, np.ndarray]]:
        sources, seeds, temps = [], [], []
        for request in requests:
            sources.append(_rows(self.p, request["source"], "source"))
            s, t = _seeds_and_temperatures(request, self.p.default_temperature)
            if len(s) != len(sources[-1]) or len(t) != len(s):
                raise PipelineError(f"source, seed and temperature must have the same number of rows, got "
                                    f"{len(sources[-1])}, {len(s)}, {len(t)}")
            seeds.append(s)
            temps.append(t)
        cond = self.p.project(encode_rows(self.p, sources))       # as translate: off-support rows projected
        n = self.p.default_best_of                                # and the bundle's selection (runtime/sampling.py)
        out = self.p._generate_selected(residuals(self.p, np.concatenate(seeds), np.concatenate(temps), n),
                                        np.repeat(cond, n, axis=0), n, self.p.default_cycles)
        return _split(out, self.outputs[0][0], [len(s) for s in seeds])


class EditModel(_RowModel):
    """Infer function of model TASK_edit: Pipeline.transfer(image, source, new_source) per row."""

    def __init__(self, pipeline: Pipeline):
        self.p = pipeline
        dtype, shape = _source_spec(pipeline)
        self.inputs = [("image", np.uint8, pipeline.image_shape, False), ("source", dtype, shape, False),
                       ("new_source", dtype, shape, False)]
        self.outputs = [_output_spec(pipeline)]

    def infer(self, requests) -> list[dict[str, np.ndarray]]:
        images, sources, new_sources = [], [], []
        for request in requests:
            images.append(np.asarray(request["image"]))
            sources.append(_rows(self.p, request["source"], "source"))
            new_sources.append(_rows(self.p, request["new_source"], "new_source"))
            if not len(images[-1]) == len(sources[-1]) == len(new_sources[-1]):
                raise PipelineError(f"image, source and new_source must have the same number of rows, got "
                                    f"{len(images[-1])}, {len(sources[-1])}, {len(new_sources[-1])}")
        z = self.p.encode_target(np.concatenate(images))
        v, _ = self.p.flow_inverse(z, encode_rows(self.p, sources))
        out = self.p._generate(v, encode_rows(self.p, new_sources))
        return _split(out, self.outputs[0][0], [len(x) for x in images])


def build_models(engines_dir, backend="auto", precision="fp32", max_batch=64, instances=1, threads=1,
                 device=0) -> dict[str, list]:
    """Model name -> one infer callable per instance (each instance its own Pipeline: TensorRT contexts are
    not shared between threads)."""
    models = {}
    for task, bundle in find_bundles(engines_dir).items():
        pipes = [Pipeline.load(bundle, backend=backend, device=device, precision=precision, max_batch=max_batch,
                               threads=threads) for _ in range(instances)]
        models[task] = [TranslateModel(p) for p in pipes]
        if pipes[0].has_target_encoder:
            models[f"{task}_edit"] = [EditModel(p) for p in pipes]
    return models


# ---- the server -------------------------------------------------------------------------------------

def prepare_environment() -> None:
    """Before PyTriton is imported or tritonserver started: libpython on LD_LIBRARY_PATH (the Python backend
    stub links it; pyenv keeps it outside the loader's path), and a PYTRITON_HOME outside the home folder."""
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if libdir and libdir not in paths:
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *paths])
    os.environ.setdefault("PYTRITON_HOME", str(Path(tempfile.gettempdir()) / f"pytriton-{os.getuid()}"))


def _check_ports(host: str, ports: dict[str, int]) -> None:
    for flag, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, port))
            except OSError as e:
                raise PipelineError(f"cannot listen on {host}:{port} ({e.strerror}); choose another {flag}") from None


def serve(engines_dir, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int = 8002, backend: str = "auto", precision: str = "fp32", max_batch: int = 64,
          max_queue_delay_us: int = 2000, instances: int = 1, threads: int = 1, device: int = 0,
          log_file: str | None = None, announce=print) -> None:
    """Serve every bundle under engines_dir until SIGINT/SIGTERM, then stop tritonserver and return."""
    for name, value in (("max_batch", max_batch), ("instances", instances)):
        if value < 1:
            raise PipelineError(f"{name} must be >= 1, got {value}")
    if max_queue_delay_us < 0:
        raise PipelineError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
    prepare_environment()
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as e:
        raise PipelineError(f"serving needs PyTriton ({e}); install it with `pip install '.[serve]'`") from None
    logging.getLogger("pytriton").setLevel(logging.WARNING)
    find_bundles(engines_dir)                  # a wrong folder is reported before the port check
    _check_ports(host, {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port})
    models = build_models(engines_dir, backend, precision, max_batch, instances, threads, device)

    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
                          metrics_address=host, metrics_port=metrics_port, log_verbose=0,
                          log_file=Path(log_file) if log_file else None)
    triton = Triton(config=config)
    try:
        for name, callables in models.items():
            first = callables[0]
            triton.bind(model_name=name, infer_func=callables,
                        inputs=[Tensor(name=n, dtype=d, shape=s, optional=o) for n, d, s, o in first.inputs],
                        outputs=[Tensor(name=n, dtype=d, shape=s) for n, d, s in first.outputs],
                        config=ModelConfig(max_batch_size=max_batch,
                                           batcher=DynamicBatcher(max_queue_delay_microseconds=max_queue_delay_us)),
                        strict=True)
        triton.run()
        for name, callables in models.items():
            ins = ", ".join(f"{n}{list(s)}" for n, _, s, _ in callables[0].inputs)
            outs = ", ".join(f"{n}{list(s)}" for n, _, s in callables[0].outputs)
            announce(f"ready: {name} ({ins}) -> ({outs})  http://{host}:{http_port}/v2/models/{name}/infer  "
                     f"grpc {host}:{grpc_port}")
        while not stop.wait(0.5):
            if not triton.is_alive():
                raise PipelineError("tritonserver stopped unexpectedly (see its log above, or --log-file)")
    finally:
        triton.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---- a server in a child process (tests, benchmarks, notebooks) --------------------------------------------

def free_ports(n: int) -> list[int]:
    """n loopback ports nothing listens on (bound to port 0 together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ServerProcess:
    """`python -m runtime serve ENGINES *args` on free loopback ports in a child process and its own process group,
    its working copy in `home` (PYTRITON_HOME). Ready when it printed `models` `ready:` lines; `close()` sends
    SIGTERM, waits, and kills the group (by the child's PID) only if it has to."""

    def __init__(self, engines: str | Path, *args: str, home: str | Path, models: int = 1, start_s: float = 300):
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTRITON_HOME": str(home),
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", str(engines), "--http-port", str(self.http_port),
             "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._expected, self._ready = models, threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(start_s) or self.proc.poll() is not None:
            self.close()
            raise RuntimeError("runtime serve did not get ready:\n" + "".join(self.lines[-40:]))

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if len(self.models) >= self._expected:
                self._ready.set()

    @property
    def models(self) -> list[str]:
        return [line.split()[1] for line in self.lines if line.startswith("ready: ")]

    def close(self, stop_s: float = 90) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(stop_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode
