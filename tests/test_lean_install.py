"""The lean profile: `pip install .` with no extras, in a fresh virtual environment, runs the runtime without the
training stack. Needs PyPI (numpy, onnxruntime, tokenizers, Pillow, setuptools to build); pip's cache helps."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_export import ROOT, Bundles

from runtime import Pipeline

PACKAGES = ("runtime", "export", "train", "bench")


def run(cmd, cwd, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return Bundles(tmp_path_factory.getbasetemp() / "bundles").get("text2image")      # built by the test session


@pytest.fixture(scope="module")
def lean(tmp_path_factory):
    """A venv with the checkout installed without extras; the checkout is copied first (setuptools builds in
    the source folder) and the venv is used from a folder where the checkout is not importable."""
    root = tmp_path_factory.mktemp("lean")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "results"))
    p = run([sys.executable, "-m", "venv", root / "venv"], root)
    assert p.returncode == 0, p.stderr
    py = root / "venv" / "bin" / "python"
    p = run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", src], root)
    assert p.returncode == 0, f"pip install of the checkout failed (needs PyPI):\n{p.stdout[-3000:]}{p.stderr[-3000:]}"
    return py, root


@pytest.mark.slow
def test_lean_install_has_no_training_stack(lean):
    py, root = lean
    p = run([py, "-m", "pip", "list", "--format=freeze"], root)
    installed = {line.split("==")[0].lower() for line in p.stdout.splitlines()}
    assert {"numpy", "onnxruntime", "tokenizers", "pillow", "net2net-cinn"} <= installed
    assert not installed & {"torch", "torchvision", "transformers", "sentence-transformers", "matplotlib",
                            "nvidia-pytriton"}, installed
    for module in ("torch", "transformers", "sentence_transformers"):
        p = run([py, "-c", f"import {module}"], root)
        assert p.returncode == 1 and "ModuleNotFoundError" in p.stderr, module
    p = run([py, "-c", "import runtime; print(runtime.__file__)"], root)
    assert p.returncode == 0 and str(root / "venv") in p.stdout            # the installed copy, not the checkout


@pytest.mark.slow
def test_lean_install_checks_and_translates_a_bundle(lean, bundle):
    py, root = lean
    p = run([py, "-m", "runtime", "check", bundle, "--repeats", "2"], root)
    assert p.returncode == 0 and p.stdout.rstrip().endswith("OK"), p.stdout + p.stderr
    p = run([py, "-m", "runtime", "translate", bundle, "a small red circle", "--num-samples", "2", "--seed", "3",
             "--out", root / "grid.png"], root)
    assert p.returncode == 0, p.stderr
    grid = np.asarray(Image.open(root / "grid.png"))
    ref = Pipeline.load(bundle).translate(["a small red circle"], num_samples=2, seed=3)
    assert grid.shape == (16, 32, 3)
    # another onnxruntime build may round differently: within 1/255 on average, not bytes
    assert np.abs(grid.astype(float) - np.concatenate(list(ref), axis=1)).mean() <= 1.0


@pytest.mark.slow
def test_lean_install_serve_says_what_to_install(lean, bundle):
    py, root = lean
    p = run([py, "-m", "runtime", "serve", bundle, "--http-port", "0"], root, timeout=120)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and "pip install '.[serve]'" in err[0], p.stderr
