"""Model diagnosis end to end (Sec. 4.2 "Model Diagnosis", Fig. 5; MLP ablation of Sec. E, Fig. S4).

    python -m train.diagnosis                       # default preset -> runs/diagnosis/
    python -m train.diagnosis --preset smoke --out /tmp/diag

Trains (or reuses) one cINN per (classifier, layer) of the `diagnosis` task, 2 × 3 of them, and the
MLP baseline at `--mlp-layers` (default: the last layer), evaluates each with the oracle, and writes
OUT/summary.json (every evaluation plus the finding in numbers), OUT/diagnosis.png (rows = layers
as in Fig. 5, MLP rows below) and prints the invariance table as markdown.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from train.common import UserError, atomic_write_json, run_cli
from train.data.sprites import first_test_renders
from train.grids import save_grid
from train.tasks_diagnosis import CLASSIFIERS, LAYERS, SCORED, evaluate_run, load_run, sample_rows
from train.tasks_sprites import DEFAULT_AE


def _train(model: str, kind: str, layer: str, args, run: Path) -> float | None:
    """Train one run unless it already exists; returns its wall seconds (None when reused)."""
    from train import cinn
    if (run / "checkpoint.safetensors").is_file():
        print(f"reusing {run}")
        return None
    start = time.perf_counter()
    cinn.main(["--task", "diagnosis", "--model", model, "--preset", args.preset, "--ae", args.ae, "--seed",
               str(args.seed), "--classifier", kind, "--layer", layer, "--out", str(run),
               "--classifier-run", str(Path(args.out) / f"classifier_{kind}")])
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.diagnosis", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default", help="smoke | default | paper")
    p.add_argument("--out", help="output folder (default runs/diagnosis, runs/diagnosis-smoke for smoke)")
    p.add_argument("--ae", default=DEFAULT_AE, help="sprites autoencoder run (trained first if missing)")
    p.add_argument("--oracle", default="runs/sprites/classifier", help="the judge: a 13-attribute classifier run")
    p.add_argument("--classifiers", default="all,shape", help="comma-separated, from: all, shape")
    p.add_argument("--mlp-layers", default="last", help="layers that also get the MLP baseline ('' for none)")
    p.add_argument("--num-images", type=int, default=300, help="test images per evaluation (default 300)")
    p.add_argument("--samples", type=int, default=8, help="samples per test image (default 8)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out = args.out or f"runs/diagnosis{'-smoke' if args.preset == 'smoke' else ''}"
    kinds = [k for k in args.classifiers.split(",") if k]
    mlp_layers = [m for m in args.mlp_layers.split(",") if m]
    if not kinds or any(k not in CLASSIFIERS for k in kinds) or any(m not in LAYERS for m in mlp_layers):
        raise UserError(f"--classifiers takes {', '.join(CLASSIFIERS)} and --mlp-layers {', '.join(LAYERS)}")

    out, seconds, runs = Path(args.out), {}, {}
    start = time.perf_counter()
    for kind in kinds:
        for layer in LAYERS:
            run = out / f"{kind}-{layer}"
            seconds[f"{kind}-{layer}/cinn"] = _train("cinn", kind, layer, args, run / "cinn")
            if layer in mlp_layers:
                seconds[f"{kind}-{layer}/mlp"] = _train("mlp", kind, layer, args, run / "mlp")
            print(f"evaluating {run}")
            runs[f"{kind}-{layer}"] = evaluate_run(argparse.Namespace(
                run=str(run / "cinn"), oracle=args.oracle, num_images=args.num_images, seed=args.seed,
                extra=["--samples", str(args.samples)]))
    grid = combined_grid(runs, out / "diagnosis.png", args.seed)
    summary = {"preset": args.preset, "oracle": args.oracle, "num_images": args.num_images, "samples": args.samples,
               "seed": args.seed, "train_seconds": seconds, "total_seconds": round(time.perf_counter() - start, 1),
               "finding": finding(runs), "runs": runs}
    atomic_write_json(out / "summary.json", summary)
    print(table(runs))
    print(f"wrote {out / 'summary.json'} and {grid} ({summary['total_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    run_cli(main)
