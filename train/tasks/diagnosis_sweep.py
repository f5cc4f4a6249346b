"""Model diagnosis end to end (Sec. 4.2, Fig. 5; the MLP ablation of Sec. E, Fig. S4): the library form of
`python -m train.diagnosis`.

One cINN per (classifier, layer) of the `diagnosis` task and the MLP baseline at `mlp_layers`, each trained
(or reused) and evaluated with the oracle; OUT/summary.json holds every evaluation plus the finding in
numbers, OUT/diagnosis.png the samples (rows = layers as in Fig. 5, MLP rows below).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from train.core.common import atomic_write_json
from train.data.sprites import first_test_renders
from train.eval.diagnosis import DiagnosisEval, evaluate_run, load_run, sample_rows
from train.eval.grids import save_grid
from train.eval.metrics import SCORED
from train.experts.classifier import LAYERS
from train.tasks.contract import EvalRequest
from train.tasks.diagnosis import TASKS, DiagnosisOptions
from train.tasks.run import TrainRequest, train_task
from train.tasks.sprites import DEFAULT_AE


@dataclass
class Sweep:
    preset: str = "default"
    out: str = "runs/diagnosis"
    ae: str = DEFAULT_AE
    oracle: str = "runs/sprites/classifier"
    classifiers: list[str] = field(default_factory=lambda: ["all", "shape"])
    mlp_layers: list[str] = field(default_factory=lambda: ["last"])
    num_images: int = 300
    samples: int = 8
    seed: int = 0


def _train(model: str, kind: str, layer: str, sweep: Sweep, run: Path) -> float | None:
    """Train one run unless it already exists; returns its wall seconds (None when reused)."""
    if (run / "checkpoint.safetensors").is_file():
        print(f"reusing {run}")
        return None
    start = time.perf_counter()
    options = DiagnosisOptions(ae=sweep.ae, classifier=kind, layer=layer,
                               classifier_run=str(Path(sweep.out) / f"classifier_{kind}"))
    train_task(TrainRequest(TASKS["diagnosis"], options, sweep.preset, model, sweep.seed, str(run)))
    return round(time.perf_counter() - start, 1)


def finding(runs: dict) -> dict:
    """The expected finding in numbers: per classifier, the mean invariance per layer and whether it
    never drops with depth; at each MLP layer, the latent spread of the MLP beside the cINN's."""
    out = {}
    for kind in {r["classifier"] for r in runs.values()}:
        mean = {r["layer"]: r["invariance"]["mean"] for r in runs.values() if r["classifier"] == kind}
        seq = [mean[layer] for layer in LAYERS if layer in mean]
        out[kind] = {"mean_invariance": mean, "grows_with_depth": bool(np.all(np.diff(seq) >= 0)),
                     "mlp_vs_cinn_latent_spread": {r["layer"]: [r["mlp"]["latent_spread"], r["latent_spread"]]
                                                   for r in runs.values() if r["classifier"] == kind and r["mlp"]}}
    return out


def table(runs: dict) -> str:
    """Markdown: invariance per attribute (cINN rows), error and latent spread (cINN and MLP rows)."""
    names = list(SCORED)
    lines = ["| classifier | layer | model | " + " | ".join(names) + " | mean inv. | error | latent spread |",
             "|" + "---|" * (len(names) + 6)]
    for r in runs.values():
        inv = r["invariance"]
        lines.append(f"| {r['classifier']} | {r['layer']} | cINN | " + " | ".join(f"{inv[n]:.2f}" for n in names)
                     + f" | **{inv['mean']:.2f}** | {r['error']['mean']:.2f} | {r['latent_spread']:.2f} |")
        if r["mlp"]:
            lines.append(f"| {r['classifier']} | {r['layer']} | MLP | " + " | ".join("–" for _ in names)
                         + f" | (0) | {r['mlp']['error']['mean']:.2f} | {r['mlp']['latent_spread']:.2f} |")
    return "\n".join(lines)


def combined_grid(runs: dict, path: Path, seed: int, num: int = 2, samples: int = 5) -> Path:
    """Fig. 5 / S4 on sprites: per row one (classifier, layer, model), `num` test inputs each followed
    by `samples` translations Λ(τ(v|zΦ(x)))."""
    rows, titles = [], []
    for name, r in runs.items():
        for model in ("cinn", "mlp") if r["mlp"] else ("cinn",):
            translator, phi, _ = load_run(Path(r["run"]).parent / model)
            images, _, _ = first_test_renders(num, phi.image_size, offset=3)
            rows.append([img for row in sample_rows(translator, phi, images, samples, seed) for img in row])
            titles.append(f"{r['classifier']} classifier, {r['layer']} layer, {model.upper()}: "
                          f"mean invariance {r['invariance']['mean']:.2f}" if model == "cinn" else
                          f"{r['classifier']} classifier, {r['layer']} layer, MLP (one output per zPhi)")
    return save_grid(rows, path, row_titles=titles, header="input x | samples L(t(v|zPhi(x))), per layer of f")


def run_sweep(sweep: Sweep) -> dict:
    """Train and evaluate every (classifier, layer); writes OUT/summary.json and OUT/diagnosis.png."""
    out, seconds, runs = Path(sweep.out), {}, {}
    start = time.perf_counter()
    for kind in sweep.classifiers:
        for layer in LAYERS:
            run = out / f"{kind}-{layer}"
            seconds[f"{kind}-{layer}/cinn"] = _train("cinn", kind, layer, sweep, run / "cinn")
            if layer in sweep.mlp_layers:
                seconds[f"{kind}-{layer}/mlp"] = _train("mlp", kind, layer, sweep, run / "mlp")
            print(f"evaluating {run}")
            request = EvalRequest(run / "cinn", {}, sweep.num_images, sweep.seed, sweep.oracle,
                                  options=DiagnosisEval(samples=sweep.samples))
            runs[f"{kind}-{layer}"] = evaluate_run(request)
    grid = combined_grid(runs, out / "diagnosis.png", sweep.seed)
    summary = {"preset": sweep.preset, "oracle": sweep.oracle, "num_images": sweep.num_images,
               "samples": sweep.samples, "seed": sweep.seed, "train_seconds": seconds,
               "total_seconds": round(time.perf_counter() - start, 1), "finding": finding(runs), "runs": runs}
    atomic_write_json(out / "summary.json", summary)
    print(table(runs))
    print(f"wrote {out / 'summary.json'} and {grid} ({summary['total_seconds']:.0f}s)")
    return summary
