"""Serving overhead: requests/s and latency p50/p99 through Triton (`python -m runtime serve`, loopback) beside the
same calls on runtime.Pipeline in-process, at 1, 8 and 32 concurrent clients; one sample (one row) per request.

    python -m bench.serving --engines engines [--tasks attributes,text2image] [--clients 1,8,32] [--requests 96]
        [--protocol grpc|http] [--max-queue-delay-us 2000] [--json results.json]

A client is a thread sending its share of --requests one after another (seed = request number). In-process clients
share one Pipeline (onnxruntime sessions take concurrent calls), Triton clients one server per bundle with one
model instance; both at one onnxruntime thread per call. A few warm-up requests precede each timed run. Prints a
markdown table; the ratio is Triton's requests/s over in-process requests/s at the same client count.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from runtime import Pipeline
from runtime.serve import ServerProcess, find_bundles

TEXTS = ["a small red circle", "two big blue squares", "a green triangle on the left", "a yellow star",
         "a dog", "a photograph of a mountain lake at dawn", "an old red car", "a bowl of fruit"]
ROOT = Path(__file__).resolve().parent.parent


def sources(p: Pipeline, n: int) -> list:
    """n single-row sources: texts, or the bundle's validation conditions."""
    if p.source_kind == "text":
        return [TEXTS[i % len(TEXTS)] for i in range(n)]
    cond = np.load(p.bundle_dir / "validation" / "cond.npy")
    return [cond[i % len(cond)] for i in range(n)]


def timed(call, n: int, clients: int) -> dict:
    """Run call(i) for i < n from `clients` threads (each its own share, in order); latency per call."""
    latencies = [0.0] * n

    def client(k):
        for i in range(k, n, clients):
            t = time.perf_counter()
            call(i)
            latencies[i] = time.perf_counter() - t
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {"requests": n, "wall_s": wall, "rps": n / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


def triton_call(server: ServerProcess, p: Pipeline, task: str, rows: list, protocol: str, clients: int):
    if protocol == "grpc":
        import tritonclient.grpc as lib
        url = f"127.0.0.1:{server.grpc_port}"
    else:
        import tritonclient.http as lib
        url = f"127.0.0.1:{server.http_port}"
    local = threading.local()

    def call(i):
        if not hasattr(local, "client"):
            local.client = lib.InferenceServerClient(url)
        src = np.array([[rows[i].encode()]], dtype=object) if p.source_kind == "text" else \
            np.asarray(rows[i], np.float32)[None]
        inputs = []
        for name, arr, dtype in (("source", src, "BYTES" if p.source_kind == "text" else "FP32"),
                                 ("seed", np.array([[i]], np.int64), "INT64")):
            t = lib.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            inputs.append(t)
        return local.client.infer(task, inputs)
    return call


def bench_bundle(task: str, bundle: Path, clients: list[int], n: int, protocol: str, delay_us: int,
                 workdir: Path) -> list[dict]:
    p = Pipeline.load(bundle)
    rows = sources(p, n)
    results = []

    def local_call(i):
        return p.translate([rows[i]] if p.source_kind == "text" else rows[i][None], num_samples=1, seed=i)
    for c in clients:
        timed(local_call, min(n, 2 * c), c)                       # warm-up
        results.append({"task": task, "mode": "in-process", "clients": c, **timed(local_call, n, c)})
        print(f"{task} in-process  {c:3d} clients: {results[-1]['rps']:.1f} req/s", file=sys.stderr)
    server = ServerProcess(bundle, "--max-queue-delay-us", str(delay_us), "--log-file",
                           str(workdir / "tritonserver.log"), home=workdir / "pytriton")
    try:
        for c in clients:
            call = triton_call(server, p, task, rows, protocol, c)
            timed(call, min(n, 2 * c), c)
            results.append({"task": task, "mode": f"triton-{protocol}", "clients": c, **timed(call, n, c)})
            print(f"{task} triton-{protocol} {c:3d} clients: {results[-1]['rps']:.1f} req/s", file=sys.stderr)
    finally:
        code = server.close()
    if code != 0:
        raise RuntimeError(f"server exited with {code}:\n" + "".join(server.lines[-20:]))
    return results


def table(results: list[dict]) -> str:
    local = {(r["task"], r["clients"]): r for r in results if r["mode"] == "in-process"}
    lines = ["| bundle | clients | mode | requests/s | p50 ms | p99 ms | Triton / in-process (req/s) |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in results:
        ratio = "" if r["mode"] == "in-process" else f"{r['rps'] / local[(r['task'], r['clients'])]['rps']:.2f}x"
        lines.append(f"| {r['task']} | {r['clients']} | {r['mode']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="engines", help="folder of bundles (or one bundle)")
    ap.add_argument("--tasks", default="", help="comma-separated bundle names (default: all)")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=96, help="timed requests per row of the table")
    ap.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    ap.add_argument("--max-queue-delay-us", type=int, default=2000)
    ap.add_argument("--workdir", default=None, help="PyTriton's working folder (default: a temp folder)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    import tempfile
    bundles = find_bundles(args.engines)
    wanted = [t for t in args.tasks.split(",") if t] or list(bundles)
    clients = [int(c) for c in args.clients.split(",") if c]
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        for task in wanted:
            results += bench_bundle(task, bundles[task], clients, args.requests, args.protocol,
                                    args.max_queue_delay_us, Path(work))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{stamp}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n\n{table(results)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": stamp, "argv": sys.argv, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
