"""Condition projection: a condition far from every training condition is replaced by its nearest one before τ.

τ(v | zΦ) only ever saw the embeddings of its training captions. A caption in unseen phrasing lands where
no training condition lies (whitened as H sees it, norm 35.9 against 19.5) and its samples blend two values
(half-dark backgrounds, mixed colours). The bank is the training conditions themselves; a condition whose
best cosine similarity to the bank is below `min_similarity` (the bank's own leave-one-out nearest-neighbour
similarity at its 0.1 % quantile, so training-phrased captions pass unchanged) is replaced by its nearest
bank row. Measured on text2image: docs/results.md, "Projecting the condition onto the training conditions".

Bundle file `condition_bank.npy`: a plain float16 array (count, c), never unpickled; manifest section
`condition_bank {files {condition_bank.npy: sha256}, count, min_similarity, chosen_by}`. Sampling only
(`Pipeline.translate`, `python -m runtime serve`); τ⁻¹ (residual, transfer) keeps the exact condition, which
is what explains the given target.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.manifest import PipelineError, inside_bundle

BANK_FILE = "condition_bank.npy"
QUERY_CHUNK = 256          # queries per similarity matrix: 256 x 20 000 float32 is 20 MB


def bank_problem(rows, min_similarity, cond_dim: int) -> str | None:
    """Why (rows, min_similarity) is not a usable bank for conditions of `cond_dim` entries (None when it is)."""
    if not isinstance(rows, np.ndarray) or rows.ndim != 2 or rows.shape[1] != cond_dim or len(rows) < 1:
        shape = getattr(rows, "shape", None)
        return f"must be an array (count >= 1, {cond_dim}), got shape {shape}"
    if not np.issubdtype(rows.dtype, np.floating) or not np.isfinite(rows).all():
        return "must hold finite floats"
    if not (np.linalg.norm(rows.astype(np.float32), axis=1) > 0).all():
        return "has an all-zero row (no direction to compare)"
    if isinstance(min_similarity, bool) or not isinstance(min_similarity, (int, float)) \
            or not -1 <= min_similarity <= 1:
        return f"min_similarity must be a number in [-1, 1], got {min_similarity!r}"
    return None


class ConditionBank:
    """The training conditions (count, c) and the similarity below which a condition is replaced."""

    def __init__(self, rows: np.ndarray, min_similarity: float):
        problem = bank_problem(rows, min_similarity, rows.shape[-1] if isinstance(rows, np.ndarray) else 0)
        if problem:
            raise PipelineError(f"condition bank {problem}")
        self.rows = np.ascontiguousarray(rows)            # as stored (float16 in a bundle): 15 MB for 20 000 x 384
        unit = self.rows.astype(np.float32)
        self.unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
        self.min_similarity = float(min_similarity)

    @classmethod
    def load(cls, bundle_dir: str | Path, manifest: dict) -> "ConditionBank":
        """The bundle's bank (its SHA-256 already checked by `verify_files`), held to the manifest's section."""
        section = manifest["condition_bank"]
        path = inside_bundle(bundle_dir, BANK_FILE)
        try:
            rows = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise PipelineError(f"{BANK_FILE} is not a plain numeric .npy file ({e}); re-export the bundle") from None
        cond_shape = manifest["cond_shape"]
        problem = bank_problem(rows, section.get("min_similarity"), cond_shape[0] if len(cond_shape) == 1 else -1)
        if problem is None and len(rows) != section.get("count"):
            problem = f"has {len(rows)} rows but manifest.json 'condition_bank.count' says {section.get('count')!r}"
        if problem:
            raise PipelineError(f"{BANK_FILE} {problem}; re-export the bundle")
        return cls(rows, section["min_similarity"])

    def nearest(self, cond: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index of the most cosine-similar bank row, that similarity) per condition row."""
        cond = np.asarray(cond, np.float32)
        index, best = np.empty(len(cond), np.int64), np.empty(len(cond), np.float32)
        for i in range(0, len(cond), QUERY_CHUNK):        # row-wise: a row's answer never depends on its batch
            q = cond[i:i + QUERY_CHUNK]
            sim = (q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)) @ self.unit.T
            index[i:i + len(q)] = sim.argmax(1)
            best[i:i + len(q)] = sim[np.arange(len(q)), index[i:i + len(q)]]
        return index, best

    def project(self, cond: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(conditions with every off-support row replaced by its nearest bank row, which rows were replaced)."""
        index, best = self.nearest(cond)
        moved = best < self.min_similarity
        out = np.array(cond, np.float32, copy=True)
        out[moved] = self.rows[index[moved]].astype(np.float32)
        return out, moved
