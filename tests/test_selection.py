"""Sampling-time selection (train/core/selection.py, runtime.Pipeline.translate(best_of=...)): each sample is the
most likely of n draws under τ; n = 1 is plain sampling; a row's result depends only on its own draws; the
runtime picks the same candidates as PyTorch from the same draws. Bundles come from test_export's builders."""
import json

import numpy as np
import pytest
import torch
from test_export import copy_bundle

from runtime import Pipeline, PipelineError
from runtime.app.engines import LocalEngine
from runtime.inputs import seeded_rng
from runtime.manifest import MANIFEST
from runtime.serve import TranslateModel
from train.core.selection import log_density, pick_best, sample_best_of
from train.core.translator import load_translator


@pytest.fixture(scope="module")
def flow(bundles):
    return load_translator(bundles.features_run())[0].eval()


def conditions(model, n=5, seed=0):
    return model.random_conditions(n, torch.Generator().manual_seed(seed))


def test_best_of_1_is_plain_sampling(flow):
    c = conditions(flow)
    plain = flow.sample(c, 3, 1.3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(sample_best_of(flow, c, 3, 1.3, 1, torch.Generator().manual_seed(7)), plain)


def test_keeps_the_most_likely_of_each_rows_own_candidates(flow):
    c, n, s = conditions(flow), 4, 2
    out = sample_best_of(flow, c, s, 1.3, n, torch.Generator().manual_seed(3))
    cand = flow.sample(c, s * n, 1.3, generator=torch.Generator().manual_seed(3)).view(len(c) * s, n, -1)
    score = log_density(flow, cand.reshape(len(c) * s * n, -1), c.repeat_interleave(s * n, 0)).view(-1, n)
    best = score.argmax(1)
    assert torch.equal(out, cand[torch.arange(len(best)), best])
    assert len(set(best.tolist())) > 1                  # the choice varies: the test could fail
    # the kept sample is at least as likely as every other candidate of its row
    kept = log_density(flow, out, c.repeat_interleave(s, 0))
    assert torch.all(kept[:, None] >= score - 1e-4)


def test_a_rows_result_depends_only_on_its_own_draws_and_the_seed(flow):
    c = conditions(flow)
    a = sample_best_of(flow, c, 2, 1.5, 4, torch.Generator().manual_seed(11))
    assert torch.equal(a, sample_best_of(flow, c, 2, 1.5, 4, torch.Generator().manual_seed(11)))
    assert not torch.allclose(a, sample_best_of(flow, c, 2, 1.5, 4, torch.Generator().manual_seed(12)))
    other = c.clone()
    other[1:] = conditions(flow, 4, seed=9)              # every other row's condition changed
    b = sample_best_of(flow, other, 2, 1.5, 4, torch.Generator().manual_seed(11))
    assert torch.equal(a[:2], b[:2]) and not torch.allclose(a[2:], b[2:])


def test_pick_best_and_bad_counts():
    z = torch.arange(12.0).view(6, 2)
    assert torch.equal(pick_best(z, torch.tensor([0.0, 2, 1, 5, 4, 3]), 3), z[[1, 3]])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="best_of must be an integer >= 1"):
            sample_best_of(None, torch.zeros(1, 4), 1, 1.0, bad)


def test_runtime_picks_what_pytorch_picks_from_the_same_draws(bundles, flow):
    p = Pipeline.load(bundles.get("features"))
    cond = conditions(flow).numpy()
    s, n, t = 2, 4, 1.3
    z = p.translate(cond, num_samples=s, seed=5, temperature=t, best_of=n)    # no decoder: latents (N*S, D)
    v = seeded_rng(5).standard_normal((len(cond) * s * n, p.latent_dim), dtype=np.float32) * np.float32(t)
    c = torch.from_numpy(cond).repeat_interleave(s * n, 0)
    with torch.no_grad():
        cand = flow.forward(torch.from_numpy(v), c)
    score = log_density(flow, cand, c)
    ref = pick_best(cand, score, n).numpy()
    assert len(set(score.view(-1, n).argmax(1).tolist())) > 1
    np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-4)
    assert np.array_equal(z, p.translate(cond, num_samples=s, seed=5, temperature=t, best_of=n))
    # best_of=1 is the plain draw; the first source's samples do not depend on the second's
    assert np.array_equal(p.translate(cond, num_samples=s, seed=5, temperature=t, best_of=1),
                          p.translate(cond, num_samples=s, seed=5, temperature=t))
    for bad in (0, 1.5, True, 65):
        with pytest.raises(PipelineError, match="best_of must be an integer >= 1"):
            p.translate(cond, seed=5, best_of=bad)


def test_the_manifest_default_serving_the_page_and_old_bundles(bundles, tmp_path):
    src = bundles.get("attributes")
    chosen = copy_bundle(src, tmp_path / "chosen")
    m = json.loads((chosen / MANIFEST).read_text())
    m["sampling"] = {**m["sampling"], "best_of": 3, "cycles": 1}
    (chosen / MANIFEST).write_text(json.dumps(m))
    p, plain = Pipeline.load(chosen), Pipeline.load(src)
    assert (p.default_best_of, p.default_cycles) == (3, 1)
    assert (plain.default_best_of, plain.default_cycles) == (1, 0)     # absent: plain sampling, as before
    c = np.eye(p.cond_shape[0], dtype=np.float32)[[0, 2, 4]]
    assert np.array_equal(p.translate(c, num_samples=2, seed=1),
                          plain.translate(c, num_samples=2, seed=1, best_of=3, cycles=1))
    assert np.array_equal(p.translate(c, seed=1, best_of=1, cycles=0), plain.translate(c, seed=1))
    # a served row and the page's sample are translate's sample of that row with its seed
    served = TranslateModel(p).infer([{"source": c, "seed": np.array([[4], [5], [6]], dtype=np.int64)}])[0]
    page = LocalEngine({"attributes": chosen}).sample("attributes", c, [4, 5, 6], p.default_temperature)
    for r, seed in enumerate((4, 5, 6)):
        assert np.array_equal(next(iter(served.values()))[r], p.translate(c[r:r + 1], seed=seed)[0])
        assert np.array_equal(page[r], p.translate(c[r:r + 1], seed=seed)[0])
    for field, bad in (("best_of", 0), ("best_of", "4"), ("best_of", 2.0), ("best_of", 100), ("cycles", -1),
                       ("cycles", 9)):
        (chosen / MANIFEST).write_text(json.dumps({**m, "sampling": {**m["sampling"], field: bad}}))
        with pytest.raises(PipelineError, match=f"'sampling.{field}'"):
            Pipeline.load(chosen)


def test_export_carries_the_tasks_best_of():
    from export.onnx import sampling_section
    from train.experts.base import Experts
    chosen = Experts(info={"sampling": {"temperature": 1.5, "chosen_by": "docs", "best_of": 4, "cycles": 1}})
    assert sampling_section(chosen) == {"temperature": 1.5, "chosen_by": "docs", "best_of": 4, "cycles": 1}
    assert sampling_section(chosen, 1.0)["best_of"] == 4            # an explicit temperature keeps the choice
    assert set(sampling_section(Experts(info={"sampling": {"temperature": 1.5, "best_of": 1, "cycles": 0}}))) == {
        "temperature", "chosen_by"}                                  # plain sampling: bundles read as before


def test_runtime_cycles_match_pytorch_and_need_the_autoencoder(bundles):
    p = Pipeline.load(bundles.get("attributes"))
    _, flow, ae = bundles.standins("attributes")
    c = np.eye(p.cond_shape[0], dtype=np.float32)[[0, 2, 4]]
    images = p.translate(c, num_samples=2, seed=4, temperature=1.2, cycles=1)
    v = seeded_rng(4).standard_normal((len(c) * 2, p.latent_dim), dtype=np.float32) * np.float32(1.2)
    with torch.no_grad():
        z = ae.encode(ae.decode(flow.forward(torch.from_numpy(v), torch.from_numpy(c).repeat_interleave(2, 0))))
    ref = p.decode_target(z.numpy())
    assert np.abs(images.astype(int) - ref.astype(int)).max() <= 1
    assert not np.array_equal(images, p.translate(c, num_samples=2, seed=4, temperature=1.2))   # the cycle moved z
    # selection and the cycle together: the cycled latents of the chosen candidates
    both = p.translate(c, seed=4, best_of=3, cycles=2)
    assert np.array_equal(both, p.translate(c, seed=4, best_of=3, cycles=2))
    with pytest.raises(PipelineError, match="cycles must be an integer >= 0"):
        p.translate(c, seed=4, cycles=-1)
    with pytest.raises(PipelineError, match="needs a bundle with a target encoder"):
        Pipeline.load(bundles.get("features")).translate(np.zeros((1, 4), np.float32), cycles=1)


def test_translator_cycles_reencode_before_the_last_decode(ae_run):
    from train.eval.translator import Translator
    from train.experts.ae_training import load_ae
    ae = load_ae(str(ae_run))
    flow = _tiny_flow_for(ae)
    t = Translator(flow, ae, str(ae_run))
    c = flow.random_conditions(3, torch.Generator().manual_seed(0))
    plain = t.sample(c, 2, seed=1)
    with torch.no_grad():
        z = flow.sample(c, 2, generator=torch.Generator().manual_seed(1))
        want = ae.decode(ae.encode(ae.decode(z)))
    assert torch.allclose(t.sample(c, 2, seed=1, cycles=1), want, atol=1e-5)
    assert not torch.allclose(plain, want)


def _tiny_flow_for(ae):
    from test_export import tiny_flow
    with torch.no_grad():
        z_dim = ae.encode(torch.zeros(1, 3, ae.image_size, ae.image_size)).shape[1]
    return tiny_flow(z_dim, (5,))


def test_cli_translate_takes_best_of_and_cycles_and_info_shows_the_default(bundles, tmp_path, capsys):
    from runtime.__main__ import main as cli
    b = copy_bundle(bundles.get("attributes"), tmp_path / "b")
    m = json.loads((b / MANIFEST).read_text())
    m["sampling"] = {**m["sampling"], "best_of": 3, "cycles": 1}
    (b / MANIFEST).write_text(json.dumps(m))
    src = json.dumps([[int(i in (0, 3)) for i in range(m["cond_shape"][0])]])
    outs = {}
    for name, extra in (("default", []), ("same", ["--best-of", "3", "--cycles", "1"]),
                        ("plain", ["--best-of", "1", "--cycles", "0"])):
        assert cli(["translate", str(b), "--source-json", src, "--seed", "1", "--out", str(tmp_path / f"{name}.png"),
                    *extra]) == 0
        outs[name] = (tmp_path / f"{name}.png").read_bytes()
    assert outs["default"] == outs["same"] != outs["plain"]
    capsys.readouterr()
    assert cli(["info", str(b)]) == 0
    assert "default selection: best of 3, 1 autoencoder cycle(s)" in capsys.readouterr().out
