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
training pairs after an exact per-channel equalization (export.quantize, export.equalize: activation
scales fixed at export, so rows are batch-independent; identical weights and scales in both directions,
verified). A flow that misses the int8 targets (|NLL drift| <= --int8-max-drift nats/dim, round trip,
batch independence) gets no int8 stage (nor, with --int8-min-speedup S > 0, one measured slower than S x fp32
here); a written pair that is slower than fp32 on this CPU carries a warning; the manifest's
checks.int8 says why.

Sampling temperature (manifest `sampling`): what `runtime.Pipeline.translate` uses when given none. A task's
experts may name one chosen by measurement (`Experts.info["sampling"] = {temperature, chosen_by}`; attributes
and text2image do: docs/results.md); else 1 (v ~ N(0, I), the trained density). `--temperature T` overrides.
Optional `best_of` / `cycles` there (draws per sample, the most likely kept; autoencoder round trips z -> Θ(Λ(z)):
train/core/selection.py) travel as they are.

Condition bank (manifest `condition_bank`, file condition_bank.npy): a run with RUN/condition_bank.safetensors
(text2image) ships its training conditions, onto which `Pipeline.translate` projects off-support conditions
before τ (runtime/condition_bank.py); `--no-condition-bank` leaves it out (the exact condition, always).

Validation pairs (validation/*.npy): `--val-source/--val-target` files if given; else the task's own
held-out split (`Task.held_out_pairs`: rebuilt from the run's config.json exactly as the trainer built it);
if that fails (data moved), pairs sampled from the model (zΦ from its stored standardisation, zΘ = τ(v | zΦ)). The
manifest's `validation.origin` says which.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.bundle import ExportError, hash_tree, session, stage_entry, write_condition_bank, write_manifest
from export.fuse import add_fused_stages
from export.graph import FlowStage, check_parity, export_graph
from export.quantize import MAX_DRIFT, MIN_SPEEDUP, Int8Refused, add_static_int8
from export.stages import export_image_source, export_target, export_text, random_like_flow, source_kind
from runtime.manifest import (
    DEFAULT_TEMPERATURE,
    FUSED_ROLES,
    SCHEMA_VERSION,
    fused_feeds,
    l2_rel,
    sha256_file,
    stage_io,
    stage_name,
    temperature_problem,
)
from train.core.common import ArgParser, UserError, run_cli
from train.core.condition_bank import load_condition_bank
from train.core.flow import ConditionalINN
from train.core.translator import load_translator
from train.data.features import load_pairs
from train.experts.base import Experts
from train.tasks.registry import BUILTIN, load_task

DEFAULT_OPSET = 17
ROUNDTRIP_TOL = 1e-5
RANDOM_ROUNDTRIP_FACTOR = 10     # off-manifold round trip: x PyTorch's own (see _build)


def flow_roundtrip(fwd: Path, inv: Path, z: np.ndarray, cond: np.ndarray) -> float:
    v, _ = session(inv).run(None, {"z": z, "cond": cond})
    return l2_rel(session(fwd).run(None, {"v": v, "cond": cond})[0], z)


@torch.no_grad()
def torch_roundtrip(model: ConditionalINN, z: np.ndarray, cond: np.ndarray) -> float:
    """‖τ(τ⁻¹(z)) - z‖ / ‖z‖ of the PyTorch model itself: the reference for the graph's round trip."""
    zt, ct = torch.from_numpy(z), torch.from_numpy(cond)
    v, _ = model.inverse(zt, ct)
    return l2_rel(model(v, ct).numpy(), z)


def calibration_pairs(task, config: dict, model: ConditionalINN, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """int8 calibration pairs: n training pairs of the task (rebuilt from config.json), else model samples."""
    try:
        cond, z = task.rebuild_pairs(config).source.batch(n, torch.Generator().manual_seed(123))
        return cond.numpy(), z.numpy(), "task training pairs"
    except (UserError, OSError, ValueError, KeyError, TypeError):
        cond, z = model_samples(model, n, seed=123)
        return cond.numpy(), z.numpy(), "model samples"


def model_samples(model: ConditionalINN, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cond = model.random_conditions(n, gen)
    return cond, model.sample(cond, generator=gen)


def _save(bundle: Path, arrays: dict[str, np.ndarray]) -> list[str]:
    (bundle / "validation").mkdir(exist_ok=True)
    for name, arr in arrays.items():
        np.save(bundle / "validation" / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
    return [f"validation/{name}.npy" for name in arrays]


def _build(bundle: Path, model: ConditionalINN, experts: Experts, cond: np.ndarray, z: np.ndarray, opset: int,
           int8: dict | None, fuse: bool = True) -> dict:
    kind, n = source_kind(experts), len(z)
    stages, checks, manifest, val = {}, {"parity": {}}, {}, {}
    rnd_cond, rnd_z = random_like_flow(model, 64, seed=1)
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
        manifest["tokenizer"] = export_text(bundle, experts.source_encoder, experts.info, opset, checks, val)
    elif kind == "image":
        manifest["source_image"] = export_image_source(bundle, experts, opset, checks, val)
    manifest.update(export_target(bundle, experts, model, z, opset, checks, val))
    for role in ("source_encoder", "flow_forward", "flow_inverse", "target_encoder", "target_decoder"):
        if (bundle / f"{role}.onnx").exists():
            stages[role] = stage_entry(bundle, f"{role}.onnx", role, "fp32")
    if int8 is not None:
        c_cal, z_cal = int8.get("calibration") or (cond, z)
        try:
            checks["int8"] = add_static_int8(bundle, c_cal, z_cal, cond, z, max_drift=int8.get("max_drift", MAX_DRIFT),
                                             min_speedup=int8.get("min_speedup", MIN_SPEEDUP))
            checks["int8"]["calibration_origin"] = int8.get("origin", "validation pairs")
            for w in checks["int8"]["warnings"]:
                print(f"warning: int8 flow written, but {w}")
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


def export_bundle(model: ConditionalINN, experts: Experts, out: str | Path, *, task: str, cond: np.ndarray,
                  z: np.ndarray, origin: str, source: dict, opset: int = DEFAULT_OPSET, int8: bool = False,
                  calibration: tuple[np.ndarray, np.ndarray] | None = None,
                  calibration_origin: str = "validation pairs", int8_max_drift: float = MAX_DRIFT,
                  fuse: bool = True, int8_min_speedup: float = MIN_SPEEDUP,
                  temperature: float | None = None, condition_bank=None) -> dict:
    """Write the bundle for `model` + `experts` to `out` (built in a temporary folder beside it, then
    swapped in, so a failed export never leaves half a bundle). Returns the manifest. int8: also the static
    int8 flow pair, calibrated on `calibration` (cond, z) pairs (default: the validation pairs). temperature:
    the bundle's default sampling temperature (default: the experts' `info["sampling"]`, else 1).
    condition_bank: a ConditionBank (train/core/condition_bank.py) to ship, or None."""
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
                          dict(calibration=calibration, max_drift=int8_max_drift, min_speedup=int8_min_speedup,
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
        manifest["sampling"] = sampling_section(experts, temperature)
        if condition_bank is not None:
            manifest["condition_bank"] = write_condition_bank(tmp, condition_bank.conditions.half().numpy(),
                                                              condition_bank.min_similarity, manifest["cond_shape"])
        manifest = write_manifest(tmp, manifest)
        tmp.chmod(0o755)                          # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def sampling_section(experts: Experts, temperature: float | None = None) -> dict:
    """The manifest's `sampling`: an explicit temperature, else the task's measured choice, else 1."""
    chosen = experts.info.get("sampling")
    # selection (draws per sample, autoencoder round trips): the task's measured choice whatever the temperature;
    # plain sampling (1, 0) is left out, so such bundles read as before
    best_of = {k: int(chosen[k]) for k, plain in (("best_of", 1), ("cycles", 0))
               if chosen and chosen.get(k, plain) != plain}
    if temperature is not None:
        problem = temperature_problem(temperature)
        if problem:
            raise UserError(f"--temperature {problem}")
        return {"temperature": float(temperature), "chosen_by": "set at export (--temperature)", **best_of}
    if chosen:
        return {"temperature": float(chosen["temperature"]), "chosen_by": str(chosen.get("chosen_by", "the task")),
                **best_of}
    return {"temperature": DEFAULT_TEMPERATURE, "chosen_by": "no measured choice for this task: v ~ N(0, I)"}


def validation_pairs(task, config: dict, model: ConditionalINN, args) -> tuple[np.ndarray, np.ndarray, str]:
    if args.val_source or args.val_target:
        if not (args.val_source and args.val_target):
            raise UserError("--val-source and --val-target go together")
        cond, z = load_pairs(args.val_source, args.val_target)
        origin = f"files {args.val_source}, {args.val_target}"
    else:
        try:
            cond, z = (t.numpy() for t in task.held_out_pairs(config))
            origin = "task validation split (rebuilt from config.json)"
        except (UserError, OSError, ValueError, KeyError, TypeError) as e:
            print(f"note: cannot rebuild the task's validation split ({e}); using pairs sampled from the model")
            cond, z = (t.numpy() for t in model_samples(model, args.val_pairs))
            origin = "model samples (zΦ from the stored standardisation, zΘ = τ(v | zΦ))"
    return cond[:args.val_pairs], z[:args.val_pairs], origin


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m export.onnx", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True,
                    help=f"{' | '.join(BUILTIN)} | FILE.py:NAME | package.module:NAME "
                         f"(your own task: docs/custom-experts.md)")
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
    ap.add_argument("--temperature", type=float,
                    help="the bundle's default sampling temperature (default: the task's measured choice, else 1)")
    ap.add_argument("--no-condition-bank", action="store_true",
                    help="leave out the run's condition bank (RUN/condition_bank.safetensors): the runtime then "
                         "samples from the exact condition, also off the training support")
    ap.add_argument("--int8-max-drift", type=float, default=MAX_DRIFT,
                    help="int8: largest |NLL drift| (nats/dim) on the validation pairs; else no int8 stage")
    ap.add_argument("--int8-min-speedup", type=float, default=MIN_SPEEDUP,
                    help="int8: refuse a pair slower than this many times fp32 (τ⁻¹ + τ, the better of batch 1 and 8, "
                         "measured on this CPU); default 0: accuracy alone decides, a slower pair gets a warning")
    args = ap.parse_args(argv)
    if args.val_pairs < 1 or args.opset < 14 or args.calibration_pairs < 1 or not args.int8_max_drift > 0:
        raise UserError("--val-pairs and --calibration-pairs must be >= 1, --opset >= 14, --int8-max-drift > 0")
    if args.temperature is not None and temperature_problem(args.temperature):
        raise UserError(f"--temperature {temperature_problem(args.temperature)}")
    task = load_task(args.task)
    run, out = Path(args.run or f"runs/{task.name}/cinn"), Path(args.out or f"engines/{task.name}")
    model, config = load_translator(run)
    if config.get("task", task.name) != task.name:
        raise UserError(f"{run} is a run of task '{config['task']}', not '{task.name}'")
    experts = task.experts(config) if task.experts is not None else Experts()
    cond, z, origin = validation_pairs(task, config, model, args)
    # the run's name, not its path on this machine: bundles are shipped; the SHA-256 identifies the weights
    source = {"run": "/".join(run.resolve().parts[-2:]), "task_config": config,
              "checkpoint_sha256": sha256_file(run / "checkpoint.safetensors")}
    int8 = args.precision == "int8"
    c_cal, z_cal, cal_origin = calibration_pairs(task, config, model, args.calibration_pairs) if int8 else (0, 0, "")
    m = export_bundle(model, experts, out, task=task.name, cond=cond, z=z, origin=origin, source=source,
                      opset=args.opset, int8=int8, calibration=(c_cal, z_cal) if int8 else None,
                      calibration_origin=cal_origin, int8_max_drift=args.int8_max_drift, fuse=not args.no_fuse,
                      int8_min_speedup=args.int8_min_speedup, temperature=args.temperature,
                      condition_bank=None if args.no_condition_bank else load_condition_bank(run))
    print(f"wrote {out}: stages {', '.join(sorted(m['stages']))}; {len(z)} validation pairs ({origin})")
    worst = max(max(r.values()) for r in m["checks"]["parity"].values())
    rt = max(m["checks"]["roundtrip_rel"].values())
    selection = "".join(f", {k} {m['sampling'][k]}" for k in ("best_of", "cycles") if k in m["sampling"])
    print(f"parity vs PyTorch: max rel err {worst:.2e}; flow round trip {rt:.2e}; default sampling temperature "
          f"{m['sampling']['temperature']:g}{selection} ({m['sampling']['chosen_by']})")
    if "int8" in m["checks"] and "refused" not in m["checks"]["int8"]:
        q = m["checks"]["int8"]
        print(f"int8 (static, {q['calibration_pairs']} calibration pairs: {q['calibration_origin']}): round trip "
              f"{q['roundtrip_rel']:.2e}, NLL drift {q['nll_drift_nats_per_dim']:+.5f} nats/dim (absolute), "
              f"batch dependence {q['v_batch_dependence_max_abs']:.1e}, fp32 kept for "
              f"{', '.join(q['fp32_groups']) or 'nothing'}, speed-up {q['speedup_batch1']:.2f}x (batch 1), "
              f"{q['speedup_batch8']:.2f}x (batch 8)")
    if "condition_bank" in m:
        print(f"condition bank: {m['condition_bank']['count']} training conditions "
              f"(min similarity {m['condition_bank']['min_similarity']:.3f}) in condition_bank.npy")
    for w in m["warnings"]:
        print(f"warning: {w}")
    return 0


if __name__ == "__main__":
    run_cli(main)
