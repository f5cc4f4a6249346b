"""The gap of the `features` task on the synthetic generators: held-out NLL minus the true H(zΘ | zΦ).

`measure_gap` writes one generator's data (train/data/synthetic.py), trains τ with a `features` preset exactly
as `python -m train.cinn --task features` does, and evaluates it on the test split as `train.evaluate` does.
"""
from __future__ import annotations

import time
from pathlib import Path

from train.core.common import read_json
from train.core.presets import TrainOverrides
from train.data.synthetic import get, sample, stated_entropy, write_benchmark
from train.eval.features import FeatureEval
from train.tasks.contract import EvalRequest
from train.tasks.features import FEATURES, FeatureOptions
from train.tasks.run import TrainRequest, train_task


def entropy_row(name: str) -> dict:
    gen = get(name)
    h, se, how = stated_entropy(name)
    return {"generator": name, "summary": gen.summary, "source_shape": list(sample(name, 1)[0].shape[1:]),
            "target_dim": gen.target_dim,
            "conditional_entropy": h, "standard_error": se, "method": how}


def measure_gap(name: str, out: str | Path, preset: str = "default", n: int = 40_000, n_test: int = 10_000,
                seed: int = 0, steps: int | None = None) -> dict:
    """Data into OUT/data, the run into OUT/cinn; returns the generator's row with nll, gap and round trip."""
    out = Path(out)
    truth = write_benchmark(name, out / "data", n, n_test, seed)
    data = out / "data"
    options = FeatureOptions(str(data / "train_source.npy"), str(data / "train_target.npy"))
    t0 = time.perf_counter()
    _, run = train_task(TrainRequest(FEATURES, options, preset, seed=seed, out=str(out / "cinn"),
                                     overrides=TrainOverrides(steps=steps)))
    seconds = time.perf_counter() - t0
    config = read_json(run / "config.json")
    ev = FEATURES.evaluate(EvalRequest(run, config, seed=seed, options=FeatureEval(
        str(data / "test_source.npy"), str(data / "test_target.npy"))))
    h = truth["conditional_entropy_nats_per_dim"]
    return {"generator": name, "source_shape": truth["source_shape"], "target_dim": truth["target_dim"],
            "conditional_entropy": h, "standard_error": truth["standard_error"], "nll": ev["nll_nats_per_dim"],
            "gap": ev["nll_nats_per_dim"] - h, "roundtrip_rel_err": ev["roundtrip_rel_err"],
            "train_seconds": seconds, "steps": config["train"]["steps"],
            "steps_per_s": config["train"]["steps"] / seconds, "preset": preset}


def format_table(rows: list[dict]) -> str:
    """A markdown table: entropies only, or with the measured gap when the rows have one."""
    trained = all("gap" in r for r in rows)
    head = ["generator", "zΦ → zΘ", "H(zΘ|zΦ) nats/dim", "± s.e."]
    if trained:
        head += ["test NLL", "gap", "round trip", "train s", "steps/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        shape = r.get("source_shape")
        src = "×".join(map(str, shape)) if shape else "?"
        cells = [r["generator"], f"{src} → {r['target_dim']}", f"{r['conditional_entropy']:.4f}",
                 f"{r['standard_error']:.4f}"]
        if trained:
            cells += [f"{r['nll']:.4f}", f"**{r['gap']:.3f}**", f"{r['roundtrip_rel_err']:.1e}",
                      f"{r['train_seconds']:.0f}", f"{r['steps_per_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
