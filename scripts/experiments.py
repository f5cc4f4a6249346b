"""The rest of the paper's experiments on the embedded sprites, one command (issue 6):

  superres   16 px sprites AE -> 64 px sprites AE (Fig. 4)
  unpaired   domain label -> AE on flat + textured sprites (Sec. 4.3, App. D, Fig. 8)
  exemplar   object mask (segmentation expert) -> sprites AE (Sec. 4.3, Fig. 7a)
  shape      Θ ∘ random deformation -> sprites AE (App. C, Fig. 7b / S1)
  diagnosis  early / middle / last layer of two sprites classifiers -> sprites AE (Sec. 4.2, Fig. 5)

    python scripts/experiments.py                       # default presets into runs/<task>/
    python scripts/experiments.py --preset smoke        # a quick plumbing pass into runs/demo-smoke/
    python scripts/experiments.py --tasks shape,exemplar

Every stage is the CLI a user would type (`python -m train.cinn --task …`, `python -m train.evaluate
… --json`, `python -m train.diagnosis`), scheduled like the demo (scripts/demo.py): two one-thread jobs
at a time, finished jobs kept, interrupted trainings resumed. It shares the demo's oracle classifier
and sprites AE (trained first when missing) and its job stamps (RUNS/.demo/). Each task writes PNG
grids into its run's grids/ and its evaluation into RUN/eval.json (diagnosis: runs/diagnosis/summary.json);
the summary table goes to RUNS/experiments.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from demo import ROOT, Job, Scheduler, expert_jobs

LAYERS = ("early", "middle", "last")     # train.experts.classifier.LAYERS, without importing torch here
TASKS = ("superres", "unpaired", "exemplar", "shape", "diagnosis")
# the headline keys of each evaluation (issue 6), MLP beside them where the task has one
KEYS = {"superres": ["consistency_psnr", "diversity", "attribute_agreement"],
        "unpaired": ["content_kept", "domain_success"],
        "exemplar": ["mask_iou", "style_transfer", "diversity"],
        "shape": ["shape_from_exemplar", "appearance_kept", "diversity"]}


def plan(runs: Path, preset: str, oracle: Path, tasks: list[str]) -> list[Job]:
    ae = runs / "attributes" / "ae"
    smoke = preset == "smoke"
    # the task-specific experts live under RUNS too, so a smoke pass never touches the default runs
    experts = {"superres": ["--lowres-ae", str(runs / "superres" / "ae_lowres")],
               "unpaired": ["--union-ae", str(runs / "unpaired" / "ae")]}
    jobs = expert_jobs(runs, preset, oracle)
    for task in tasks:
        if task == "diagnosis":
            jobs.append(Job("diagnosis", ["train.diagnosis", "--preset", preset, "--out", str(runs / "diagnosis"),
                                          "--ae", str(ae), "--oracle", str(oracle),
                                          *(["--num-images", "40", "--samples", "4"] if smoke else [])],
                            ("ae", "oracle")))
            continue
        models = ("cinn",) if task == "unpaired" else ("cinn", "mlp")   # unpaired needs v: no MLP (App. D)
        for model in models:
            run = runs / task / model
            # the MLP waits for the cINN job, which trains the task's own experts (f, the union AE) first
            deps = ("ae",) if model == "cinn" else (f"{task}-cinn",)
            jobs.append(Job(f"{task}-{model}", ["train.cinn", "--task", task, "--model", model, "--preset", preset,
                                                "--ae", str(ae), *experts.get(task, []), "--out", str(run)],
                            deps, resume=run / "checkpoint.safetensors"))
        run = runs / task / "cinn"
        evaluate = ["train.evaluate", "--task", task, "--run", str(run), "--json", "--oracle", str(oracle),
                    "--num-images", "50" if smoke else "500"]
        if task == "unpaired":
            evaluate += ["--domain-classifier", str(runs / "unpaired" / "domain_classifier")]
        jobs.append(Job(f"{task}-eval", evaluate, tuple(f"{task}-{m}" for m in models) + ("oracle",),
                        capture=run / "eval.json"))
    return jobs


def _read_result(path: Path) -> tuple[dict | None, str]:
    """A job's JSON result, or None and why not: a summary row says so instead of the script crashing."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"{path} unreadable ({type(e).__name__}: {str(e)[:120]})"
    return (result, "") if isinstance(result, dict) else (None, f"{path} holds no JSON object")


def summary_table(runs: Path, state: Path, tasks: list[str]) -> list[str]:
    lines = ["| task | evaluation (cINN, MLP in brackets) | cINN train s |", "|---|---|---:|"]
    for task in tasks:
        path = runs / "diagnosis" / "summary.json" if task == "diagnosis" else runs / task / "cinn" / "eval.json"
        result, why = _read_result(path)
        if result is None:
            lines.append(f"| {task} | {why} | |")
            continue
        if task == "diagnosis":
            summary = result
            parts = [f"{kind}: mean invariance " + ", ".join(f"{layer} {f['mean_invariance'][layer]:.2f}"
                                                             for layer in LAYERS if layer in f["mean_invariance"])
                     + f" (grows with depth: {'yes' if f['grows_with_depth'] else 'no'})"
                     for kind, f in summary["finding"].items()]
            lines.append(f"| diagnosis | {'; '.join(parts)} | {summary['total_seconds']:.0f} (all runs) |")
            continue
        ev = result
        mlp = ev.get("mlp") or {}
        nums = ", ".join(f"{k} {ev[k]:.3f}" + (f" ({mlp[k]:.3f})" if isinstance(mlp.get(k), float) else "")
                         for k in KEYS[task] if isinstance(ev.get(k), (int, float)))
        try:
            secs = f"{float((state / f'{task}-cinn.done').read_text()):.0f}"
        except (OSError, ValueError):
            secs = "?"
        lines.append(f"| {task} | {nums} | {secs} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default", choices=["smoke", "default"])
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    ap.add_argument("--jobs", type=int, default=2, help="jobs at once (default 2: one per core)")
    ap.add_argument("--runs", help="runs folder (default runs/, or runs/demo-smoke for --preset smoke)")
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks or any(t not in TASKS for t in tasks):
        ap.error(f"--tasks takes a comma-separated list from {', '.join(TASKS)}, got {args.tasks!r}")
    runs = Path(args.runs or (ROOT / "runs" / ("demo-smoke" if args.preset == "smoke" else "")))
    state, oracle = runs / ".demo", runs / "sprites" / "classifier"
    t0 = time.time()
    Scheduler(plan(runs, args.preset, oracle, tasks), state, max(1, args.jobs)).run()
    table = summary_table(runs, state, tasks)
    (runs / "experiments.md").write_text("\n".join(table) + "\n")
    print(f"\n== summary ({(time.time() - t0) / 60:.1f} min this invocation)\n" + "\n".join(table))
    print(f"\ngrids: {runs}/<task>/cinn/grids/ and {runs}/diagnosis/diagnosis.png; evaluations: "
          f"{runs}/<task>/cinn/eval.json, {runs}/diagnosis/summary.json; logs: {state}/")


if __name__ == "__main__":
    main()
