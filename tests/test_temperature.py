"""The default sampling temperature: chosen per task (train/tasks/sprites.py SAMPLING, measured in
docs/results.md), written by export into the manifest's `sampling` section, used by Pipeline.translate,
`runtime translate`, serving and the page when no temperature is given; older bundles without the
section sample at 1. Bundles come from test_export's session builders."""
import json

import numpy as np
import pytest
from test_export import ATTRIBUTES, copy_bundle

from runtime import Pipeline, PipelineError
from runtime.__main__ import main as cli
from runtime.manifest import MANIFEST, default_temperature, read_manifest, validate_manifest


def with_sampling(src, dst, sampling):
    """A copy of bundle `src` whose manifest has `sampling` (None: the section removed, as older exports)."""
    copy_bundle(src, dst)
    m = json.loads((dst / MANIFEST).read_text())
    if sampling is None:
        m.pop("sampling", None)
    else:
        m["sampling"] = sampling
    (dst / MANIFEST).write_text(json.dumps(m))
    return dst


@pytest.fixture(scope="module")
def warm(bundles, tmp_path_factory):
    """The attributes test bundle with a default temperature of 0.5."""
    return with_sampling(bundles.get("attributes"), tmp_path_factory.mktemp("t") / "attributes",
                         {"temperature": 0.5, "chosen_by": "test"})


def onehot_rows():
    return np.eye(len(ATTRIBUTES), dtype=np.float32)[[0, 2, 4]]


def test_export_writes_the_sampling_section(bundles):
    m = read_manifest(bundles.get("attributes"))           # experts without a measured choice
    assert m["sampling"]["temperature"] == 1.0 and "no measured choice" in m["sampling"]["chosen_by"]


def test_export_takes_the_tasks_choice_and_an_explicit_override(tmp_path):
    from export.onnx import sampling_section
    from train.core.common import UserError
    from train.experts.base import Experts
    chosen = Experts(info={"sampling": {"temperature": 0.8, "chosen_by": "docs/results.md"}})
    assert sampling_section(chosen) == {"temperature": 0.8, "chosen_by": "docs/results.md"}
    assert sampling_section(chosen, 1.0) == {"temperature": 1.0, "chosen_by": "set at export (--temperature)"}
    for bad in (0.0, -1.0, float("nan"), 11.0):
        with pytest.raises(UserError, match="--temperature must be a finite number > 0"):
            sampling_section(chosen, bad)


def test_sprite_tasks_hand_their_measured_temperature_to_export():
    from train.tasks.sprites import SAMPLING, TASKS, SpriteEval
    for name in ("attributes", "text2image"):
        t = SAMPLING[name]
        assert 0 < t["temperature"] <= 10 and "results.md" in t["chosen_by"]
        assert TASKS[name].eval_options is SpriteEval


def test_pipeline_uses_the_manifest_default_and_keeps_temperature_1(warm, bundles):
    p = Pipeline.load(warm)
    assert p.default_temperature == 0.5
    c = onehot_rows()
    default = p.translate(c, num_samples=2, seed=3)
    assert np.array_equal(default, p.translate(c, num_samples=2, seed=3, temperature=0.5))
    one = p.translate(c, num_samples=2, seed=3, temperature=1)
    assert not np.array_equal(default, one)
    # temperature=1 is the same draw as a bundle whose default is 1
    assert np.array_equal(one, Pipeline.load(bundles.get("attributes")).translate(c, num_samples=2, seed=3))
    # the chained stages (num_samples 1, fused=False) honour the default too
    unfused = Pipeline.load(warm, fused=False)
    assert np.array_equal(unfused.translate(c, seed=4), p.translate(c, seed=4, temperature=0.5))


def test_bundles_without_the_section_sample_at_1(bundles, tmp_path):
    old = with_sampling(bundles.get("attributes"), tmp_path / "old", None)
    m = read_manifest(old)
    assert "sampling" not in m and default_temperature(m) == 1.0
    p = Pipeline.load(old)
    c = onehot_rows()
    assert np.array_equal(p.translate(c, seed=2), p.translate(c, seed=2, temperature=1.0))


@pytest.mark.parametrize("sampling, msg", [
    ({"temperature": 0}, "'sampling.temperature' must be a finite number > 0"),
    ({"temperature": "hot"}, "'sampling.temperature' must be a finite number > 0"),
    ({"temperature": True}, "'sampling.temperature' must be a finite number > 0"),
    ({"temperature": 11.0}, "<= 10"),
    ({}, "'sampling.temperature'"),
    ({"temperature": 0.7, "chosen_by": 3}, "'sampling.chosen_by' must be a string"),
    ("0.7", "'sampling' must be a dict"),
])
def test_bad_sampling_sections_are_refused(bundles, sampling, msg):
    m = read_manifest(bundles.get("attributes"))
    m["sampling"] = sampling
    with pytest.raises(PipelineError, match=msg):
        validate_manifest(m)


def test_cli_translate_and_info_use_the_default(warm, tmp_path, capsys):
    src = json.dumps([{n: int(i in (0, 3)) for i, n in enumerate(ATTRIBUTES)}])
    p = Pipeline.load(warm)
    outs = {}
    for name, extra in (("default", []), ("half", ["--temperature", "0.5"]), ("one", ["--temperature", "1"])):
        assert cli(["translate", str(warm), "--source-json", src, "--seed", "1", "--out", str(tmp_path / f"{name}.png"),
                    *extra]) == 0
        outs[name] = (tmp_path / f"{name}.png").read_bytes()
    assert outs["default"] == outs["half"] != outs["one"]
    capsys.readouterr()
    assert cli(["info", str(warm)]) == 0
    assert "default temperature: 0.5" in capsys.readouterr().out
    assert p.default_temperature == 0.5


def test_serving_rows_without_temperature_take_the_default(warm):
    from runtime.serve import _seeds_and_temperatures
    p = Pipeline.load(warm)
    seeds, temps = _seeds_and_temperatures({"seed": np.array([[1], [2]], np.int64)}, p.default_temperature)
    assert seeds.tolist() == [1, 2] and temps.tolist() == [0.5, 0.5]
    _, temps = _seeds_and_temperatures({"seed": np.array([[1]]), "temperature": np.array([[1.0]], np.float32)}, 0.5)
    assert temps.tolist() == [1.0]


def test_the_page_shows_and_uses_the_default(warm):
    pytest.importorskip("fastapi", reason="the [app] extra is not installed")
    from fastapi.testclient import TestClient

    from runtime.app.engines import open_engine
    from runtime.app.server import create_app
    engine, paths, manifests = open_engine(warm, None)
    client = TestClient(create_app(engine, paths, manifests), raise_server_exceptions=False)
    view = client.get("/api/bundles").json()["bundles"][0]
    assert view["temperature"] == 0.5
    source = {n: int(i in (0, 3)) for i, n in enumerate(ATTRIBUTES)}
    default = client.post("/api/attributes/sample", json={"sources": [source], "num_samples": 2, "seed": 3}).json()
    one = client.post("/api/attributes/sample", json={"sources": [source], "num_samples": 2, "seed": 3,
                                                      "temperature": 1.0}).json()
    assert default["temperature"] == 0.5 and one["temperature"] == 1.0
    assert default["images"] != one["images"]
    half = client.post("/api/attributes/sample", json={"sources": [source], "num_samples": 2, "seed": 3,
                                                       "temperature": 0.5}).json()
    assert half["images"] == default["images"]
