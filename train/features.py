"""Aligned feature files for the generic `features` task: bring representations of any two experts.

Row i of the source file and row i of the target file describe the same example. Formats: `.npy`,
`.npz` and `.safetensors` (the latter two need a key when they hold more than one array).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from train.common import UserError

FORMATS = (".npy", ".npz", ".safetensors")


def load_array(path: str | Path, key: str | None = None, what: str = "features") -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{what} file {path} has unsupported format '{suffix}'; use one of {', '.join(FORMATS)}")
    if path.stat().st_size == 0:
        raise UserError(f"{what} file {path} is empty (0 bytes); write the array again")
    try:
        if suffix == ".npy":
            if key:
                raise UserError(f"{path} is a .npy file with a single array; drop the key '{key}'")
            arr = np.load(path, allow_pickle=False)
        else:
            if suffix == ".npz":
                with np.load(path, allow_pickle=False) as f:
                    arrays = {k: f[k] for k in f.files}
            else:
                from safetensors.numpy import load_file
                arrays = load_file(str(path))
            if key is None:
                if len(arrays) != 1:
                    raise UserError(f"{path} holds {len(arrays)} arrays ({', '.join(sorted(arrays)) or 'none'}); "
                                    f"choose one with --source-key/--target-key")
                key = next(iter(arrays))
            if key not in arrays:
                raise UserError(f"key '{key}' not in {path}; available: {', '.join(sorted(arrays)) or 'none'}")
            arr = arrays[key]
    except (ValueError, OSError, EOFError) as e:       # EOFError: a truncated .npy
        raise UserError(f"cannot read {what} file {path}: {e}") from None
    if not np.issubdtype(arr.dtype, np.number):
        raise UserError(f"{what} in {path} has non-numeric dtype {arr.dtype}")
    if arr.ndim < 2 or arr.shape[0] == 0 or arr[0].size == 0:
        raise UserError(f"{what} in {path} has shape {arr.shape}; expected (rows, dims...) with at least one row")
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.unique(np.nonzero(bad.reshape(len(arr), -1))[0])
        raise UserError(f"{what} in {path} contain NaN/Inf in {len(rows)} row(s), first at row {rows[0]}; "
                        f"clean or drop those rows")
    return arr


def load_pairs(source: str, target: str, source_key: str | None = None,
               target_key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load and validate an aligned (zΦ, zΘ) pair of files. zΘ must be flat: (rows, D)."""
    c = load_array(source, source_key, "source features")
    z = load_array(target, target_key, "target features")
    if len(c) != len(z):
        raise UserError(f"row counts differ: source {source} has {len(c)} rows, target {target} has {len(z)}; "
                        f"the files must be aligned row by row")
    if z.ndim != 2:
        raise UserError(f"target features must be 2-D (rows, dims), got shape {z.shape}; flatten them first")
    if z.shape[1] < 2:
        raise UserError(f"target features need at least 2 dims for a coupling flow, got {z.shape[1]}")
    if c.ndim not in (2, 4):
        raise UserError(f"source features must be (rows, dims) or (rows, C, H, W), got shape {c.shape}")
    return c, z
