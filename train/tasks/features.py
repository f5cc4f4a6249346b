"""The `features` task: any two aligned feature files (the plug-and-play case; no expert runs here)."""
from __future__ import annotations

from dataclasses import dataclass

from train.core.common import UserError
from train.data.features import load_pairs
from train.data.pairs import TensorPairs
from train.eval.features import FeatureEval, evaluate_run
from train.experts.base import Experts
from train.tasks.contract import PairRequest, Task, TrainingPairs, option


@dataclass
class FeatureOptions:
    source: str | None = option(help="source features zΦ (.npy/.npz/.safetensors), rows aligned with --target")
    target: str | None = option(help="target features zΘ, shape (rows, D)")
    source_key: str | None = option(help="array name inside a .npz/.safetensors source file")
    target_key: str | None = option(help="array name inside a .npz/.safetensors target file")


def pairs(req: PairRequest) -> TrainingPairs:
    o = req.options
    if not o.source or not o.target:
        raise UserError("--task features needs --source FILE and --target FILE (aligned feature files)")
    c, z = load_pairs(o.source, o.target, o.source_key, o.target_key)
    info = {"task": "features", "data": {"source": str(o.source), "target": str(o.target),
                                         "source_key": o.source_key, "target_key": o.target_key, "rows": len(z)}}
    return TrainingPairs(TensorPairs(c, z, seed=req.seed), info)


def recorded_request(config: dict) -> PairRequest:
    """The files a run was trained on are recorded in its `data` section."""
    d = config["data"]
    options = FeatureOptions(d["source"], d["target"], d.get("source_key"), d.get("target_key"))
    return PairRequest("features", config.get("preset", "default"), {}, options, seed=config["train"]["seed"])


FEATURES = Task("features", "any two aligned feature files (the plug-and-play case)", pairs, options=FeatureOptions,
                experts=lambda config: Experts(), evaluate=evaluate_run, eval_options=FeatureEval,
                recorded_request=recorded_request)
TASKS = {"features": FEATURES}
