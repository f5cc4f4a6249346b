"""The one-command demo: train, evaluate, export, check, translate and benchmark the three tasks
attributes, text2image (one sprites AE serves both) and bert2biggan (random-init BigGAN: its images are
noise-like by construction, the numbers measure the translation into BigGAN's input space).

Run through `bash scripts/demo.sh` (which sets up .venv first). Every stage is the CLI a user would
type, run as a job of a small dependency graph, `--jobs` at a time (default 2, one per core, each
with one torch thread: on a 2-core machine two 1-thread jobs beat one 2-thread job). A job whose
stamp exists is skipped, an interrupted training resumes, so re-running reuses finished work.
Logs: RUNS/.demo/<job>.log. `--preset smoke` makes a quick pass (meaningless numbers) to check the
plumbing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TASKS = ("attributes", "text2image", "bert2biggan")
CAPTIONS = {"text2image": ["a small red circle on the left", "a big blue square at the top",
                           "an outlined yellow triangle on a dark background"],
            "bert2biggan": ["a photo of a golden retriever", "a yellow school bus", "a volcano erupting"]}


@dataclass
class Job:
    name: str
    argv: list[str]              # arguments of `python -m`
    deps: tuple[str, ...] = ()
    capture: Path | None = None  # stdout goes here (written only when the job succeeds)
    resume: Path | None = None   # a checkpoint here means an interrupted training: add --resume
    skip_if: Path | None = None  # already made by another job (train.ae evaluates when the oracle exists)


def expert_jobs(runs: Path, preset: str, oracle: Path) -> list[Job]:
    """The oracle classifier and the sprites AE (with its evaluation) that every sprites task shares."""
    ae = runs / "attributes" / "ae"
    smoke = preset == "smoke"
    return [Job("oracle", ["train.classifier", "--data", "sprites", "--out", str(oracle),
                           *(["--steps", "30"] if smoke else [])]),
            Job("ae", ["train.ae", "--task", "attributes", "--preset", preset, "--out", str(ae), "--threads", "1"],
                resume=ae / "checkpoint.safetensors"),
            Job("ae-eval", ["train.ae", "--eval", "--out", str(ae), "--oracle", str(oracle), "--threads", "1"],
                ("ae", "oracle"), skip_if=ae / "eval.json")]


# rough seconds per job at the default preset on one thread (measured 2026-11-30; text2image's 2026-12-01); they
# only order the ready jobs (Scheduler.priority), other jobs count DEFAULT_COST
DEFAULT_COST = 30.0
COSTS = {"ae": 690, "oracle": 190, "text2image-captions": 250,
         "attributes-cinn": 500, "text2image-cinn": 400, "bert2biggan-cinn": 340, "attributes-mlp": 130,
         "text2image-mlp": 95, "attributes-eval": 100, "text2image-eval": 70, "bert2biggan-eval": 30,
         "attributes-export": 32, "text2image-export": 48, "bert2biggan-export": 55, "bert2biggan-check": 23}


def plan(runs: Path, engines: Path, preset: str, oracle: Path) -> list[Job]:
    ae = runs / "attributes" / "ae"
    smoke = preset == "smoke"
    biggan = "random:tiny" if smoke else "random:biggan-deep-128"
    # text2image's caption embeddings need no AE: they are cached while the AE trains
    jobs = expert_jobs(runs, preset, oracle) + [
        Job("text2image-captions", ["train.tasks_sprites", "--embed-captions", "--preset", preset, "--ae", str(ae)])]
    for task in TASKS:
        extra = ["--biggan", biggan] if task == "bert2biggan" else ["--ae", str(ae)]
        deps = {"attributes": ("ae",), "text2image": ("ae", "text2image-captions"), "bert2biggan": ()}[task]
        models = ("cinn",) if task == "bert2biggan" else ("cinn", "mlp")
        for model in models:
            run = runs / task / model
            argv = ["train.cinn", "--task", task, "--model", model, "--preset", preset, "--out", str(run), *extra]
            jobs.append(Job(f"{task}-{model}", argv, deps, resume=run / "checkpoint.safetensors"))
        run = runs / task / "cinn"
        evaluate = ["train.evaluate", "--run", str(run), "--json", "--oracle", str(oracle)]
        if task != "bert2biggan":
            evaluate += ["--num-images", "50" if smoke else "500"]
        jobs.append(Job(f"{task}-eval", evaluate, tuple(f"{task}-{m}" for m in models) + ("oracle",),
                        capture=run / "eval.json"))
        # bert2biggan's fused graphs would repeat BigGAN's weights (0.46 -> 1.3 GB) for no speed-up (docs/fused.md)
        no_fuse = ["--no-fuse"] if task == "bert2biggan" else []
        jobs.append(Job(f"{task}-export", ["export.onnx", "--task", task, "--run", str(run), "--out",
                                           str(engines / task), "--precision", "int8", *no_fuse], (f"{task}-cinn",)))
        jobs.append(Job(f"{task}-check", ["runtime", "check", str(engines / task), "--json"], (f"{task}-export",),
                        capture=engines / task / "check.json"))
    return jobs


class Scheduler:
    """Runs jobs as subprocesses, at most `width` at once, in dependency order; prints progress."""

    def __init__(self, jobs: list[Job], state: Path, width: int):
        self.jobs, self.state, self.width = {j.name: j for j in jobs}, state, width
        state.mkdir(parents=True, exist_ok=True)
        self._priority: dict[str, float] = {}

    def priority(self, name: str) -> float:
        """The job's cost plus the longest chain of jobs waiting on it: ready jobs start in this order
        (critical path first), so the AE and the long trainings never queue behind short jobs."""
        if name not in self._priority:
            after = [self.priority(n) for n, j in self.jobs.items() if name in j.deps]
            self._priority[name] = COSTS.get(name, DEFAULT_COST) + max(after, default=0.0)
        return self._priority[name]

    def done(self, name: str) -> bool:
        return (self.state / f"{name}.done").exists()

    def run(self) -> None:
        pending = [n for n in self.jobs if not self.done(n)]
        for n in self.jobs:
            if self.done(n):
                print(f"== {n}: already done", flush=True)
        running: dict[str, tuple[subprocess.Popen, float, object]] = {}
        last_status = time.time()
        while pending or running:
            ready = sorted((n for n in pending if all(self.done(d) for d in self.jobs[n].deps)),
                           key=self.priority, reverse=True)
            while ready and len(running) < self.width:
                name = ready.pop(0)
                pending.remove(name)
                running[name] = self._start(self.jobs[name])
            time.sleep(1.0)
            for name, (proc, t0, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[name]
                self._finish(name, proc.returncode, time.time() - t0, running)
            if running and time.time() - last_status > 30:
                last_status = time.time()
                for name, (_, t0, _) in running.items():
                    print(f"   .. {name} {time.time() - t0:.0f}s: {self._last_line(name)}", flush=True)

    def _start(self, job: Job):
        if job.skip_if is not None and job.skip_if.exists():
            print(f"== {job.name}: already made ({job.skip_if})", flush=True)
            return _Finished(), time.time(), open(os.devnull)
        argv = list(job.argv)
        if job.resume is not None and job.resume.exists():
            argv.append("--resume")
        print(f"== {job.name}: python -m {' '.join(argv)}", flush=True)
        log = open(self.state / f"{job.name}.log", "w")
        out = open(self.state / f"{job.name}.stdout", "w") if job.capture else log
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_MININTERVAL": "5"}
        proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, stdout=out, stderr=log, env=env)
        if job.capture:
            out.close()
        return proc, time.time(), log

    def _finish(self, name: str, rc: int, seconds: float, running: dict) -> None:
        job = self.jobs[name]
        if job.capture and rc == 0:
            job.capture.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.state / f"{name}.stdout", job.capture)
        ok = rc == 0 or (name.endswith("-check") and rc == 1)   # check: 1 = a tolerance missed, still a report
        if not ok:
            for proc, _, _ in running.values():
                proc.terminate()
            print(f"\n!! {name} failed (exit {rc}). Last lines of {self.state / (name + '.log')}:", flush=True)
            print("\n".join(self._tail(name, 15)))
            print("Fix the problem and re-run: finished jobs are kept.")
            sys.exit(1)
        (self.state / f"{name}.done").write_text(f"{seconds:.1f}\n")
        print(f"== {name}: done in {seconds:.0f}s", flush=True)

    def _tail(self, name: str, n: int) -> list[str]:
        text = (self.state / f"{name}.log").read_text(errors="replace").replace("\r", "\n")
        return [line for line in text.splitlines() if line.strip()][-n:]

    def _last_line(self, name: str) -> str:
        tail = self._tail(name, 1)
        return tail[0][-110:] if tail else "(starting)"


class _Finished:
    returncode = 0

    def poll(self):
        return 0


def examples(engines: Path, out: Path) -> list[Path]:
    """Example outputs through the torch-free runtime: attribute edits, exemplar transfer, text samples."""
    import numpy as np  # here, not at the top: the scheduler process itself stays free of torch and numpy

    from runtime import Pipeline
    from train.data import ATTRIBUTES
    from train.data.sprites import render_batch
    from train.eval.grids import save_grid
    written = []
    p = Pipeline.load(engines / "attributes")
    images, attrs, _ = render_batch(range(6), "test", p.image_shape[0])
    flips = ["color_blue", "color_green", "size_large", "pos_left", "bg_dark", "style_outline"]
    rows = []
    for img, a in zip(images, attrs):
        row = [img]
        for name in flips:
            new = a.copy()
            if name.startswith("color_"):
                new[[i for i, n in enumerate(ATTRIBUTES) if n.startswith("color_")]] = 0
                new[ATTRIBUTES.index(name)] = 1
            else:
                new[ATTRIBUTES.index(name)] = 1 - a[ATTRIBUTES.index(name)]
            row.append(p.transfer(img[None], a[None], new[None])[0])
        rows.append(row)
    written.append(save_grid(rows, out / "attributes_edits.png", col_titles=["input", *flips], scale=2))
    # exemplar transfer: row i keeps exemplar i's residual v, column j takes image j's attributes
    n = 5
    rows = [[images[i]] + [p.transfer(images[i:i + 1], attrs[i:i + 1], attrs[j:j + 1])[0] for j in range(n)]
            for i in range(n)]
    written.append(save_grid([[np.full_like(images[0], 255)] + list(images[:n])] + rows,
                             out / "attributes_transfer.png", scale=2,
                             header="row: exemplar (v kept); column: attributes taken from the top image"))
    for task in ("text2image", "bert2biggan"):
        p = Pipeline.load(engines / task)
        samples = p.translate(CAPTIONS[task], num_samples=6, seed=0)
        rows = [list(samples[i * 6:(i + 1) * 6]) for i in range(len(CAPTIONS[task]))]
        label = " (random-init BigGAN: noise-like images by construction)" if task == "bert2biggan" else ""
        written.append(save_grid(rows, out / f"{task}_samples.png", row_titles=CAPTIONS[task],
                                 scale=2 if task == "text2image" else 1, header=f"{task}{label}"))
    return written


def summary_table(runs: Path, engines: Path, state: Path) -> list[str]:
    keys = {"attributes": ["flip_success", "keep_rate", "probe_accuracy", "probe_baseline", "diversity"],
            "text2image": ["heldout_attribute_accuracy", "diversity"],
            "bert2biggan": ["class_top5", "class_top1"]}
    lines = ["| task | evaluation (cINN, MLP in brackets) | bundle check | translate batch 1 (ms) | train s |",
             "|---|---|---|---:|---:|"]
    for task in TASKS:
        ev = json.loads((runs / task / "cinn" / "eval.json").read_text())
        mlp = ev.get("mlp") or {}
        nums = ", ".join(f"{k} {ev[k]:.3f}" + (f" (MLP {mlp[k]:.3f})" if isinstance(mlp.get(k), float) else "")
                         for k in keys[task] if isinstance(ev.get(k), (int, float)))
        check = json.loads((engines / task / "check.json").read_text())
        ms = check["latency_batch1_ms"]["translate_end_to_end"]
        secs = float((state / f"{task}-cinn.done").read_text())
        lines.append(f"| {task} | {nums} | {'ok' if check['ok'] else 'FAILED: ' + ', '.join(check['failures'])} "
                     f"| {ms:.2f} | {secs:.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default", choices=["smoke", "default"])
    ap.add_argument("--jobs", type=int, default=2, help="jobs at once (default 2: one per core)")
    ap.add_argument("--runs", help="runs folder (default runs/, or runs/demo-smoke for --preset smoke)")
    ap.add_argument("--no-bench", action="store_true", help="skip the short benchmark")
    args = ap.parse_args()
    smoke = args.preset == "smoke"
    runs = Path(args.runs or (ROOT / "runs" / ("demo-smoke" if smoke else "")))
    engines = ROOT / "engines" / ("demo-smoke" if smoke else "")
    out = ROOT / "demo" / ("smoke" if smoke else "")
    state = runs / ".demo"
    oracle = runs / "sprites" / "classifier"
    t0 = time.time()
    Scheduler(plan(runs, engines, args.preset, oracle), state, max(1, args.jobs)).run()
    print("== example outputs through runtime.Pipeline", flush=True)
    written = examples(engines, out)
    if not args.no_bench:
        bench_out = out / "bench"
        cmd = [sys.executable, "-m", "bench", *(f"--bundle={engines / t}" for t in TASKS), "--out", str(bench_out),
               "--batches", "1,8", "--no-rss", "--quick"]
        log = state / "bench.log"
        print(f"== short benchmark: {' '.join(cmd[1:])} (log: {log})", flush=True)
        with open(log, "w") as f:
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=f, stderr=subprocess.STDOUT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        print("\n".join(line for line in log.read_text().splitlines() if line.startswith("| (")), flush=True)
    table = summary_table(runs, engines, state)
    (out / "summary.md").write_text("\n".join(table) + "\n")
    print(f"\n== summary ({(time.time() - t0) / 60:.1f} min this invocation)\n" + "\n".join(table))
    print(f"\noutputs: {', '.join(str(p.relative_to(ROOT)) for p in written)}\n"
          f"runs (checkpoints, grids, eval.json): {runs}/<task>/; bundles: {engines}/<task>/; "
          f"benchmark: {out / 'bench'}/; logs: {state}/")


if __name__ == "__main__":
    main()
