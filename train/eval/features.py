"""Evaluation of a `features` run on held-out aligned feature files: NLL (bits/dim) and the τ round trip."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from train.core.common import UserError
from train.core.flow import ConditionalINN
from train.core.translator import evaluate_nll, load_translator
from train.data.features import load_pairs
from train.eval.metrics import roundtrip_rel_err


@dataclass
class FeatureEval:
    """Evaluation options of the features task: the held-out files."""
    source: str | None = None           # source feature file
    target: str | None = None           # target feature file
    source_key: str | None = None
    target_key: str | None = None


def evaluate_run(req) -> dict:
    opts = req.options
    if not opts.source or not opts.target:
        raise UserError("evaluating a features run needs --source FILE and --target FILE")
    model, config = load_translator(req.run)
    c, z = load_pairs(opts.source, opts.target, opts.source_key, opts.target_key)
    cfg = config["model"]
    if tuple(c.shape[1:]) != tuple(cfg["cond_shape"]) or z.shape[1] != cfg["target_dim"]:
        raise UserError(f"the run was trained on zΦ {tuple(cfg['cond_shape'])} -> zΘ ({cfg['target_dim']},) but the "
                        f"files hold {tuple(c.shape[1:])} -> ({z.shape[1]},)")
    cond, target = torch.from_numpy(c), torch.from_numpy(z)
    result = {"run": str(req.run), "kind": config["kind"], "num_samples": len(z), "target_dim": z.shape[1]}
    if isinstance(model, ConditionalINN):
        nats = evaluate_nll(model, cond, target)
        result.update(nll_nats_per_dim=nats, bits_per_dim=nats / math.log(2),
                      roundtrip_rel_err=roundtrip_rel_err(model, cond, target))
    else:
        result.update(mse=evaluate_nll(model, cond, target))
    return result
