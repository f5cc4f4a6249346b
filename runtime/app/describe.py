"""What the page shows for a bundle, from its manifest (and its validation conditions): which panels,
which controls, and how a request's source is read and checked.

Attribute controls: names sharing a prefix ("shape_circle", "shape_square") form a one-hot group shown
as radio buttons, the rest are checkboxes. When the bundle's validation conditions are real attribute
rows (all 0/1) they decide: a prefix group stays a group only if every row has exactly one member on,
and a set with no shared prefix that is one-hot in every row ("flat", "textured") becomes one group.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.manifest import PipelineError, default_temperature

MAX_TEXT_CHARS = 500


def _validation(bundle: Path, name: str):
    try:
        if name.endswith(".json"):
            return json.loads((bundle / "validation" / name).read_text())
        return np.load(bundle / "validation" / name, allow_pickle=False)
    except (OSError, ValueError):
        return None


def attribute_groups(names: list[str], cond: np.ndarray | None) -> list[dict]:
    """[{name, members, one_hot}] in manifest order; cond: validation conditions (N, len(names)) or None."""
    binary = cond is not None and cond.ndim == 2 and cond.shape[1] == len(names) and np.isin(cond, (0, 1)).all()

    def one_hot(members: list[str]) -> bool:
        return bool((cond[:, [names.index(m) for m in members]].sum(1) == 1).all()) if binary else True
    by_prefix: dict[str, list[str]] = {}
    for n in names:
        by_prefix.setdefault(n.split("_", 1)[0] if "_" in n else n, []).append(n)
    grouped = {p: m for p, m in by_prefix.items() if len(m) >= 2 and one_hot(m)}
    if not grouped and binary and len(names) >= 2 and one_hot(names):
        grouped = {"kind": list(names)}
    groups, seen = [], set()
    for n in names:
        prefix = next((p for p, m in grouped.items() if n in m), None)
        if prefix is None:
            groups.append({"name": n, "members": [n], "one_hot": False})
        elif prefix not in seen:
            seen.add(prefix)
            groups.append({"name": prefix, "members": grouped[prefix], "one_hot": True})
    return groups


def describe(task: str, bundle: Path, manifest: dict) -> dict:
    """The page's view of one bundle (JSON-able)."""
    stages = {s["role"] for s in manifest["stages"].values()}
    img = manifest.get("image")
    kind = manifest["source_kind"]
    d = {"task": task, "manifest_task": manifest["task"], "source_kind": kind,
         "latent_dim": manifest["latent_dim"], "cond_shape": manifest["cond_shape"],
         "image": [*img["size"], img["channels"]] if img else None,
         "has_decoder": "target_decoder" in stages, "temperature": default_temperature(manifest),
         "can_edit": {"target_encoder", "target_decoder"} <= stages and kind != "image",
         "warnings": manifest.get("warnings", []), "attributes": None, "example": None}
    names = manifest.get("attribute_names")
    cond = _validation(bundle, "cond.npy")
    if kind == "vector" and names:
        groups = attribute_groups(names, cond)
        if cond is not None and cond.ndim == 2 and np.isin(cond, (0, 1)).all():
            example = {n: float(v) for n, v in zip(names, cond[0])}          # a real row of the data
        else:                                # none: the first member of each group on, checkboxes off
            example = {n: float(g["one_hot"] and n == g["members"][0]) for g in groups for n in g["members"]}
        d["attributes"] = {"names": names, "groups": groups, "example": example}
    elif kind == "vector":
        d["example"] = json.dumps([[round(float(x), 4) for x in cond[0]]] if cond is not None and cond.ndim == 2
                                  else [[0.0] * int(np.prod(manifest["cond_shape"]))])
    elif kind == "text":
        texts = _validation(bundle, "texts.json")
        d["example"] = texts[0] if isinstance(texts, list) and texts and isinstance(texts[0], str) \
            else "a small red circle"
    return d


def read_source(desc: dict, value, what: str):
    """One source row from a request: a caption (text bundles), {attribute: value} or a vector."""
    if desc["source_kind"] == "text":
        if not isinstance(value, str):
            raise PipelineError(f"{what} must be a caption (text)")
        if not value.strip():
            raise PipelineError(f"{what} is empty; type a caption, e.g. \"{desc['example']}\"")
        if len(value) > MAX_TEXT_CHARS:
            raise PipelineError(f"{what} is {len(value)} characters long; keep it under {MAX_TEXT_CHARS}")
        return value.strip()
    if desc["source_kind"] != "vector":
        raise PipelineError(f"{desc['task']}: image-source bundles cannot be tried on this page yet; "
                            f"use python -m runtime translate BUNDLE --image FILE")
    dim = int(np.prod(desc["cond_shape"]))
    attrs = desc["attributes"]
    if isinstance(value, dict):
        if attrs is None:
            raise PipelineError(f"{what}: this bundle has no attribute names; give a list of {dim} numbers")
        unknown = sorted(set(value) - set(attrs["names"]))
        missing = [n for n in attrs["names"] if n not in value]
        if unknown or missing:
            raise PipelineError(f"{what}: unknown attributes {unknown}, missing {missing}")
        value = [value[n] for n in attrs["names"]]
    if not isinstance(value, list) or len(value) != dim or \
            not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise PipelineError(f"{what} must be a list of {dim} numbers" +
                            (" (or an object naming every attribute)" if attrs else ""))
    if not np.isfinite(value).all():
        raise PipelineError(f"{what} contains NaN or infinity")
    return np.asarray(value, np.float32).reshape(desc["cond_shape"])
