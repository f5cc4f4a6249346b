"""The benchmark suite itself runs (CI does not run the benchmarks): a tiny features bundle (smoke
training + int8 export) through `python -m bench --quick`, then the JSON keys, the markdown and the PNG, and
that `--render` rebuilds the same markdown from the JSON."""
import json
import os

import numpy as np
import pytest

from bench.__main__ import main as bench_main
from export import onnx as export_onnx
from train import cinn
from train.data.synthetic import sample_pairs

ROW_KEYS = {"backend", "stage", "batch", "median_ms", "p99_ms", "throughput_per_s", "peak_rss_mb", "floor",
            "measured_over_floor", "halves_rel_diff"}
TOP_KEYS = {"host", "date", "cpu_model", "cores", "versions", "load_average_start", "load_average_end", "settings",
            "floors", "bundles", "training", "targets"}


def _tiny_bundle(tmp_path):
    c, z = sample_pairs(400, seed=3)
    np.save(tmp_path / "c.npy", c)
    np.save(tmp_path / "z.npy", z)
    run, bundle = tmp_path / "run", tmp_path / "features"
    cinn.main(["--task", "features", "--source", str(tmp_path / "c.npy"), "--target", str(tmp_path / "z.npy"),
               "--out", str(run), "--preset", "smoke", "--steps", "4"])
    export_onnx.main(["--task", "features", "--run", str(run), "--out", str(bundle), "--precision", "int8",
                      "--int8-min-speedup", "0",
                      "--val-pairs", "16"])
    return bundle


def test_quick_bench_writes_json_markdown_and_png(tmp_path):
    out = tmp_path / "results"
    backends = "pytorch,ort-fp32,ort-int8,trt-fp32,trt-fp16"          # torch.compile: its own test below
    bundle = _tiny_bundle(tmp_path)
    assert bench_main(["--bundle", str(bundle), "--quick", "--out", str(out), "--backends", backends,
                       "--runs", str(tmp_path.parent)]) == 0
    files = {p.suffix: p for p in out.iterdir()}
    assert set(files) == {".json", ".md", ".png"} and len({p.stem for p in files.values()}) == 1
    r = json.loads(files[".json"].read_text())
    assert TOP_KEYS <= r.keys() and r["floors"]["read_bandwidth"]["gbs"] > 0
    b = r["bundles"]["features"]
    measured = {row["backend"] for row in b["rows"]}
    assert {"pytorch", "ort-fp32", "ort-int8"} <= measured
    assert all(name in measured or reason for name, reason in b["skipped"].items())
    assert {"trt-fp32", "trt-fp16"} <= measured | set(b["skipped"])
    for row in b["rows"]:
        assert ROW_KEYS <= row.keys() and row["median_ms"] > 0 and row["floor"]["ms"] > 0
    assert {(row["stage"], row["batch"]) for row in b["rows"] if row["backend"] == "ort-fp32"} == \
        {(s, n) for s in ("flow_forward", "flow_inverse", "translate") for n in (1, 8, 64)}
    assert r["training"]["ratio"] > 0
    assert {t["target"] for t in r["targets"]} == {"a", "b", "c"}
    assert all(t["pass"] is not None for t in r["targets"])
    md = files[".md"].read_text()
    assert "| flow_forward | 1 | ort-fp32 |" in md and "## Targets" in md and files[".png"].name in md
    assert files[".png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    files[".md"].unlink()
    assert bench_main(["--render", str(files[".json"])]) == 0 and files[".md"].read_text() == md


def test_paper_quick_uses_external_data_and_static_int8(tmp_path):
    """`python -m bench --paper --quick`: a tiny flow forced into external data, static int8, both directions."""
    out, bundle = tmp_path / "results", tmp_path / "paper"
    assert bench_main(["--paper", "--quick", "--no-rss", "--batches", "1,8", "--paper-dir", str(bundle),
                       "--out", str(out)]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["stages"]["flow_forward"]["external_data"] == {
        "flow_forward.onnx.data": manifest["stages"]["flow_forward"]["external_data"]["flow_forward.onnx.data"]}
    assert {"flow_forward.int8", "flow_inverse.int8"} <= manifest["stages"].keys()
    r = json.loads(next(out.glob("paper-*.json")).read_text())
    assert {(row["stage"], row["backend"], row["batch"]) for row in r["rows"]} == \
        {(s, b, n) for s in ("flow_forward", "flow_inverse") for b in ("ort-fp32", "ort-int8") for n in (1, 8)}
    assert all(row["floor"]["memory_ms"] > 0 and row["median_ms"] > 0 for row in r["rows"])
    acc = r["int8_accuracy"]
    assert acc["v_batch_dependence_max_abs"] <= 1e-5 and abs(acc["nll_drift_nats_per_dim"]) < 0.05
    assert len(r["targets"]) == 5 and "random init" in next(out.glob("paper-*.md")).read_text()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("BENCH_COMPILE_TEST"), reason="torch.compile compiles for minutes on the shared "
                    "2-core machine (4.5 min measured); set BENCH_COMPILE_TEST=1 to run it")
def test_torch_compile_peer_is_timed_and_judged(tmp_path):
    """The torch.compile peer (inductor, CPU) at batch 1: rows, compile times apart, target (d) judged."""
    out = tmp_path / "results"
    assert bench_main(["--bundle", str(_tiny_bundle(tmp_path)), "--quick", "--out", str(out), "--batches", "1",
                       "--backends", "pytorch,pytorch-compile,ort-fp32", "--no-training", "--no-rss",
                       "--runs", str(tmp_path.parent)]) == 0
    r = json.loads(next(out.glob("*.json")).read_text())
    b = r["bundles"]["features"]
    assert "pytorch-compile" not in b["skipped"], b["skipped"]
    compiled = {row["stage"]: row for row in b["rows"] if row["backend"] == "pytorch-compile"}
    assert set(compiled) == {"flow_forward", "flow_inverse", "translate"}
    assert all(row["median_ms"] > 0 for row in compiled.values())
    times = b["backend_info"]["pytorch-compile"]["compile_s"]
    assert all(times[stage]["1"] > 0 for stage in compiled)
    d = [t for t in r["targets"] if t["target"] == "d"]
    assert len(d) == 1 and d[0]["pass"] is not None


def test_slow_cases_stop_after_enough_calls_while_fast_ones_keep_their_rounds():
    """bench.timing: a case whose calls already add up to slow_case_s (BigGAN at batch 64) is not timed in
    later rounds; the other cases still get min_rounds, and the cap is reported."""
    import time

    from bench.timing import Case, Plan, measure
    slow = Case(("x", "slow", 64), lambda: time.sleep(0.05), 64)
    fast = Case(("x", "fast", 1), lambda: None, 1)
    run = measure([slow, fast], Plan(warmup_s=0.0, round_s=0.001, min_rounds=6, max_rounds=6, slow_case_s=0.1,
                                     slow_min_calls=2))
    assert len(fast.rounds) == 6 and len(slow.rounds) == 2
    assert run["capped_slow_cases"] == [["x", "slow", 64]]
