"""One graph per chain: the bundle's stage graphs composed with `onnx.compose` (no torch re-export).

    add_fused_stages(bundle_dir, manifest, precisions) -> manifest with `translate` / `transfer` stages

Why: on small bundles each onnxruntime session call costs ~30-50 µs against compute floors of 1-2 µs,
so a 3-stage chain pays the call overhead three times. A fused graph is the chained stages' own graphs
wired output -> input (each stage's names prefixed), so it computes the same thing by construction;
the export still checks it against the chained stages on the validation data.

  translate  (source inputs, v) -> image (or z without a decoder):  Φ -> τ -> Λ
             inputs: text `input_ids`, `attention_mask`; image `source_image`; vector `cond`; then `v`
  transfer   (target_image, cond, new_cond) -> image (or z):              Θ -> τ⁻¹ -> τ -> Λ
             (zΦ of the old and the new source are inputs; a text's encoder runs outside, once per text)

Made only where they join at least two stages, per precision: fp32 from the fp32 stages, int8 from the
int8 flow stages and the fp32 experts (what `Pipeline.load(precision="int8")` chains). The tokenizer stays
outside. Stage entries: {file, role, precision, sha256, inputs, outputs, fused_from: [stage names],
parity_max_rel}.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import compose, version_converter

from export.bundle import ExportError, session, stage_entry
from runtime.manifest import FUSED_ROLES, max_rel, stage_name

# max |fused - chained| / max |chained| accepted at export, by precision: fp32 graphs differ only by how
# onnxruntime fuses ops across the old stage boundaries; int8 can flip a rounding step there
FUSED_PARITY_TOL = {"fp32": 1e-4, "int8": 1e-2}


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for n in graph.node:
        n.input[:] = [new if x == old else x for x in n.input]
        n.output[:] = [new if x == old else x for x in n.output]
    for v in (*graph.input, *graph.output, *graph.value_info):
        if v.name == old:
            v.name = new


def _aligned(models: list[onnx.ModelProto]) -> list[onnx.ModelProto]:
    """Same default-domain opset and IR version everywhere (the dynamo exporter writes newer ones)."""
    opset = max(o.version for m in models for o in m.opset_import if o.domain in ("", "ai.onnx"))
    out = []
    for m in models:
        mine = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
        out.append(version_converter.convert_version(m, opset) if mine != opset else m)
    ir = max(m.ir_version for m in out)
    for m in out:
        m.ir_version = ir
        del m.metadata_props[:]                   # e.g. `exporter` differs per stage; the fused graph sets its own
    return out


def compose_chain(parts: list[tuple[str, onnx.ModelProto]], links: list[tuple[str, str, str, str]],
                  inputs: dict[str, str], outputs: dict[str, str]) -> onnx.ModelProto:
    """Wire stage graphs into one. parts: (prefix, model) in call order; links: (from prefix, output,
    to prefix, input); inputs/outputs: {prefix/name: public name} of the fused graph."""
    models = _aligned([compose.add_prefix(m, f"{p}/") for p, m in parts])
    fused = models[0]
    for (prefix, _), model in zip(parts[1:], models[1:]):
        io = [(f"{a}/{o}", f"{b}/{i}") for a, o, b, i in links if b == prefix]
        fused = compose.merge_models(fused, model, io_map=io)
    keep = set(outputs)
    extra = [o for o in fused.graph.output if o.name not in keep]
    for o in extra:
        fused.graph.output.remove(o)
    for old, new in {**inputs, **outputs}.items():
        _rename(fused.graph, old, new)
    order = list(inputs.values())
    fused.graph.input.sort(key=lambda v: order.index(v.name))
    onnx.helper.set_model_props(fused, {"exporter": "onnx.compose"})
    onnx.checker.check_model(fused, full_check=True)
    return fused


def _plans(manifest: dict, precision: str) -> dict[str, dict]:
    """role -> stage entry the pipeline chains at this precision (int8: flow stages only)."""
    stages = manifest["stages"]
    pick = {}
    for role in ("source_encoder", "flow_forward", "flow_inverse", "target_encoder", "target_decoder"):
        name = stage_name(role, precision) if precision == "int8" and role.startswith("flow_") else role
        if name in stages:
            pick[role] = stages[name]
    return pick


def _translate(stages: dict, kind: str, load) -> tuple[list, list, dict, dict] | None:
    chain = (["src"] if "source_encoder" in stages else []) + ["fwd"] + (["dec"] if "target_decoder" in stages else [])
    if len(chain) < 2:
        return None
    parts = [(p, load({"src": "source_encoder", "fwd": "flow_forward", "dec": "target_decoder"}[p])) for p in chain]
    links = ([("src", "embedding", "fwd", "cond")] if "src" in chain else []) + \
        ([("fwd", "z", "dec", "z")] if "dec" in chain else [])
    src_in = {"text": {"src/input_ids": "input_ids", "src/attention_mask": "attention_mask"},
              "image": {"src/image": "source_image"}, "vector": {"fwd/cond": "cond"}}[kind]
    out = {"dec/image": "image"} if "dec" in chain else {"fwd/z": "z"}
    return parts, links, {**src_in, "fwd/v": "v"}, out


def _transfer(stages: dict, load) -> tuple[list, list, dict, dict] | None:
    if "target_encoder" not in stages:
        return None
    chain = ["enc", "inv", "fwd"] + (["dec"] if "target_decoder" in stages else [])
    roles = {"enc": "target_encoder", "inv": "flow_inverse", "fwd": "flow_forward", "dec": "target_decoder"}
    parts = [(p, load(roles[p])) for p in chain]
    links = [("enc", "z", "inv", "z"), ("inv", "v", "fwd", "v")]
    links += [("fwd", "z", "dec", "z")] if "dec" in chain else []
    out = {"dec/image": "image"} if "dec" in chain else {"fwd/z": "z"}
    return parts, links, {"enc/image": "target_image", "inv/cond": "cond", "fwd/cond": "new_cond"}, out


def chained(bundle: Path, stages: dict, role: str, feeds: dict[str, np.ndarray], precision: str) -> np.ndarray:
    """The fused graph's output computed stage by stage (the reference of its parity check)."""
    def run(r, f):
        return dict(zip([o["name"] for o in stages[r]["outputs"]],
                        session(bundle / stages[r]["file"], precision=stages[r]["precision"]).run(None, f)))
    if role == "transfer":
        z = run("target_encoder", {"image": feeds["target_image"]})["z"]
        v = run("flow_inverse", {"z": z, "cond": feeds["cond"]})["v"]
        cond = feeds["new_cond"]
    else:
        v = feeds["v"]
        src = {k: x for k, x in feeds.items() if k != "v"}
        cond = src["cond"] if "cond" in src else \
            run("source_encoder", {("image" if k == "source_image" else k): x for k, x in src.items()})["embedding"]
    z = run("flow_forward", {"v": v, "cond": cond})["z"]
    return run("target_decoder", {"z": z})["image"] if "target_decoder" in stages else z


def add_fused_stages(bundle: Path, manifest: dict, feeds: dict[str, dict[str, np.ndarray]],
                     precisions: tuple[str, ...] = ("fp32", "int8")) -> dict:
    """Write translate/transfer graphs for each precision the bundle has, check them against the chained
    stages on `feeds` (role -> validation feeds), add them to manifest["stages"]; returns the parity."""
    report = {}
    for precision in precisions:
        stages = _plans(manifest, precision)
        if precision == "int8" and "flow_forward" not in stages:
            continue
        if precision != "fp32" and not any(s["precision"] == precision for s in stages.values()):
            continue

        def load(role, stages=stages):
            return onnx.load(str(bundle / stages[role]["file"]))
        for role, plan in (("translate", _translate(stages, manifest["source_kind"], load)),
                           ("transfer", _transfer(stages, load))):
            if plan is None or role not in feeds:
                continue
            name = stage_name(role, precision)
            fused = compose_chain(*plan)
            fused.graph.name = name
            onnx.save(fused, str(bundle / f"{name}.onnx"))
            got = session(bundle / f"{name}.onnx", precision=precision).run(None, feeds[role])[0]
            err = max_rel(got, chained(bundle, stages, role, feeds[role], precision))
            if err > FUSED_PARITY_TOL[precision]:
                (bundle / f"{name}.onnx").unlink()
                raise ExportError(f"fused {name} differs from the chained stages (max rel err {err:.2e} > "
                                  f"{FUSED_PARITY_TOL[precision]:g}); not writing the bundle")
            entry = stage_entry(bundle, f"{name}.onnx", role, precision)
            entry.update(fused_from=[stage_name(r, s["precision"]) for r, s in stages.items()
                                     if r in _ROLES_OF[role]], parity_max_rel=err)
            manifest["stages"][name] = entry
            report[name] = err
    return report


_ROLES_OF = {"translate": ("source_encoder", "flow_forward", "target_decoder"),
             "transfer": ("target_encoder", "flow_inverse", "flow_forward", "target_decoder")}
assert set(_ROLES_OF) == set(FUSED_ROLES)
