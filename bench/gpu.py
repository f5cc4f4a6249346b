"""The numbers a TensorRT engine must beat on an NVIDIA GPU: every demo bundle's PyTorch modules, per stage at
batch 1/8/64, as PyTorch CUDA eager, torch.compile (inductor) and CUDA-graph replay of the eager call, in fp32
and bf16 (and fp16 where asked).

    python bench/gpu.py --configs bench/gpu_configs.json --out DIR [--device cuda] [--budget-s 420]
    python bench/gpu.py --configs ... --out DIR --device cpu --quick      # checks the script on a CPU

Weights are RANDOM (timing only; labelled in every output): each module is the exact architecture of the demo
run that made the bundle (configs written by `python bench/gpu.py --write-configs RUNS_DIR`: the flows' and
autoencoder's config.json, the BigGAN architecture name, MiniLM-L6's BERT config). The text encoder is a
BertModel of all-MiniLM-L6-v2's config with mean pooling and L2 normalisation (as train.experts.TextEncoder);
BigGAN-deep comes from pytorch_pretrained_biggan (its download helpers are stubbed where boto3 is missing:
nothing is fetched). A stage that cannot be built or run records the reason and the rest go on.

Timing: CUDA events around each call (host launch overhead included, as a server sees it), warm-up first,
median of >= 20 calls and >= 50 ms; compile time (first calls) reported apart. bf16/fp16 cast the module
and its float inputs (timing only: an fp16 flow is no longer exactly invertible). Each fast path is checked
against eager at the same precision (max |a - b| / max |b|). A global budget stops new compilations when
time runs short (recorded as skipped, reason given). Writes DIR/gpu-<host>-<date>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import sys
import time
import traceback
import types
from datetime import datetime, timezone
from pathlib import Path

import torch

MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
              max_position_embeddings=512, type_vocab_size=2)
TEXT_SEQ = 16                     # tokens of a typical demo caption after padding (MiniLM tokenizer)
BATCHES = (1, 8, 64)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------ the modules
def _biggan(arch: str):
    try:
        import boto3  # noqa: F401
    except ImportError:                       # the package's download helpers need boto3; nothing is downloaded
        stub = types.ModuleType("pytorch_pretrained_biggan.file_utils")
        stub.PYTORCH_PRETRAINED_BIGGAN_CACHE = "/nonexistent"
        stub.cached_path = lambda *a, **k: (_ for _ in ()).throw(OSError("no downloads on this machine"))
        sys.modules["pytorch_pretrained_biggan.file_utils"] = stub
    from train.experts.biggan import ARCHITECTURES, BigGANConfig, BigGANDecoder, random_init
    return BigGANDecoder(random_init(BigGANConfig.from_dict(ARCHITECTURES[arch].to_dict())), 0.4)


class MiniLM(torch.nn.Module):
    """all-MiniLM-L6-v2's architecture (random weights): BERT, mean pooling, L2 normalisation."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel
        self.bert = BertModel(BertConfig(**MINILM), add_pooling_layer=False)

    def forward(self, input_ids, attention_mask):
        tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        return torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1)


class Call(torch.nn.Module):
    """module.<method>(*args) as forward (τ⁻¹, encode, decode), so every stage is one callable module."""

    def __init__(self, module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args):
        return getattr(self.module, self.method)(*args)


def stages_of(name: str, cfg: dict) -> dict:
    """stage -> (builder() -> module, inputs(batch, device, dtype) -> tuple) of one bundle."""
    from train.core.flow import ConditionalINN, FlowConfig
    flow_cfg = FlowConfig.from_dict(cfg["flow"])
    d, c = flow_cfg.target_dim, flow_cfg.cond_shape

    def flow(inverse):
        m = ConditionalINN(flow_cfg)
        return Call(m, "inverse") if inverse else m

    def rnd(*shape):
        return lambda n, dev, dt: (torch.randn(n, *shape, device=dev, dtype=dt),)

    out = {"flow_forward": (lambda: flow(False), lambda n, dev, dt: (torch.randn(n, d, device=dev, dtype=dt),
                                                                       torch.randn(n, *c, device=dev, dtype=dt))),
           "flow_inverse": (lambda: flow(True), lambda n, dev, dt: (torch.randn(n, d, device=dev, dtype=dt),
                                                                      torch.randn(n, *c, device=dev, dtype=dt)))}
    if cfg.get("text_encoder"):
        out["encode_source"] = (MiniLM, lambda n, dev, dt: (torch.randint(1000, 2000, (n, TEXT_SEQ), device=dev),
                                                            torch.ones(n, TEXT_SEQ, dtype=torch.long, device=dev)))
    if cfg.get("ae"):
        from train.experts.autoencoder import AEConfig, Autoencoder
        ae_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["ae"].items()}
        ae = lambda: Autoencoder(AEConfig(**ae_cfg))        # noqa: E731
        size = cfg["ae"]["image_size"]
        out["encode_target"] = (lambda: Call(ae(), "encode"), rnd(3, size, size))
        out["decode_target"] = (lambda: Call(ae(), "decode"), rnd(d))
    if cfg.get("biggan"):
        out["decode_target"] = (lambda: _biggan(cfg["biggan"]), rnd(d))
    return out


# ------------------------------------------------------------------------------------------ measuring
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_calls(fn, device, min_calls: int = 20, min_s: float = 0.05, max_calls: int = 2000) -> dict:
    """Median / p90 ms of single calls (CUDA events on a GPU, perf_counter on a CPU), after a warm-up."""
    for _ in range(3):
        fn()
    _sync(device)
    times, start = [], time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < min_s and len(times) < max_calls):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))], "calls": len(times)}


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _rel(a, b) -> float:
    a, b = _first(a).float(), _first(b).float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def cuda_graph(module, args):
    """Capture one eager call on static input buffers; returns replay() -> output."""
    static = [a.clone() for a in args]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            module(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = module(*static)

    def replay():
        graph.replay()
        return out
    return replay


def bench_stage(name: str, builder, inputs, device, dtypes, batches, methods, deadline: float) -> list[dict]:
    rows = []
    try:
        base = builder().eval().to(device)
    except Exception as e:                    # noqa: BLE001 - one stage's failure must not end the run
        return [{"stage": name, "skipped": f"build failed: {type(e).__name__}: {e}"}]
    for dname in dtypes:
        dt = DTYPES[dname]
        module = base.to(dt) if dt != torch.float32 else base
        compiled = None
        for n in batches:
            args = tuple(a if not a.is_floating_point() else a.to(dt) for a in inputs(n, device, torch.float32))
            row = {"stage": name, "dtype": dname, "batch": n}
            with torch.inference_mode():
                try:
                    ref = module(*args)
                    row["eager"] = time_calls(lambda: module(*args), device)
                except Exception as e:                             # noqa: BLE001
                    rows.append({**row, "skipped": f"eager failed: {type(e).__name__}: {str(e)[:200]}"})
                    continue
                if "graph" in methods:
                    try:
                        if device.type != "cuda":
                            raise RuntimeError("CUDA graphs need a CUDA device")
                        replay = cuda_graph(module, args)
                        row["graph"] = {**time_calls(replay, device), "max_rel_vs_eager": _rel(replay(), ref)}
                    except Exception as e:                         # noqa: BLE001
                        row["graph"] = {"skipped": f"{type(e).__name__}: {str(e)[:200]}"}
            if "compile" in methods:
                try:
                    if time.perf_counter() > deadline:
                        raise TimeoutError("time budget spent: compilation skipped")
                    if compiled is None:
                        torch._dynamo.reset()      # else dynamo's recompile limit silently falls back to eager
                        compiled = torch.compile(module)
                    t = time.perf_counter()
                    with torch.inference_mode():
                        out = compiled(*args)
                        _sync(device)
                        compile_s = time.perf_counter() - t
                        run = compiled
                        row["compile"] = {**time_calls(lambda: run(*args), device), "compile_s": compile_s,
                                          "max_rel_vs_eager": _rel(out, ref)}
                except Exception as e:                             # noqa: BLE001
                    row["compile"] = {"skipped": f"{type(e).__name__}: {str(e)[:200]}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del compiled
    del base
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def translate_rows(rows: list[dict], bundle: str) -> list[dict]:
    """translate = encode_source + flow_forward + decode_target, summed per method (each stage's own timing)."""
    parts = [s for s in ("encode_source", "flow_forward", "decode_target")]
    out = []
    for r in rows:
        if r.get("stage") != "flow_forward" or "skipped" in r:
            continue
        same = {p: next((x for x in rows if x.get("stage") == p and x.get("dtype") == r["dtype"]
                         and x.get("batch") == r["batch"] and "skipped" not in x), None) for p in parts}
        same = {p: x for p, x in same.items() if x is not None}
        row = {"stage": "translate (sum of stages)", "dtype": r["dtype"], "batch": r["batch"], "parts": list(same)}
        for m in ("eager", "graph", "compile"):
            if all(m in x and "median_ms" in x[m] for x in same.values()):
                row[m] = {"median_ms": sum(x[m]["median_ms"] for x in same.values())}
        out.append(row)
    return out


def host() -> dict:
    info = {"host": socket.gethostname(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "weights": "RANDOM init of the exact architectures (timing only)"}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, sms=p.multi_processor_count, memory_gb=round(p.total_memory / 2 ** 30, 1))
    for pkg in ("transformers", "triton"):
        try:
            info[pkg] = __import__(pkg).__version__
        except Exception as e:               # noqa: BLE001
            info[pkg] = f"not importable: {type(e).__name__}: {e}"
    return info


def markdown(r: dict) -> str:
    h = r["host"]
    lines = [f"# GPU baselines: {h.get('gpu', r['settings']['device'])}, {h['date']}", "",
             f"- **random weights**, exact demo architectures; torch {h['torch']} (CUDA {h['cuda']}), transformers "
             f"{h['transformers']}, triton {h['triton']}; budget {r['settings']['budget_s']} s, ran "
             f"{r['seconds']:.0f} s", "- eager / CUDA-graph replay / torch.compile: median ms per call "
             "(CUDA events, launch overhead included); compile s = first call; translate = sum of its stages", ""]
    for bundle, b in r["bundles"].items():
        lines += [f"## {bundle}", ""]
        lines += [f"- {x['stage']}: skipped — {x['skipped']}" for x in b if "dtype" not in x]
        lines += ["| stage | dtype | batch | eager ms | graph ms | compile ms | compile s | notes |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for x in b:
            if "dtype" not in x:
                continue
            cells, notes = [], [x["skipped"]] if "skipped" in x else []
            for m in ("eager", "graph", "compile"):
                v = x.get(m, {})
                cells.append(f"{v['median_ms']:.3f}" if "median_ms" in v else "–")
                if "skipped" in v:
                    notes.append(f"{m}: {v['skipped'][:80]}")
            cs = x.get("compile", {}).get("compile_s")
            lines.append(f"| {x['stage']} | {x['dtype']} | {x['batch']} | " + " | ".join(cells)
                         + f" | {cs:.1f} |" if cs is not None else f"| {x['stage']} | {x['dtype']} | {x['batch']} | "
                         + " | ".join(cells) + " | – |")
            lines[-1] += f" {'; '.join(notes)} |"
        lines.append("")
    return "\n".join(lines)


def write_configs(runs: Path, dest: Path) -> None:
    """bench/gpu_configs.json from the demo runs: each bundle's flow config and its experts' architectures."""
    out = {}
    for task in ("attributes", "text2image", "bert2biggan"):
        cfg_file = runs / task / "cinn" / "config.json"
        if not cfg_file.is_file():
            print(f"note: {cfg_file} missing; {task} left out")
            continue
        c = json.loads(cfg_file.read_text())
        entry = {"flow": c["model"], "text_encoder": task in ("text2image", "bert2biggan")}
        if task == "bert2biggan":
            entry["biggan"] = c["biggan"]["source"].split(":", 1)[-1]
        else:
            ae = json.loads((Path(c.get("ae") or runs / task / "ae") / "config.json").read_text())
            entry["ae"] = ae["model"]
        out[task] = entry
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {dest}: {', '.join(out)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=str(Path(__file__).with_name("gpu_configs.json")))
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--methods", default="eager,graph,compile")
    ap.add_argument("--bundles", help="comma list (default: all in the configs)")
    ap.add_argument("--budget-s", type=float, default=420, help="no new compilation after this many seconds")
    ap.add_argument("--quick", action="store_true", help="batch 1, fp32: checks the script runs")
    ap.add_argument("--write-configs", metavar="RUNS_DIR", help="write --configs from the demo runs and exit")
    args = ap.parse_args(argv)
    if args.write_configs:
        write_configs(Path(args.write_configs), Path(args.configs))
        return 0
    t0 = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu (with --quick to check the script)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False          # fp32 means fp32 (TensorRT's fp32 is too, unless told)
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch._dynamo.config.cache_size_limit = 64             # 3 batches x 2 dtypes of one module stay compiled
    configs = json.loads(Path(args.configs).read_text())
    names = args.bundles.split(",") if args.bundles else list(configs)
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    dtypes = ["fp32"] if args.quick else args.dtypes.split(",")
    methods = args.methods.split(",")
    results = {"host": host(), "settings": {**vars(args), "batches": batches, "dtypes": dtypes}, "bundles": {}}
    deadline = t0 + args.budget_s
    stages, rows = {}, {name: [] for name in names}
    for name in names:
        try:
            stages[name] = stages_of(name, configs[name])
        except Exception as e:                                  # noqa: BLE001
            rows[name].append({"stage": "*", "skipped": f"{type(e).__name__}: {e}"})
    for dname in dtypes:                     # all fp32 first: when the budget stops compiling, bf16 loses compile rows
        for name, by_stage in stages.items():
            for stage, (builder, inputs) in by_stage.items():
                print(f"[{time.perf_counter() - t0:5.0f} s] {name} {stage} {dname}", flush=True)
                try:
                    rows[name] += bench_stage(stage, builder, inputs, device, [dname], batches, methods, deadline)
                except Exception as e:                          # noqa: BLE001
                    rows[name].append({"stage": stage, "skipped": f"{type(e).__name__}: {e}",
                                       "trace": traceback.format_exc()[-800:]})
                _write(results, rows, args.out, t0)           # after every stage: a killed run keeps its rows
    print(markdown(_write(results, rows, args.out, t0)))
    return 0


def _write(results: dict, rows: dict, out_dir: str, t0: float) -> dict:
    order = {s: i for i, s in enumerate(("encode_source", "flow_forward", "flow_inverse", "encode_target",
                                         "decode_target"))}
    for name, r in rows.items():
        r = sorted(r, key=lambda x: (order.get(x["stage"], 9), x.get("dtype", ""), x.get("batch", 0)))
        results["bundles"][name] = r + translate_rows(r, name)
    results["seconds"] = time.perf_counter() - t0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-{results['host']['host']}-{results['host']['date'][:19].replace(':', '')}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(results))
    return results
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # the repo (or its carried copy) root
    sys.exit(main())
