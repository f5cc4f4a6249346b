"""The condition bank of a run: its training conditions, onto which an off-support condition is projected before τ.

τ(v | zΦ) was trained on a fixed set of conditions (text2image: the embeddings of its training captions). A
condition far from all of them (a caption in unseen phrasing) makes τ blend values; replacing it by its most
cosine-similar training condition gives τ one it was trained on. Only conditions less similar to the bank than
nearly every training condition is to the others (`min_similarity`: the bank's leave-one-out nearest-neighbour
similarity at its 0.1 % quantile) are replaced, so training-phrased captions pass unchanged.
Measured: docs/results.md, "Projecting the condition onto the training conditions". The runtime's numpy twin
(runtime/condition_bank.py) reads the same rows and threshold from the exported bundle.

RUN/condition_bank.safetensors: `conditions` float16 (count, c); metadata min_similarity, quantile, source.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from train.core.common import UserError, save_tensors

BANK_FILE = "condition_bank.safetensors"
QUANTILE = 0.001
CHUNK = 256            # query rows per similarity matrix (256 x 20 000 floats: 20 MB)


class ConditionBank:
    def __init__(self, conditions: torch.Tensor, min_similarity: float):
        if conditions.ndim != 2 or len(conditions) < 1 or not torch.isfinite(conditions).all() \
                or not (conditions.float().norm(dim=1) > 0).all():
            raise UserError(f"a condition bank needs finite, non-zero rows (count, c); got {tuple(conditions.shape)}")
        if not -1 <= min_similarity <= 1:
            raise UserError(f"condition bank min_similarity must lie in [-1, 1], got {min_similarity}")
        self.conditions = conditions.float()
        self.unit = torch.nn.functional.normalize(self.conditions, dim=1)
        self.min_similarity = float(min_similarity)

    def nearest(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index of the most cosine-similar bank row, that similarity) per row of `cond`."""
        parts = [(torch.nn.functional.normalize(c.float(), dim=1) @ self.unit.T).max(1) for c in cond.split(CHUNK)]
        return torch.cat([p.indices for p in parts]), torch.cat([p.values for p in parts])

    def project(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond with every row below min_similarity replaced by its nearest bank row, which rows were replaced)."""
        index, best = self.nearest(cond)
        moved = best < self.min_similarity
        return torch.where(moved[:, None], self.conditions[index], cond.float()), moved

    def describe(self) -> dict:
        return {"count": len(self.conditions), "min_similarity": self.min_similarity}


def min_similarity_of(conditions: torch.Tensor, quantile: float = QUANTILE, sample: int = 5000) -> float:
    """Leave-one-out nearest-neighbour cosine similarity of `sample` bank rows (a fixed subset) at `quantile`."""
    unit = torch.nn.functional.normalize(conditions.float(), dim=1)
    pick = torch.randperm(len(unit), generator=torch.Generator().manual_seed(0))[:sample].sort().values
    best = []
    for rows in pick.split(CHUNK):
        sim = unit[rows] @ unit.T
        sim[torch.arange(len(rows)), rows] = -float("inf")
        best.append(sim.max(1).values)
    return float(torch.quantile(torch.cat(best), quantile))


def write_condition_bank(run_dir: str | Path, conditions: torch.Tensor, source: str) -> ConditionBank:
    """Store the run's training conditions (float16: what a bundle ships) and their threshold, atomically."""
    half = conditions.reshape(-1, conditions.shape[-1]).half()
    bank = ConditionBank(half, min_similarity_of(half))
    save_tensors(Path(run_dir) / BANK_FILE, {"conditions": half},
                 metadata={"min_similarity": bank.min_similarity, "quantile": QUANTILE, "source": source})
    return bank


def load_condition_bank(run_dir: str | Path) -> ConditionBank | None:
    """The run's bank, or None when the run has none (trained before banks existed, or another task)."""
    path = Path(run_dir) / BANK_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta, conditions = f.metadata() or {}, f.get_tensor("conditions")
        min_similarity = float(meta["min_similarity"])
    except Exception as e:              # safetensors raises its own error types for a truncated or foreign file
        raise UserError(f"{path} is not a condition bank ({str(e)[:200]}); delete it or retrain the run") from None
    return ConditionBank(conditions, min_similarity)
