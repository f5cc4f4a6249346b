"""The paper-size benchmark's verdicts against its targets and its report files (bench/paper.py measures)."""
from __future__ import annotations

import json
from pathlib import Path

from bench import machine
from bench.report import _fmt, stem

ROLES = ("flow_forward", "flow_inverse")
FLOOR_MAX, INT8_SPEEDUP_MIN, DRIFT_MAX_NATS = 1.1, 2.8, 0.003


def verdicts(rows: list[dict], acc: dict) -> list[dict]:
    """The paper-size targets at batch 1 (module docstring), judged on this run."""
    def row(p, role):
        return next(r for r in rows if (r["backend"], r["stage"], r["batch"]) == (f"ort-{p}", role, 1))
    out = []
    for role in ROLES:
        r32, r8 = row("fp32", role), row("int8", role)
        m = r32["measured_over_memory_floor"]
        out.append({"what": f"{role} fp32 batch 1 / memory floor", "measured": m, "threshold": FLOOR_MAX,
                    "pass": m <= FLOOR_MAX})
        s = r32["median_ms"] / r8["median_ms"]
        out.append({"what": f"{role} batch 1 speed-up int8 vs fp32", "measured": s, "threshold": INT8_SPEEDUP_MIN,
                    "pass": s >= INT8_SPEEDUP_MIN, "int8_over_its_memory_floor": r8["measured_over_memory_floor"],
                    "best_possible_from_bytes": r32["floor"]["memory_ms"] / r8["floor"]["memory_ms"]})
    d = abs(acc["nll_drift_nats_per_dim"])
    out.append({"what": "int8 NLL drift, absolute, nats/dim on model samples", "measured": d,
                "threshold": DRIFT_MAX_NATS,
                "pass": d <= DRIFT_MAX_NATS})
    return out


def markdown(r: dict) -> str:
    c, acc, b = r["config"], r["int8_accuracy"], r["build"]
    fl = r["floors"]
    lines = [f"# Paper-size flow: {r['host']}, {r['date']}", "",
             f"- **random init** (timing only): bert2biggan's cINN at the paper preset, D={c['target_dim']}, "
             f"cond {tuple(c['cond_shape'])} ({c['origin']}), {c['num_blocks']} blocks, width {c['hidden']}, depth "
             f"{c['depth']}; {b.get('parameters', 0) / 1e6:.1f} M parameters; {b.get('weights', '')}",
             "- files: " + ", ".join(f"{k} {v['bytes'] / 1e9:.3f} GB ({' + '.join(v['files'])})"
                                      for k, v in r["files"].items()),
             f"- int8: {b.get('quantizer', 'reused bundle')}; export {b.get('export_s', 0):.0f} s, quantize "
             f"{b.get('quantize_s', 0):.0f} s" + (" (bundle reused)" if b.get("reused") else ""),
             f"- CPU: {r['cpu_model']}, load average {r['load_average_start']} -> {r['load_average_end']}; "
             f"onnxruntime {r['versions'].get('onnxruntime')}, {r['settings']['threads']} thread(s); read bandwidth "
             f"{fl['read_bandwidth']['gbs']:.1f} GB/s, fp32 peak {machine.fp32_peak_gflops(fl, 1):.0f}, int8 peak "
             f"{machine.int8_peak_gflops(fl):.0f} GFLOP/s; whole run {r['seconds']:.0f} s"
             + (f"; a bare 1-thread fp32 GEMV over {r['gemv']['hidden']}x{r['gemv']['hidden']} matrices "
                f"({r['gemv']['megabytes']:.0f} MB) streams {r['gemv']['gbs']:.1f} GB/s" if r.get("gemv") else ""), "",
             "| stage | batch | precision | median ms | p99 ms | items/s | peak RSS MB | floor ms (mem / flops) "
             "| measured / memory floor | halves Δ |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in sorted(r["rows"], key=lambda x: (x["stage"], x["batch"], x["backend"])):
        f = row["floor"]
        lines.append(f"| {row['stage']} | {row['batch']} | {row['backend'][4:]} | {_fmt(row['median_ms'])} | "
                     f"{_fmt(row['p99_ms'])} | {_fmt(row['throughput_per_s'])} | {_fmt(row.get('peak_rss_mb'), 4)} | "
                     f"{_fmt(f['ms'])} ({_fmt(f['memory_ms'])} / {_fmt(f['compute_ms'])}) | "
                     f"{_fmt(row['measured_over_memory_floor'])} | {row['halves_rel_diff']:.1%} |")
    lines += ["", f"int8 on {acc['pairs']} pairs drawn from the model: NLL fp32 {acc['nll_fp32']:.5f}, int8 "
                  f"{acc['nll_int8']:.5f} nats/dim (drift {acc['nll_drift_nats_per_dim']:+.5f}); round trip "
                  f"{acc['roundtrip_rel']:.2e}; ‖v_int8 - v_fp32‖/‖v_fp32‖ {acc['v_rel_int8_vs_fp32']:.2e}; batch "
                  f"dependence (8 rows one per call vs the same rows in a call of 64) max |Δv| "
                  f"{acc['v_batch_dependence_max_abs']:.1e}", "",
              "| target (batch 1) | measured | threshold | verdict |", "|---|---:|---:|---|"]
    for t in r["targets"]:
        lines.append(f"| {t['what']} | {_fmt(t['measured'])} | {t['threshold']:g} | "
                     f"{'pass' if t['pass'] else 'MISS'} |")
    return "\n".join(lines) + "\n"


def write(results: dict, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"paper-{stem(results)}.{k}" for k in ("json", "md")}
    paths["json"].write_text(json.dumps(results, indent=1, default=float) + "\n")
    paths["md"].write_text(markdown(results))
    return paths
