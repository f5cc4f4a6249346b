"""The expert stages of a bundle: source encoder Φ (text or image), target encoder Θ and decoder Λ, each
exported with `export_graph`, checked against PyTorch and recorded in the validation arrays."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from export.bundle import hash_tree
from export.graph import ExpertStage, check_parity, expert_method, export_graph
from runtime.manifest import stage_io
from train.core.common import UserError
from train.core.flow import ConditionalINN
from train.experts.base import Experts

VAL_IMAGES = 8
DEFAULT_TEXTS = ["a small red circle", "two blue squares next to a large green triangle",
                 "a photograph of a dog running on the beach at sunset", "x",
                 "an orange sprite in the top left corner, rotated slightly, with a thin outline"]


def source_kind(experts: Experts) -> str:
    if experts.source_encoder is None:
        return "vector"
    return experts.info.get("source_kind") or ("text" if hasattr(experts.source_encoder, "tokenizer") else "image")


def random_like_flow(model: ConditionalINN, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    cond = model.random_conditions(n, gen)
    z = model.target_mean + model.target_std * torch.randn(n, model.cfg.target_dim, generator=gen)
    return cond.numpy(), z.numpy()


def export_text(bundle: Path, enc: nn.Module, info: dict, opset: int, checks: dict, val: dict) -> dict:
    texts = DEFAULT_TEXTS + list(info.get("validation_texts", []))[:16]
    ids, mask = enc.tokenize(texts[:2])
    export_graph(enc, (ids, mask), bundle / "source_encoder.onnx",
                 *stage_io("source_encoder", "text"), opset, seq_inputs=("input_ids", "attention_mask"))
    ids, mask = (t.numpy() for t in enc.tokenize(texts))
    rng = np.random.default_rng(3)
    rnd_ids = rng.integers(1000, 2000, size=(7, min(enc.max_tokens, 40)))
    rnd_mask = (np.arange(rnd_ids.shape[1]) < rng.integers(1, rnd_ids.shape[1] + 1, size=(7, 1))).astype(np.int64)
    checks["parity"]["source_encoder"] = check_parity(
        bundle / "source_encoder.onnx", enc, {"real": {"input_ids": ids, "attention_mask": mask},
                                              "random": {"input_ids": rnd_ids, "attention_mask": rnd_mask}})
    with torch.no_grad():
        emb = enc(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    val.update(input_ids=ids, attention_mask=mask, embedding=emb)
    (bundle / "validation").mkdir(exist_ok=True)
    (bundle / "validation" / "texts.json").write_text(json.dumps(texts, indent=1))
    if not hasattr(enc.tokenizer, "backend_tokenizer"):
        raise UserError("the text encoder's tokenizer is not a fast (tokenizers) one; the runtime tokenises "
                        "with the `tokenizers` library and needs its tokenizer.json")
    tok_dir = bundle / "tokenizer"
    tok_dir.mkdir()
    enc.tokenizer.backend_tokenizer.save(str(tok_dir / "tokenizer.json"))
    for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (Path(enc.path) / name).is_file():
            shutil.copy(Path(enc.path) / name, tok_dir / name)
    files = [f"tokenizer/{p.name}" for p in tok_dir.iterdir()]
    return {"files": hash_tree(bundle, files), "max_tokens": int(enc.max_tokens),
            "pad_id": int(enc.tokenizer.pad_token_id), "pad_token": str(enc.tokenizer.pad_token)}


def image_section(shape) -> dict:
    return {"size": [int(shape[1]), int(shape[2])], "channels": int(shape[0]), "range": [-1, 1], "layout": "NCHW"}


def export_image_source(bundle: Path, experts: Experts, opset: int, checks: dict, val: dict) -> dict:
    enc = experts.source_encoder
    shape = tuple(experts.info.get("source_image_shape") or (3, enc.image_size, enc.image_size))
    images = torch.rand(VAL_IMAGES, *shape, generator=torch.Generator().manual_seed(4)) * 2 - 1
    stage = ExpertStage(enc, expert_method(enc, "encode"))
    export_graph(stage, (images[:3],), bundle / "source_encoder.onnx", *stage_io("source_encoder", "image"), opset)
    checks["parity"]["source_encoder"] = check_parity(bundle / "source_encoder.onnx", stage,
                                                      {"random": {"image": images.numpy()}})
    with torch.no_grad():
        val.update(source_images=images.numpy(), embedding=stage(images).numpy())
    return image_section(shape)


def export_target(bundle: Path, experts: Experts, model: ConditionalINN, z: np.ndarray, opset: int, checks: dict,
                   val: dict) -> dict:
    dec, enc, extra = experts.target_decoder, experts.target_encoder, {}
    _, rnd_z = random_like_flow(model, VAL_IMAGES, seed=5)
    images = None
    if dec is not None:
        stage = ExpertStage(dec, expert_method(dec, "decode"))
        export_graph(stage, (torch.from_numpy(z[:3]),), bundle / "target_decoder.onnx", *stage_io("target_decoder", ""),
                     opset)
        checks["parity"]["target_decoder"] = check_parity(
            bundle / "target_decoder.onnx", stage, {"real": {"z": z[:VAL_IMAGES]}, "random": {"z": rnd_z}})
        with torch.no_grad():
            images = stage(torch.from_numpy(z[:VAL_IMAGES])).numpy()
        val["decoded"] = images
        extra["image"] = image_section(images.shape[1:])
    if enc is not None:
        size = experts.info.get("image_size") or getattr(enc, "image_size", None)
        shape = images.shape[1:] if images is not None else tuple(experts.info.get("image_shape") or (3, size, size))
        stage = ExpertStage(enc, expert_method(enc, "encode"))
        rnd = (torch.rand(VAL_IMAGES, *shape, generator=torch.Generator().manual_seed(6)) * 2 - 1).numpy()
        real = images if images is not None else rnd
        export_graph(stage, (torch.from_numpy(real[:3]),), bundle / "target_encoder.onnx",
                     *stage_io("target_encoder", ""), opset)
        checks["parity"]["target_encoder"] = check_parity(bundle / "target_encoder.onnx", stage,
                                                          {"real": {"image": real}, "random": {"image": rnd}})
        with torch.no_grad():
            val.update(encoder_input=real, encoded=stage(torch.from_numpy(real)).numpy())
        extra["image"] = image_section(shape)
    return extra
