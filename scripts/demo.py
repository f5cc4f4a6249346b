"""The one-command demo: every stage that exists, on the embedded default data, re-using finished runs.

Run through `bash scripts/demo.sh` (which sets up .venv first). `--preset smoke` makes a quick pass
(seconds per stage, meaningless numbers) to check the plumbing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def step(title: str, args: list[str], done_when: Path | None = None) -> None:
    """Run one stage as its own CLI (what a user would type), unless its output already exists."""
    if done_when is not None and done_when.exists():
        print(f"== {title}: already done ({done_when})", flush=True)
        return
    print(f"== {title}: python -m {' '.join(args)}", flush=True)
    t0 = time.time()
    subprocess.run([PY, "-m", *args], cwd=ROOT, check=True)
    print(f"   ({time.time() - t0:.0f}s)", flush=True)


def evaluate(args: list[str], out: Path) -> dict:
    if not out.exists():
        print(f"== evaluate: python -m train.evaluate {' '.join(args)} --json", flush=True)
        res = subprocess.run([PY, "-m", "train.evaluate", *args, "--json"], cwd=ROOT, check=True,
                             stdout=subprocess.PIPE, text=True)
        out.write_text(res.stdout)
    return json.loads(out.read_text())


def features(runs: Path, preset: str) -> dict:
    """The plug-and-play case: a cINN between two aligned feature files (synthetic, known entropy)."""
    data = runs / "synthetic" / "data"
    step("synthetic feature pairs", ["train.synthetic", "--out", str(data)], data / "truth.json")
    run = runs / "features" / "cinn"
    step("train cINN on the feature pairs",
         ["train.cinn", "--task", "features", "--source", str(data / "train_source.npy"), "--target",
          str(data / "train_target.npy"), "--out", str(run), "--preset", preset], run / "checkpoint.safetensors")
    res = evaluate(["--run", str(run), "--source", str(data / "test_source.npy"),
                    "--target", str(data / "test_target.npy")], run / "eval.json")
    truth = json.loads((data / "truth.json").read_text())["conditional_entropy_nats_per_dim"]
    return {"test NLL (nats/dim)": res["nll_nats_per_dim"], "true H(z|c)": truth,
            "gap": res["nll_nats_per_dim"] - truth, "round trip": res["roundtrip_rel_err"]}


def sprites(runs: Path, preset: str) -> dict:
    """Oracle, autoencoder, then the attributes and text2image cINNs and their MLP ablations."""
    oracle = runs / "sprites" / "classifier"
    steps = ["--steps", "30"] if preset == "smoke" else []
    step("oracle classifier", ["train.classifier", "--data", "sprites", "--out", str(oracle), *steps],
         oracle / "checkpoint.safetensors")
    ae = runs / "attributes" / "ae"
    step("sprites autoencoder", ["train.ae", "--task", "attributes", "--preset", preset, "--out", str(ae)],
         ae / "checkpoint.safetensors")
    summary = {"ae": evaluate(["--task", "ae", "--run", str(ae)], ae / "eval.json")}
    for task in ("attributes", "text2image"):
        for model in ("cinn", "mlp"):
            run = runs / task / model
            step(f"{task} {model}", ["train.cinn", "--task", task, "--model", model, "--preset", preset,
                                     "--ae", str(ae), "--out", str(run)], run / "checkpoint.safetensors")
        n = "50" if preset == "smoke" else "500"
        summary[task] = evaluate(["--run", str(runs / task / "cinn"), "--oracle", str(oracle), "--num-images", n],
                                 runs / task / "cinn" / "eval.json")
    return summary


def export_and_run(runs: Path, tasks: list[str], engines: Path, out: Path) -> dict:
    """ONNX (+int8) bundles, the bundle's own acceptance check, and example outputs via runtime.Pipeline."""
    checks = {}
    for task in tasks:
        bundle = engines / task
        step(f"export {task}", ["export.onnx", "--task", task, "--run", str(runs / task / "cinn"), "--out",
                                str(bundle), "--precision", "int8"], bundle / "manifest.json")
        res = subprocess.run([PY, "-m", "runtime", "check", str(bundle), "--json"], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
        checks[task] = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {"error": res.returncode}
    out.mkdir(parents=True, exist_ok=True)
    if "text2image" in tasks:
        for i, caption in enumerate(["a small red circle on the left", "a big blue square at the top",
                                     "an outlined yellow triangle on a dark background"]):
            step(f"translate '{caption}'", ["runtime", "translate", str(engines / "text2image"), caption,
                                            "--num-samples", "6", "--seed", str(i), "--out",
                                            str(out / f"text2image_{i}.png")])
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="default", choices=["smoke", "default"])
    args = ap.parse_args()
    smoke = args.preset == "smoke"
    runs = ROOT / "runs" / "demo-smoke" if smoke else ROOT / "runs"
    engines = ROOT / "engines" / "demo-smoke" if smoke else ROOT / "engines"
    demo = ROOT / "demo" / ("smoke" if smoke else "")
    t0 = time.time()
    summary = {"features": features(runs, args.preset)}
    summary.update(sprites(runs, args.preset))
    summary["bundle checks"] = export_and_run(runs, ["attributes", "text2image"], engines, demo)
    (demo / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\n== summary ({time.time() - t0:.0f}s)")
    for task, numbers in summary.items():
        flat = {k: v for k, v in numbers.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        print(f"{task}: " + ", ".join(f"{k} {v:.4g}" for k, v in flat.items()))
    print(f"\noutputs: {runs}/<task>/*/grids, {demo}/, {engines}/; numbers in {demo / 'summary.json'}")


if __name__ == "__main__":
    main()
