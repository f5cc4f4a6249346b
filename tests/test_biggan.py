"""bert2biggan: BigGAN loading (folder, package cache, offline error, random init), the dequantizer of
Tab. S4, captions, and a smoke run + evaluation on a tiny random BigGAN (`random:tiny`, test-only)."""
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from pytorch_pretrained_biggan import BigGAN, file_utils
from pytorch_pretrained_biggan.model import PRETRAINED_CONFIG_ARCHIVE_MAP, PRETRAINED_MODEL_ARCHIVE_MAP

from train.core.common import UserError, read_json
from train.core.translator import load_translator
from train.data import imagenet
from train.experts import biggan as bg
from train.experts.biggan import biggan_experts as experts
from train.experts.dequantizer import train_dequantizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(*args, env=None, timeout=300):
    p = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    return p.returncode, p.stdout, p.stderr


def tiny_state() -> tuple[str, dict]:
    model, _, _ = bg.load_biggan("random:tiny")
    return bg.ARCHITECTURES["tiny"].to_json_string(), model.state_dict()


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: one thread is fastest, and immune to a busy machine's oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("b2b") / "run"
    code, stdout, stderr = run_module("train.cinn", "--task", "bert2biggan", "--preset", "smoke",
                                      "--biggan", "random:tiny", "--out", str(out))
    assert code == 0, stderr[-2000:]
    return out, stdout, stderr


def test_folder_loads_and_decoder_matches_biggan_forward(tmp_path):
    config, state = tiny_state()
    (tmp_path / "config.json").write_text(config)
    torch.save(state, tmp_path / "pytorch_model.bin")
    model, info, warnings = bg.load_biggan(str(tmp_path))
    assert warnings == () and info["random_init"] is False and info["image_size"] == 32
    w = bg.class_embeddings(model)
    assert w.shape == (1000, 128) and torch.equal(w[5], model.embeddings.weight[:, 5])
    z = bg.truncated_noise(3, 128, 0.4, torch.Generator().manual_seed(0))
    assert z.abs().max() <= 0.8
    onehot = torch.nn.functional.one_hot(torch.tensor([3, 7, 9]), 1000).float()
    with torch.no_grad():
        expected = BigGAN.forward(model, z, onehot, 0.4)
        images = bg.BigGANDecoder(model, 0.4)(torch.cat([z, w[[3, 7, 9]]], 1))
    assert images.shape == (3, 3, 32, 32) and torch.allclose(images, expected, atol=1e-6)


def test_bad_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="config.json and pytorch_model.bin"):
        bg.load_biggan(str(tmp_path))
    config, state = tiny_state()
    (tmp_path / "config.json").write_text(config)
    torch.save({k: v for k, v in state.items() if not k.startswith("embeddings")}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="does not match"):
        bg.load_biggan(str(tmp_path))
    with pytest.raises(UserError, match="--biggan is required"):
        bg.load_biggan(None)
    with pytest.raises(UserError, match="unknown architecture"):
        bg.load_biggan("random:biggan-deep-64")


def test_named_model_loads_from_package_cache_only(tmp_path, monkeypatch):
    config, state = tiny_state()
    monkeypatch.setattr(file_utils, "PYTORCH_PRETRAINED_BIGGAN_CACHE", tmp_path)
    with pytest.raises(UserError, match="not in pytorch-pretrained-biggan's cache"):
        bg.load_biggan("biggan-deep-256")
    for url, write in ((PRETRAINED_CONFIG_ARCHIVE_MAP["biggan-deep-256"], lambda p: p.write_text(config)),
                       (PRETRAINED_MODEL_ARCHIVE_MAP["biggan-deep-256"], lambda p: torch.save(state, p))):
        name = hashlib.sha256(url.encode()).hexdigest() + ".etag"
        write(tmp_path / name)
        (tmp_path / f"{name}.json").write_text(json.dumps({"url": url, "etag": "etag"}))
    bg.load_biggan.cache_clear()
    _, info, _ = bg.load_biggan("biggan-deep-256")
    assert info["image_size"] == 32 and info["source"] == "biggan-deep-256"


def test_offline_named_model_fails_fast_with_one_line(tmp_path):
    start = time.monotonic()
    code, _, stderr = run_module("train.cinn", "--task", "bert2biggan", "--preset", "smoke",
                                 "--biggan", "biggan-deep-128", "--out", str(tmp_path / "run"),
                                 env={"PYTORCH_PRETRAINED_BIGGAN_CACHE": str(tmp_path / "cache")})
    assert code == 2 and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--biggan DIR" in lines[0]
    assert time.monotonic() - start < 60 and not (tmp_path / "run").exists()


def test_random_init_warns_on_stderr(capsys):
    bg.load_biggan.cache_clear()
    _, info, warnings = bg.load_biggan("random:tiny")
    assert capsys.readouterr().err.startswith("WARNING: random-init BigGAN")
    assert info["random_init"] is True and len(warnings) == 1
    again, _, _ = bg.load_biggan("random:tiny")
    bg.load_biggan.cache_clear()
    rebuilt, _, _ = bg.load_biggan("random:tiny")     # seeded: a run's decoder can be rebuilt exactly
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), rebuilt.state_dict().values()))


def test_dequantizer_reconstructs_stochastically():
    w = torch.randn(200, 128, generator=torch.Generator().manual_seed(0)) * 0.02
    vae, metrics = train_dequantizer(w, steps=300, width=64, batch=128)
    assert metrics["rel_error"] < 0.3 and metrics["nearest_class_acc"] > 0.95, metrics
    a, b = vae(w, torch.Generator().manual_seed(1)), vae(w, torch.Generator().manual_seed(2))
    assert not torch.equal(a, b) and float((a - b).norm() / w.norm()) > 0.01


def test_class_names_and_captions():
    names = imagenet.class_names()
    assert len(names) == 1000 and names[0][0] == "tench" and names[999][0] == "toilet tissue"
    assert "white shark" in names[2]
    train = imagenet.class_captions(207, 8, "train")
    heldout = imagenet.class_captions(207, 2, "heldout")
    assert len(set(train)) == 8 and len(set(heldout)) == 2 and not set(train) & set(heldout)
    assert imagenet.class_captions(207, 8, "train") == train
    assert imagenet.fill("a photo of {a}", "apron") == "a photo of an apron"
    assert imagenet.fill("{p}", "goldfish") == "goldfish" and imagenet.fill("{p}", "daisy") == "daisies"


def test_caption_files(tmp_path):
    good = tmp_path / "c.jsonl"
    good.write_text('{"class": 1, "text": "an orange fish"}\n\n{"class": 999, "text": "a roll"}\n')
    assert imagenet.load_captions_file(good) == [(1, "an orange fish"), (999, "a roll")]
    tsv = tmp_path / "c.tsv"
    tsv.write_text("963\ta pizza on a plate\n")
    assert imagenet.load_captions_file(tsv) == [(963, "a pizza on a plate")]
    for name, text, match in (("a.jsonl", '{"class": 1}\n', "a.jsonl:1"), ("b.jsonl", "{oops\n", "b.jsonl:1"),
                              ("c.tsv", "1\tok\n1000\tfar\n", "c.tsv:2: class must be"),
                              ("d.tsv", "no tab here\n", "d.tsv:1")):
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=match):
            imagenet.load_captions_file(tmp_path / name)


def test_smoke_run_records_warning_and_writes_grid(smoke_run):
    out, stdout, stderr = smoke_run
    assert "WARNING: random-init BigGAN" in stderr
    config = read_json(out / "config.json")
    assert config["biggan"]["source"] == "random:tiny" and config["biggan"]["random_init"] is True
    assert config["warnings"] and config["warnings"][0].startswith("random-init BigGAN")
    assert config["biggan"]["truncation"] == 0.4 and config["data"]["classes"] == 20
    for name in ("checkpoint.safetensors", "dequantizer.safetensors", "grids/samples.png"):
        assert (out / name).is_file()


@pytest.mark.filterwarnings("ignore:.*torch.jit.trace:FutureWarning")
def test_experts_sample_images(smoke_run):
    out = smoke_run[0]
    model, config = load_translator(out)
    ex = experts(config)
    assert ex.target_encoder is None and ex.info["split"] == [128, 128] and ex.info["image_size"] == 32
    assert ex.info["warnings"] and ex.info["biggan"]["random_init"] is True
    z = model.sample(ex.source_encoder.encode(["a photo of a goldfish"]), 3, generator=torch.Generator())
    with torch.no_grad():
        images = ex.target_decoder(z)
        traced = torch.jit.trace(ex.target_decoder, z)
    assert images.shape == (3, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert torch.allclose(traced(z), images, atol=1e-5)


def test_evaluate_json(smoke_run):
    out = smoke_run[0]
    code, stdout, stderr = run_module("train.evaluate", "--task", "bert2biggan", "--run", str(out), "--json")
    assert code == 0, stderr
    result = json.loads(stdout)
    for key in ("class_top1", "class_top5", "nll_nats_per_dim", "warnings", "dequantizer_top1"):
        assert key in result
    assert 0 <= result["class_top1"] <= result["class_top5"] <= 1 and result["heldout_captions"] == 40
    assert result["warnings"][0].startswith("random-init BigGAN")
