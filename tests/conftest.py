"""Fixtures shared by the tests: a smoke-preset autoencoder and a 5-step oracle (seconds each; the real runs
are far better, the plumbing under test is the same), and the small test bundles."""
import pytest


@pytest.fixture(scope="session")
def ae_run(tmp_path_factory):
    from train.ae import main as train_ae
    out = tmp_path_factory.mktemp("ae") / "ae"
    train_ae(["--preset", "smoke", "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def oracle_run(tmp_path_factory):
    from train.classifier import main as train_oracle
    out = tmp_path_factory.mktemp("oracle") / "oracle"
    train_oracle(["--data", "sprites", "--out", str(out), "--steps", "5"])
    return out


@pytest.fixture
def train_smoke(ae_run):
    """train_smoke(task, root, *extra) -> root/task/cinn: a smoke cINN and MLP beside it, on the smoke AE,
    checking that training left the frozen AE bit-identical."""
    import torch

    from train import cinn
    from train.core.common import load_tensors

    def run(task, root, *extra):
        before = load_tensors(ae_run / "checkpoint.safetensors")
        for model in ("cinn", "mlp"):
            cinn.main(["--task", task, "--preset", "smoke", "--ae", str(ae_run), "--out", str(root / task / model),
                       "--model", model, *extra])
        after = load_tensors(ae_run / "checkpoint.safetensors")
        assert all(torch.equal(before[k], after[k]) for k in before)          # the AE never changed
        return root / task / "cinn"
    return run


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """The small bundles of every kind (test_export.Bundles), built once per session in one folder."""
    from test_export import Bundles
    return Bundles(tmp_path_factory.getbasetemp() / "bundles")


@pytest.fixture(scope="module")
def features_files(tmp_path_factory):
    """Small features-task arrays for the training CLI tests, and broken .npy files beside them."""
    import numpy as np
    d = tmp_path_factory.mktemp("features-files")
    rng = np.random.default_rng(0)
    np.save(d / "c.npy", rng.standard_normal((64, 4), dtype=np.float32))
    np.save(d / "z.npy", rng.standard_normal((64, 8), dtype=np.float32))
    (d / "empty.npy").write_bytes(b"")
    np.save(d / "object.npy", np.array([{"a": 1}] * 64, dtype=object), allow_pickle=True)
    np.save(d / "truncated.npy", np.zeros((64, 4), np.float32))
    (d / "truncated.npy").write_bytes((d / "truncated.npy").read_bytes()[:200])
    return d


@pytest.fixture()
def pairs_dir(tmp_path):
    """600 synthetic (c, z) pairs as c.npy / z.npy in a fresh folder: input of train_args."""
    import numpy as np

    from train.data.synthetic import sample_pairs
    c, z = sample_pairs(600, seed=5)
    np.save(tmp_path / "c.npy", c)
    np.save(tmp_path / "z.npy", z)
    return tmp_path


def train_args(d, out, *extra):
    """`python -m train.cinn` arguments of a smoke run on pairs_dir's files."""
    return ["--task", "features", "--source", str(d / "c.npy"), "--target", str(d / "z.npy"),
            "--out", str(out), "--preset", "smoke", *extra]
