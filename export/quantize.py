"""Static, calibrated int8 for the two flow graphs (QDQ; activation scales fixed at export).

    add_static_int8(bundle, calib_cond, calib_z, val_cond, val_z) -> checks["int8"]

Why static: quantize_dynamic picks each activation's scale from the whole batch at run time, so a row's
output moved with the other rows of its batch (up to 0.48 in v on the demo bundles). Here every scale is
fixed at export from calibration data, so each row is computed alone, and the QDQ graph is what
explicit-quantization (strongly typed) TensorRT networks take.

Steps:
  0. equalization (export.equalize, exact in fp32): per-channel scales moved from each MatMul input into
     its weight (through LeakyReLU for hidden layers, an fp32 Mul elsewhere; strength EQUALIZE_ALPHA) and
     each input channel centred on its midpoint (an fp32 Add, the bias corrected), so one symmetric
     per-tensor int8 scale covers every channel; the same scales in both directions;
  1. calibration: onnxruntime's MinMax calibrator over the run's pairs, τ⁻¹ fed (z, cond) and τ fed
     (v, cond) with v = τ⁻¹(z | cond) (fp32), so both directions see realistic activations;
  2. shared ranges: every MatMul input's range is the union over both directions, keyed by the weight it
     multiplies, so the two graphs carry identical weights AND identical activation scales (the coupling
     subnetworks of τ and τ⁻¹ then compute the same numbers, which keeps the round trip tight);
  3. groups by measurement: the condition whitening, the condition embedder H and, per coupling block,
     its subnetworks' first, hidden and last layers (`weight_group`) are quantized alone and their NLL
     drift measured (on the calibration pairs); the most sensitive groups stay fp32, as few as bring the
     whole graph within CHOICE_SHARE of the budget (bisection), then more of them while the pair's round
     trip on those pairs is over CHOICE_SHARE of its target (`_meet_roundtrip`). The manifest records each;
  4. the pair is written only if it meets NLL drift (absolute nats/dim), round trip and batch
     independence on the validation pairs; otherwise `Int8Refused` says which and no int8 stage is
     written. Speed and int8 share are measured and only warn (`checks.int8.warnings`).
Weights: symmetric int8, per output channel; activations: symmetric int8 (zero point 0, as TensorRT needs).
"""
from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from export.bundle import ExportError, gemm_to_matmul, median_latency, session
from export.equalize import equalize
from runtime.manifest import batch_dependence, l2_rel, nll_per_dim

MAX_DRIFT = 0.003            # |NLL int8 - NLL fp32|, nats/dim, on validation pairs
MAX_ROUNDTRIP = 1e-4         # ‖τ8(τ8⁻¹(z)) - z‖ / ‖z‖
MAX_BATCH_DEPENDENCE = 1e-5  # max |Δv| of a row alone vs inside batches of 8 and 64
# accuracy decides whether an int8 pair is written; its speed on this CPU's onnxruntime does not decide it
# (the QDQ graph is also what TensorRT takes, where the small flows' per-op overhead differs), so a pair that
# keeps most weights fp32 or runs slower than fp32 here is written with a warning in the manifest;
# --int8-min-speedup > 0 refuses those measured slower than that at batch 1 AND at batch 8
MIN_INT8_WEIGHT_SHARE = 0.5
MIN_SPEEDUP = 0.0
SPEED_ROUNDS, SPEED_REPS = 5, 60
# equalization before calibration (export.equalize): migration strength and per-channel centering; chosen
# by measurement on the demo flows (docs/int8.md: all-int8 drift on attributes 0.053 -> 0.010)
EQUALIZE_ALPHA = 0.5
# the fp32 groups are chosen on the calibration pairs to this share of the drift budget: the validation
# pairs drifted up to 1.8x the calibration pairs on the demo flows
CHOICE_SHARE = 0.5
CALIBRATION_BATCH = 64
ROLES = ("flow_forward", "flow_inverse")


class Int8Refused(ExportError):
    """The int8 pair misses a target; the export writes no int8 stage (and says why). `report`: the
    measurements of the pair that was refused."""

    report: dict = {}


def weight_group(weight: str, last: dict[str, int] | None = None) -> str:
    """Tensor group of a MatMul weight: `whitening`, `embedder`, `cond_affine`, `block.N.in` (the first layers of the
    block's two subnetworks, fed [x_half ; h]), `block.N.out` (their last layers, which produce the
    log-scale s and shift t), `block.N.hidden`, or `other`. `last`: subnetwork -> index of its last layer
    (`last_layers`); without it a block's layers other than the first count as hidden."""
    if weight.endswith("cond_whitening"):
        return "whitening"
    m = re.search(r"(.*blocks\.(\d+)\.[^.]+\.[^.]+)\.(\d+)\.", weight)
    if m:
        sub, block, layer = m.group(1), m.group(2), int(m.group(3))
        kind = "in" if layer == 0 else "out" if last and last.get(sub) == layer else "hidden"
        return f"block.{block}.{kind}"
    if ".cond_affine." in weight:       # FlowConfig.cond_affine: its own group, so its drift is measured alone
        return "cond_affine"
    return "embedder" if ".embedder." in weight else "other"


def last_layers(model: onnx.ModelProto) -> dict[str, int]:
    """Subnetwork (e.g. flow.blocks.3.first.st) -> index of its last Linear layer."""
    out: dict[str, int] = {}
    for n in _matmuls(model):
        m = re.search(r"(.*blocks\.\d+\.[^.]+\.[^.]+)\.(\d+)\.", n.input[1])
        if m:
            out[m.group(1)] = max(out.get(m.group(1), 0), int(m.group(2)))
    return out


def weight_groups(model: onnx.ModelProto) -> dict[str, str]:
    """MatMul weight -> its tensor group (`weight_group`)."""
    last = last_layers(model)
    return {n.input[1]: weight_group(n.input[1], last) for n in _matmuls(model)}


def _shape(model: onnx.ModelProto, initializer: str) -> list[int]:
    return next(list(i.dims) for i in model.graph.initializer if i.name == initializer)


def _matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    consts = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in consts]


class _Feeds:
    """A CalibrationDataReader over aligned arrays, in batches (onnxruntime's interface, duck-typed)."""

    def __init__(self, feeds: dict[str, np.ndarray], batch: int = CALIBRATION_BATCH):
        n = len(next(iter(feeds.values())))
        self.batches = [{k: np.ascontiguousarray(x[i:i + batch]) for k, x in feeds.items()} for i in range(0, n, batch)]
        self.rewind()

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self.batches)


def _ranges(model_path: Path, feeds: dict[str, np.ndarray], tmp: Path) -> dict[str, tuple[float, float]]:
    """(min, max) of every MatMul input over the calibration data (onnxruntime's MinMax calibrator)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    cal = create_calibrator(model_path, ["MatMul"], augmented_model_path=str(tmp / f"{model_path.stem}.aug.onnx"),
                            calibrate_method=CalibrationMethod.MinMax)
    cal.collect_data(_Feeds(feeds))
    data = cal.compute_data().data
    return {name: (float(np.min(d.lowest)), float(np.max(d.highest))) for name, d in data.items()}


def shared_ranges(models: dict[str, onnx.ModelProto], ranges: dict[str, dict]) -> dict[str, dict]:
    """Per graph, tensor -> (lo, hi) with every MatMul activation input set to the union over both
    directions of the ranges seen by the weights it feeds (so the two directions quantize alike)."""
    by_weight: dict[str, tuple[float, float]] = {}
    consumers = {}
    for role, model in models.items():
        feeds_into: dict[str, list[str]] = {}
        for n in _matmuls(model):
            feeds_into.setdefault(n.input[0], []).append(n.input[1])
        consumers[role] = feeds_into
        for x, weights in feeds_into.items():
            lo, hi = ranges[role][x]
            for w in weights:
                a, b = by_weight.get(w, (lo, hi))
                by_weight[w] = (min(a, lo), max(b, hi))
    out = {}
    for role in models:
        r = dict(ranges[role])
        for x, weights in consumers[role].items():
            r[x] = (min(by_weight[w][0] for w in weights), max(by_weight[w][1] for w in weights))
        out[role] = r
    return out


def quantize_graph(model: onnx.ModelProto, dst: Path, ranges: dict[str, tuple[float, float]], fp32_groups: set[str],
                   per_channel: bool = True) -> None:
    """quantize_static (QDQ) of one MatMul-form flow graph with the given activation ranges; MatMuls whose
    weight is in `fp32_groups` are left fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data
    groups = weight_groups(model)
    keep = [n.name for n in _matmuls(model) if groups[n.input[1]] in fp32_groups]
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".q.") as tmp:
        src, cache = Path(tmp) / "matmul.onnx", Path(tmp) / "ranges.json"
        onnx.save(model, str(src))
        f32 = np.float32
        data = {k: (f32(lo), f32(hi)) for k, (lo, hi) in ranges.items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        logging.disable(logging.WARNING)          # "consider pre-processing" notices
        try:
            quantize_static(str(src), str(dst), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                            per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=keep, calibrate_method=CalibrationMethod.MinMax,
                            calibration_cache_path=str(cache),
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "OpTypesToExcludeOutputQuantization": ["MatMul"]})
        finally:
            logging.disable(logging.NOTSET)
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)


def quantized_weights(path: Path) -> dict[str, np.ndarray]:
    """What each quantized MatMul computes with, keyed by its weight's name (the same in both directions):
    the int8 weight and its scales and zero points, and the scale and zero point of the activation it
    multiplies (tensor names differ between the two graphs; the weight a tensor feeds does not)."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[0] in dq and n.input[1] in dq:
            x, w = dq[n.input[0]], dq[n.input[1]]
            key = w.input[0]
            out.update({key: inits[w.input[0]], f"{key}:scale": inits[w.input[1]],
                        f"{key}:zero_point": inits[w.input[2]], f"{key}:input_scale": inits[x.input[1]],
                        f"{key}:input_zero_point": inits[x.input[2]]})
    return out


def _nll(path: Path, z: np.ndarray, cond: np.ndarray) -> float:
    v, logdet = session(path, precision="int8").run(None, {"z": z, "cond": cond})
    return float(nll_per_dim(v, logdet).mean())


def choose_fp32_groups(inverse: onnx.ModelProto, ranges: dict, z, cond, nll32: float, tmp: Path,
                       budget: float) -> tuple[set[str], dict[str, dict]]:
    """Measure each group quantized alone (drift of τ⁻¹'s NLL), then keep the most sensitive groups fp32,
    as few as meet `budget` on these pairs (found by bisection over the sorted list; drift grows as
    groups go int8); see module doc."""
    groups = sorted(set(weight_groups(inverse).values()))
    report, probe = {}, tmp / "probe.onnx"

    def drift(fp32: set[str]) -> float:
        quantize_graph(inverse, probe, ranges, fp32)
        return _nll(probe, z, cond) - nll32

    for g in groups:
        report[g] = {"nll_drift_alone": drift(set(groups) - {g})}
    order = sorted(groups, key=lambda g: -abs(report[g]["nll_drift_alone"]))
    lo, hi = 0, len(order)                    # invariant: keeping order[:hi] fp32 meets the budget
    if abs(drift(set())) <= budget:
        hi = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if abs(drift(set(order[:mid]))) <= budget:
            hi = mid
        else:
            lo = mid
    fp32 = set(order[:hi])
    for g in groups:
        report[g]["precision"] = "fp32" if g in fp32 else "int8"
    return fp32, report


def _meet_roundtrip(models: dict, ranges: dict, keep: set[str], groups: dict[str, dict], out: dict[str, Path],
                    per_channel: bool, z: np.ndarray, cond: np.ndarray) -> set[str]:
    """Write the pair into `out` keeping `keep` fp32; while its round trip on these (calibration) pairs is over
    CHOICE_SHARE of MAX_ROUNDTRIP, keep the next most drift-sensitive groups fp32 too (an eighth of the groups
    at a time). Rounding steps that the two directions' fp32 differences flip are what the round trip
    measures; fewer int8 groups, fewer flips."""
    order = sorted(groups, key=lambda g: -abs(groups[g]["nll_drift_alone"]))
    k = len(keep)
    while True:
        for r in ROLES:
            quantize_graph(models[r], out[r], ranges[r], keep, per_channel)
        v = session(out["flow_inverse"], precision="int8").run(None, {"z": z, "cond": cond})[0]
        back = session(out["flow_forward"], precision="int8").run(None, {"v": v, "cond": cond})[0]
        if l2_rel(back, z) <= CHOICE_SHARE * MAX_ROUNDTRIP or k >= len(order):
            return keep
        k = min(len(order), k + max(1, len(order) // 8))
        keep = keep | set(order[:k])


def add_static_int8(bundle: Path, calib_cond: np.ndarray, calib_z: np.ndarray, val_cond: np.ndarray,
                    val_z: np.ndarray, *, max_drift: float = MAX_DRIFT, per_channel: bool = True,
                    alpha: float | None = EQUALIZE_ALPHA, center: bool = True,
                    min_speedup: float = MIN_SPEEDUP) -> dict:
    """Write flow_forward.int8.onnx / flow_inverse.int8.onnx next to the fp32 pair, or raise Int8Refused.
    Returns the measurements for the manifest's checks["int8"]. alpha / center: the equalization
    (export.equalize) applied before calibration; alpha None and center False: none."""
    fp32 = {r: bundle / f"{r}.onnx" for r in ROLES}
    models = {r: gemm_to_matmul(onnx.load(str(p))) for r, p in fp32.items()}
    with tempfile.TemporaryDirectory(dir=bundle, prefix=".int8.") as t:
        tmp = Path(t)
        v_cal, _ = session(fp32["flow_inverse"]).run(None, {"z": calib_z, "cond": calib_cond})
        feeds = {"flow_inverse": {"z": calib_z, "cond": calib_cond}, "flow_forward": {"v": v_cal, "cond": calib_cond}}
        equalized = {"alpha": None, "center": False}
        if alpha is not None or center:
            models, equalized = equalize(models, feeds, alpha, center)
        for r, m in models.items():
            onnx.save(m, str(tmp / f"{r}.mm.onnx"))
        seen = {r: _ranges(tmp / f"{r}.mm.onnx", feeds[r], tmp) for r in ROLES}
        ranges = shared_ranges(models, seen)
        # groups are chosen on the calibration (training) pairs, to CHOICE_SHARE of the budget; the targets
        # are judged on the validation pairs
        nll32 = _nll(fp32["flow_inverse"], calib_z, calib_cond)
        keep, groups = choose_fp32_groups(models["flow_inverse"], ranges["flow_inverse"], calib_z, calib_cond, nll32,
                                          tmp, CHOICE_SHARE * max_drift)
        out = {r: tmp / f"{r}.int8.onnx" for r in ROLES}
        keep = _meet_roundtrip(models, ranges, keep, groups, out, per_channel, calib_z, calib_cond)
        for g in groups:
            groups[g]["precision"] = "fp32" if g in keep else "int8"
        report = measure_pair(fp32, out, val_cond, val_z)
        report.update(groups=groups, fp32_groups=sorted(keep), calibration_pairs=int(len(calib_z)),
                      per_channel=per_channel, equalization=equalized,
                      method="static QDQ, MinMax ranges shared by both directions"
                             + (" after per-channel equalization (export.equalize)" if equalized["alpha"] is not None
                                or equalized["center"] else ""),
                      targets={"nll_drift_abs": max_drift, "roundtrip_rel": MAX_ROUNDTRIP,
                               "v_batch_dependence_max_abs": MAX_BATCH_DEPENDENCE,
                               "min_speedup_batch1_or_8": min_speedup})
        misses = [f"NLL drift {report['nll_drift_nats_per_dim']:+.4f} nats/dim (|drift| > {max_drift:g})"
                  if abs(report["nll_drift_nats_per_dim"]) > max_drift else "",
                  f"round trip {report['roundtrip_rel']:.1e} > {MAX_ROUNDTRIP:g}"
                  if report["roundtrip_rel"] > MAX_ROUNDTRIP else "",
                  f"batch dependence {report['v_batch_dependence_max_abs']:.1e} > {MAX_BATCH_DEPENDENCE:g}"
                  if report["v_batch_dependence_max_abs"] > MAX_BATCH_DEPENDENCE else ""]
        inverse = models["flow_inverse"]
        group_of = weight_groups(inverse)
        sizes = {n.input[1]: int(np.prod(_shape(inverse, n.input[1]))) for n in _matmuls(inverse)}
        share = sum(v for w, v in sizes.items() if group_of[w] not in keep) / max(sum(sizes.values()), 1)
        report["int8_weight_share"] = share
        lat = {b: report[f"latency_batch{b}_ms"] for b in (1, 8)}
        slower = "slower than fp32 on this CPU: tau^-1 + tau took " + ", ".join(
            f"{lat[b]['int8']:.3f} ms in int8 vs {lat[b]['fp32']:.3f} ms in fp32 at batch {b}" for b in lat)
        warnings = []
        if share < MIN_INT8_WEIGHT_SHARE:
            warnings.append(f"only {share:.0%} of the MatMul weights are int8 (groups kept fp32 to meet the drift and "
                            f"round-trip targets: {', '.join(sorted(keep))})")
        if max(report["speedup_batch1"], report["speedup_batch8"]) < 1:
            warnings.append(slower + "; prefer the fp32 flow on onnxruntime")
        if min_speedup > 0 and max(report["speedup_batch1"], report["speedup_batch8"]) < min_speedup:
            misses.append(slower + f" (--int8-min-speedup {min_speedup:g})")
        report["warnings"] = warnings
        misses = [m for m in misses if m]
        if not misses:
            w = {r: quantized_weights(out[r]) for r in ROLES}
            if w["flow_forward"].keys() != w["flow_inverse"].keys() or \
                    any(not np.array_equal(w["flow_forward"][k], w["flow_inverse"][k]) for k in w["flow_forward"]):
                raise ExportError("int8: the two flow directions ended up with different quantized weights or "
                                  "scales; not writing")
            report.update(identical_weights=True, quantized_tensors=len(w["flow_forward"]))
            for r in ROLES:
                out[r].replace(bundle / f"{r}.int8.onnx")
            return report
    why = "; ".join(misses)
    refused = Int8Refused(f"int8 flow not written: {why} (targets: |NLL drift| <= {max_drift:g} nats/dim, round trip "
                          f"<= {MAX_ROUNDTRIP:g}, batch dependence <= {MAX_BATCH_DEPENDENCE:g})")
    refused.report = report                       # what was measured, for the manifest
    raise refused


def measure_pair(fp32: dict[str, Path], int8: dict[str, Path], cond: np.ndarray, z: np.ndarray) -> dict:
    """NLL drift (absolute nats/dim), round trip, batch dependence (both precisions) and batch-1 latency."""
    s = {(r, p): session(path, precision=p) for p, paths in (("fp32", fp32), ("int8", int8))
         for r, path in paths.items()}
    v32, ld32 = s["flow_inverse", "fp32"].run(None, {"z": z, "cond": cond})
    v8, ld8 = s["flow_inverse", "int8"].run(None, {"z": z, "cond": cond})
    z8 = s["flow_forward", "int8"].run(None, {"v": v8, "cond": cond})[0]
    dep = {p: batch_dependence(lambda f, p=p: s["flow_inverse", p].run(None, f)[0], {"z": z, "cond": cond})
           for p in ("fp32", "int8")}
    lat = {p: {} for p in ("fp32", "int8")}
    for b in (1, 8):                       # interleaved rounds: a shared machine's load falls on both alike
        rounds = {p: [] for p in lat}
        for _ in range(SPEED_ROUNDS):
            for p, v in (("fp32", v32), ("int8", v8)):
                rounds[p].append(median_latency(s["flow_inverse", p], {"z": z[:b], "cond": cond[:b]}, SPEED_REPS)
                                 + median_latency(s["flow_forward", p], {"v": v[:b], "cond": cond[:b]}, SPEED_REPS))
        for p in lat:
            lat[p][b] = float(np.median(rounds[p]))
    nll32, nll8 = float(nll_per_dim(v32, ld32).mean()), float(nll_per_dim(v8, ld8).mean())
    return {"roundtrip_rel": l2_rel(z8, z), "nll_fp32": nll32, "nll_int8": nll8, "nll_drift_nats_per_dim": nll8 - nll32,
            "v_batch_dependence_max_abs": dep["int8"], "v_batch_dependence_max_abs_fp32": dep["fp32"],
            "latency_batch1_ms": {p: lat[p][1] * 1e3 for p in lat}, "speedup_batch1": lat["fp32"][1] / lat["int8"][1],
            "latency_batch8_ms": {p: lat[p][8] * 1e3 for p in lat}, "speedup_batch8": lat["fp32"][8] / lat["int8"][8]}
