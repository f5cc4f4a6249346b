"""A paper-size translator in the benchmark: `python -m bench --paper` (or `python -m bench.paper`).

    python -m bench --paper [--paper-dir engines/.paper-bert2biggan] [--quick] [--threads 1] [--out bench/results]

Builds bert2biggan's cINN at the task's `paper` preset (Tab. S3a: 20 blocks, subnetwork width 8·D, depth 4),
with the task's D and condition size (read from engines/bert2biggan/manifest.json where it exists, else
D = 256, c = 384), RANDOM weights (timing only; every output says so): the couplings' last layers, which start
at zero in training, are redrawn so that log-scales and shifts have std ~0.05 and the flow is no identity.
Exported through `export.onnx.export_bundle` (fp32; its ~2 GB per direction go to ONNX external data) and
given static int8 flows: onnxruntime `quantize_static`, QDQ, weights int8 per output channel, activations
uint8 with scales calibrated on pairs drawn from the model (v ~ N(0, I), c ~ the model's conditions,
z = τ(v | c)). An export/quantize.py of the project is used instead where it exists (`quantize_static_flow`).

Measured per direction (only that direction's fp32 and int8 sessions are in memory at once), fp32 vs int8
interleaved at batch 1/8/64 with the runtime's session options (bench.timing), each row beside its floor
(bench.cost, this run's machine floors); peak RSS per direction and precision in a fresh process; int8 NLL
drift on pairs drawn from the model (sample v, z = τ_fp32(v | c), NLL of z by τ⁻¹ int8 vs fp32), round trip
‖τ_int8(τ⁻¹_int8(z)) - z‖/‖z‖ and batch dependence (rows alone vs inside a batch of 64). Targets at batch 1:
fp32 flow <= 1.1x its memory floor, int8 >= 2.8x faster than fp32, |NLL drift| <= 0.003 nats/dim.
--quick: a tiny flow (2 blocks, width 64) forced into external data: checks the path runs, numbers mean nothing.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import machine
from bench.cost import floor_ms, graph_cost
from bench.paper_report import ROLES, verdicts, write
from bench.timing import QUICK, Case, Plan, measure, summary

BATCHES = (1, 8, 64)
PAPER_PLAN = Plan(warmup_s=1.0, round_s=0.1, min_rounds=6, max_rounds=20, tol=0.03, budget_s=150.0)
# std of the redrawn couplings' log-scales and shifts: at 0.2 a random 20-block flow is chaotic (z rms 4e7,
# fp32 vs fp64 rel err 0.40, so no export parity check can pass); at 0.05 z rms 1.09, fp32 vs fp64 2.7e-7
COUPLING_STD = 0.05
CALIB_PAIRS, EVAL_PAIRS = 256, 256


def _log(msg: str, t0: float = time.perf_counter()) -> None:
    print(f"[paper {time.perf_counter() - t0:6.0f} s] {msg}", flush=True)


def paper_config(quick: bool, engines: Path = Path("engines")) -> dict:
    """FlowConfig of bert2biggan's paper preset with the task's D and condition size (tiny in quick mode)."""
    manifest = engines / "bert2biggan" / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        dim, cond, origin = int(m["latent_dim"]), tuple(m["cond_shape"]), str(manifest)
    else:
        dim, cond, origin = 256, (384,), "defaults (BigGAN-deep z 128 + class embedding 128; MiniLM 384)"
    if quick:
        return {"target_dim": 16, "cond_shape": [12], "num_blocks": 2, "hidden": 64, "depth": 4,
                "origin": "quick: tiny stand-in"}
    from train.tasks.bert2biggan import PRESETS
    flow = dict(PRESETS["paper"]["flow"])
    if flow.get("hidden") == "8d":
        flow["hidden"] = 8 * dim
    return {"target_dim": dim, "cond_shape": list(cond), **flow, "origin": origin}


def build_model(cfg: dict, seed: int = 0):
    """The random-init paper flow, couplings redrawn so they are not the identity (see the module doc)."""
    import torch

    from train.core.flow import AffineHalf, ConditionalINN, FlowConfig
    torch.manual_seed(seed)
    model = ConditionalINN(FlowConfig(**{k: (tuple(v) if k == "cond_shape" else v) for k, v in cfg.items()
                                         if k != "origin"})).eval()
    lasts, rms = [m.st[-1] for m in model.modules() if isinstance(m, AffineHalf)], {}
    hooks = [lin.register_forward_hook(lambda mod, x, y, i=i: rms.__setitem__(i, float(x[0].pow(2).mean().sqrt())))
             for i, lin in enumerate(lasts)]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.inverse(torch.randn(64, cfg["target_dim"], generator=gen), model.random_conditions(64, gen))
        for h in hooks:
            h.remove()
        for i, lin in enumerate(lasts):
            lin.weight.normal_(0, COUPLING_STD / (max(rms[i], 1e-6) * lin.in_features ** 0.5), generator=gen)
            lin.bias.zero_()
    return model


def model_pairs(model, n: int, seed: int) -> dict:
    """n pairs drawn from the model: c ~ its conditions, v ~ N(0, I), z = τ(v | c) (PyTorch fp32)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        cond = model.random_conditions(n, gen)
        v = torch.randn(n, model.cfg.target_dim, generator=gen)
        z = torch.cat([model(v[i:i + 64], cond[i:i + 64]) for i in range(0, n, 64)])
    return {"cond": cond.numpy(), "v": v.numpy(), "z": z.numpy()}


def _ort_quantize(src: Path, dst: Path, feeds: list[dict]) -> None:
    """Static QDQ int8 with onnxruntime directly: Gemm -> MatMul + Add first (the form whose QDQ pattern
    onnxruntime fuses into MatMulIntegerToFloat), weights int8 per output channel, activations uint8."""
    import logging
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from export.bundle import gemm_to_matmul, save_graph

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quantize.") as tmp:
        mm = Path(tmp) / "matmul.onnx"
        save_graph(gemm_to_matmul(onnx.load(str(src))), mm, external=True)     # quantize_static loads it by path
        gc.collect()
        logging.disable(logging.WARNING)
        try:
            quantize_static(str(mm), str(Path(tmp) / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul"], per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            use_external_data_format=True,
                            extra_options={"QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
        finally:
            logging.disable(logging.NOTSET)
        save_graph(onnx.load(str(Path(tmp) / "q.onnx")), dst)      # one file again where it fits


def add_static_int8(bundle: Path, calib: dict, quick: bool) -> str:
    """flow_*.int8.onnx by static QDQ quantization, registered in the manifest; returns which quantizer ran."""
    from export.bundle import stage_entry, write_manifest
    from runtime.manifest import read_manifest, stage_name
    try:
        from export.quantize import quantize_static_flow  # the export's own, where it exists
    except ImportError:
        quantize_static_flow = None
    manifest = read_manifest(bundle)
    for role in ROLES:
        first = "v" if role == "flow_forward" else "z"
        feeds = [{first: calib[first][i:i + 64], "cond": calib["cond"][i:i + 64]}
                 for i in range(0, len(calib["z"]), 64)]
        dst = bundle / f"{role}.int8.onnx"
        if quantize_static_flow is not None:
            quantize_static_flow(bundle / f"{role}.onnx", dst, feeds)
        else:
            _ort_quantize(bundle / f"{role}.onnx", dst, feeds)
        manifest["stages"][stage_name(role, "int8")] = stage_entry(bundle, dst.name, role, "int8")
        gc.collect()
    manifest.setdefault("checks", {})["int8_method"] = "static QDQ (quantize_static, MinMax, per-channel weights)"
    write_manifest(bundle, manifest)
    return "export.quantize.quantize_static_flow" if quantize_static_flow else "onnxruntime quantize_static (bench)"


def build_bundle(out: Path, cfg: dict, quick: bool) -> dict:
    """Export the paper flow to `out` (reused when its manifest records the same config); returns facts."""
    from runtime.manifest import read_manifest
    if (out / "manifest.json").is_file():
        m = read_manifest(out)
        if m.get("source", {}).get("paper_config") == cfg and "flow_forward.int8" in m["stages"]:
            _log(f"reusing {out}")
            return {"reused": True, **m["source"]}
    return _export(out, cfg, quick)


def _export(out: Path, cfg: dict, quick: bool) -> dict:
    import export.bundle as eb
    from export.onnx import export_bundle
    from train.experts.base import Experts
    t = time.perf_counter()
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    _log(f"built random-init flow: {params / 1e6:.1f} M parameters ({params * 4 / 1e9:.2f} GB fp32)")
    val, calib = model_pairs(model, 64, seed=1), model_pairs(model, CALIB_PAIRS, seed=2)
    limit = eb.EXTERNAL_DATA_BYTES
    eb.EXTERNAL_DATA_BYTES = 0 if quick else limit          # quick: force the external-data path
    try:
        source = {"paper_config": cfg, "weights": "random init (timing only; couplings redrawn, std "
                                                  f"{COUPLING_STD})", "parameters": params}
        export_bundle(model, Experts(), out, task="bert2biggan-paper", cond=val["cond"], z=val["z"],
                      origin="random-init model samples", source=source)
    finally:
        eb.EXTERNAL_DATA_BYTES = limit
    export_s = time.perf_counter() - t
    del model
    gc.collect()
    _log(f"exported fp32 in {export_s:.0f} s; quantizing")
    t = time.perf_counter()
    quantizer = add_static_int8(out, calib, quick)
    _log(f"static int8 in {time.perf_counter() - t:.0f} s ({quantizer})")
    return {"reused": False, **source, "export_s": export_s, "quantize_s": time.perf_counter() - t,
            "quantizer": quantizer}


def _files(bundle: Path) -> dict:
    m = json.loads((bundle / "manifest.json").read_text())
    out = {}
    for name, st in m["stages"].items():
        files = [st["file"], *st.get("external_data", {})]
        out[name] = {"files": files, "bytes": sum((bundle / f).stat().st_size for f in files)}
    return out


def _path(bundle: Path, role: str, precision: str) -> str:
    return str(bundle / (f"{role}.onnx" if precision == "fp32" else f"{role}.{precision}.onnx"))


def _feed(role: str, pairs: dict, batch: int) -> dict:
    first = "v" if role == "flow_forward" else "z"
    idx = np.arange(batch) % len(pairs["z"])
    return {first: np.ascontiguousarray(pairs[first][idx]), "cond": np.ascontiguousarray(pairs["cond"][idx])}


def _floor(path: str, batch: int, fl: dict, threads: int, int8: bool) -> dict:
    cost = graph_cost(path, batch)
    peak = machine.int8_peak_gflops(fl) if int8 else machine.fp32_peak_gflops(fl, threads)
    return {**floor_ms(cost, fl["read_bandwidth"]["gbs"], peak), "bytes": cost["bytes"],
            "weight_bytes": cost["weight_bytes"], "matmul_flops": cost["matmul_flops"]}


def time_direction(bundle: Path, role: str, pairs: dict, fl: dict, threads: int, plan: Plan, batches) -> list[dict]:
    """fp32 and int8 sessions of one direction, every batch, interleaved; rows with their floors."""
    sessions = {p: machine.ort_session(_path(bundle, role, p), threads) for p in ("fp32", "int8")}
    cases = [Case((p, role, n), (lambda s=s, f=_feed(role, pairs, n): s.run(None, f)), n)
             for p, s in sessions.items() for n in batches]
    run = measure(cases, plan)
    rows = []
    for c in cases:
        precision, _, batch = c.key
        fl_row = _floor(_path(bundle, role, precision), batch, fl, threads, precision == "int8")
        s = summary(c)
        rows.append({"backend": f"ort-{precision}", "stage": role, "batch": batch, **s, "floor": fl_row,
                     "measured_over_floor": s["median_ms"] / fl_row["ms"],
                     "measured_over_memory_floor": s["median_ms"] / fl_row["memory_ms"], "measurement": run})
    del sessions, cases
    gc.collect()
    return rows


def accuracy(bundle: Path, pairs: dict, threads: int) -> dict:
    """int8 vs fp32 on pairs drawn from the model, one session in memory at a time."""
    from runtime.manifest import l2_rel, nll_per_dim

    def run(role, precision, feed):
        sess = machine.ort_session(_path(bundle, role, precision), threads)
        return [np.concatenate(x) for x in zip(*(sess.run(None, {k: v[i:i + 64] for k, v in feed.items()})
                                                 for i in range(0, len(feed["cond"]), 64)))]

    zc = {"z": pairs["z"], "cond": pairs["cond"]}
    v32, ld32 = run("flow_inverse", "fp32", zc)
    gc.collect()
    v8, ld8 = run("flow_inverse", "int8", zc)
    sess = machine.ort_session(_path(bundle, "flow_inverse", "int8"), threads)
    alone = np.concatenate([sess.run(None, {"z": pairs["z"][i:i + 1], "cond": pairs["cond"][i:i + 1]})[0]
                            for i in range(8)])
    del sess
    gc.collect()
    z8 = run("flow_forward", "int8", {"v": v8, "cond": pairs["cond"]})[0]
    nll32, nll8 = float(nll_per_dim(v32, ld32).mean()), float(nll_per_dim(v8, ld8).mean())
    return {"pairs": len(pairs["z"]), "nll_fp32": nll32, "nll_int8": nll8, "nll_drift_nats_per_dim": nll8 - nll32,
            "roundtrip_rel": l2_rel(z8, pairs["z"]), "v_rel_int8_vs_fp32": l2_rel(v8, v32),
            "v_batch_dependence_max_abs": float(np.abs(alone - v8[:8]).max())}


def rss_child(bundle: str, role: str, precision: str, batches: list[int], threads: int) -> dict:
    """In this process: load one graph, then VmHWM after 3 calls at each batch (ascending)."""
    sess = machine.ort_session(_path(Path(bundle), role, precision), threads)
    pairs = {k: np.load(Path(bundle) / "validation" / f"{n}.npy") for k, n in
             (("z", "target"), ("cond", "cond"), ("v", "fixed_v"))}
    out = {"loaded_mb": machine.peak_rss_mb(), "peak_mb": {}}
    for n in sorted(batches):
        feed = _feed(role, pairs, n)
        for _ in range(3):
            sess.run(None, feed)
        out["peak_mb"][str(n)] = machine.peak_rss_mb()
    return out


def peak_rss(bundle: Path, role: str, precision: str, batches, threads: int) -> dict:
    cmd = [sys.executable, "-m", "bench.paper", "--rss", str(bundle), role, precision,
           "--batches", ",".join(map(str, batches)), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def gemv_bandwidth(hidden: int, megabytes: int = 1024, repeats: int = 5) -> dict:
    """What a bare fp32 matrix-vector product achieves over the flow's own layer shape (hidden x hidden) at 1 thread:
    torch.mv over enough matrices to hold `megabytes`, best of N, in GB/s. It tells whether the memory floor
    (from plain reductions) is reachable by any GEMV at batch 1 or only by a reduction."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = max(1, megabytes * 2 ** 20 // (hidden * hidden * 4))
        mats, x = [torch.randn(hidden, hidden) for _ in range(n)], torch.randn(hidden)
        best = min(_timed(lambda: [torch.mv(m, x) for m in mats]) for _ in range(repeats))
        return {"hidden": hidden, "megabytes": n * hidden * hidden * 4 / 2 ** 20,
                "gbs": n * hidden * hidden * 4 / best / 1e9}
    finally:
        torch.set_num_threads(old)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_paper(out_dir: Path, quick: bool = False, threads: int = 1, batches=BATCHES, rss: bool = True) -> dict:
    """Build (or reuse) the paper bundle and measure it; the results dict."""
    t0 = time.perf_counter()
    results = {**machine.host_info(), "kind": "paper-size flow", "load_average_start": machine.load_average(),
               "settings": {"quick": quick, "threads": threads, "batches": list(batches)}}
    cfg = paper_config(quick)
    results["config"] = cfg
    results["build"] = build_bundle(out_dir, cfg, quick)
    results["files"] = _files(out_dir)
    _log("measuring machine floors")
    results["floors"] = fl = machine.floors(quick)
    results["gemv"] = gemv_bandwidth(cfg["hidden"], 64 if quick else 1024)
    import torch
    torch.set_num_threads(max(1, machine.cores()["usable"]))
    from train.core.flow import ConditionalINN  # noqa: F401  (model_pairs needs the model: rebuild it, same seed)
    model = build_model(cfg)
    pairs = model_pairs(model, 64 if quick else EVAL_PAIRS, seed=3)
    del model
    gc.collect()
    torch.set_num_threads(1)
    rows = []
    for role in ROLES:
        _log(f"timing {role} fp32 vs int8 at batches {list(batches)}")
        rows += time_direction(out_dir, role, pairs, fl, threads, QUICK if quick else PAPER_PLAN, batches)
    _log("int8 accuracy on model samples")
    results["int8_accuracy"] = accuracy(out_dir, pairs, threads)
    if rss:
        results["peak_rss"] = {}
        for role in ROLES:
            for p in ("fp32", "int8"):
                _log(f"peak RSS {role} {p}")
                results["peak_rss"][f"{role}.{p}"] = r = peak_rss(out_dir, role, p, batches, threads)
                for row in rows:
                    if (row["stage"], row["backend"]) == (role, f"ort-{p}"):
                        row["peak_rss_mb"] = r.get("peak_mb", {}).get(str(row["batch"]))
    results["rows"] = rows
    results["targets"] = verdicts(rows, results["int8_accuracy"])
    results["load_average_end"] = machine.load_average()
    results["seconds"] = time.perf_counter() - t0
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.paper", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper-dir", default="engines/.paper-bert2biggan",
                    help="where the paper bundle is built (~5.5 GB; reused when its config matches)")
    ap.add_argument("--quick", action="store_true", help="tiny flow forced into external data; numbers mean nothing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--rss", nargs=3, metavar=("BUNDLE", "ROLE", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b]
    if args.rss:
        print(json.dumps(rss_child(*args.rss, batches, args.threads)))
        return 0
    results = run_paper(Path(args.paper_dir), args.quick, args.threads, batches, not args.no_rss)
    paths = write(results, args.out)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(map(str, paths.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
