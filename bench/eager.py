"""The PyTorch eager baseline: the bundle's trained modules with the same weights, called like the runtime.

Each call takes and returns what the runtime's call does (numpy in, numpy out; uint8 images at the
API, converted with the runtime's own `images_to_model` / `images_from_model`), so both sides pay the
same conversions. Text sources are tokenised with the encoder's Hugging Face tokenizer and run through
`TextEncoder.forward` (never `encode`, which caches embeddings by text). translate draws v exactly as
the runtime does (`default_rng(seed).standard_normal`).
"""
from __future__ import annotations

import numpy as np
import torch

from bench.types import BundleData, Skip, checkpoint_of
from runtime.pipeline import images_from_model, images_to_model
from train.core.common import UserError
from train.core.translator import load_translator
from train.experts.base import Experts
from train.tasks.registry import task_of_run


def _method(module, name: str):
    fn = getattr(module, name, None)
    return fn if callable(fn) else module


def _rebuild(data: BundleData):
    """(ConditionalINN, Experts) from the run the bundle was exported from."""
    run = checkpoint_of(data)
    try:
        model, config = load_translator(run)
        task = task_of_run(config, config.get("task_ref") or data.manifest["task"])
        experts = task.experts(config) if task.experts is not None else Experts()
    except (UserError, OSError, KeyError, ValueError) as e:
        raise Skip(f"cannot rebuild the PyTorch modules from {run}: {e}") from None
    return model.eval(), experts


def torch_calls(data: BundleData, threads: int = 1, wrap=None) -> dict:
    """stage -> callable(inputs) on the PyTorch modules, `threads` intra-op threads. `wrap(fn)` is applied to
    each module call (τ, τ⁻¹, the encoders, the decoder) once, e.g. torch.compile (bench.compiled)."""
    model, experts = _rebuild(data)
    torch.set_num_threads(threads)
    wrap = wrap or (lambda fn: fn)
    enc, dec, src = experts.target_encoder, experts.target_decoder, experts.source_encoder
    encode_t = wrap(_method(enc, "encode")) if enc is not None else None
    decode_t = wrap(_method(dec, "decode")) if dec is not None else None
    tau, tau_inv = wrap(model), wrap(model.inverse)
    encode_s = None if src is None else wrap(src) if data.kind == "text" else wrap(_method(src, "encode"))

    def cond_of(source) -> torch.Tensor:
        if data.kind == "vector":
            return torch.from_numpy(np.asarray(source, np.float32))
        if data.kind == "text":
            return encode_s(*src.tokenize(source))
        return encode_s(torch.from_numpy(images_to_model(source)))

    def generate(v: np.ndarray, cond: torch.Tensor):
        z = tau(torch.from_numpy(v), cond)
        return images_from_model(decode_t(z).numpy()) if decode_t is not None else z.numpy()

    def translate(x):
        cond = cond_of(x["source"])
        v = np.random.default_rng(0).standard_normal((len(cond), model.cfg.target_dim), dtype=np.float32)
        return generate(v, cond)

    calls = {"encode_source": lambda x: cond_of(x["source"]).numpy(),
             "flow_forward": lambda x: tau(torch.from_numpy(x["v"]), torch.from_numpy(x["cond"])).numpy(),
             "flow_inverse": lambda x: tuple(t.numpy() for t in tau_inv(torch.from_numpy(x["z"]),
                                                                         torch.from_numpy(x["cond"]))),
             "encode_target": lambda x: encode_t(torch.from_numpy(images_to_model(x["images"]))).numpy(),
             "decode_target": lambda x: images_from_model(decode_t(torch.from_numpy(x["z"])).numpy()),
             "translate": translate}
    return {s: _no_grad(calls[s]) for s in data.stages}


def _no_grad(fn):
    def call(x):
        with torch.inference_mode():
            return fn(x)
    return call
