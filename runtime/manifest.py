"""The bundle contract: schema constants, reading, validation and SHA-256 checks of `engines/NAME/`.

`export` writes bundles with these constants; the runtime reads them. Standard library and numpy only,
so `python -m export.trt --bundle` works without onnxruntime or torch. A bundle is a folder with
`manifest.json` and the files it names; every named file carries its SHA-256 next to its name (stages,
tokenizer files, validation arrays, condition bank, TensorRT plans). Schema 1:

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
    sampling        {temperature, chosen_by[, best_of]}: `translate`'s default T (v ~ N(0, T² I)) and draws per
                    sample, measured per task (runtime/sampling.py); absent: T = 1, as always sampled before
    condition_bank  {files {condition_bank.npy: sha256}, count, min_similarity, chosen_by}, optional: conditions
                    projected onto the training ones before τ samples (runtime/condition_bank.py)
    source, exporter, warnings, checks; optional attribute_names, split, tensorrt {version, gpu,
    compute_capability, plans {stage: {file, sha256, min_batch, opt_batch, max_batch, seq, workspace_gb}}}
    source.run      the run's name ("attributes/cinn"), never a path of the exporting machine

`validate_manifest` is this schema in code, run by export on what it writes and by the runtime on what
it reads: types, and every stage tensor's shape against latent_dim, cond_shape and the image sections.
`check_graph_io` then holds each graph's real I/O to the manifest, and `inside_bundle` refuses links
out of the bundle before a file is opened. Every failure is a PipelineError naming the file and field.
Fused stages (roles `translate`, `transfer`) and `checks.int8`: docs/bundle.md, "The manifest".
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from runtime.numerics import batch_dependence, l2_rel, max_rel, nll_per_dim  # noqa: F401  (re-exported)

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
FUSED_ROLES = ("translate", "transfer")
# fused role -> inputs by source kind (the source's own inputs, renamed where they would clash)
FUSED_INPUTS = {"translate": {"text": ("input_ids", "attention_mask", "v"), "image": ("source_image", "v"),
                              "vector": ("cond", "v")},
                "transfer": {kind: ("target_image", "cond", "new_cond") for kind in SOURCE_KINDS}}
ROLES = ("source_encoder", *STAGE_IO, *FUSED_ROLES)


DEFAULT_TEMPERATURE = 1.0        # bundles without a `sampling` section: what they were always sampled at
MAX_TEMPERATURE = 10.0            # v ~ N(0, T² I); beyond this a translator is far outside what it was trained on


class PipelineError(ValueError):
    """Anything wrong with a bundle or with the input given to it; the message says what to do."""


def fused_feeds(role: str, source_kind: str, val: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Inputs of a fused stage from a bundle's validation arrays (export's parity check and `runtime check`);
    None when the bundle has no such chain (no target encoder: no transfer)."""
    if role == "transfer" and "encoder_input" not in val:
        return None
    if role == "transfer":
        n = len(val["encoder_input"])
        cond = val["cond"][:n]
        return {"target_image": val["encoder_input"], "cond": cond,
                "new_cond": np.ascontiguousarray(np.roll(cond, 1, 0))}
    src = {"text": lambda: {"input_ids": val["input_ids"], "attention_mask": val["attention_mask"]},
           "image": lambda: {"source_image": val["source_images"]},
           "vector": lambda: {"cond": val["cond"][:16]}}[source_kind]()
    n = len(next(iter(src.values())))
    return {**src, "v": np.ascontiguousarray(np.resize(val["fixed_v"], (n, val["fixed_v"].shape[1])))}


def stage_name(role: str, precision: str) -> str:
    """`flow_forward` for fp32, `flow_forward.int8` for other precisions."""
    return role if precision == "fp32" else f"{role}.{precision}"


def stage_io(role: str, source_kind: str, decoder: bool = True) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of a stage; `decoder`: whether a fused graph ends in Λ."""
    if role in FUSED_ROLES:
        return FUSED_INPUTS[role][source_kind], ("image",) if decoder else ("z",)
    return SOURCE_IO[source_kind] if role == "source_encoder" else STAGE_IO[role]


def default_temperature(manifest: dict) -> float:
    """The bundle's default sampling temperature (`sampling.temperature`, DEFAULT_TEMPERATURE if absent)."""
    return float(manifest.get("sampling", {}).get("temperature", DEFAULT_TEMPERATURE))


def temperature_problem(t) -> str | None:
    """Why `t` is not a usable temperature (None when it is): a finite number in (0, MAX_TEMPERATURE]."""
    if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not np.isfinite(t) \
            or not 0 < t <= MAX_TEMPERATURE:
        return f"must be a finite number > 0 and <= {MAX_TEMPERATURE:g}, got {t!r}"
    return None


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
    for section in ("tokenizer", "validation", "condition_bank"):
        files.update(manifest.get(section, {}).get("files", {}))
    for plan in manifest.get("tensorrt", {}).get("plans", {}).values():
        files[plan["file"]] = plan["sha256"]
    return files


def _safe_relative(path: str) -> bool:
    p = Path(path)
    return bool(path) and not p.is_absolute() and ".." not in p.parts


MAX_MANIFEST_BYTES = 16 << 20        # a real manifest is a few KiB; refuse to parse anything huge
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "int8", "bool")
_HEX = frozenset("0123456789abcdef")


def _fail(where: str, problem: str) -> PipelineError:
    return PipelineError(f"manifest.json: {where} {problem}; re-export the bundle")


def _is_int(x, low: int = 1) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _is_sha256(x) -> bool:
    return isinstance(x, str) and len(x) == 64 and set(x) <= _HEX


def _need(m: dict, key: str, kind: type, where: str = "") -> object:
    value = m.get(key) if isinstance(m, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        got = "missing" if not isinstance(m, dict) or key not in m else f"a {type(value).__name__}"
        raise _fail(f"'{where}{key}'", f"must be {'an' if kind is int else 'a'} {kind.__name__} (got {got})")
    return value


def _file_map(section: dict, where: str) -> dict:
    files = _need(section, "files", dict, where)
    for path, digest in files.items():
        if not _safe_relative(path) or not _is_sha256(digest):
            raise _fail(f"'{where}files' entry {path!r}", "needs a relative path inside the bundle and a SHA-256")
    return files


def _image_spec(m: dict, key: str) -> tuple[int, int, int]:
    """(C, H, W) from an `image` / `source_image` section."""
    img = _need(m, key, dict)
    size, channels = img.get("size"), img.get("channels")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(d) for d in size)):
        raise _fail(f"'{key}.size'", f"must be [height, width] positive integers (got {size!r})")
    if not (_is_int(channels) and channels <= 4):
        raise _fail(f"'{key}.channels'", f"must be 1, 2, 3 or 4 (got {channels!r})")
    return channels, size[0], size[1]


def _tensor_specs(st: dict, key: str, where: str) -> list[dict]:
    specs = _need(st, key, list, where)
    for i, t in enumerate(specs):
        at = f"'{where}{key}[{i}]'"
        if not isinstance(t, dict):
            raise _fail(at, f"must be an object {{name, shape, dtype}} (got a {type(t).__name__})")
        if not isinstance(t.get("name"), str) or t.get("dtype") not in DTYPES:
            raise _fail(at, f"needs a 'name' string and a 'dtype' in {DTYPES}")
        shape = t.get("shape")
        if not (isinstance(shape, list) and shape and isinstance(shape[0], str)
                and all(isinstance(d, str) or _is_int(d) for d in shape)):
            raise _fail(f"{at} shape", f"must list a named batch dim, then positive integers or names (got {shape!r})")
    return specs


def expected_io(m: dict, role: str, name: str) -> tuple[tuple, str]:
    """(dims after the batch, dtype) that a stage's tensor `name` must have given the manifest's sizes;
    a None dim is free (the token sequence)."""
    d, cond, kind = m["latent_dim"], tuple(m["cond_shape"]), m["source_kind"]
    text = {"input_ids": (None,), "attention_mask": (None,)}
    io = {"flow_forward": {"v": (d,), "cond": cond, "z": (d,)},
          "flow_inverse": {"z": (d,), "cond": cond, "v": (d,), "logdet": ()},
          "target_encoder": {"image": "image", "z": (d,)}, "target_decoder": {"z": (d,), "image": "image"},
          "source_encoder": {**text, "embedding": cond} if kind == "text" else
          {"image": "source_image", "embedding": cond},
          # fused graphs (export.fuse): the chain's outer tensors; `image` out with a decoder, else `z`
          "translate": {**{"text": text, "image": {"source_image": "source_image"}, "vector": {"cond": cond}}[kind],
                        "v": (d,), "image": "image", "z": (d,)},
          "transfer": {"target_image": "image", "cond": cond, "new_cond": cond, "image": "image", "z": (d,)}}[role]
    dims = io[name]                                   # a string names the image section whose size it has
    return tuple(_image_spec(m, dims)) if isinstance(dims, str) else dims, "int64" if name in text else "float32"


def _check_stage(m: dict, name: str, st) -> None:
    where = f"stages.{name}."
    if not isinstance(st, dict) or st.get("role") not in ROLES or st.get("precision") not in PRECISIONS:
        raise _fail(f"stage '{name}'", f"needs a role in {ROLES} and a precision in {PRECISIONS}")
    if name != stage_name(st["role"], st["precision"]):
        raise _fail(f"stage '{name}'", f"should be named '{stage_name(st['role'], st['precision'])}'")
    if not isinstance(st.get("file"), str) or not _safe_relative(st["file"]) or not _is_sha256(st.get("sha256")):
        raise _fail(f"stage '{name}'", "needs a relative 'file' inside the bundle and its 'sha256'")
    external = st.get("external_data", {})
    if not isinstance(external, dict) or not all(isinstance(f, str) and _safe_relative(f) and _is_sha256(h)
                                                 for f, h in external.items()):
        raise _fail(f"stage '{name}' 'external_data'", "must map each relative file inside the bundle to its sha256")
    if st["role"] == "source_encoder" and m["source_kind"] == "vector":
        raise _fail(f"stage '{name}'", "cannot exist in a vector-source bundle (it has no source encoder)")
    inputs, outputs = _tensor_specs(st, "inputs", where), _tensor_specs(st, "outputs", where)
    decoder = any(isinstance(s, dict) and s.get("role") == "target_decoder" for s in m["stages"].values())
    names = (tuple(t["name"] for t in inputs), tuple(t["name"] for t in outputs))
    want = stage_io(st["role"], m["source_kind"], decoder)
    if names != want:
        raise _fail(f"stage '{name}'", f"has inputs/outputs {names}, expected {want}")
    for t in (*inputs, *outputs):
        dims, dtype = expected_io(m, st["role"], t["name"])
        if t["dtype"] != dtype or len(t["shape"]) != 1 + len(dims) or any(
                e is not None and isinstance(g, int) and g != e or e is None and isinstance(g, int)
                for g, e in zip(t["shape"][1:], dims)):
            raise _fail(f"stage '{name}' tensor '{t['name']}'",
                        f"is {t['dtype']} {t['shape']} but latent_dim / cond_shape / image say {dtype} "
                        f"['batch', {', '.join('seq' if e is None else str(e) for e in dims)}]")


def _check_sampling(m: dict) -> None:
    """`sampling` is optional: bundles exported before it existed sample at temperature 1 (export.onnx always
    writes it; export.trt / fp16 may rewrite an older bundle's manifest and leave it out)."""
    sampling = _need(m, "sampling", dict) if "sampling" in m else {"temperature": DEFAULT_TEMPERATURE}
    if temperature_problem(sampling.get("temperature")):
        raise _fail("'sampling.temperature'", temperature_problem(sampling.get("temperature")))
    if not isinstance(sampling.get("chosen_by", ""), str):
        raise _fail("'sampling.chosen_by'", "must be a string")


def validate_manifest(m, writing: bool = False) -> None:
    """The manifest schema: structure, types, and the sizes each stage's tensors must have given
    latent_dim, cond_shape and the image sections. Raises PipelineError naming the field.
    `writing` (export) also requires a portable `source` (no absolute path of the exporting machine)."""
    if not isinstance(m, dict):
        raise PipelineError("manifest.json must hold a JSON object")
    version = m.get("schema_version")
    if not _is_int(version):
        raise PipelineError(f"manifest.json has no valid schema_version (got {version!r})")
    if version > SCHEMA_VERSION:
        raise PipelineError(f"bundle schema {version} is newer than this runtime supports ({SCHEMA_VERSION}); "
                            f"update the runtime")
    for key, kind in (("task", str), ("source_kind", str), ("latent_dim", int), ("cond_shape", list),
                      ("stages", dict), ("validation", dict)):
        _need(m, key, kind)
    if m["source_kind"] not in SOURCE_KINDS:
        raise _fail("'source_kind'", f"'{m['source_kind']}' is not one of {SOURCE_KINDS}")
    if not _is_int(m["latent_dim"]) or not m["cond_shape"] or len(m["cond_shape"]) not in (1, 3) \
            or not all(_is_int(d) for d in m["cond_shape"]):
        raise _fail("'latent_dim' / 'cond_shape'", f"must be a positive integer / [c] or [C, H, W] "
                                                   f"(got {m['latent_dim']!r}, {m['cond_shape']!r})")
    for name, st in m["stages"].items():
        _check_stage(m, name, st)
    for role in ("flow_forward", "flow_inverse"):
        if role not in m["stages"]:
            raise _fail("'stages'", f"has no '{role}' stage")
    if m["source_kind"] != "vector" and "source_encoder" not in m["stages"]:
        raise _fail("'stages'", f"has no source_encoder, which a {m['source_kind']}-source bundle needs")
    if m["source_kind"] == "text" or "tokenizer" in m:
        tok = _need(m, "tokenizer", dict)
        if not _is_int(tok.get("max_tokens")) or not _is_int(tok.get("pad_id", 0), 0) \
                or not isinstance(tok.get("pad_token", ""), str):
            raise _fail("'tokenizer'", "needs max_tokens >= 1, pad_id >= 0 and a pad_token string")
        if "tokenizer/tokenizer.json" not in _file_map(tok, "tokenizer."):
            raise _fail("'tokenizer.files'", "does not list tokenizer/tokenizer.json")
    val = m["validation"]
    if not _is_int(val.get("count")):
        raise _fail("'validation.count'", f"must be a positive integer (got {val.get('count')!r})")
    _file_map(val, "validation.")
    names = m.get("attribute_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                              or len(m["cond_shape"]) != 1 or len(names) != m["cond_shape"][0]):
        raise _fail("'attribute_names'", f"must list one name per condition entry ({m['cond_shape']})")
    _check_sampling(m)
    if "condition_bank" in m:           # its rows are held to count and cond_shape when loaded (ConditionBank)
        _file_map(_need(m, "condition_bank", dict), "condition_bank.")
    trt = m.get("tensorrt")
    if trt is not None:
        plans = _need(m, "tensorrt", dict).get("plans", {})
        if not isinstance(plans, dict):
            raise _fail("'tensorrt.plans'", f"must be an object (got a {type(plans).__name__})")
        for stage, plan in plans.items():
            if not isinstance(plan, dict) or not isinstance(plan.get("file"), str) \
                    or not _safe_relative(plan["file"]) or not _is_sha256(plan.get("sha256")):
                raise _fail(f"'tensorrt.plans.{stage}'", "needs a relative 'file' inside the bundle and its 'sha256'")
    if writing:
        run = (m.get("source") or {}).get("run")
        if isinstance(run, str) and (Path(run).is_absolute() or ".." in Path(run).parts):
            raise _fail("'source.run'", f"holds a machine path ({run}); record the run's name instead")
    for path in hashed_files(m):
        if not _safe_relative(path):
            raise _fail(f"file path '{path}'", "must be relative and stay inside the bundle")


def inside_bundle(bundle_dir: str | Path, rel: str) -> Path:
    """bundle_dir / rel after refusing, before anything opens it, a path whose symlinks lead out of the
    bundle, and anything that is not a regular file (a FIFO or device would block or never end)."""
    root, path = Path(bundle_dir).resolve(), Path(bundle_dir) / rel
    target = path.resolve()
    if target != root and root not in target.parents:
        raise PipelineError(f"bundle file '{rel}' is a link to {target}, outside the bundle; refusing to read it")
    if path.exists() and not target.is_file():
        raise PipelineError(f"bundle file '{rel}' is not a regular file; re-export the bundle")
    return path


def read_manifest(bundle_dir: str | Path) -> dict:
    """Parse and validate `bundle_dir/manifest.json` (no file hashing; see `verify_files`)."""
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{bundle_dir} is not a bundle: {MANIFEST} not found "
                            f"(build one with `python -m export.onnx --task NAME`)")
    inside_bundle(bundle_dir, MANIFEST)
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise PipelineError(f"{path} is {path.stat().st_size} bytes, over the {MAX_MANIFEST_BYTES} a manifest "
                            f"may have; re-export the bundle")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise PipelineError(f"{path} is not valid JSON: {e}") from None
    validate_manifest(manifest)
    return manifest


def verify_files(bundle_dir: str | Path, manifest: dict) -> None:
    """Check every file the manifest names against its SHA-256; refuse missing or changed files."""
    for rel, expected in sorted(hashed_files(manifest).items()):
        path = inside_bundle(bundle_dir, rel)
        if not path.is_file():
            raise PipelineError(f"bundle file '{rel}' is missing from {bundle_dir}; re-export the bundle")
        if sha256_file(path) != expected:
            raise PipelineError(f"bundle file '{rel}' fails its SHA-256 check (tampered or corrupt); "
                                f"re-export the bundle")


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(bool)": "bool"}


def check_graph_io(stage: dict, inputs, outputs) -> None:
    """The graph's actual inputs and outputs (onnxruntime NodeArgs: .name, .type, .shape) against the
    manifest's stage entry: names in order, dtypes, and every fixed dim; a named dim must be free."""
    for key, args in (("inputs", inputs), ("outputs", outputs)):
        want = stage[key]
        got = [(a.name, _ORT_DTYPES.get(a.type, a.type), list(a.shape)) for a in args]
        if [g[0] for g in got] != [t["name"] for t in want]:
            raise PipelineError(f"{stage['file']}: graph {key} are {[g[0] for g in got]} but manifest.json says "
                                f"{[t['name'] for t in want]}; re-export the bundle")
        for (name, dtype, shape), t in zip(got, want):
            fixed = lambda d: isinstance(d, int) and d > 0          # noqa: E731  (ORT gives 0/None/str when free)
            if dtype != t["dtype"] or len(shape) != len(t["shape"]) or any(
                    fixed(g) != fixed(w) or fixed(w) and g != w for g, w in zip(shape, t["shape"])):
                raise PipelineError(f"{stage['file']}: graph {key[:-1]} '{name}' is {dtype} {shape} but manifest.json "
                                    f"says {t['dtype']} {t['shape']}; re-export the bundle")


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
        if st["precision"] == "fp32" and (st["role"] not in FUSED_ROLES or precision == "fp32"):
            chosen.setdefault(st["role"], name)     # a fused graph only at its own precision
    for name, st in stages.items():
        if st["precision"] == precision and precision != "fp32":
            chosen[st["role"]] = name
    return chosen
