"""A bundle -> a Triton Inference Server model repository, for GPU servers running NVIDIA's Triton container.

    python -m export.triton --bundle engines/text2image --out model_repository/ [--precision fp32|fp16|int8]
        [--backend onnxruntime|tensorrt] [--max-batch 64] [--max-queue-delay-us 2000] [--instances 1] [--kind gpu|cpu]
        [--best-of N] [--cycles K] [--no-project]
    docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD/model_repository:/models \\
        nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models

Writes, for a bundle named TASK:
    TASK_<role>/        one model per stage (source_encoder, flow_forward, flow_inverse, target_encoder,
                        target_decoder): platform onnxruntime_onnx (1/model.onnx) or tensorrt_plan (1/model.plan),
                        the file copied and its SHA-256 checked against the manifest, max_batch_size,
                        dynamic_batching and instance_group
    TASK_condition_projection/, TASK_best_of_split/, TASK_best_of_select/
                        small onnxruntime graphs (export/triton_graphs.py) where the sampling needs them: the
                        bundle's condition bank, and the split / choice of best_of candidates
    TASK/               ensemble, Pipeline.translate's default sampling: source encoder -> condition projection
                        (bundles with a condition bank) -> flow_forward on each of best_of candidates -> flow_inverse
                        -> the most likely -> `cycles` x (target decoder -> target encoder) -> target decoder
                        (best_of, cycles: the manifest's `sampling`, or --best-of / --cycles). The residual `v` is
                        an input: sampling stays with the client (v = default_rng(seed).standard_normal((N * best_of,
                        D), float32) * temperature as (N, best_of, D); (N, D) when best_of is 1), as
                        runtime.Pipeline draws it, so a seed reproduces the same sample on any server and any batch;
                        tokenizer.json and client.json (inputs, recipes) sit beside it
    TASK_edit/          ensemble (bundles with a target encoder): target encoder -> flow_inverse (source) ->
                        flow_forward (new source) -> target decoder, i.e. Pipeline.transfer (exact conditions)

Tensors are the graphs' own: images float32 NCHW in [-1, 1] (x / 127.5 - 1 in, clip(rint((y + 1) * 127.5)) out),
texts as token ids from the bundle's tokenizer. Validated structurally (each config.pbtxt parses as Triton's
ModelConfig, tensors match the graphs), not served: this project's machines have no GPU Triton. Imports no torch.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from runtime.condition_bank import ConditionBank
from runtime.manifest import (
    FUSED_ROLES,
    PipelineError,
    default_temperature,
    read_manifest,
    select_stages,
    sha256_file,
    verify_files,
)
from runtime.sampling import check_best_of, check_cycles, default_best_of, default_cycles

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "bool": "TYPE_BOOL"}
PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}


class Enum(str):
    """A protobuf enum value: written unquoted."""


def to_pbtxt(message: dict, indent: int = 0) -> str:
    """Protobuf text format for a dict: nested dicts are messages, lists of dicts repeated fields."""
    pad, lines = "  " * indent, []
    for key, value in message.items():
        for item in value if isinstance(value, list) and value and isinstance(value[0], dict) else [value]:
            if isinstance(item, dict):
                lines += [f"{pad}{key} {{", to_pbtxt(item, indent + 1), f"{pad}}}"]
            elif isinstance(item, list):
                lines.append(f"{pad}{key}: [{' ' + ', '.join(str(x) for x in item) + ' ' if item else ''}]")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return "\n".join(line for line in lines if line)


def _scalar(x) -> str:
    if isinstance(x, Enum):
        return str(x)
    if isinstance(x, bool):
        return "true" if x else "false"
    return json.dumps(x) if isinstance(x, str) else str(x)


def _tensor(spec: dict, name: str | None = None) -> dict:
    """A manifest tensor spec -> Triton's (batch axis dropped: max_batch_size > 0 adds it; `seq` -> -1)."""
    if spec["dtype"] not in TRITON_TYPES:
        raise PipelineError(f"tensor '{spec['name']}' has dtype {spec['dtype']}, which this exporter cannot map")
    dims = [-1 if d == "seq" else int(d) for d in spec["shape"][1:]]
    return {"name": name or spec["name"], "data_type": Enum(TRITON_TYPES[spec["dtype"]]), "dims": dims or [1],
            **({"reshape": {"shape": []}} if not dims else {})}


def stage_config(name: str, stage: dict, platform: str, max_batch: int, delay_us: int, instances: int,
                 kind: str) -> dict:
    return {"name": name, "platform": platform, "max_batch_size": max_batch,
            "input": [_tensor(t) for t in stage["inputs"]], "output": [_tensor(t) for t in stage["outputs"]],
            "dynamic_batching": {"max_queue_delay_microseconds": delay_us},
            "instance_group": [{"count": instances, "kind": Enum(f"KIND_{kind.upper()}")}]}


def _source_feeds(manifest: dict, stages: dict, prefix: str = "") -> tuple[list[dict], list[dict], str]:
    """(ensemble inputs, steps, name of the zΦ tensor) for the source side; prefix "new_" for edits."""
    if manifest["source_kind"] == "vector":
        spec = {"name": f"{prefix}cond", "shape": ["batch", *manifest["cond_shape"]], "dtype": "float32"}
        return [_tensor(spec)], [], f"{prefix}cond"
    enc = manifest["stages"][stages["source_encoder"]]
    inputs = [_tensor(t, f"{prefix}{t['name']}" if t["name"] != "image" else f"{prefix}source_image")
              for t in enc["inputs"]]
    step = {"model_name": f"{manifest['task']}_source_encoder", "model_version": -1,
            "input_map": [{"key": t["name"], "value": i["name"]} for t, i in zip(enc["inputs"], inputs)],
            "output_map": [{"key": "embedding", "value": f"{prefix}cond"}]}
    return inputs, [step], f"{prefix}cond"


def _step(task: str, role: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict:
    return {"model_name": f"{task}_{role}", "model_version": -1,
            "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
            "output_map": [{"key": k, "value": v} for k, v in outputs.items()]}


def sampling_steps(task: str, cond: str, best_of: int, cycles: int, decoder: bool, project: bool) -> list[dict]:
    """Steps from zΦ (`cond`) and `v` to the output, as Pipeline.translate: projection, the most likely of `best_of`
    candidates (v: (B, best_of, D)), `cycles` round trips through the autoencoder, the decoder."""
    steps = []
    if project:
        steps.append(_step(task, "condition_projection", {"cond": cond}, {"projected": "projected_cond"}))
        cond = "projected_cond"
    last = "z"
    if best_of == 1:
        steps.append(_step(task, "flow_forward", {"v": "v", "cond": cond}, {"z": "z"}))
    else:
        steps.append(_step(task, "best_of_split", {"v": "v"}, {f"v_{j}": f"v_{j}" for j in range(best_of)}))
        for j in range(best_of):        # n steps on the stage models: Triton's dynamic batcher may merge them
            steps += [_step(task, "flow_forward", {"v": f"v_{j}", "cond": cond}, {"z": f"z_{j}"}),
                      _step(task, "flow_inverse", {"z": f"z_{j}", "cond": cond},
                            {"v": f"inverse_v_{j}", "logdet": f"logdet_{j}"})]
        last = "z_best" if decoder else "z"
        steps.append(_step(task, "best_of_select", {**{f"z_{j}": f"z_{j}" for j in range(best_of)},
                                                     **{f"v_{j}": f"inverse_v_{j}" for j in range(best_of)},
                                                     **{f"logdet_{j}": f"logdet_{j}" for j in range(best_of)}},
                           {"z": last}))
    for c in range(cycles):             # float images between Λ and Θ, as Pipeline
        steps += [_step(task, "target_decoder", {"z": last}, {"image": f"cycle{c}_image"}),
                  _step(task, "target_encoder", {"image": f"cycle{c}_image"}, {"z": f"cycle{c}_z"})]
        last = f"cycle{c}_z"
    if decoder:
        steps.append(_step(task, "target_decoder", {"z": last}, {"image": "image"}))
    return steps


def ensemble_configs(manifest: dict, stages: dict, max_batch: int, best_of: int = 1, cycles: int = 0,
                     project: bool = False) -> dict[str, dict]:
    """TASK (sampling) and, with a target encoder, TASK_edit (transfer)."""
    task, spec = manifest["task"], lambda role, io, i: manifest["stages"][stages[role]][io][i]
    decoder = "target_decoder" in stages
    out = _tensor(spec("target_decoder", "outputs", 0)) if decoder else _tensor(spec("flow_forward", "outputs", 0))
    source_inputs, steps, cond = _source_feeds(manifest, stages)
    steps += sampling_steps(task, cond, best_of, cycles, decoder, project)
    v = _tensor(spec("flow_forward", "inputs", 0))
    if best_of > 1:
        v = {**v, "dims": [best_of, *v["dims"]]}
    configs = {task: {"name": task, "platform": "ensemble", "max_batch_size": max_batch,
                      "input": [*source_inputs, v], "output": [out],
                      "ensemble_scheduling": {"step": steps}}}
    if "target_encoder" in stages and decoder:
        new_inputs, new_steps, new_cond = _source_feeds(manifest, stages, "new_")
        steps = _source_feeds(manifest, stages)[1] + new_steps + [
            _step(task, "target_encoder", {"image": "image"}, {"z": "z"}),
            _step(task, "flow_inverse", {"z": "z", "cond": cond}, {"v": "v"}),     # logdet: not needed
            _step(task, "flow_forward", {"v": "v", "cond": new_cond}, {"z": "new_z"}),
            _step(task, "target_decoder", {"z": "new_z"}, {"image": "edited_image"})]
        image = _tensor(spec("target_encoder", "inputs", 0))
        configs[f"{task}_edit"] = {"name": f"{task}_edit", "platform": "ensemble", "max_batch_size": max_batch,
                                   "input": [image, *source_inputs, *new_inputs],
                                   "output": [{**out, "name": "edited_image"}],
                                   "ensemble_scheduling": {"step": steps}}
    return configs


def client_info(manifest: dict, configs: dict[str, dict], best_of: int = 1, cycles: int = 0,
                project: bool = False) -> dict:
    d, task = manifest["latent_dim"], manifest["task"]
    draw = (f"v = numpy.random.default_rng(seed).standard_normal((N, {d}), dtype=float32) * temperature"
            if best_of == 1 else
            f"v = (numpy.random.default_rng(seed).standard_normal((N * {best_of}, {d}), dtype=float32) * "
            f"temperature).reshape(N, {best_of}, {d})")
    info = {"task": task, "source_kind": manifest["source_kind"], "latent_dim": d,
            "sampling": f"{draw}; row i of one call with seed s equals runtime.Pipeline.translate(..., seed=s) "
                        "(N rows: one per sample, a source repeated for several samples of it)" +
                        ("; texts unpadded; byte for byte on onnxruntime with one row per request (Pipeline encodes "
                         "one text per call; a batch of texts rounds differently, ~2e-8, measured <= 1/255 in pixels)"
                         if manifest["source_kind"] == "text" else ""),
            "default_temperature": default_temperature(manifest),
            "best_of": best_of, "cycles": cycles,
            "selection": (f"server-side in '{task}': each row's z is the most likely of its {best_of} candidates "
                          "under τ (flow_inverse, best_of_select), as Pipeline.translate" if best_of > 1 else
                          "none: one candidate per row"),
            "models": {name: {"inputs": {t["name"]: [str(t["data_type"]), t["dims"]] for t in c["input"]},
                              "outputs": {t["name"]: [str(t["data_type"]), t["dims"]] for t in c["output"]}}
                       for name, c in configs.items() if c["platform"] == "ensemble"}}
    if "condition_bank" in manifest:
        info["condition_bank"] = (f"applied server-side in '{task}' (model {task}_condition_projection, as "
                                  "runtime.Pipeline.translate); not in the edit ensemble, which keeps the exact "
                                  "condition as Pipeline.transfer" if project else
                                  "not applied: exported without projection; runtime.Pipeline.translate projects")
    if "image" in manifest:
        info["image"] = {**manifest["image"], "to_model": "x / 127.5 - 1 (uint8 NHWC -> NCHW)",
                         "from_model": "clip(rint((y + 1) * 127.5), 0, 255) (NCHW -> uint8 NHWC)"}
    if "tokenizer" in manifest:
        info["tokenizer"] = {"file": "tokenizer.json", "max_tokens": manifest["tokenizer"]["max_tokens"],
                             "pad_id": manifest["tokenizer"].get("pad_id", 0)}
    return info


def sampling_graphs(bundle: Path, manifest: dict, best_of: int, project: bool) -> dict[str, tuple]:
    """role -> (ONNX model, inputs, outputs) of the small graphs the sampling ensemble needs (export.triton_graphs)."""
    graphs = {}
    if not project and best_of == 1:
        return graphs
    try:        # onnx builds the graphs: not in the lean install (`pip install .`), whose plain ensembles need none
        from export.triton_graphs import best_of_select, best_of_split, condition_projection
    except ImportError:
        raise PipelineError("the condition projection and best-of graphs need the onnx package (pip install onnx); "
                            "or write plain ensembles with --best-of 1 --cycles 0 --no-project") from None
    if project:
        rows = ConditionBank.load(bundle, manifest).rows             # checked as Pipeline.load checks it
        graphs["condition_projection"] = condition_projection(rows, manifest["condition_bank"]["min_similarity"])
    if best_of > 1:
        graphs["best_of_split"] = best_of_split(best_of, int(manifest["latent_dim"]))
        graphs["best_of_select"] = best_of_select(best_of, int(manifest["latent_dim"]))
    return graphs


def write_repository(bundle: str | Path, out: str | Path, precision: str = "fp32", backend: str = "onnxruntime",
                     max_batch: int = 64, delay_us: int = 2000, instances: int = 1, kind: str = "gpu",
                     best_of: int | None = None, cycles: int | None = None, project: bool = True) -> list[str]:
    """Write TASK's models into the repository `out` (other models there are left alone); returns their names.
    best_of / cycles: the sampling ensemble's (None: the bundle's defaults, as Pipeline.translate); project: apply
    the bundle's condition bank (where it has one) between Φ and τ, as Pipeline.load(..., project=True)."""
    bundle, out = Path(bundle), Path(out)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    # the ensembles chain the stage models server-side; the bundle's fused graphs would repeat their weights
    stages = {r: n for r, n in select_stages(manifest, precision).items() if r not in FUSED_ROLES}
    best_of = default_best_of(manifest) if best_of is None else check_best_of(best_of)
    cycles = default_cycles(manifest, stages) if cycles is None else check_cycles(cycles, stages)
    project = project and "condition_bank" in manifest
    if backend not in PLATFORMS:
        raise PipelineError(f"unknown backend '{backend}'; choose onnxruntime or tensorrt")
    if backend == "tensorrt":
        if kind != "gpu":
            raise PipelineError("TensorRT plans run on GPU instances only; use --kind gpu")
        plans = manifest.get("tensorrt", {}).get("plans", {})
        missing = [name for name in stages.values() if name not in plans]
        if missing:
            raise PipelineError(f"bundle has no TensorRT plans for {missing}; build them on the target GPU with "
                                f"`python -m export.trt --bundle {bundle} --precision {precision}`")
        max_batch = min([max_batch] + [plans[name]["max_batch"] for name in stages.values()])
    if max_batch < 1 or instances < 1 or delay_us < 0:
        raise PipelineError("max_batch and instances must be >= 1, max_queue_delay_us >= 0")
    platform, model_file = PLATFORMS[backend]
    task = manifest["task"]
    configs = {}
    for role, name in sorted(stages.items()):
        st = manifest["stages"][name]
        src, digest = (st["file"], st["sha256"]) if backend == "onnxruntime" else \
            (manifest["tensorrt"]["plans"][name]["file"], manifest["tensorrt"]["plans"][name]["sha256"])
        model = f"{task}_{role}"
        (out / model / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle / src, out / model / "1" / model_file)
        if sha256_file(out / model / "1" / model_file) != digest:
            raise PipelineError(f"copy of {src} to {out / model} fails its SHA-256 check; disk full or changing?")
        configs[model] = stage_config(model, st, platform, max_batch, delay_us, instances, kind)
    for role, (graph, ins, outs) in sampling_graphs(bundle, manifest, best_of, project).items():
        model = f"{task}_{role}"         # onnxruntime with either backend: a few ops, no weights worth a plan
        (out / model / "1").mkdir(parents=True, exist_ok=True)
        (out / model / "1" / "model.onnx").write_bytes(graph.SerializeToString())
        configs[model] = stage_config(model, {"inputs": ins, "outputs": outs}, PLATFORMS["onnxruntime"][0],
                                      max_batch, delay_us, instances, kind)
    configs.update(ensemble_configs(manifest, stages, max_batch, best_of, cycles, project))
    for model, config in configs.items():
        (out / model / "1").mkdir(parents=True, exist_ok=True)       # ensembles need an (empty) version folder
        (out / model / "config.pbtxt").write_text(to_pbtxt(config) + "\n")
    info = client_info(manifest, configs, best_of, cycles, project)
    (out / task / "client.json").write_text(json.dumps(info, indent=2) + "\n")
    if "tokenizer" in manifest:
        shutil.copyfile(bundle / "tokenizer" / "tokenizer.json", out / task / "tokenizer.json")
    return list(configs)


def parse_configs(out: str | Path, models: list[str]) -> dict:
    """Each model's config.pbtxt parsed as Triton's ModelConfig (needs tritonclient[grpc]: the [serve] extra)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2
    return {m: text_format.Parse((Path(out) / m / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
            for m in models}


def replay_ensemble(out: str | Path, cfg, feeds: dict, sessions: dict | None = None) -> dict:
    """Execute an ensemble's steps in order on CPU onnxruntime (Triton's scheduler, without Triton): the check a
    server would pass. cfg: a parsed ensemble config (parse_configs); sessions: a cache across calls."""
    import onnxruntime as ort
    sessions = {} if sessions is None else sessions
    tensors = dict(feeds)
    for step in cfg.ensemble_scheduling.step:
        if step.model_name not in sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            sessions[step.model_name] = ort.InferenceSession(str(Path(out) / step.model_name / "1" / "model.onnx"),
                                                             options, providers=["CPUExecutionProvider"])
        feed = {k: tensors[v] for k, v in step.input_map.items()}
        result = sessions[step.model_name].run(list(step.output_map), feed)
        tensors.update({step.output_map[k]: r for k, r in zip(step.output_map, result)})
    return {t.name: tensors[t.name] for t in cfg.output}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.triton", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="bundle folder (engines/TASK)")
    ap.add_argument("--out", required=True, help="model repository folder (created; other models kept)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    ap.add_argument("--backend", default="onnxruntime", choices=list(PLATFORMS))
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-queue-delay-us", type=int, default=2000)
    ap.add_argument("--instances", type=int, default=1, help="instances per stage model")
    ap.add_argument("--kind", default="gpu", choices=["gpu", "cpu"], help="instance kind")
    ap.add_argument("--best-of", type=int, default=None, help="candidates per sample (default: the bundle's)")
    ap.add_argument("--cycles", type=int, default=None, help="autoencoder round trips (default: the bundle's)")
    ap.add_argument("--no-project", action="store_true", help="sample from the exact condition (no condition bank)")
    args = ap.parse_args(argv)
    try:
        models = write_repository(args.bundle, args.out, args.precision, args.backend, args.max_batch,
                                  args.max_queue_delay_us, args.instances, args.kind, args.best_of, args.cycles,
                                  not args.no_project)
    except (PipelineError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        parse_configs(args.out, models)
        checked = "each config.pbtxt parses as Triton's ModelConfig"
    except ImportError:
        checked = "configs not parsed (install tritonclient[grpc] to check them)"
    print(f"wrote {len(models)} models to {args.out}: {', '.join(models)}; {checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
