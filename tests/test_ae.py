"""The autoencoder g (train/autoencoder.py) and its trainer (train/ae.py), on tiny models and 32px sprites."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest
import torch

from train.ae import main
from train.core.common import UserError, load_tensors
from train.eval.ae import evaluate_ae
from train.experts.ae_training import PRESETS, SpriteBatches, ensure_autoencoder, train
from train.experts.ae_training import AETrainConfig as TrainConfig
from train.experts.autoencoder import AEConfig, Autoencoder, load_autoencoder
from train.experts.base import Expert

TINY = replace(PRESETS["smoke"][0], image_size=32)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; several spin-wait badly on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_train_cfg(**kw) -> TrainConfig:
    # Constant learning rate (warmup 1, no decay): the schedule then does not depend on `steps`.
    base = dict(steps=4, batch_size=4, warmup=1, final_lr_frac=1.0, log_every=1, grid_every=2, ckpt_every=2)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("size, attention", [(32, False), (64, True)])
def test_encode_decode_shapes(size, attention):
    torch.manual_seed(0)
    model = Autoencoder(replace(TINY, image_size=size, attention=attention)).eval()
    x = torch.rand(3, 3, size, size) * 2 - 1
    z = model.encode(x)
    assert z.shape == (3, model.latent_dim) and model.image_size == size
    y = model.decode(z)
    assert y.shape == (3, 3, size, size) and y.abs().max() <= 1
    # channels-last input (what permuting a uint8 NHWC batch gives) must behave like a contiguous one
    assert torch.allclose(model.encode(x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)), z)
    with pytest.raises(UserError, match="expects images"):
        model.encode(torch.zeros(1, 3, size // 2, size // 2))


def test_reparameterisation():
    torch.manual_seed(0)
    model = Autoencoder(TINY).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mu, logvar = model.encoder(x)
    a = model.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    b = model.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, mu)
    many = torch.stack([model.encode(x, sample=True) for _ in range(4000)])
    assert torch.allclose(many.mean(0), mu, atol=0.1 * logvar.exp().sqrt().max().item())
    assert torch.allclose(many.std(0).log() * 2, logvar, atol=0.1)


def test_config_check():
    with pytest.raises(UserError, match="power of two"):
        Autoencoder(replace(TINY, image_size=48))
    with pytest.raises(UserError, match="stages"):
        Autoencoder(replace(TINY, image_size=16))
    assert AEConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY


def test_cli_smoke_and_checkpoint_round_trip(tmp_path, capsys):
    out = tmp_path / "ae"
    assert main(["--preset", "smoke", "--size", "32", "--out", str(out), "--oracle", str(tmp_path / "none"),
                 "--kl-weight", "0.003"]) == 0
    assert "steps/s" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "autoencoder" and config["model"]["image_size"] == 32
    assert config["train"]["kl_weight"] == 0.003 != PRESETS["smoke"][1].kl_weight      # the override is recorded
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert rows and int(rows[-1]["step"]) == PRESETS["smoke"][1].steps and float(rows[-1]["psnr"]) > 0
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["step000003.png", "step000006.png"]

    model = load_autoencoder(out)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = model.encode(x)
    assert z.grad_fn is None
    again = load_autoencoder(out)
    assert torch.equal(again.decode(again.encode(x)), model.decode(z))
    assert torch.equal(ensure_autoencoder(out).encode(x), z)      # present: loads, does not train
    assert isinstance(model, Expert) and model.output_dim == z.shape[1]     # the expert protocol

    with pytest.raises(UserError, match="already holds a run"):
        main(["--preset", "smoke", "--size", "32", "--out", str(out)])
    with pytest.raises(UserError, match="model settings differ"):
        main(["--preset", "smoke", "--size", "64", "--out", str(out), "--resume"])


def test_training_returns_what_it_saved(tmp_path):
    model = train(TINY, tiny_train_cfg(steps=2), SpriteBatches(32), tmp_path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(load_autoencoder(tmp_path).decode(model.encode(x)), model.decode(model.encode(x)))


def test_resume_equals_uninterrupted_run(tmp_path):
    cfg = tiny_train_cfg(disc_weight=0.5)        # with the discriminator, so its state is resumed too
    train(TINY, cfg, SpriteBatches(32), tmp_path / "full")
    train(TINY, replace(cfg, steps=2), SpriteBatches(32), tmp_path / "part")
    train(TINY, cfg, SpriteBatches(32), tmp_path / "part", resume=True)
    full = load_tensors(tmp_path / "full" / "checkpoint.safetensors")
    part = load_tensors(tmp_path / "part" / "checkpoint.safetensors")
    assert full.keys() == part.keys() and any(k.startswith("optim_d.") for k in full)
    for k in full:
        assert torch.equal(full[k], part[k]), k
    rows = list(csv.DictReader(open(tmp_path / "part" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]


def test_discriminator_path_with_adaptive_weight(tmp_path):
    train(TINY, tiny_train_cfg(steps=2, disc_weight=1.0, disc_start=1), SpriteBatches(32), tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert float(rows[0]["lam"]) == 0.0                        # before disc_start
    assert float(rows[1]["lam"]) > 0 and float(rows[1]["gan"]) > 0


def test_non_finite_loss_stops_without_checkpoint(tmp_path):
    def broken(n, gen):
        x, mask = SpriteBatches(32)(n, gen)
        return torch.full_like(x, float("nan")), mask

    with pytest.raises(UserError, match="non-finite loss at step 0"):
        train(TINY, tiny_train_cfg(), broken, tmp_path)
    assert not (tmp_path / "checkpoint.safetensors").exists()


@pytest.mark.parametrize("argv, message", [
    (["--data", "celeba"], "--data-root"),
    (["--data", "folder"], "--data-root"),
    (["--attr-csv", "x.csv"], "only applies"),
    (["--size", "48"], "power of two"),
    (["--steps", "0"], "must be positive"),
    (["--kl-weight", "-1"], "--kl-weight must be"),
    (["--kl-weight", "nan"], "--kl-weight must be"),
    (["--resume"], "missing file"),
])
def test_bad_arguments(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        main(["--preset", "smoke", "--out", str(tmp_path / "run")] + argv)


def test_evaluate_ae_with_a_tiny_oracle(tmp_path):
    from train.classifier import main as train_classifier

    train_classifier(["--out", str(tmp_path / "clf"), "--steps", "2", "--batch-size", "4", "--size", "32",
                      "--eval-count", "4"])
    train(TINY, tiny_train_cfg(steps=1), SpriteBatches(32), tmp_path / "ae", run_info={"data": "sprites"})
    result = evaluate_ae(tmp_path / "ae", num_images=6, oracle_dir=tmp_path / "clf")
    assert 0 <= result["oracle_agreement"] <= 1 and len(result["per_attribute_agreement"]) == 13
    assert result["psnr"] > 0 and result["num_images"] == 6
    assert set(result["shape_readback"]) == {"circle", "square", "triangle"}
    assert all(v is None or 0 <= v <= 1 for v in result["shape_readback"].values())
    assert result["fid_recon"] >= 0 and result["fid_real"] >= 0 and result["fid_reference"]["reference_count"] == 6
    assert main(["--eval", "--out", str(tmp_path / "ae"), "--oracle", str(tmp_path / "clf"), "--eval-images", "6"]) == 0
    assert json.loads((tmp_path / "ae" / "eval.json").read_text()) == result


def test_outline_band_marks_only_the_silhouette_edge():
    from train.experts.ae_training import outline_band
    mask = torch.zeros(1, 1, 9, 9)
    mask[..., 2:7, 2:7] = 1                                  # a 5×5 square
    band = outline_band(mask)
    assert band[0, 0, 4, 4] == 0 and band[0, 0, 0, 0] == 0   # deep inside, far outside
    assert band[0, 0, 2, 2] == 1 and band[0, 0, 1, 4] == 1   # on the outline, just outside it
    assert band.sum() == 7 * 7 - 3 * 3                       # dilated square minus eroded square


def test_shape_readback_counts_each_true_shape_separately():
    from train.data import ATTRIBUTES
    from train.eval.ae import shape_readback
    attrs = torch.zeros(4, len(ATTRIBUTES)).numpy()
    for i, shape in enumerate(["circle", "square", "square", "square"]):
        attrs[i, ATTRIBUTES.index(f"shape_{shape}")] = 1
    read = attrs.copy()
    read[1] = 0
    read[1, ATTRIBUTES.index("shape_circle")] = 1           # one of three squares comes back round
    expected = {"circle": 1.0, "square": pytest.approx(2 / 3), "triangle": None}
    assert shape_readback(read, attrs, list(ATTRIBUTES)) == expected


def test_corner_map_marks_corners_not_straight_edges():
    from train.experts.ae_training import corner_map, outline_band
    mask = torch.zeros(1, 1, 24, 24)
    mask[..., 6:18, 6:18] = 1                                # a 12×12 square
    corners = corner_map(mask, outline_band(mask))[0, 0]
    assert corners[5, 5] == 1 and corners[6, 6] > 0          # the corner: just outside its tip, the tip
    assert corners[11, 6] == 0 and corners[11, 5] == 0       # the middle of an edge
    assert corners[11, 11] == 0                              # inside


def test_pixel_weights_size_balance_favours_small_shapes():
    from train.experts.ae_training import pixel_weights
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 4:28, 4:28] = 1                               # large
    mask[1, :, 12:20, 12:20] = 1                             # small
    plain = pixel_weights(mask, TrainConfig(mask_weight=4.0))
    assert plain[0, 0, 16, 16] == plain[1, 0, 16, 16] == 5.0 and plain[0, 0, 0, 0] == 1.0
    balanced = pixel_weights(mask, TrainConfig(mask_weight=4.0, size_balance=1.0))
    assert balanced[1, 0, 16, 16] > 5.0 > balanced[0, 0, 16, 16] and balanced[1, 0, 0, 0] == 1.0
    scale = (balanced - 1)[:, 0, 16, 16] / 4.0
    assert torch.allclose(scale.mean(), torch.tensor(1.0)) and torch.allclose(scale[1] / scale[0], torch.tensor(9.0))


def test_hires_blocks_add_residual_blocks_at_the_top_resolution(tmp_path):
    model = Autoencoder(replace(TINY, hires_blocks=2)).eval()
    assert len(model.decoder.hires) == 2
    assert model.decode(torch.zeros(2, TINY.latent_dim)).shape == (2, 3, 32, 32)
    train(replace(TINY, hires_blocks=1), tiny_train_cfg(steps=1, corner_weight=8.0, size_balance=1.0),
          SpriteBatches(32), tmp_path)
    assert len(load_autoencoder(tmp_path).decoder.hires) == 1
    old = {k: v for k, v in TINY.to_dict().items() if k != "hires_blocks"}   # a run from before the field
    assert AEConfig.from_dict(old).hires_blocks == 0
    with pytest.raises(UserError, match="hires_blocks"):
        Autoencoder(replace(TINY, hires_blocks=-1))


def test_help_describes_the_default_preset(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    model_cfg, cfg = PRESETS["default"]
    assert f"default: {cfg.steps} steps, latent {model_cfg.latent_dim}" in text and "fid_recon" in text
