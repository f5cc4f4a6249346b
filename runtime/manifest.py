"""The bundle contract: schema constants, reading, validation and SHA-256 checks of `engines/NAME/`.

`export` writes bundles with these constants (it imports this module); the runtime reads them. This
module imports only the standard library and numpy, so `python -m export.trt --bundle` works on a
machine without onnxruntime or torch. `max_rel`, `l2_rel` and `nll_per_dim` are the measures both
sides report (export checks, `runtime check`), defined once here.

A bundle is a folder with `manifest.json` and the files it names; every named file carries its
SHA-256 next to its name (stages, tokenizer files, validation arrays, TensorRT plans). Schema 1:

    schema_version  1
    task, source_kind ("text" | "vector" | "image"), latent_dim D, cond_shape [c] or [C, H, W]
    stages          {name: {file, role, precision, sha256, inputs, outputs, exporter}}; name = role for fp32,
                    role.precision otherwise ("flow_forward.int8"); inputs/outputs list
                    {name, shape (ints, "batch", "seq"), dtype (numpy name)}; optional external_data
                    {path: sha256}: the ONNX external-data file(s) of a graph over protobuf's 2 GB limit
                    (onnxruntime reads them from the graph's folder), hashed and verified like the graph
    image           {size [H, W], channels, range [-1, 1], layout "NCHW"}   (target image stages)
    source_image    same, for image sources
    tokenizer       {files {path: sha256}, max_tokens, pad_id}               (text sources)
    validation      {origin, count, files {path: sha256}}
    source, exporter, warnings, checks; optional attribute_names, split, tensorrt {version, gpu,
    compute_capability, plans {stage: {file, sha256, min_batch, opt_batch, max_batch, seq, workspace_gb}}}
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
SOURCE_KINDS = ("text", "vector", "image")
BATCH, SEQ = "batch", "seq"
# role -> (input names, output names); the source encoder's inputs depend on the source kind
STAGE_IO = {
    "flow_forward": (("v", "cond"), ("z",)),
    "flow_inverse": (("z", "cond"), ("v", "logdet")),
    "target_encoder": (("image",), ("z",)),
    "target_decoder": (("z",), ("image",)),
}
SOURCE_IO = {"text": (("input_ids", "attention_mask"), ("embedding",)), "image": (("image",), ("embedding",))}
ROLES = ("source_encoder", *STAGE_IO)


class PipelineError(ValueError):
    """Anything wrong with a bundle or with the input given to it; the message says what to do."""


def max_rel(a, b) -> float:
    """max |a - b| / max |b|: the parity measure of export checks and `runtime check`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def l2_rel(a, b) -> float:
    """‖a - b‖ / ‖b‖: the round-trip measure (τ(τ⁻¹(z)) against z)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12))


def nll_per_dim(v, logdet) -> np.ndarray:
    """-log p(zΘ | zΦ) per dim from τ⁻¹'s outputs: (0.5 |v|² + D/2 log 2π - logdet) / D."""
    v = np.asarray(v, np.float64)
    return (0.5 * (v ** 2).sum(1) + 0.5 * v.shape[1] * np.log(2 * np.pi) - logdet) / v.shape[1]


def stage_name(role: str, precision: str) -> str:
    """`flow_forward` for fp32, `flow_forward.int8` for other precisions."""
    return role if precision == "fp32" else f"{role}.{precision}"


def stage_io(role: str, source_kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return SOURCE_IO[source_kind] if role == "source_encoder" else STAGE_IO[role]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hashed_files(manifest: dict) -> dict[str, str]:
    """Every file the manifest names, relative path -> recorded SHA-256."""
    files = {s["file"]: s["sha256"] for s in manifest["stages"].values()}
    for s in manifest["stages"].values():
        files.update(s.get("external_data") or {})
    for section in ("tokenizer", "validation"):
        files.update(manifest.get(section, {}).get("files", {}))
    for plan in manifest.get("tensorrt", {}).get("plans", {}).values():
        files[plan["file"]] = plan["sha256"]
    return files


def _safe_relative(path: str) -> bool:
    p = Path(path)
    return bool(path) and not p.is_absolute() and ".." not in p.parts


def validate_manifest(m: dict) -> None:
    """Structural checks of a manifest dict; raises PipelineError naming the first problem."""
    if not isinstance(m, dict):
        raise PipelineError("manifest.json must hold a JSON object")
    version = m.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PipelineError(f"manifest.json has no valid schema_version (got {version!r})")
    if version > SCHEMA_VERSION:
        raise PipelineError(f"bundle schema {version} is newer than this runtime supports ({SCHEMA_VERSION}); "
                            f"update the runtime")
    for key, kind in (("task", str), ("source_kind", str), ("latent_dim", int), ("cond_shape", list),
                      ("stages", dict)):
        if not isinstance(m.get(key), kind):
            raise PipelineError(f"manifest.json: '{key}' missing or not a {kind.__name__}")
    if m["source_kind"] not in SOURCE_KINDS:
        raise PipelineError(f"manifest.json: source_kind '{m['source_kind']}' is not one of {SOURCE_KINDS}")
    if m["latent_dim"] < 1 or not m["cond_shape"] or not all(isinstance(d, int) and d > 0 for d in m["cond_shape"]):
        raise PipelineError("manifest.json: latent_dim and cond_shape must be positive integers")
    for name, st in m["stages"].items():
        if not isinstance(st, dict) or st.get("role") not in ROLES or st.get("precision") not in PRECISIONS:
            raise PipelineError(f"manifest.json: stage '{name}' needs a role in {ROLES} and a precision in "
                                f"{PRECISIONS}")
        if name != stage_name(st["role"], st["precision"]):
            raise PipelineError(f"manifest.json: stage '{name}' should be named "
                                f"'{stage_name(st['role'], st['precision'])}'")
        if not _safe_relative(st.get("file", "")) or len(st.get("sha256", "")) != 64:
            raise PipelineError(f"manifest.json: stage '{name}' needs a relative 'file' and its 'sha256'")
        external = st.get("external_data", {})
        if not isinstance(external, dict) or not all(isinstance(h, str) and len(h) == 64 for h in external.values()):
            raise PipelineError(f"manifest.json: stage '{name}': 'external_data' must map each file to its sha256")
        if st["role"] == "source_encoder" and m["source_kind"] == "vector":
            raise PipelineError("manifest.json: a vector-source bundle cannot have a source_encoder")
        inputs, outputs = stage_io(st["role"], m["source_kind"])
        got = (tuple(t.get("name") for t in st.get("inputs", [])), tuple(t.get("name") for t in st.get("outputs", [])))
        if got != (inputs, outputs):
            raise PipelineError(f"manifest.json: stage '{name}' has I/O {got}, expected {(inputs, outputs)}")
    for role in ("flow_forward", "flow_inverse"):
        if role not in m["stages"]:
            raise PipelineError(f"manifest.json: the bundle has no '{role}' stage")
    if m["source_kind"] != "vector" and "source_encoder" not in m["stages"]:
        raise PipelineError(f"manifest.json: a {m['source_kind']}-source bundle needs a source_encoder stage")
    if m["source_kind"] == "text" and "max_tokens" not in m.get("tokenizer", {}):
        raise PipelineError("manifest.json: a text-source bundle needs a 'tokenizer' section with max_tokens")
    if any(st["role"] in ("target_encoder", "target_decoder") for st in m["stages"].values()) and "image" not in m:
        raise PipelineError("manifest.json: image stages need an 'image' section (size, channels, range)")
    for path in hashed_files(m):
        if not _safe_relative(path):
            raise PipelineError(f"manifest.json: file path '{path}' must be relative and stay inside the bundle")


def read_manifest(bundle_dir: str | Path) -> dict:
    """Parse and validate `bundle_dir/manifest.json` (no file hashing; see `verify_files`)."""
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{bundle_dir} is not a bundle: {MANIFEST} not found "
                            f"(build one with `python -m export.onnx --task NAME`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path} is not valid JSON: {e}") from None
    validate_manifest(manifest)
    return manifest


def verify_files(bundle_dir: str | Path, manifest: dict) -> None:
    """Check every file the manifest names against its SHA-256; refuse missing or changed files."""
    for rel, expected in sorted(hashed_files(manifest).items()):
        path = Path(bundle_dir) / rel
        if not path.is_file():
            raise PipelineError(f"bundle file '{rel}' is missing from {bundle_dir}; re-export the bundle")
        if sha256_file(path) != expected:
            raise PipelineError(f"bundle file '{rel}' fails its SHA-256 check (tampered or corrupt); "
                                f"re-export the bundle")


def select_stages(manifest: dict, precision: str) -> dict[str, str]:
    """role -> stage name for a precision: `int8` applies to the flow stages only, `fp16` to every
    stage; fp32 stages fill in where the bundle has no variant of that precision."""
    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    stages = manifest["stages"]
    if precision != "fp32" and not any(st["precision"] == precision for st in stages.values()):
        how = ("python -m export.onnx --task NAME --precision int8" if precision == "int8"
               else "python -m export.trt --bundle DIR --precision fp16")
        raise PipelineError(f"this bundle has no {precision} stages; add them with `{how}`")
    chosen = {}
    for name, st in stages.items():
        if st["precision"] == "fp32":
            chosen.setdefault(st["role"], name)
    for name, st in stages.items():
        if st["precision"] == precision and precision != "fp32":
            chosen[st["role"]] = name
    return chosen
