"""Export a trained task to an ONNX bundle (the contract the torch-free runtime reads).

    python -m export.onnx --task NAME [--run runs/NAME/cinn] [--out engines/NAME] [--precision fp32|int8]
                          [--opset 17] [--val-source F --val-target F] [--val-pairs 256]

One graph per stage, dynamic batch axis, `onnx.checker` with full shape inference:
  source_encoder  Φ: text (input_ids, attention_mask: int64 [batch, seq]) -> embedding, pooling and
                  normalisation inside; or image [batch, C, H, W] -> embedding. Absent for vector sources.
  flow_forward    τ:   (v, cond) -> z              the embedder H and both standardisations are inside
  flow_inverse    τ⁻¹: (z, cond) -> (v, logdet)    both flow graphs, so `cond` is the raw zΦ
  target_encoder  Θ:   image [batch, C, H, W] in [-1, 1] -> z (the mean)
  target_decoder  Λ:   z -> image in [-1, 1]
  translate, transfer  (unless --no-fuse) the chains Φ -> τ -> Λ and Θ -> τ⁻¹ -> τ -> Λ as one graph each,
                  composed from the stage graphs above (export.fuse), per precision
Experts are called as `encode(x)` / `decode(z)` where they define them, else `forward`; a text encoder
(one with a `tokenizer`) as `forward(input_ids, attention_mask)`. The TorchScript exporter goes first
(eval mode: ActNorm's `initialized` flag never reaches the graph); a module it cannot express, or whose
trace is wrong at another batch size, goes through the dynamo exporter (the stage's `exporter` field in
the manifest says which). Every graph is checked against its
PyTorch module through onnxruntime on real and random inputs (max |a-b| / max |b| <= 1e-4) and the flow
pair must round-trip (‖τ(τ⁻¹(z)) - z‖ / ‖z‖ <= 1e-5 on real pairs; on random, off-manifold inputs within
10× the PyTorch model's own fp32 round trip, or 1e-5), else nothing is written.

`--precision int8` adds flow_forward.int8 / flow_inverse.int8: static QDQ int8 calibrated on the run's
training pairs (export.quantize: activation scales fixed at export, so rows are batch-independent;
identical weights and scales in both directions, verified). A flow that misses the int8 targets
(|NLL drift| <= --int8-max-drift nats/dim, round trip, batch independence) gets no int8 stage; the
manifest's checks.int8 says why.

Validation pairs (validation/*.npy): `--val-source/--val-target` files if given; else the task's own
held-out split, rebuilt from the run's config.json exactly as the trainer built it; if that fails (data
moved), pairs sampled from the model (zΦ from its stored standardisation, zΘ = τ(v | zΦ)). The
manifest's `validation.origin` says which.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

from export.bundle import ExportError, hash_tree, save_graph, session, stage_entry, write_manifest
from export.fuse import add_fused_stages
from export.quantize import MAX_DRIFT, Int8Refused, add_static_int8
from runtime.manifest import (
    FUSED_ROLES,
    SCHEMA_VERSION,
    fused_feeds,
    l2_rel,
    max_rel,
    sha256_file,
    stage_io,
    stage_name,
)
from train.common import ArgParser, UserError, run_cli
from train.flow import ConditionalINN
from train.tasks import Experts, load_all
from train.trainer import load_translator

DEFAULT_OPSET = 17
PARITY_TOL, ROUNDTRIP_TOL = 1e-4, 1e-5
RANDOM_ROUNDTRIP_FACTOR = 10     # off-manifold round trip: x PyTorch's own (see _build)
VAL_IMAGES = 8
DEFAULT_TEXTS = ["a small red circle", "two blue squares next to a large green triangle",
                 "a photograph of a dog running on the beach at sunset", "x",
                 "an orange sprite in the top left corner, rotated slightly, with a thin outline"]


class FlowStage(nn.Module):
    """τ or τ⁻¹ of one ConditionalINN as `forward`; both directions name their weights alike."""

    def __init__(self, flow: ConditionalINN, inverse: bool):
        super().__init__()
        self.flow, self.inverse = flow, inverse

    def forward(self, x, cond):
        return self.flow.inverse(x, cond) if self.inverse else self.flow(x, cond)


class ExpertStage(nn.Module):
    """`expert.<method>(x)` as `forward`, so the exporter sees exactly one single-input stage."""

    def __init__(self, expert: nn.Module, method: str):
        super().__init__()
        self.expert, self.method = expert, method

    def forward(self, x):
        return getattr(self.expert, self.method)(x)


def _method(module: nn.Module, name: str) -> str:
    return name if callable(getattr(module, name, None)) else "forward"


def source_kind(experts: Experts) -> str:
    if experts.source_encoder is None:
        return "vector"
    return experts.info.get("source_kind") or ("text" if hasattr(experts.source_encoder, "tokenizer") else "image")


@contextlib.contextmanager
def _quiet_stdout():
    """Silence file descriptor 1 (C++ writes there directly, past sys.stdout)."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _other_batch_ok(path: Path, module: nn.Module, args: tuple, names) -> bool:
    """Does the graph still match the module at a batch size other than the traced one? (Tracing can
    bake a `len(x)` into the graph as a constant.)"""
    feeds = {n: np.concatenate([a.numpy(), a[:1].numpy()]) for n, a in zip(names, args)}
    try:
        got = session(path).run(None, feeds)
    except Exception:                                  # onnxruntime's errors have no common base class
        return False
    with torch.no_grad():
        ref = module(*(torch.from_numpy(x) for x in feeds.values()))
    return all(max_rel(g, r.numpy()) <= PARITY_TOL for g, r in zip(got, ref if isinstance(ref, tuple) else (ref,)))


def export_graph(module: nn.Module, args: tuple, path: Path, inputs, outputs, opset: int,
                 seq_inputs: tuple[str, ...] = ()) -> None:
    """torch.onnx.export in eval mode, every I/O with a dynamic batch axis: the TorchScript exporter
    first (predictable for these graphs); if it cannot express the module (e.g. a `view(len(z), -1, ...)`
    before a BatchNorm) or its graph is wrong at another batch size, the torch.export-based one. Then
    onnx.checker with full shape inference. The graph's metadata `exporter` says which one wrote it.
    Weights over protobuf's 2 GB limit go to one `<file>.data` beside the graph (`save_graph`); the
    exporters write them as one file per tensor, so they export into a scratch folder first."""
    dynamic = {n: {0: "batch", 1: "seq"} if n in seq_inputs else {0: "batch"} for n in (*inputs, *outputs)}
    common = dict(input_names=list(inputs), output_names=list(outputs), dynamic_axes=dynamic, opset_version=opset)
    module = module.eval()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as scratch:
        raw = Path(scratch) / path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)   # shape-derived ints; parity checks below
            warnings.simplefilter("ignore", DeprecationWarning)        # "legacy TorchScript-based exporter"
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")   # notes; parity decides
            warnings.filterwarnings("ignore", message=".*dynamic_axes.*")
            try:
                with _quiet_stdout():              # on failure it prints its whole IR graph (from C++)
                    torch.onnx.export(module, args, str(raw), dynamo=False, **common)
                ok = _other_batch_ok(raw, module, args, inputs)
                problem = None if ok else "its graph fails at another batch size"
            except RuntimeError as e:
                problem = str(e).splitlines()[0][:120]
            used = "torchscript"
            if problem:
                print(f"note: {path.name}: TorchScript exporter: {problem}; using the dynamo exporter")
                torch.onnx.export(module, args, str(raw), dynamo=True, external_data=False, verbose=False, **common)
                used = "dynamo"
            ref = module(*args)
        model = onnx.load(str(raw))                 # pulls in any external data the exporter wrote
    for value, r in zip(model.graph.output, ref if isinstance(ref, tuple) else (ref,)):
        for dim, size in zip(value.type.tensor_type.shape.dim[1:], r.shape[1:]):
            dim.dim_value = int(size)       # the exporter leaves some static output dims symbolic
    onnx.helper.set_model_props(model, {"exporter": used})
    save_graph(model, path)
    del model
    onnx.checker.check_model(str(path), full_check=True)     # by path: works past protobuf's 2 GB limit


def check_parity(path: Path, module: nn.Module, feeds: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Max relative error of the graph against `module` for each named feed set (e.g. real, random)."""
    sess, report = session(path), {}
    for label, feed in feeds.items():
        got = sess.run(None, feed)
        with torch.no_grad():
            ref = module(*(torch.from_numpy(x) for x in feed.values()))
        ref = ref if isinstance(ref, tuple) else (ref,)
        report[label] = max(max_rel(g, r.numpy()) for g, r in zip(got, ref))
        if report[label] > PARITY_TOL:
            raise UserError(f"{path.name}: ONNX output differs from PyTorch on {label} inputs "
                            f"(max rel err {report[label]:.2e} > {PARITY_TOL:g}); not writing the bundle")
    return report


def flow_roundtrip(fwd: Path, inv: Path, z: np.ndarray, cond: np.ndarray) -> float:
    v, _ = session(inv).run(None, {"z": z, "cond": cond})
    return l2_rel(session(fwd).run(None, {"v": v, "cond": cond})[0], z)


@torch.no_grad()
def torch_roundtrip(model: ConditionalINN, z: np.ndarray, cond: np.ndarray) -> float:
    """‖τ(τ⁻¹(z)) - z‖ / ‖z‖ of the PyTorch model itself: the reference for the graph's round trip."""
    zt, ct = torch.from_numpy(z), torch.from_numpy(cond)
    v, _ = model.inverse(zt, ct)
    return l2_rel(model(v, ct).numpy(), z)


def task_source(task, config: dict):
    """The task's pair source, rebuilt from what the run recorded in config.json."""
    from train.cinn import build_parser
    args = build_parser().parse_args(["--task", task.name])
    recorded = {k: v for k, v in config.items() if k not in ("model", "train", "kind", "task")}
    recorded.update(config.get("data") or {})
    for key, value in recorded.items():
        if hasattr(args, key):
            setattr(args, key, value)
    args.seed = config["train"]["seed"]
    source, _ = task.make_source(args)
    return source


def task_validation(task, config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's held-out pairs, rebuilt from what the run recorded in config.json."""
    return task_source(task, config).validation()


def calibration_pairs(task, config: dict, model: ConditionalINN, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """int8 calibration pairs: n training pairs of the task (rebuilt from config.json), else model samples."""
    try:
        cond, z = task_source(task, config).batch(n, torch.Generator().manual_seed(123))
        return cond.numpy(), z.numpy(), "task training pairs"
    except (UserError, OSError, ValueError, KeyError, TypeError):
        cond, z = model_samples(model, n, seed=123)
        return cond.numpy(), z.numpy(), "model samples"


def model_samples(model: ConditionalINN, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cond = model.random_conditions(n, gen)
    return cond, model.sample(cond, generator=gen)


def _random_like_flow(model: ConditionalINN, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    cond = model.random_conditions(n, gen)
    z = model.target_mean + model.target_std * torch.randn(n, model.cfg.target_dim, generator=gen)
    return cond.numpy(), z.numpy()


def _save(bundle: Path, arrays: dict[str, np.ndarray]) -> list[str]:
    (bundle / "validation").mkdir(exist_ok=True)
    for name, arr in arrays.items():
        np.save(bundle / "validation" / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
    return [f"validation/{name}.npy" for name in arrays]


def _build(bundle: Path, model: ConditionalINN, experts: Experts, cond: np.ndarray, z: np.ndarray, opset: int,
           int8: dict | None, fuse: bool = True) -> dict:
    kind, n = source_kind(experts), len(z)
    stages, checks, manifest, val = {}, {"parity": {}}, {}, {}
    rnd_cond, rnd_z = _random_like_flow(model, 64, seed=1)
    for role, inverse in (("flow_forward", False), ("flow_inverse", True)):
        ins, outs = stage_io(role, kind)
        export_graph(FlowStage(model, inverse), (torch.from_numpy(z[:3]), torch.from_numpy(cond[:3])),
                     bundle / f"{role}.onnx", ins, outs, opset)
        first = "z" if inverse else "v"
        v_rnd = np.random.default_rng(2).standard_normal((len(z) + 64, z.shape[1]), dtype=np.float32)
        feeds = {"real": {first: z if inverse else v_rnd[:len(z)], "cond": cond},
                 "random": {first: rnd_z if inverse else v_rnd[len(z):], "cond": rnd_cond}}
        checks["parity"][role] = check_parity(bundle / f"{role}.onnx", FlowStage(model, inverse), feeds)
    pairs = {"real": (z, cond), "random": (rnd_z, rnd_cond)}
    checks["roundtrip_rel"] = {label: flow_roundtrip(bundle / "flow_forward.onnx", bundle / "flow_inverse.onnx", zz, cc)
                               for label, (zz, cc) in pairs.items()}
    # Off-manifold inputs (random conditions, e.g. non-binary attribute vectors) can drive v to 1e3-1e4,
    # where the PyTorch model itself loses ~1e-5 in fp32; there the graph must only be as good as that up to
    # rounding order: onnxruntime / PyTorch measured 0.6-3.1x over 8 input seeds (default text2image cINN),
    # so 2x refused a correct graph; a wrong graph is off by orders of magnitude, not a few x.
    checks["roundtrip_rel_pytorch"] = {label: torch_roundtrip(model, zz, cc) for label, (zz, cc) in pairs.items()}
    tolerance = {label: max(ROUNDTRIP_TOL, RANDOM_ROUNDTRIP_FACTOR * checks["roundtrip_rel_pytorch"][label])
                 if label == "random" else ROUNDTRIP_TOL for label in pairs}
    failed = {label: err for label, err in checks["roundtrip_rel"].items() if err > tolerance[label]}
    if failed:
        raise UserError(f"exported flow pair does not round-trip: {failed} > {tolerance} "
                        f"(PyTorch itself: {checks['roundtrip_rel_pytorch']})")
    with torch.no_grad():
        v, logdet = model.inverse(torch.from_numpy(z), torch.from_numpy(cond))
        fixed_v = np.random.default_rng(0).standard_normal(z.shape, dtype=np.float32)
        val.update(cond=cond, target=z, v=v.numpy(), logdet=logdet.numpy(), fixed_v=fixed_v,
                   forward_z=model(torch.from_numpy(fixed_v), torch.from_numpy(cond)).numpy())
    if kind == "text":
        manifest["tokenizer"] = _export_text(bundle, experts.source_encoder, experts.info, opset, checks, val)
    elif kind == "image":
        manifest["source_image"] = _export_image_source(bundle, experts, opset, checks, val)
    manifest.update(_export_target(bundle, experts, model, z, opset, checks, val))
    for role in ("source_encoder", "flow_forward", "flow_inverse", "target_encoder", "target_decoder"):
        if (bundle / f"{role}.onnx").exists():
            stages[role] = stage_entry(bundle, f"{role}.onnx", role, "fp32")
    if int8 is not None:
        c_cal, z_cal = int8.get("calibration") or (cond, z)
        try:
            checks["int8"] = add_static_int8(bundle, c_cal, z_cal, cond, z, max_drift=int8.get("max_drift", MAX_DRIFT))
            checks["int8"]["calibration_origin"] = int8.get("origin", "validation pairs")
            for role in ("flow_forward", "flow_inverse"):
                stages[stage_name(role, "int8")] = stage_entry(bundle, f"{role}.int8.onnx", role, "int8")
        except Int8Refused as e:         # the fp32 bundle is still good; say why there is no int8
            print(f"warning: {e}")
            checks["int8"] = {"refused": str(e), **e.report}
        except ExportError as e:
            raise UserError(str(e)) from None
    if fuse:                              # one graph per chain (export.fuse), checked against the chain
        try:
            checks["fused_parity_max_rel"] = add_fused_stages(
                bundle, {"stages": stages, "source_kind": kind},
                {role: f for role in FUSED_ROLES if (f := fused_feeds(role, kind, val)) is not None})
        except ExportError as e:
            raise UserError(str(e)) from None
    files = _save(bundle, val) + (["validation/texts.json"] if kind == "text" else [])
    manifest.update(stages=stages, checks=checks, source_kind=kind,
                    validation={"count": n, "files": hash_tree(bundle, files)})
    return manifest


def _export_text(bundle: Path, enc: nn.Module, info: dict, opset: int, checks: dict, val: dict) -> dict:
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


def _image_section(shape) -> dict:
    return {"size": [int(shape[1]), int(shape[2])], "channels": int(shape[0]), "range": [-1, 1], "layout": "NCHW"}


def _export_image_source(bundle: Path, experts: Experts, opset: int, checks: dict, val: dict) -> dict:
    enc = experts.source_encoder
    shape = tuple(experts.info.get("source_image_shape") or (3, enc.image_size, enc.image_size))
    images = torch.rand(VAL_IMAGES, *shape, generator=torch.Generator().manual_seed(4)) * 2 - 1
    stage = ExpertStage(enc, _method(enc, "encode"))
    export_graph(stage, (images[:3],), bundle / "source_encoder.onnx", *stage_io("source_encoder", "image"), opset)
    checks["parity"]["source_encoder"] = check_parity(bundle / "source_encoder.onnx", stage,
                                                      {"random": {"image": images.numpy()}})
    with torch.no_grad():
        val.update(source_images=images.numpy(), embedding=stage(images).numpy())
    return _image_section(shape)


def _export_target(bundle: Path, experts: Experts, model: ConditionalINN, z: np.ndarray, opset: int, checks: dict,
                   val: dict) -> dict:
    dec, enc, extra = experts.target_decoder, experts.target_encoder, {}
    _, rnd_z = _random_like_flow(model, VAL_IMAGES, seed=5)
    images = None
    if dec is not None:
        stage = ExpertStage(dec, _method(dec, "decode"))
        export_graph(stage, (torch.from_numpy(z[:3]),), bundle / "target_decoder.onnx", *stage_io("target_decoder", ""),
                     opset)
        checks["parity"]["target_decoder"] = check_parity(
            bundle / "target_decoder.onnx", stage, {"real": {"z": z[:VAL_IMAGES]}, "random": {"z": rnd_z}})
        with torch.no_grad():
            images = stage(torch.from_numpy(z[:VAL_IMAGES])).numpy()
        val["decoded"] = images
        extra["image"] = _image_section(images.shape[1:])
    if enc is not None:
        size = experts.info.get("image_size") or getattr(enc, "image_size", None)
        shape = images.shape[1:] if images is not None else tuple(experts.info.get("image_shape") or (3, size, size))
        stage = ExpertStage(enc, _method(enc, "encode"))
        rnd = (torch.rand(VAL_IMAGES, *shape, generator=torch.Generator().manual_seed(6)) * 2 - 1).numpy()
        real = images if images is not None else rnd
        export_graph(stage, (torch.from_numpy(real[:3]),), bundle / "target_encoder.onnx",
                     *stage_io("target_encoder", ""), opset)
        checks["parity"]["target_encoder"] = check_parity(bundle / "target_encoder.onnx", stage,
                                                          {"real": {"image": real}, "random": {"image": rnd}})
        with torch.no_grad():
            val.update(encoder_input=real, encoded=stage(torch.from_numpy(real)).numpy())
        extra["image"] = _image_section(shape)
    return extra


def export_bundle(model: ConditionalINN, experts: Experts, out: str | Path, *, task: str, cond: np.ndarray,
                  z: np.ndarray, origin: str, source: dict, opset: int = DEFAULT_OPSET, int8: bool = False,
                  calibration: tuple[np.ndarray, np.ndarray] | None = None,
                  calibration_origin: str = "validation pairs", int8_max_drift: float = MAX_DRIFT,
                  fuse: bool = True) -> dict:
    """Write the bundle for `model` + `experts` to `out` (built in a temporary folder beside it, then
    swapped in, so a failed export never leaves half a bundle). Returns the manifest. int8: also the static
    int8 flow pair, calibrated on `calibration` (cond, z) pairs (default: the validation pairs)."""
    if not isinstance(model, ConditionalINN):
        raise UserError("only cINN runs can be exported (the MLP baseline has no inverse)")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise UserError(f"{out} exists and is not a bundle; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model = model.eval()
        manifest = _build(tmp, model, experts, np.ascontiguousarray(cond, np.float32),
                          np.ascontiguousarray(z, np.float32), opset,
                          dict(calibration=calibration, max_drift=int8_max_drift,
                               origin=calibration_origin if calibration is not None else "validation pairs")
                          if int8 else None, fuse)
        manifest.update(schema_version=SCHEMA_VERSION, task=task, latent_dim=int(model.cfg.target_dim),
                        cond_shape=list(model.cfg.cond_shape), source=source,
                        warnings=list(experts.info.get("warnings", [])),
                        exporter={"torch": torch.__version__, "onnx": onnx.__version__,
                                  "onnxruntime": ort.__version__, "opset": opset})
        manifest["validation"]["origin"] = origin
        for key in ("attribute_names", "split"):
            if key in experts.info:
                manifest[key] = experts.info[key]
        manifest = write_manifest(tmp, manifest)
        tmp.chmod(0o755)                          # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def validation_pairs(task, config: dict, model: ConditionalINN, args) -> tuple[np.ndarray, np.ndarray, str]:
    if args.val_source or args.val_target:
        from train.features import load_pairs
        if not (args.val_source and args.val_target):
            raise UserError("--val-source and --val-target go together")
        cond, z = load_pairs(args.val_source, args.val_target)
        origin = f"files {args.val_source}, {args.val_target}"
    else:
        try:
            cond, z = (t.numpy() for t in task_validation(task, config))
            origin = "task validation split (rebuilt from config.json)"
        except (UserError, OSError, ValueError, KeyError, TypeError) as e:
            print(f"note: cannot rebuild the task's validation split ({e}); using pairs sampled from the model")
            cond, z = (t.numpy() for t in model_samples(model, args.val_pairs))
            origin = "model samples (zΦ from the stored standardisation, zΘ = τ(v | zΦ))"
    return cond[:args.val_pairs], z[:args.val_pairs], origin


def main(argv: list[str] | None = None) -> int:
    tasks = load_all()
    ap = ArgParser(prog="python -m export.onnx", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=sorted(tasks))
    ap.add_argument("--run", help="trained cINN run folder (default runs/TASK/cinn)")
    ap.add_argument("--out", help="bundle folder (default engines/TASK)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"], help="int8 adds int8 flow stages")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    ap.add_argument("--val-source", help="validation zΦ file (default: the task's held-out split)")
    ap.add_argument("--val-target", help="validation zΘ file, rows aligned with --val-source")
    ap.add_argument("--val-pairs", type=int, default=256, help="validation pairs stored in the bundle")
    ap.add_argument("--no-fuse", action="store_true",
                    help="skip the fused translate/transfer graphs (one graph per chain; they repeat the weights)")
    ap.add_argument("--calibration-pairs", type=int, default=1024, help="int8: training pairs that calibrate it")
    ap.add_argument("--int8-max-drift", type=float, default=MAX_DRIFT,
                    help="int8: largest |NLL drift| (nats/dim) on the validation pairs; else no int8 stage")
    args = ap.parse_args(argv)
    if args.val_pairs < 1 or args.opset < 14 or args.calibration_pairs < 1 or not args.int8_max_drift > 0:
        raise UserError("--val-pairs and --calibration-pairs must be >= 1, --opset >= 14, --int8-max-drift > 0")
    task = tasks[args.task]
    run, out = Path(args.run or f"runs/{args.task}/cinn"), Path(args.out or f"engines/{args.task}")
    model, config = load_translator(run)
    if config.get("task", args.task) != args.task:
        raise UserError(f"{run} is a run of task '{config['task']}', not '{args.task}'")
    experts = task.experts(config) if task.experts is not None else Experts()
    cond, z, origin = validation_pairs(task, config, model, args)
    # the run's name, not its path on this machine: bundles are shipped; the SHA-256 identifies the weights
    source = {"run": "/".join(run.resolve().parts[-2:]), "task_config": config,
              "checkpoint_sha256": sha256_file(run / "checkpoint.safetensors")}
    int8 = args.precision == "int8"
    c_cal, z_cal, cal_origin = calibration_pairs(task, config, model, args.calibration_pairs) if int8 else (0, 0, "")
    m = export_bundle(model, experts, out, task=args.task, cond=cond, z=z, origin=origin, source=source,
                      opset=args.opset, int8=int8, calibration=(c_cal, z_cal) if int8 else None,
                      calibration_origin=cal_origin, int8_max_drift=args.int8_max_drift, fuse=not args.no_fuse)
    print(f"wrote {out}: stages {', '.join(sorted(m['stages']))}; {len(z)} validation pairs ({origin})")
    worst = max(max(r.values()) for r in m["checks"]["parity"].values())
    rt = max(m["checks"]["roundtrip_rel"].values())
    print(f"parity vs PyTorch: max rel err {worst:.2e}; flow round trip {rt:.2e}")
    if "int8" in m["checks"] and "refused" not in m["checks"]["int8"]:
        q = m["checks"]["int8"]
        print(f"int8 (static, {q['calibration_pairs']} calibration pairs: {q['calibration_origin']}): round trip "
              f"{q['roundtrip_rel']:.2e}, NLL drift {q['nll_drift_nats_per_dim']:+.5f} nats/dim (absolute), "
              f"batch dependence {q['v_batch_dependence_max_abs']:.1e}, fp32 kept for "
              f"{', '.join(q['fp32_groups']) or 'nothing'}, batch-1 speed-up {q['speedup_batch1']:.2f}x")
    for w in m["warnings"]:
        print(f"warning: {w}")
    return 0


if __name__ == "__main__":
    run_cli(main)
