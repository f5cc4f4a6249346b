"""The synthetic generators (train/data/synthetic.py): each sampler agrees with its stated entropy and its exact
log-density, an unknown name is refused cleanly, and `python -m train.synthetic --train` runs on every one.
Sized for CI (well under 2 min on one core): the stated H is computed once per process (`stated_entropy`), the
smoke training runs in this process, and only two generators whose H needs no Monte Carlo go through the CLI."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.core.common import UserError
from train.data.synthetic import GENERATORS, get, sample, sample_pairs, stated_entropy
from train.data.synthetic_generators import GAUSS_H

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(GENERATORS))
def test_monte_carlo_nll_of_the_true_density_matches_the_stated_entropy(name):
    """-E log p(z|c) on fresh samples (the density inverts the sampler) equals H from the forward formula."""
    gen = get(name)
    h, se, _ = stated_entropy(name)
    mc, mc_se = gen.mc_entropy(40_000, seed=12345)       # 4 s.e. = 0.002-0.008 nats/dim: a wrong term shows
    assert abs(mc - h) < 4 * math.hypot(se, mc_se) + 1e-4, (name, mc, h, mc_se, se)


@pytest.mark.parametrize("name", list(GENERATORS))
def test_samples_have_the_stated_shapes_and_depend_only_on_the_seed(name):
    source, c, z = sample(name, 64, seed=3)
    gen = get(name)
    assert z.shape == (64, gen.target_dim) and c.shape == (64, gen.source_dim) and len(source) == 64
    assert source.dtype == z.dtype == np.float32 and np.isfinite(source).all() and np.isfinite(z).all()
    again = sample(name, 64, seed=3)
    assert np.array_equal(again[2], z) and not np.array_equal(sample(name, 64, seed=4)[2], z)


def test_mixture_entropy_lies_between_its_mixing_bounds():
    """Σ π_k H_k <= H <= Σ π_k H_k + H(π) for a mixture (averaged over c): a check of the MC estimate that
    does not use the mixture's own log-density."""
    gen = get("mixture")
    c = np.random.default_rng(0).normal(size=(100_000, gen.source_dim))
    log_pi, _, r = gen._modes(c)
    pi = np.exp(log_pi)
    d = gen.target_dim
    h_k = d * GAUSS_H + gen.log_diag.sum(1)[None] + d * r                     # (n, K) entropy of each mode
    lower = (pi * h_k).sum(1).mean() / d
    upper = lower + (-(pi * log_pi).sum(1)).mean() / d
    h = stated_entropy("mixture")[0]
    assert lower - 0.002 < h < upper + 0.002, (lower, h, upper)
    assert h > lower + 0.01                              # the modes overlap a little: not a trivial bound


def test_heavy_tails_are_heavy_and_near_deterministic_dims_are_near_deterministic():
    z = sample_pairs(20_000, seed=0, generator="heavy")[1].astype(np.float64)
    zs = (z - z.mean(0)) / z.std(0)
    assert (zs ** 4).mean(0).min() > 6                   # Gaussian kurtosis is 3
    gen = get("neardet")
    c, z = gen.draw(2000, np.random.default_rng(0))
    scales = np.exp(np.stack([gen._loc_scale(i, c, z)[1] for i in range(gen.target_dim)], 1))
    assert np.median(scales[:, 4:]) < 0.03 and scales[:, 4:].max() < 0.15 < scales[:, :4].min()


def test_unknown_generator_is_refused_with_the_valid_names(tmp_path):
    with pytest.raises(UserError, match="choose from base, other"):
        get("gaussian")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "train.synthetic", "--generator", "gaussian", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().startswith("error: unknown generator 'gaussian'")
    assert "mixture" in p.stderr and "Traceback" not in p.stderr and not list(tmp_path.iterdir())


def test_smoke_training_runs_on_every_generator(tmp_path):
    """The library path of `--train` on all seven (in this process, so the cached H is reused)."""
    from train.tasks.synthetic_gap import measure_gap
    for name in GENERATORS:
        r = measure_gap(name, tmp_path / name, "smoke", n=400, n_test=200, seed=0)
        assert r["generator"] == name and r["steps"] == 20
        assert math.isfinite(r["nll"]) and r["gap"] > -0.2, r          # 200 test pairs: NLL >= H up to noise
        assert r["roundtrip_rel_err"] < 1e-5, r
        assert (tmp_path / name / "cinn" / "config.json").is_file()
        assert json.loads((tmp_path / name / "data" / "truth.json").read_text())["generator"] == name


def test_train_cli_writes_the_gap_table_and_gaps_json(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "train.synthetic", "--generator", "base,spatial", "--train",
                        "--preset", "smoke", "--n", "400", "--n-test", "200", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = json.loads((tmp_path / "gaps.json").read_text())
    assert [r["generator"] for r in rows] == ["base", "spatial"]
    for r in rows:
        assert json.loads((tmp_path / r["generator"] / "gap.json").read_text()) == r
        assert math.isfinite(r["gap"]) and r["roundtrip_rel_err"] < 1e-5, r
    assert "| spatial | 1×16×16 → 8 |" in p.stdout and "| base | 4 → 8 |" in p.stdout
