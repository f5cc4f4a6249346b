"""The one-command demo: every stage that exists, on the embedded default data, re-using finished runs.

Run through `bash scripts/demo.sh` (which sets up .venv first). `--preset smoke` makes a quick pass.
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
        print(f"== {title}: already done ({done_when.relative_to(ROOT)})")
        return
    print(f"== {title}: python -m {' '.join(args)}", flush=True)
    t0 = time.time()
    subprocess.run([PY, "-m", *args], cwd=ROOT, check=True)
    print(f"   ({time.time() - t0:.0f}s)", flush=True)


def evaluate(args: list[str], out: Path) -> dict:
    if not out.exists():
        res = subprocess.run([PY, "-m", "train.evaluate", *args, "--json"], cwd=ROOT, check=True,
                             capture_output=True, text=True)
        out.write_text(res.stdout)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="default", choices=["smoke", "default"])
    args = ap.parse_args()
    runs = ROOT / "runs" / ("demo-smoke" if args.preset == "smoke" else "")
    summary: dict[str, dict] = {}
    t0 = time.time()

    # 1. The plug-and-play case: a cINN between two aligned feature files (synthetic, known entropy).
    data = runs / "synthetic" / "data"
    step("synthetic feature pairs", ["train.synthetic", "--out", str(data)], data / "truth.json")
    run = runs / "features" / "cinn"
    step("train cINN on the feature pairs",
         ["train.cinn", "--task", "features", "--source", str(data / "train_source.npy"), "--target",
          str(data / "train_target.npy"), "--out", str(run), "--preset", args.preset],
         run / "checkpoint.safetensors")
    res = evaluate(["--run", str(run), "--source", str(data / "test_source.npy"),
                    "--target", str(data / "test_target.npy")], run / "eval.json")
    truth = json.loads((data / "truth.json").read_text())["conditional_entropy_nats_per_dim"]
    summary["features"] = {"test NLL (nats/dim)": res["nll_nats_per_dim"], "true H(z|c) (nats/dim)": truth,
                           "gap": res["nll_nats_per_dim"] - truth, "round trip": res["roundtrip_rel_err"]}

    print(f"\n== summary ({time.time() - t0:.0f}s)")
    for task, numbers in summary.items():
        print(f"{task}:")
        for key, value in numbers.items():
            print(f"  {key:>26}: {value:.4g}")
    print(f"\noutputs: {runs.relative_to(ROOT) if runs != ROOT / 'runs' else 'runs'}/")


if __name__ == "__main__":
    main()
