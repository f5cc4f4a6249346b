"""The runtime's command line, a thin skin over `runtime.Pipeline`.

    python -m runtime translate BUNDLE "a small red circle" --num-samples 4 --seed 0 --out out.png
    python -m runtime translate BUNDLE --source-json '[{"color_red": 1, "shape_circle": 1, ...}]' --out out.png
    python -m runtime edit BUNDLE --image in.png --attributes-json attrs.json --set color_blue=1 \\
        --set color_red=0 --out edited.png
    python -m runtime check BUNDLE [--json]
    python -m runtime info BUNDLE [--json]
    python -m runtime serve ENGINES_DIR [--http-port 8000] [--grpc-port 8001] [--max-batch 64] ...
    python -m runtime app ENGINES_DIR [--port 7860] [--triton URL]     (a web page; needs the [app] extra)

translate writes a grid PNG (one row per source, one column per sample) when the bundle decodes
images, else the latents as .npy (or JSON on stdout without --out). --source-json takes JSON text or
a file: a list of vectors, or for bundles whose manifest has `attribute_names` a list of
{name: value} objects naming every attribute. edit needs an attribute bundle with a target encoder;
the input image's own attributes must be given with --attributes-json (the runtime has no
attribute classifier); --set changes some of them. check exits 1 when a tolerance is missed.
serve runs every bundle under ENGINES_DIR on Triton Inference Server (PyTriton, `pip install '.[serve]'`)
until SIGINT/SIGTERM; models, inputs and outputs are in runtime/serve.py and docs/deploy.md.
Errors: one line on stderr, exit code 2 (bad input, a bundle that fails its checks, and anything
unexpected, which the line says is unexpected); arguments must be valid UTF-8.
See docs/failure-behaviour.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from runtime import app as app_cmd  # stdlib only; the web stack is imported when `app` runs
from runtime.manifest import PipelineError, default_temperature, read_manifest
from runtime.pipeline import BACKENDS, Pipeline


class CliError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):                 # one line, not argparse's usage block
        raise CliError(message)


def _json_arg(value: str):
    try:
        is_file = Path(value).is_file()
    except (OSError, ValueError):              # far too long, or a NUL: it is JSON text, not a path
        is_file = False
    try:
        return json.loads(Path(value).read_bytes().decode("utf-8") if is_file else value)
    except UnicodeDecodeError as e:
        raise CliError(f"{value} is not UTF-8 text: {e}") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise CliError(f"not valid JSON (nor a file): {str(e)[:200]}") from None


def _vector(item, names: list[str] | None, what: str) -> list[float]:
    if not isinstance(item, dict):
        return item
    if names is None:
        raise CliError(f"{what}: this bundle has no attribute_names; give plain vectors")
    unknown, missing = sorted(set(item) - set(names)), [n for n in names if n not in item]
    if unknown or missing:
        raise CliError(f"{what}: unknown attributes {unknown}, missing {missing} (attributes: {', '.join(names)})")
    bad = [n for n in names if isinstance(item[n], bool) or not isinstance(item[n], (int, float))]
    if bad:
        raise CliError(f"{what}: attribute '{bad[0]}' must be a number, got {item[bad[0]]!r}")
    return [float(item[n]) for n in names]


IMAGE_MODES = {1: "L", 3: "RGB"}


def _load_image(path: str, channels: int = 3) -> np.ndarray:
    """The image as uint8 (H, W, C); a file of another colour mode is refused, not converted."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.mode != IMAGE_MODES.get(channels):
                raise CliError(f"{path} is a {im.mode} image; this bundle needs {channels}-channel "
                               f"{IMAGE_MODES.get(channels, '')} images (convert it first)")
            x = np.asarray(im)
    except Image.DecompressionBombError as e:
        raise CliError(f"{path}: {e}") from None
    return x if x.ndim == 3 else x[..., None]


def _save_grid(images: np.ndarray, rows: int, path: str) -> None:
    from PIL import Image
    n, h, w, c = images.shape
    grid = images.reshape(rows, n // rows, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, n // rows * w, c)
    try:
        Image.fromarray(grid.squeeze(-1) if c == 1 else grid).save(path)
    except (ValueError, KeyError) as e:        # PIL: unknown extension / format
        raise CliError(f"cannot write {path} ({e}); give a .png file") from None


def _open(args) -> Pipeline:
    return Pipeline.load(args.bundle, backend=args.backend, device=args.device, precision=args.precision,
                         threads=args.threads, project=not getattr(args, "exact_condition", False))


def cmd_translate(args) -> int:
    p = _open(args)
    if p.source_kind == "text":
        source = args.texts or (_json_arg(args.source_json) if args.source_json else None)
        if not source:
            raise CliError("give the text(s) to translate, e.g. translate BUNDLE \"a small red circle\"")
    elif p.source_kind == "image":
        if not args.image:
            raise CliError("this bundle translates images: give --image FILE (repeatable)")
        images = [_load_image(f, p.manifest["source_image"]["channels"]) for f in args.image]
        if len({x.shape for x in images}) > 1:
            raise CliError(f"the --image files differ in size ({', '.join(str(x.shape) for x in images)})")
        source = np.stack(images)
    else:
        if args.texts or not args.source_json:
            raise CliError("this bundle takes condition vectors: give --source-json (a JSON list, or a file)")
        items = _json_arg(args.source_json)
        if not isinstance(items, list):
            raise CliError(f"--source-json must be a JSON list (one vector or {{attribute: value}} object per "
                           f"source), got a {type(items).__name__}; wrap it in [ ]")
        source = [_vector(it, p.attribute_names, "--source-json") for it in items]
    out = p.translate(source, num_samples=args.num_samples, seed=args.seed, temperature=args.temperature,
                      best_of=args.best_of, cycles=args.cycles)
    if p.has_decoder:
        if not args.out:
            raise CliError("this bundle makes images: give --out FILE.png")
        _save_grid(out, len(out) // args.num_samples, args.out)
    elif args.out:
        np.save(args.out, out, allow_pickle=False)
    else:
        print(json.dumps(out.tolist()))
    if args.out:
        print(f"wrote {args.out} ({len(out)} outputs)")
    return 0


def cmd_edit(args) -> int:
    p = _open(args)
    if not p.attribute_names:
        raise CliError("edit needs an attribute bundle (its manifest lists attribute_names)")
    if not args.attributes_json:
        raise CliError("give the input image's attributes with --attributes-json (JSON object or file)")
    source = np.asarray([_vector(_json_arg(args.attributes_json), p.attribute_names, "--attributes-json")],
                        dtype=np.float32)
    new = source.copy()
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in p.attribute_names:
            raise CliError(f"--set {item}: unknown attribute '{name}' (attributes: {', '.join(p.attribute_names)})")
        try:
            new[0, p.attribute_names.index(name)] = float(value)
        except ValueError:
            raise CliError(f"--set {item}: value must be a number") from None
    edited = p.transfer(_load_image(args.image, p.image_shape[2])[None], source, new)
    _save_grid(edited, 1, args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_check(args) -> int:
    report = _open(args).check(repeats=args.repeats)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    print(f"{report['bundle']}: {report['backend']} ({', '.join(report['providers'])}), "
          f"{report['files_verified']} files verified")
    for role, err in report["parity_max_rel"].items():
        print(f"  {role:15s} parity vs PyTorch {err:.2e}   batch-1 latency {report['latency_batch1_ms'][role]:.2f} ms")
    if "tokenizer_match" in report:
        print(f"  tokenizer ids match export: {report['tokenizer_match']}")
    print(f"  flow round trip {report['roundtrip_rel']:.2e}; NLL {report['nll_nats_per_dim']:.4f} nats/dim "
          f"(PyTorch {report['nll_pytorch']:.4f}, drift {report['nll_drift_nats_per_dim']:+.5f} nats/dim absolute) "
          f"on {report['validation_pairs']} pairs")
    print(f"  batch dependence ({report['precisions']['flow_inverse']} flow): max |dv| "
          f"{report['v_batch_dependence_max_abs']:.1e} (a row alone vs in batches of 8 and 64)")
    for role, err in report["fused_parity_max_rel"].items():
        print(f"  fused {role:9s} vs chained stages {err:.2e}")
    lat = report["latency_batch1_ms"]
    chained = lat.get("translate_chained_end_to_end")
    chained = f" (chained stages {chained:.2f} ms)" if chained is not None else ""
    print(f"  translate end to end, batch 1: {lat['translate_end_to_end']:.2f} ms{chained}")
    print("OK" if report["ok"] else "FAILED: " + "; ".join(report["failures"]))
    return 0 if report["ok"] else 1


def cmd_info(args) -> int:
    m = read_manifest(args.bundle)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"task {m['task']} (schema {m['schema_version']}): source {m['source_kind']} {m['cond_shape']} -> "
          f"latent {m['latent_dim']}")
    for name, st in sorted(m["stages"].items()):
        io = ", ".join(f"{t['name']}{t['shape']}:{t['dtype']}" for t in st["inputs"])
        out = ", ".join(f"{t['name']}{t['shape']}" for t in st["outputs"])
        print(f"  {name:24s} {st['file']:26s} ({io}) -> ({out})")
    print(f"  default temperature: {default_temperature(m):g}"
          + ("" if "sampling" in m else " (the manifest predates sampling.temperature)"))
    if {"best_of", "cycles"} & set(m.get("sampling", {})):
        print(f"  default selection: best of {m['sampling'].get('best_of', 1)}, "
              f"{m['sampling'].get('cycles', 0)} autoencoder cycle(s) (runtime/sampling.py)")
    for key in ("image", "tokenizer", "attribute_names", "split", "exporter", "tensorrt", "condition_bank"):
        if key in m:
            value = {k: v for k, v in m[key].items() if k not in ("files", "plans")} if isinstance(m[key], dict) \
                else m[key]
            print(f"  {key}: {json.dumps(value)}")
    print(f"  validation: {m['validation']['count']} pairs, {m['validation'].get('origin', '?')}")
    for w in m.get("warnings", []):
        print(f"  warning: {w}")
    int8 = m.get("checks", {}).get("int8") or {}
    if "refused" in int8:
        print(f"  int8: none ({int8['refused']})")
    for w in int8.get("warnings", []):
        print(f"  int8 warning: {w}")
    return 0


def cmd_serve(args) -> int:
    from runtime.serve import serve
    try:
        serve(args.engines_dir, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
              metrics_port=args.metrics_port, backend=args.backend, precision=args.precision,
              max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
              threads=args.threads, device=args.device, log_file=args.log_file,
              announce=lambda line: print(line, flush=True))
    except KeyboardInterrupt:             # Ctrl-C while the bundles load, before serve's own handlers exist
        return 130
    return 0


def _serve_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("engines_dir", help="folder of bundles (or one bundle); each is served as a model")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--backend", default="auto", choices=BACKENDS)
    s.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    s.add_argument("--device", type=int, default=0)
    s.add_argument("--max-batch", type=int, default=64, help="largest batch the dynamic batcher merges")
    s.add_argument("--max-queue-delay-us", type=int, default=2000, help="how long a request waits for others")
    s.add_argument("--instances", type=int, default=1, help="model instances (each its own Pipeline)")
    s.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per instance")
    s.add_argument("--log-file", help="tritonserver's log (default: printed with the server's output)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m runtime", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    cmds = {name: sub.add_parser(name) for name in ("translate", "edit", "check", "info")}
    for name, p in cmds.items():
        p.add_argument("bundle")
        if name != "info":
            p.add_argument("--backend", default="auto", choices=BACKENDS)
            p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
            p.add_argument("--device", type=int, default=0)
            p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    t = cmds["translate"]
    t.add_argument("texts", nargs="*", help="source texts (text bundles)")
    t.add_argument("--source-json", help="conditions: JSON list (or file) of vectors / {attribute: value}")
    t.add_argument("--image", action="append", help="source image file (image-source bundles), repeatable")
    t.add_argument("--num-samples", type=int, default=1)
    t.add_argument("--seed", type=int)
    t.add_argument("--temperature", type=float,
                   help="v ~ N(0, T² I) (default: the bundle's, manifest sampling.temperature; 1 samples the "
                        "trained density)")
    t.add_argument("--best-of", type=int, help="draws per sample, the most likely under τ kept (default: the "
                                               "bundle's, manifest sampling.best_of; 1 = plain sampling)")
    t.add_argument("--cycles", type=int, help="round trips z -> Θ(Λ(z)) before decoding (default: the bundle's, "
                                              "manifest sampling.cycles; 0 = none)")
    t.add_argument("--out", help="grid .png (image bundles) or .npy (latents)")
    t.add_argument("--exact-condition", action="store_true",
                   help="sample from the exact source embedding even where it lies off the training conditions "
                        "(default: projected onto the bundle's condition bank where it has one)")
    e = cmds["edit"]
    e.add_argument("--image", required=True)
    e.add_argument("--attributes-json", help="the input image's attributes: JSON object (or file)")
    e.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    e.add_argument("--out", required=True)
    cmds["check"].add_argument("--json", action="store_true")
    cmds["check"].add_argument("--repeats", type=int, default=20, help="timed runs per latency")
    cmds["info"].add_argument("--json", action="store_true")
    _serve_arguments(sub.add_parser("serve"))
    app_cmd.add_arguments(sub.add_parser("app", help="a web page to try every bundle under ENGINES_DIR"))
    return ap


def _check_utf8(argv: list[str]) -> None:
    """Python decodes undecodable argv bytes to lone surrogates; refuse them here, by position."""
    for i, arg in enumerate(argv):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as e:
            code = ord(arg[e.start])
            byte = f" (byte 0x{code - 0xDC00:02x})" if 0xDC80 <= code <= 0xDCFF else ""
            raise CliError(f"argument {i + 1} ({arg[:e.start][:40]!r}...) is not valid UTF-8{byte}; "
                           f"pass UTF-8 text and paths") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    commands = {"translate": cmd_translate, "edit": cmd_edit, "check": cmd_check, "info": cmd_info,
                "serve": cmd_serve, "app": app_cmd.run}
    argv = sys.argv[1:] if argv is None else argv
    with warnings.catch_warnings():
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        try:
            _check_utf8(argv)
            args = build_parser().parse_args(argv)
            return commands[args.command](args)
        except (CliError, PipelineError, OSError) as e:
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as e:                   # still one line: a traceback helps no user of the CLI
            print(f"error: unexpected {type(e).__name__}: {_one_line(e)[:500]} (please report this with the "
                  f"command that caused it)", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
