"""The benchmark suite as a library: `run_suite(bundle_dirs, quick=...)` -> one results dict.

Per bundle: open every backend (or record why not), time every stage x backend x batch interleaved
(bench.timing), put the floor beside each number (bench.cost with this run's bench.machine floors),
measure peak RSS per backend in a fresh process (bench.rss), and add diagnostics that explain the
batch-1 numbers: a bare onnxruntime call (Identity graph), one kernel launch (a chain of 100 tiny Adds,
by difference), the flow graphs through a bare
`session.run` (no Pipeline input checks, no IOBinding), and the kernels onnxruntime runs per graph.
Then the training comparison (bench.training) and the verdict on each target (bench.targets).
"""
from __future__ import annotations

import functools
from pathlib import Path

from bench import machine
from bench.cases import BACKENDS, BundleData, Skip, open_backend, precision_of
from bench.cost import add_costs, floor_ms, graph_cost, optimized_nodes
from bench.rss import peak_rss
from bench.targets import evaluate_targets
from bench.timing import QUICK, Case, Plan, measure, summary
from runtime import Pipeline
from runtime.manifest import l2_rel, nll_per_dim

BATCHES = (1, 8, 64)
CHAIN = 100                    # Add nodes in the kernel-overhead diagnostic graph


def stage_floor(data: BundleData, stage: str, batch: int, backend: str, fl: dict, threads: int) -> dict | None:
    """Floor of one call: per graph max(bytes / bandwidth, matmul flops / peak), summed over the graphs
    the call runs (translate: source encoder + τ + decoder). None for GPU rows (CPU floors do not apply)."""
    if backend.startswith("trt"):
        return None
    precision, bw = precision_of(backend), fl["read_bandwidth"]["gbs"]
    parts, costs, seq = [], [], data.seq(batch)
    for role, path in data.graphs(stage, precision):
        cost = graph_cost(path, batch, seq if role == "source_encoder" else None)
        int8 = path.endswith(".int8.onnx")
        peak = machine.int8_peak_gflops(fl) if int8 else machine.fp32_peak_gflops(fl, threads)
        parts.append(floor_ms(cost, bw, peak))
        costs.append(cost)
    total = add_costs(costs)
    return {"ms": sum(p["ms"] for p in parts), "memory_ms": sum(p["memory_ms"] for p in parts),
            "compute_ms": sum(p["compute_ms"] for p in parts), "bytes": total["bytes"],
            "weight_bytes": total["weight_bytes"], "activation_bytes": total["activation_bytes"],
            "matmul_flops": total["matmul_flops"], "elementwise_flops": total["elementwise_flops"],
            "unknown_shapes": total["unknown"]}


def open_all(data: BundleData, backends, threads: int) -> tuple[dict, dict]:
    """Open each backend; one that cannot run (Skip) or fails to open (any error: e.g. the training code
    the PyTorch baseline imports is broken) is recorded with the reason and the suite goes on."""
    opened, skipped = {}, {}
    for name in backends:
        try:
            opened[name] = open_backend(data, name, threads)
        except Skip as e:
            skipped[name] = str(e)
        except Exception as e:            # noqa: BLE001 - any failure of one backend must not end the run
            skipped[name] = f"failed to open: {type(e).__name__}: {e}"
    return opened, skipped


def diagnostic_cases(data: BundleData, threads: int) -> list[Case]:
    """Batch-1 cases that split a runtime flow call into its parts (bare ORT call, bare session.run)."""
    one = data.inputs("flow_forward", 1)
    cases = []
    for name, adds in (("ort_identity_call", 0), ("ort_100_add_chain", CHAIN)):
        sess = machine.overhead_session(data.manifest["latent_dim"], adds, threads)
        cases.append(Case(("diag", name, 1), functools.partial(sess.run, None, {"x": one["v"]}), 1))
    for role, x in (("flow_forward", one), ("flow_inverse", data.inputs("flow_inverse", 1))):
        for precision in ("fp32", "int8") if data.has_int8 else ("fp32",):
            (_, path), = data.graphs(role, precision)
            sess = machine.ort_session(path, threads)
            cases.append(Case(("diag", f"{role}.{precision}.session_run", 1),
                              functools.partial(sess.run, None, x), 1))
    return cases


def flow_graph_facts(data: BundleData, threads: int) -> dict:
    """Nodes in each flow graph, before and after onnxruntime's fusions (kernels per call)."""
    out = {}
    for role in ("flow_forward", "flow_inverse"):
        for precision in ("fp32", "int8") if data.has_int8 else ("fp32",):
            (_, path), = data.graphs(role, precision)
            out[f"{role}.{precision}"] = {"nodes": graph_cost(path, 1)["nodes"],
                                          "kernels_after_fusion": optimized_nodes(path, threads)}
    return out


def batch_dependence_by_precision(data: BundleData) -> dict[str, float]:
    """max |Δv| of a row of τ⁻¹ alone vs inside calls of 8 and 64 other validation rows, per precision the
    bundle has (through the Pipeline): 0 when rows are independent of their batch."""
    from runtime.numerics import batch_dependence
    z, cond = data.val["target"], data.val["cond"]
    out = {}
    for precision in ("fp32", "int8") if data.has_int8 else ("fp32",):
        p = Pipeline.load(data.dir, backend="onnxruntime", precision=precision, max_batch=64)
        out[precision] = batch_dependence(lambda f, p=p: p.flow_inverse(f["z"], f["cond"])[0], {"z": z, "cond": cond})
    return out


def int8_accuracy(data: BundleData, batches=BATCHES) -> dict:
    """Round trip τ_int8(τ⁻¹_int8(z)) vs z and NLL drift int8 vs fp32 (absolute nats/dim) on the bundle's
    validation pairs, run through the Pipeline in chunks of each bench batch (worst over the batches), and
    the batch dependence of every precision. A bundle without int8 stages: export's reason (checks.int8)."""
    check = data.manifest.get("checks", {}).get("int8")
    if not data.has_int8:
        return {"refused": (check or {}).get("refused", "exported without --precision int8"),
                "manifest_checks": check, "v_batch_dependence_max_abs": batch_dependence_by_precision(data)}
    z, cond = data.val["target"], data.val["cond"]
    v32, ld32 = Pipeline.load(data.dir, backend="onnxruntime").flow_inverse(z, cond)
    nll32 = float(nll_per_dim(v32, ld32).mean())
    by_batch = {}
    for batch in batches:
        p8 = Pipeline.load(data.dir, backend="onnxruntime", precision="int8", max_batch=batch)
        v8, ld8 = p8.flow_inverse(z, cond)
        nll8 = float(nll_per_dim(v8, ld8).mean())
        by_batch[str(batch)] = {"roundtrip_rel": l2_rel(p8.flow_forward(v8, cond), z), "nll_int8": nll8,
                                "nll_drift_nats_per_dim": nll8 - nll32}
    worst = max(by_batch.values(), key=lambda r: abs(r["nll_drift_nats_per_dim"]))
    return {"pairs": len(z), "nll_fp32": nll32, "by_batch": by_batch,
            "roundtrip_rel": max(r["roundtrip_rel"] for r in by_batch.values()),
            "nll_int8": worst["nll_int8"], "nll_drift_nats_per_dim": worst["nll_drift_nats_per_dim"],
            "nll_drift_rel": abs(worst["nll_drift_nats_per_dim"]) / max(abs(nll32), 1e-12),
            "v_batch_dependence_max_abs": batch_dependence_by_precision(data), "manifest_checks": check}


def _row(case: Case, data: BundleData, fl: dict, threads: int) -> dict:
    backend, stage, batch = case.key
    row = {"backend": backend, "stage": stage, "batch": batch, **summary(case)}
    row["floor"] = stage_floor(data, stage, batch, backend, fl, threads)
    row["measured_over_floor"] = row["median_ms"] / row["floor"]["ms"] if row["floor"] else None
    return row


def bench_bundle(data: BundleData, fl: dict, batches=BATCHES, backends=BACKENDS, threads: int = 1,
                 plan: Plan | None = None, rss: bool = True, compile_batches=(1,)) -> dict:
    """Everything measured on one bundle (see the module docstring)."""
    load = [machine.load_average()]
    opened, skipped = open_all(data, backends, threads)
    if "pytorch-compile" in opened and rss:
        skipped["pytorch-compile peak RSS"] = "not measured: a fresh process would compile every graph again"
    cases = [Case((b, s, n), functools.partial(fn, data.inputs(s, n)), n)
             for b, calls in opened.items() for s, fn in calls.items() for n in batches
             if b != "pytorch-compile" or n in compile_batches]
    diag = diagnostic_cases(data, threads)
    run = measure(cases + diag, plan or Plan())
    run["load_average"] = load + [machine.load_average()]
    rows = [_row(c, data, fl, threads) for c in cases]
    if rss:
        for b in (b for b in opened if b != "pytorch-compile"):
            peak = peak_rss(str(data.dir.resolve()), b, list(batches), threads)
            for row in rows:
                if row["backend"] == b:
                    row["peak_rss_mb"] = peak.get("peak_mb", {}).get(row["stage"], {}).get(str(row["batch"]))
                    row["peak_rss_resettable"] = peak.get("resettable")
            if "error" in peak:
                skipped[f"{b} peak RSS"] = peak["error"]
    return {"path": str(data.dir), "task": data.manifest["task"], "source_kind": data.kind,
            "stages": data.stages, "threads": threads, "skipped": skipped, "measurement": run, "rows": rows,
            "backend_info": {b: calls.info for b, calls in opened.items() if hasattr(calls, "info")},
            "diagnostics": {c.key[1]: summary(c) for c in diag}, "flow_graphs": flow_graph_facts(data, threads),
            "int8_accuracy": int8_accuracy(data, batches)}


def training_comparison(quick: bool, threads: int = 1) -> dict:
    """bench.training at `threads` torch threads: the lead's configuration, or a tiny one in quick mode."""
    import torch  # here, not at the top: the inference benchmarks run without torch

    from bench.training import compare_training
    torch.set_num_threads(threads)
    kwargs = dict(target_dim=8, num_blocks=2, hidden=32, batch=64, steps=3, rounds=1) if quick else {}
    out = compare_training(**kwargs)
    out["torch_threads"] = torch.get_num_threads()
    return out


def run_suite(bundle_dirs, quick: bool = False, threads: int = 1, batches=BATCHES, backends=BACKENDS,
              training: bool = True, rss: bool = True, train_threads: int = 1, compile_batches=(1,),
              runs: str | Path = "runs") -> dict:
    """The whole suite on `bundle_dirs`; the results dict `bench.report` writes."""
    results = {**machine.host_info(), "load_average_start": machine.load_average(),
               "settings": {"quick": quick, "threads": threads, "batches": list(batches),
                            "backends": list(backends), "train_threads": train_threads,
                            "compile_batches": list(compile_batches),
                            "plan": vars(QUICK if quick else Plan())}}
    results["floors"] = machine.floors(quick)
    results["bundles"] = {}
    for d in bundle_dirs:
        data = BundleData(d, runs)
        name = data.name if data.name not in results["bundles"] else f"{data.name}@{data.dir}"
        results["bundles"][name] = bench_bundle(data, results["floors"], batches, backends, threads,
                                                QUICK if quick else Plan(), rss, compile_batches)
    results["training"] = training_comparison(quick, train_threads) if training else None
    results["targets"] = evaluate_targets(results)
    results["load_average_end"] = machine.load_average()
    return results

