"""Your own experts end to end, exactly as docs/custom-experts.md does it with docs/examples/my_experts.py:
pretrain the two example experts, train τ with `--task FILE.py:TASK`, export with the same spec, translate
with the torch-free runtime.Pipeline. Plus the errors a mistyped --task gets."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.core.errors import UserError
from train.tasks.registry import load_task

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "docs/examples/my_experts.py"


def _run(*argv, env=None):
    p = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom")
    experts, run, engines = root / "experts", root / "cinn", root / "bundle"
    env = {"MY_EXPERTS": str(experts)}
    _run(EXAMPLE, "--out", str(experts), "--steps", "20")
    _run("-m", "train.cinn", "--task", f"{EXAMPLE}:TASK", "--preset", "smoke", "--out", str(run), env=env)
    _run("-m", "export.onnx", "--task", f"{EXAMPLE}:TASK", "--run", str(run), "--out", str(engines), env=env)
    return run, engines


def test_train_records_the_task_spec(bundle):
    config = json.loads((bundle[0] / "config.json").read_text())
    assert config["task"] == "my_experts" and config["task_ref"] == f"{EXAMPLE}:TASK"
    assert config["model"]["cond_shape"] == [32] and config["model"]["target_dim"] == 16


def test_bundle_has_every_stage_and_the_runtime_translates(bundle):
    from runtime import Pipeline
    from train.data.sprites import render_batch

    manifest = json.loads((bundle[1] / "manifest.json").read_text())
    assert {"source_encoder", "flow_forward", "flow_inverse", "target_encoder", "target_decoder"} <= set(
        manifest["stages"])
    assert manifest["source_kind"] == "image" and manifest["task"] == "my_experts"
    assert manifest["validation"]["origin"].startswith("task validation split")
    p = Pipeline.load(bundle[1], backend="onnxruntime")
    images, _, _ = render_batch(range(3), "test", 32)
    out = p.translate(images, num_samples=2, seed=0)
    assert out.shape == (6, 32, 32, 3) and out.dtype == np.uint8
    assert np.array_equal(out, p.translate(images, num_samples=2, seed=0))     # seeded
    assert p.transfer(images, images, images[::-1]).shape == (3, 32, 32, 3)    # τ⁻¹ then τ, through Θ
    assert p.check()["ok"]


def test_task_spec_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="unknown task 'atributes'"):
        load_task("atributes")
    with pytest.raises(UserError, match="no such file"):
        load_task(str(tmp_path / "missing.py") + ":TASK")
    (tmp_path / "t.py").write_text("TASK = 3\n")
    with pytest.raises(UserError, match="defines int named TASK, not a"):
        load_task(f"{tmp_path / 't.py'}:TASK")
    with pytest.raises(UserError, match="cannot import"):
        load_task("no_such_package.tasks:TASK")
    assert load_task("train.tasks.features:FEATURES").name == "features"


def test_unknown_preset_is_refused_before_any_expert_is_loaded(tmp_path):
    from train import cinn
    with pytest.raises(UserError, match="unknown preset 'fast' for task attributes"):
        cinn.main(["--task", "attributes", "--preset", "fast", "--ae", str(tmp_path / "ae")])
    assert not (tmp_path / "ae").exists()
