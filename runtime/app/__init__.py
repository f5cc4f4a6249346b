"""`python -m runtime app ENGINES_DIR`: a web page to try every bundle under ENGINES_DIR.

Needs the `[app]` extra (FastAPI, uvicorn, python-multipart); this module imports only the standard
library so `python -m runtime` and `import runtime` stay lean; the web stack is imported by `run`.
See docs/app.md.
"""
from __future__ import annotations

import argparse
import socket

from runtime.manifest import PipelineError


class AppError(PipelineError):
    """A problem starting the page; the CLI prints it as one line like any other input error."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Serve a page to try every bundle under ENGINES_DIR: samples from a caption or attributes, "
                     "edits of your own image, exemplar transfer, latents. Details: docs/app.md.")
    p.add_argument("engines_dir", metavar="ENGINES_DIR", help="folder of bundles (each a folder with manifest.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=7860, help="(default: 7860)")
    p.add_argument("--triton", metavar="URL", help="call a running `python -m runtime serve` at URL "
                   "(e.g. 127.0.0.1:8000) instead of running the bundles in this process")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--max-upload-mb", type=float, default=8.0,
                   help="largest request (uploads) accepted, in MB (default: 8)")


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise AppError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None


def run(args) -> int:
    try:
        import uvicorn

        from runtime.app.server import create_app
    except ImportError as e:
        raise AppError(f"the page needs the app extra ({e.name} is missing): pip install '.[app]'") from None
    from runtime.app.engines import open_engine
    if args.max_upload_mb <= 0:
        raise AppError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    _check_port(args.host, args.port)
    engine, bundles, manifests = open_engine(args.engines_dir, args.triton, backend=args.backend,
                                             precision=args.precision, device=args.device, threads=args.threads)
    app = create_app(engine, bundles, manifests, max_upload_mb=args.max_upload_mb)
    for task, view in app.state.views.items():
        print(f"  {task}: " + (f"NOT AVAILABLE: {view['error']}" if "error" in view else
                               f"{view['source_kind']} source, {view['backend']}"))
    print(f"serving {len(bundles)} bundle(s) on http://{args.host}:{args.port}  (Ctrl+C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
