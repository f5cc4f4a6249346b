"""The sprites translation tasks: registry, frozen experts, editing identity, smoke runs, evaluation."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from train import cinn, evaluate
from train.data import ATTRIBUTES
from train.data.sprites import render_batch, to_tensor
from train.eval.sprites import flip
from train.eval.translator import load_task_run
from train.tasks.registry import all_tasks as load_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_registry_lists_every_task_with_presets():
    tasks = load_all()
    assert {"features", "attributes", "text2image"} <= set(tasks)
    for name in ("attributes", "text2image"):
        assert {"smoke", "default"} <= set(tasks[name].presets)
        assert tasks[name].experts and tasks[name].evaluate and tasks[name].after_training


def test_flip_semantics():
    c = np.zeros(len(ATTRIBUTES), np.float32)
    c[[ATTRIBUTES.index("shape_circle"), ATTRIBUTES.index("color_red")]] = 1
    assert flip(c, "size_large")[ATTRIBUTES.index("size_large")] == 1
    sq = flip(c, "shape_square")
    assert sq[ATTRIBUTES.index("shape_square")] == 1 and sq[ATTRIBUTES.index("shape_circle")] == 0
    moved = flip(c, "color_red")          # an "on" one-hot member hands over to the next one
    assert moved[ATTRIBUTES.index("color_red")] == 0 and moved[ATTRIBUTES.index("color_green")] == 1
    assert sq.sum() == 2 and moved.sum() == 2


@pytest.mark.parametrize("task", ["attributes", "text2image"])
def test_smoke_run_keeps_experts_frozen_and_evaluates(task, train_smoke, oracle_run, tmp_path, capsys):
    out = train_smoke(task, tmp_path)
    assert (out / "grids" / "samples.png").is_file()
    assert (out / "grids" / "samples_train_phrasing.png").is_file() == (task == "text2image")
    translator, config = load_task_run(out)
    assert not any(p.requires_grad for p in translator.ae.parameters())
    experts = load_all()[task].experts(config)
    for module in (experts.source_encoder, experts.target_encoder, experts.target_decoder):
        assert module is None or not any(p.requires_grad for p in module.parameters())
    from train.tasks.sprites import SAMPLING
    assert experts.info["sampling"] == SAMPLING[task]        # what export writes into the manifest
    capsys.readouterr()
    evaluate.main(["--run", str(out), "--num-images", "20", "--oracle", str(oracle_run), "--json"])
    result = json.loads(capsys.readouterr().out)
    keys = (["flip_success", "keep_rate", "recon_agreement", "probe_accuracy", "probe_baseline", "diversity"]
            if task == "attributes" else ["heldout_attribute_accuracy", "heldout_per_attribute", "diversity"])
    for key in keys:
        assert key in result and key in result["mlp"], key
    if task == "text2image":
        per = result["heldout_per_attribute"]
        assert set(per) <= {"shape", "color", "size_large", "pos_left", "pos_top", "bg_dark", "style_outline"}
        assert len(per) >= 5 and all(0.0 <= v <= 1.0 for v in per.values())
    assert result["mlp"]["diversity"] == pytest.approx(0.0, abs=1e-6)    # a deterministic MLP cannot vary
    fid_keys = ["fid", "fid_edits"] if task == "attributes" else ["fid"]
    for fid in [result[k] for k in fid_keys + ["fid_real", "fid_recon"]] + [result["mlp"][k] for k in fid_keys]:
        assert np.isfinite(fid) and fid >= 0.0
    assert result["fid_reference"]["reference_count"] == 20
    from train.tasks.sprites import SAMPLING
    assert result["temperature"] == SAMPLING[task]["temperature"]      # the task's measured default
    assert result["best_of"] == SAMPLING[task].get("best_of", 1)
    new_keys = (["sample_accuracy", "sample_all_rate"] if task == "attributes"
                else ["train_phrasing_attribute_accuracy", "train_phrasing_per_attribute", "fid_train_phrasing"])
    for key in new_keys:
        assert key in result and key in result["mlp"], key
    # --temperature / --best-of move what is sampled, never the edits (they keep each image's own v)
    evaluate.main(["--run", str(out), "--num-images", "20", "--oracle", str(oracle_run), "--json",
                   "--temperature", "0.25", "--best-of", "2"])
    cold = json.loads(capsys.readouterr().out)
    assert cold["temperature"] == 0.25 and cold["best_of"] == 2 and cold["diversity"] < result["diversity"]
    if task == "attributes":
        assert cold["flip_success"] == result["flip_success"] and cold["fid_edits"] == result["fid_edits"]


def test_editing_identity_returns_the_reconstruction(ae_run, tmp_path):
    out = tmp_path / "attributes" / "cinn"
    cinn.main(["--task", "attributes", "--preset", "smoke", "--ae", str(ae_run), "--out", str(out)])
    translator, _ = load_task_run(out)
    images, attrs, _ = render_batch(range(4), "test", translator.ae.image_size)
    x, c = to_tensor(images), torch.from_numpy(attrs)
    edited = translator.edit(x, c, c)                                      # c* = c
    with torch.no_grad():
        recon = translator.ae.decode(translator.ae.encode(x))
    assert torch.allclose(edited, recon, atol=1e-4)


def test_bad_captions_file_names_the_line(ae_run, oracle_run, tmp_path):
    out = tmp_path / "text2image" / "cinn"
    cinn.main(["--task", "text2image", "--preset", "smoke", "--ae", str(ae_run), "--out", str(out)])
    bad = tmp_path / "caps.jsonl"
    bad.write_text('{"text": "a red circle", "attributes": {"color_red": 1}}\n{"text": "x", "attributes": '
                   '{"colour_red": 1}}\n')
    p = subprocess.run([sys.executable, "-m", "train.evaluate", "--run", str(out), "--captions", str(bad),
                        "--oracle", str(oracle_run), "--num-images", "8", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "caps.jsonl:2:" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_caption_embeddings_are_prepared_without_the_ae(tmp_path):
    # the demo embeds text2image's captions while the AE trains; the later training must hit that cache
    ae = tmp_path / "nothing-here" / "ae"
    p = subprocess.run([sys.executable, "-m", "train.tasks_sprites", "--embed-captions", "--preset", "smoke",
                        "--ae", str(ae)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert not ae.exists()
    cached = list((tmp_path / "nothing-here" / "captions").glob("captions_*_256x2_s0.safetensors"))
    assert len(cached) == 1
    # the broad training language keeps a cache of its own beside the default one (and leaves that one alone)
    p = subprocess.run([sys.executable, "-m", "train.tasks_sprites", "--embed-captions", "--preset", "smoke",
                        "--ae", str(ae), "--caption-language", "broad"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    caches = sorted(c.name for c in (tmp_path / "nothing-here" / "captions").iterdir())
    assert len(caches) == 2 and caches[0].endswith("_s0.safetensors") and caches[1].endswith("_s0_broad.safetensors")
    from train.core.common import load_tensors
    assert load_tensors(cached[0])["embeddings"].shape == (512, 384)


def test_caption_cache_is_keyed_by_the_texts(tmp_path):
    from train.data.latents import embed_captions

    class Encoder:
        calls = 0

        def encode(self, texts):
            Encoder.calls += 1
            return torch.tensor([[float(len(t))] for t in texts])

    cache = tmp_path / "captions.safetensors"
    first = embed_captions(Encoder(), ["ab", "c"], cache)
    again = embed_captions(Encoder(), ["ab", "c"], cache)
    assert Encoder.calls == 1 and torch.equal(first, again)
    other = embed_captions(Encoder(), ["abc", "d"], cache)    # same count, other texts: embedded afresh
    assert Encoder.calls == 2 and other[:, 0].tolist() == [3.0, 1.0]


def test_caption_words_reports_each_heldout_word(capsys):
    """`python -m train.caption_words` on the real MiniLM: every held-out word gets its nearest training word;
    the plain names shared with training are their own nearest neighbours."""
    import json

    from train import caption_words
    from train.data.captions import HELDOUT_WORDS, TRAIN_WORDS
    assert caption_words.main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = [(g, w) for g, values in HELDOUT_WORDS.items() for v, ws in values.items() if v is not None for w in ws]
    assert [(r["group"], r["word"]) for r in rows] == expected
    for r in rows:
        assert r["nearest"] in {w for v, ws in TRAIN_WORDS[r["group"]].items() if v is not None for w in ws}
        assert r["right"] == (r["nearest_value"] == r["value"]) and len(r["best"]) >= 2
        if r["trained"]:
            assert r["nearest"] == r["word"] and r["right"] and r["margin"] > 0
    assert sum(r["trained"] for r in rows) == 8         # circle, square, triangle and the five colour names
    assert caption_words.main([]) == 0
    assert "held-out words never trained on" in capsys.readouterr().out.splitlines()[-1]


def test_posterior_targets_draw_around_the_cached_means(ae_run, tmp_path):
    """--ae-latents posterior: τ's targets are fresh draws µ + σ·ε of the AE's posterior (off by default)."""
    from train.data.latents import sprite_latents
    from train.data.pairs import SpritePairs
    from train.experts.ae_training import load_ae

    ae = load_ae(ae_run)
    a, mu = sprite_latents(str(ae_run), ae, "val", 64)
    a_post, mu_post, std = sprite_latents(str(ae_run), ae, "val", 64, posterior=True)
    assert torch.equal(a, a_post) and torch.allclose(mu, mu_post, atol=1e-5)
    assert std.shape == mu.shape and (std > 0).all() and std.std() > 0         # per image and dimension
    plain, post = SpritePairs(a[:, None], mu, a, mu), SpritePairs(a[:, None], mu, a, mu, z_std=std, val_z_std=std)
    c, z = plain.batch(16, torch.Generator().manual_seed(0))
    c_post, z_post = post.batch(16, torch.Generator().manual_seed(0))
    assert torch.equal(c, c_post) and not torch.equal(z, z_post)              # same images, other targets
    assert ((z_post - z).abs() <= 6 * std.max()).all()
    assert torch.equal(post.batch(16, torch.Generator().manual_seed(0))[1], z_post)   # seeded
    assert not torch.equal(post.validation()[1], mu)                          # validation: one fixed draw
    again = SpritePairs(a[:, None], mu, a, mu, z_std=std, val_z_std=std)
    assert torch.equal(post.validation()[1], again.validation()[1])
    assert (post.statistics()[3] > plain.statistics()[3]).all()               # the spread of µ + σ·ε

    out = tmp_path / "attributes" / "cinn"
    cinn.main(["--task", "attributes", "--preset", "smoke", "--ae", str(ae_run), "--out", str(out),
               "--ae-latents", "posterior"])
    assert json.loads((out / "config.json").read_text())["ae_latents"] == "posterior"
