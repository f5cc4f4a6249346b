"""Peak resident memory of one backend, in a fresh process that loads only that backend.

    python -m bench.rss BUNDLE BACKEND --batches 1,8,64 [--threads 1]   -> JSON on stdout

A process imports only what the backend needs (the onnxruntime rows never import torch, like a
deployed runtime), loads the bundle, then for each batch (ascending) and stage resets the peak
(`/proc/self/clear_refs`) and runs the call 3 times: `peak_mb[stage][batch]` is the process's VmHWM
(MiB) over those calls, i.e. everything resident at once: interpreter, libraries, weights, activations,
and what allocators kept from earlier calls of this process at the same or smaller batches (e.g.
onnxruntime's arena), as in a server that has already served those.
Where the peak cannot be reset, `resettable` is false and each value is the process-lifetime peak so far.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.cases import BundleData, Skip, open_backend
from bench.machine import peak_rss_mb, reset_peak_rss


def measure_backend(bundle: str, backend: str, batches: list[int], threads: int) -> dict:
    """In this process: open the backend, then the peak RSS of each stage at each batch (module docstring)."""
    data = BundleData(bundle)
    calls = open_backend(data, backend, threads)
    out = {"loaded_mb": peak_rss_mb(), "peak_mb": {stage: {} for stage in calls}, "resettable": True}
    for batch in sorted(batches):
        for stage, fn in calls.items():
            inputs = data.inputs(stage, batch)
            out["resettable"] &= reset_peak_rss()
            for _ in range(3):
                fn(inputs)
            out["peak_mb"][stage][str(batch)] = peak_rss_mb()
    return out


def peak_rss(bundle: str, backend: str, batches: list[int], threads: int = 1, timeout: float = 900) -> dict:
    """Run `measure_backend` in a child process; {"error": ...} if it fails."""
    cmd = [sys.executable, "-m", "bench.rss", str(bundle), backend, "--batches", ",".join(map(str, batches)),
           "--threads", str(threads)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("backend")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        result = measure_backend(args.bundle, args.backend, [int(b) for b in args.batches.split(",")], args.threads)
    except Skip as e:
        result = {"skipped": str(e)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
