"""Writing a results dict: `<out>/<host>-<date>.json` (everything), `.md` (tables) and `.png` (plot:
latency vs batch per backend, one panel per bundle and stage, floors as lines; matplotlib Agg)."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from bench.cases import STAGES

STYLE = {"pytorch": ("tab:red", "o"), "pytorch-compile": ("tab:brown", "P"), "ort-fp32": ("tab:blue", "s"),
         "ort-int8": ("tab:green", "^"),
         "trt-fp32": ("tab:purple", "D"), "trt-fp16": ("tab:orange", "v")}


def stem(results: dict) -> str:
    """`<host>-<date>` of a results dict, the name of its files."""
    date = datetime.fromisoformat(results["date"]).strftime("%Y-%m-%dT%H%M%S")
    return f"{results['host']}-{date}"


def write_all(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write the JSON, markdown and PNG; returns their paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"{stem(results)}.{kind}" for kind in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(results, indent=1, default=float) + "\n")
    paths["md"].write_text(markdown(results, paths["png"].name))
    plot(results, paths["png"])
    return paths


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"


def header(r: dict) -> list[str]:
    """Markdown lines: machine, load, versions, settings, floors and how a row's floor is computed."""
    fl = r["floors"]
    bw, sg, om = fl["read_bandwidth"], fl["sgemm_gflops"], fl["ort_matmul_gflops"]
    threads = {k: v for k, v in sg.items() if k != "n"}
    versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
    return [f"# Benchmark: {r['host']}, {r['date']}", "",
            f"- CPU: {r['cpu_model']}, {r['cores']['usable']} usable / {r['cores']['logical']} logical cores; "
            f"load average (1/5/15 min) at start {r['load_average_start']}, at end {r['load_average_end']}",
            f"- versions: {versions}",
            f"- settings: runtime threads {r['settings']['threads']}, batches {r['settings']['batches']}, "
            f"quick={r['settings']['quick']}",
            f"- floors (this run, best of N): read bandwidth **{bw['gbs']:.1f} GB/s** (1 thread, {bw['megabytes']} MB "
            f"array reductions); sgemm (torch, n={sg['n']}) "
            + ", ".join(f"{t} thread(s) **{v:.0f} GFLOP/s**" for t, v in threads.items())
            + f"; onnxruntime MatMul 1 thread fp32 {om['fp32']:.0f}, int8 {om['int8']:.0f} GFLOP/s",
            "- floor of a row = Σ over the graphs it runs of max(bytes / bandwidth, matmul flops / peak); bytes = "
            "ONNX initializers + every tensor from shape inference at that batch; fp32 rows use the best fp32 "
            "peak at the row's threads (1 thread: max of torch sgemm and ORT MatMul), int8 graphs the ORT int8 "
            "MatMul peak; elementwise ops are counted (JSON) but left out of the compute floor. measured / floor < 1 "
            "means the data came from cache (the floor assumes every byte comes from DRAM)",
            "- p99 over all timed calls; on a machine shared with other processes it includes preemptions "
            "(scheduler time slices of a few ms)", ""]


def bundle_table(name: str, b: dict) -> list[str]:
    """Markdown lines of one bundle: skipped backends, the stage x batch x backend table, diagnostics, int8."""
    lines = [f"## {name} ({b['source_kind']} source, `{b['path']}`)", ""]
    lines += [f"- {k}: skipped — {v}" for k, v in b["skipped"].items()]
    for backend, info in b.get("backend_info", {}).items():
        if info.get("compile_s"):
            lines.append(f"- {backend} compile time (first call of each stage at each batch, excluded from the "
                         f"latency): " + "; ".join(f"{st} " + ", ".join(f"b{n} {t:.1f} s" for n, t in by.items())
                                                   for st, by in info["compile_s"].items()))
    m = b["measurement"]
    lines += [f"- measured interleaved: {m['rounds']} rounds in {m['seconds']:.0f} s, halves agree within "
              f"tolerance: {m['converged']}; load average before / after: {m['load_average']}", "",
              "| stage | batch | backend | median ms | p99 ms | items/s | peak RSS MB | floor ms (bound) "
              "| measured / floor | halves Δ |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    order = {s: i for i, s in enumerate(STAGES)}
    for row in sorted(b["rows"], key=lambda x: (order[x["stage"]], x["batch"], x["backend"])):
        fl = row["floor"]
        floor = f"{_fmt(fl['ms'])} ({'mem' if fl['memory_ms'] >= fl['compute_ms'] else 'flops'})" if fl else "–"
        lines.append(f"| {row['stage']} | {row['batch']} | {row['backend']} | {_fmt(row['median_ms'])} | "
                     f"{_fmt(row['p99_ms'])} | {_fmt(row['throughput_per_s'])} | {_fmt(row.get('peak_rss_mb'), 4)} | "
                     f"{floor} | {_fmt(row['measured_over_floor'])} | {row['halves_rel_diff']:.1%} |")
    diag = ", ".join(f"{k} {d['median_ms'] * 1e3:.1f} µs" for k, d in b["diagnostics"].items())
    lines += ["", f"Batch-1 diagnostics (median): {diag}."]
    acc = b.get("int8_accuracy") or {}
    dep = acc.get("v_batch_dependence_max_abs") or {}
    if dep:
        lines.append("Batch dependence (τ⁻¹, a row alone vs inside calls of 8 and 64, max |Δv|): "
                     + ", ".join(f"{p} {d:.1e}" for p, d in dep.items()) + ".")
    if "refused" in acc:
        lines.append(f"No int8 stage: {acc['refused']}")
    if "by_batch" in acc:
        per = "; ".join(f"batch {n}: round trip {r['roundtrip_rel']:.2e}, NLL drift {r['nll_drift_nats_per_dim']:+.5f}"
                        for n, r in acc["by_batch"].items())
        check = acc.get("manifest_checks") or {}
        export = f" (export check, one call of all pairs: round trip {check['roundtrip_rel']:.2e})" \
            if "roundtrip_rel" in check else ""
        lines.append(f"int8 on {acc['pairs']} validation pairs, NLL fp32 {acc['nll_fp32']:.4f} nats/dim; through the "
                     f"Pipeline in calls of {per}{export}.")
    return lines + [""]


def training_lines(t: dict | None) -> list[str]:
    """Markdown lines of the training comparison (none when it was skipped)."""
    if not t:
        return []
    c = t["config"]
    return ["## Training throughput: our cINN vs FrEIA", "",
            f"D={c['target_dim']}, cond {tuple(c['cond_shape'])}, {c['num_blocks']} blocks, width {c['hidden']}, depth "
            f"{c['depth']}, batch {t['batch']}, torch threads {t['torch_threads']}; params ours {t['params']['ours']:,}"
            f", FrEIA {t['params']['freia']:,}", "",
            "| model | samples/s |", "|---|---:|",
            f"| ours | {t['ours_samples_per_s']:.0f} |", f"| FrEIA | {t['freia_samples_per_s']:.0f} |",
            f"| **ratio ours / FrEIA** | **{t['ratio']:.2f}** |", ""]


def target_lines(targets: list[dict]) -> list[str]:
    """Markdown table of the verdicts, then the explanation of each miss."""
    lines = ["## Targets", "", "| target | bundle | what | measured | threshold | verdict |",
             "|---|---|---|---:|---:|---|"]
    notes = []
    for t in targets:
        verdict = "not measured" if t["pass"] is None else "pass" if t["pass"] else \
            f"MISS (off by {t['missed_by']:.2f}x)"
        lines.append(f"| ({t['target']}) | {t['bundle']} | {t['what']} | {_fmt(t['measured'])} | {t['threshold']:g} | "
                     f"{verdict} |")
        if t["detail"]:
            notes.append(f"- ({t['target']}) {t['bundle']}, {t['what']}: {t['detail']}")
    return lines + [""] + notes + [""]


def markdown(results: dict, png_name: str) -> str:
    """The whole markdown report of a results dict."""
    lines = header(results)
    for name, b in results["bundles"].items():
        lines += bundle_table(name, b)
    lines += training_lines(results.get("training")) + target_lines(results["targets"])
    lines += [f"![latency vs batch]({png_name})", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """One panel per (bundle, stage): median latency vs batch per backend, the fp32 and int8 floors dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(name, s) for name, b in results["bundles"].items() for s in b["stages"]] or [("no bundles", "")]
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, stage) in zip(axes.flat, panels):
        _panel(ax, results["bundles"].get(name, {"rows": []})["rows"], stage)
        ax.set_title(f"{name}: {stage}", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{results['host']} {results['date']} — {results['cpu_model']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))     # room for the title
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _panel(ax, rows: list[dict], stage: str) -> None:
    rows = [r for r in rows if r["stage"] == stage]
    for backend in dict.fromkeys(r["backend"] for r in rows):
        rs = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r["batch"])
        color, marker = STYLE.get(backend, ("black", "x"))
        ax.plot([r["batch"] for r in rs], [r["median_ms"] for r in rs], marker=marker, color=color, label=backend)
    for backend, style in (("ort-fp32", "--"), ("ort-int8", ":")):
        rs = sorted((r for r in rows if r["backend"] == backend and r["floor"]), key=lambda r: r["batch"])
        if rs:
            ax.plot([r["batch"] for r in rs], [r["floor"]["ms"] for r in rs], style, color="black",
                    label=f"floor {backend.split('-')[1]}")
    ax.set_xscale("log", base=2)
    batches = sorted({r["batch"] for r in rows})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("median latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    if rows:
        ax.legend(fontsize=7)
