"""`python -m runtime serve` on Triton (PyTriton): both models over tritonclient HTTP and gRPC, byte equality with
runtime.Pipeline alone and in a concurrent burst of 32, bad requests followed by good ones, clean SIGTERM shutdown.

One server per module (loopback, free ports), started with its own PYTRITON_HOME and process group; every process
it leaves behind is found by that folder in its command line and ended by PID."""
import os
import signal
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_export import ATTRIBUTES

from runtime import Pipeline
from runtime.__main__ import main as cli
from runtime.serve import ServerProcess

pytest.importorskip("pytriton", reason="serving needs the [serve] extra")
http = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TASKS = ("attributes", "text2image", "features")
MODELS = ("attributes", "attributes_edit", "features", "text2image", "text2image_edit")
START_S, STOP_S = 240, 90          # bounds on a busy 2-core machine (measured: ~20 s start, ~10 s stop)


def processes_under(folder: Path) -> list[int]:
    """PIDs whose command line mentions folder (tritonserver and its Python backend stubs run from there)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(folder).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def end(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def metric(server: ServerProcess, name: str, model: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}",'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {model} not in metrics")


def settled_metric(server: ServerProcess, name: str, model: str, timeout: float = 10.0) -> float:
    """The metric once two reads 0.25 s apart agree: Triton counts a request after its response is sent, so a
    read right after the last response can still miss it (seen: 33 counted for a burst of 32)."""
    last, deadline = metric(server, name, model), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = metric(server, name, model)
        if now == last:
            return now
        last = now
    return last


@pytest.fixture(scope="module")
def task_bundles(bundles):
    """Task name -> bundle folder, from the session's small bundles (conftest.py)."""
    return {task: bundles.get(task) for task in TASKS}


@pytest.fixture(scope="module")
def server(task_bundles, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    engines = root / "engines"
    engines.mkdir()
    for task, path in task_bundles.items():
        (engines / task).symlink_to(path, target_is_directory=True)
    home = root / "pytriton"
    try:
        s = ServerProcess(engines, "--log-file", str(root / "tritonserver.log"), home=home, models=len(MODELS),
                          start_s=START_S)
    except RuntimeError as e:
        end(processes_under(home))
        pytest.fail(str(e))
    s.home = home
    yield s
    s.close(STOP_S)
    end(processes_under(home))


@pytest.fixture(scope="module")
def pipes(task_bundles):
    return {task: Pipeline.load(path) for task, path in task_bundles.items()}


def inputs(lib, **arrays):
    out = []
    for name, arr in arrays.items():
        dtype = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.uint8): "UINT8",
                 np.dtype(object): "BYTES", np.dtype(np.float64): "FP64"}[arr.dtype]
        t = lib.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def texts(*items) -> np.ndarray:
    return np.array([[t.encode() if isinstance(t, str) else t] for t in items], dtype=object)


def col(values, dtype) -> np.ndarray:
    return np.asarray(values, dtype).reshape(-1, 1)


# ---- both models, both protocols ------------------------------------------------------------------------------

def test_translate_over_http_and_grpc_equals_pipeline(server, pipes):
    clients = {"http": (http, http.InferenceServerClient(f"127.0.0.1:{server.http_port}")),
               "grpc": (grpc, grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}"))}
    cond = np.eye(len(ATTRIBUTES), dtype=np.float32)[[0, 3]]
    feats_cond = np.load(pipes["features"].bundle_dir / "validation/cond.npy")[:2]
    for proto, (lib, client) in clients.items():
        assert all(client.is_model_ready(m) for m in MODELS), proto
        out = client.infer("text2image", inputs(lib, source=texts("a red square", "two small blue circles"),
                                                seed=col([4, 5], np.int64), temperature=col([0.7, 1.0], np.float32)))
        image = out.as_numpy("image")
        assert image.dtype == np.uint8 and image.shape == (2, 16, 16, 3)
        for r, (text, seed, t) in enumerate([("a red square", 4, 0.7), ("two small blue circles", 5, 1.0)]):
            assert np.array_equal(image[r], pipes["text2image"].translate([text], seed=seed, temperature=t)[0]), proto
        out = client.infer("attributes", inputs(lib, source=cond, seed=col([0, 1], np.int64)))   # temperature: 1
        ref = [pipes["attributes"].translate(cond[r:r + 1], seed=r)[0] for r in range(2)]
        assert np.array_equal(out.as_numpy("image"), np.stack(ref)), proto
        out = client.infer("features", inputs(lib, source=feats_cond, seed=col([9, 9], np.int64),
                                              temperature=col([0.5, 0.5], np.float32)))
        z = out.as_numpy("z")
        assert z.dtype == np.float32 and z.shape == (2, 8)
        ref = [pipes["features"].translate(feats_cond[r:r + 1], seed=9, temperature=0.5)[0] for r in range(2)]
        assert np.array_equal(z, np.stack(ref)), proto


def test_edit_models_equal_pipeline_transfer(server, pipes):
    client = grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    p = pipes["attributes"]
    src, new = np.eye(5, dtype=np.float32)[[0]], np.eye(5, dtype=np.float32)[[1]]
    image = p.translate(src, seed=3)
    out = client.infer("attributes_edit", inputs(grpc, image=image, source=src, new_source=new)).as_numpy("image")
    assert np.array_equal(out, p.transfer(image, src, new)) and not np.array_equal(out, image)
    p = pipes["text2image"]
    image = p.translate(["a red square"], seed=1)
    out = client.infer("text2image_edit", inputs(grpc, image=image, source=texts("a red square"),
                                                 new_source=texts("a blue circle"))).as_numpy("image")
    assert np.array_equal(out, p.transfer(image, ["a red square"], ["a blue circle"]))


# ---- dynamic batching ------------------------------------------------------------------------------------------

def test_burst_of_32_equals_each_row_alone(server, pipes):
    words = ["red", "blue", "square", "circle", "small", "big", "two", "a"]
    rows = [(" ".join(words[: 1 + r % 8][::-1 if r % 2 else 1]), 100 + r, 0.5 + 0.05 * r) for r in range(32)]
    client = grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")

    def ask(row):
        text, seed, t = row
        return client.infer("text2image", inputs(grpc, source=texts(text), seed=col([seed], np.int64),
                                                 temperature=col([t], np.float32))).as_numpy("image")[0]
    alone = [ask(row) for row in rows]
    assert all(np.array_equal(a, pipes["text2image"].translate([x], seed=s, temperature=t)[0])
               for a, (x, s, t) in zip(alone, rows))
    count, batches = (settled_metric(server, m, "text2image")
                      for m in ("nv_inference_count", "nv_inference_exec_count"))
    gate = threading.Barrier(32)
    with ThreadPoolExecutor(32) as pool:
        burst = list(pool.map(lambda row: (gate.wait(60), ask(row))[1], rows))
    assert all(np.array_equal(a, b) for a, b in zip(alone, burst))
    count2, batches2 = (settled_metric(server, m, "text2image")
                        for m in ("nv_inference_count", "nv_inference_exec_count"))
    assert count2 - count == 32 and batches2 - batches < 32          # the batcher merged rows


# ---- errors ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, arrays, message", [
    ("text2image", dict(source=texts("   "), seed=col([1], np.int64)), "source[0] is empty or whitespace"),
    ("text2image", dict(source=texts(b"\xff\xfe"), seed=col([1], np.int64)), "source[0] is not UTF-8 text"),
    ("text2image", dict(source=texts("ok"), seed=col([-1], np.int64)), "seed[0] must be an integer >= 0"),
    ("text2image", dict(source=texts("ok"), seed=col([1], np.int64), temperature=col([0], np.float32)),
     "temperature must be a finite number > 0"),
    ("attributes", dict(source=np.full((1, 5), np.nan, np.float32), seed=col([1], np.int64)), "NaN/Inf"),
    ("attributes", dict(source=np.zeros((1, 5)), seed=col([1], np.int64)), "data-type is 'FP64'"),
    ("attributes", dict(source=np.zeros((1, 3), np.float32), seed=col([1], np.int64)), "unexpected shape"),
    ("attributes_edit", dict(image=np.zeros((1, 8, 8, 3), np.uint8), source=np.zeros((1, 5), np.float32),
                             new_source=np.zeros((1, 5), np.float32)), "unexpected shape"),
])
def test_bad_request_then_good_one(server, pipes, model, arrays, message):
    client = http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, inputs(http, **arrays))
    text = err.value.message()
    assert message in text and "serve.py" not in text           # the problem, not the server's stack
    good = client.infer("text2image", inputs(http, source=texts("a red square"), seed=col([2], np.int64)))
    assert np.array_equal(good.as_numpy("image"), pipes["text2image"].translate(["a red square"], seed=2))


def test_cli_errors_before_starting(tmp_path, capsys, task_bundles):
    assert cli(["serve", str(tmp_path)]) == 2
    assert "no bundles under" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert cli(["serve", str(task_bundles["features"]), "--http-port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0] and "--http-port" in err[0]


# ---- shutdown (last: it stops the module's server) -------------------------------------------------------------

def test_sigterm_stops_server_and_tritonserver(server):
    children = processes_under(server.home)
    assert children, "tritonserver should be running from the server's PYTRITON_HOME"
    os.kill(server.proc.pid, signal.SIGTERM)
    t = time.monotonic()
    try:
        code = server.proc.wait(STOP_S)
    finally:
        left = processes_under(server.home)
        end(left)
    assert code == 0 and sorted(server.models) == sorted(MODELS), "".join(server.lines[-20:])
    assert not left, f"orphaned processes {left} after {time.monotonic() - t:.0f} s"
    assert not any(server.home.glob("workspace_*")), "PyTriton's working copy was not removed"
