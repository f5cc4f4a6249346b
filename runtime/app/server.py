"""The page's web side: FastAPI routes over `engines.LocalEngine` / `engines.TritonEngine`.

    GET  /                       the page (static/index.html, app.js, app.css)
    GET  /api/bundles            every bundle: panels, controls, examples (describe.describe)
    POST /api/{task}/sample      JSON {sources, num_samples, seed, temperature} -> PNGs (or latents); temperature
                                 left out: the bundle's default (its manifest's sampling.temperature)
    POST /api/{task}/edit        form: image file, source, new_source (JSON) -> input, reconstruction, edited
    POST /api/{task}/transfer    form: image_a, image_b, source_a, source_b -> 2x2 grid

Every error answers JSON {"error": one line} (400 bad input, 404 unknown bundle, 413 too large, 500 bug);
the server keeps serving. Uploads: the whole request is capped (BodyLimit) before it is parsed; the
multipart parser keeps small files in memory and spools larger ones to the system temp folder, deleted
when the request ends. Nothing else is written anywhere.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from runtime.app.describe import describe, read_source
from runtime.images import fit_image
from runtime.manifest import PipelineError

STATIC = Path(__file__).parent / "static"
MAX_SAMPLES, MAX_ROWS, MAX_SEED = 16, 64, 2**63 - 1
log = logging.getLogger("runtime.app")


class TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse a request body over max_bytes (413) by its Content-Length, or while it streams."""

    def __init__(self, app, max_mb: float):
        self.app, self.max_mb, self.max_bytes = app, max_mb, int(max_mb * 2**20)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send, int(length), pending=True)
        seen, started, pending = 0, False, True

        async def counted():
            nonlocal seen, pending
            message = await receive()
            seen += len(message.get("body", b""))
            pending = message["type"] == "http.request" and message.get("more_body", False)
            if seen > self.max_bytes:
                raise TooLarge
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)
        try:
            await self.app(scope, counted, watched)
        except TooLarge:
            if not started:
                await self._refuse(scope, receive, send, seen, pending)

    async def _refuse(self, scope, receive, send, size: int, pending: bool):
        more = pending
        while more:                  # read the rest and drop it, so the client gets the answer, not a reset
            message = await receive()
            more = message.get("more_body", False) and message["type"] == "http.request"
        await JSONResponse({"error": f"upload too large ({size / 2**20:.1f} MB); the limit is {self.max_mb:g} MB "
                                     f"(start the page with --max-upload-mb to change it)"}, 413)(scope, receive, send)


class SampleRequest(BaseModel):
    sources: list
    num_samples: int = 1
    seed: int = 0
    temperature: float | None = None         # None: the bundle's default (manifest sampling.temperature)


def png_url(image: np.ndarray) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _json_field(text, what: str):
    if not isinstance(text, str):
        raise PipelineError(f"{what} must be a JSON text field, not a file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PipelineError(f"{what} is not valid JSON: {e}") from None


def create_app(engine, bundles: dict[str, Path], manifests: dict[str, dict], max_upload_mb: float = 8.0,
               preload: bool = True) -> FastAPI:
    """The FastAPI app for bundles {task: folder} with their manifests; engine answers the calls.
    preload opens every bundle now, so a broken one shows its error on the page instead of mid-request."""
    app = FastAPI(title="net2net translators", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_mb=max_upload_mb)
    views = {}
    for task, path in bundles.items():
        if isinstance(manifests[task], PipelineError):
            views[task] = {"task": task, "warnings": [], "error": str(manifests[task])}
            continue
        views[task] = describe(task, path, manifests[task])
        try:
            views[task]["backend"] = engine.describe_backend(task) if preload else engine.name
        except PipelineError as e:
            views[task]["error"] = str(e)

    def view(task: str) -> dict:
        if task not in views:
            raise PipelineError(f"no bundle named '{task}' (bundles: {', '.join(views)})")
        if "error" in views[task]:
            raise PipelineError(f"{task} could not be opened: {views[task]['error']}")
        return views[task]

    async def read_upload(upload, d: dict, what: str) -> np.ndarray:
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise PipelineError(f"choose an image file for {what}")
        data = await upload.read()
        if not data:
            raise PipelineError(f"{what} ({upload.filename}) is an empty file")
        return await run_in_threadpool(fit_image, data, d["image"][:2], d["image"][2],
                                       name=f"{what} ({upload.filename})")

    @app.exception_handler(PipelineError)
    async def bad_input(request: Request, e: PipelineError):
        return JSONResponse({"error": str(e)}, status_code=404 if str(e).startswith("no bundle named") else 400)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse({"error": f"bad request: {where or 'body'}: {first.get('msg')}"}, status_code=400)

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):
        log.exception("request %s failed", request.url.path)
        first = (str(e).strip().splitlines() or [""])[0]
        return JSONResponse({"error": f"internal error ({type(e).__name__}: {first}); the server log has the "
                                      f"details"}, status_code=500)

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/bundles")
    def list_bundles():
        return {"engine": engine.name, "bundles": list(views.values()), "max_upload_mb": max_upload_mb}

    @app.post("/api/{task}/sample")
    def sample(task: str, req: SampleRequest):
        d = view(task)
        if not 1 <= req.num_samples <= MAX_SAMPLES:
            raise PipelineError(f"number of samples must be 1 to {MAX_SAMPLES}, got {req.num_samples}")
        if not req.sources:
            raise PipelineError("give at least one source" + (" (a caption)" if d["source_kind"] == "text" else ""))
        if len(req.sources) * req.num_samples > MAX_ROWS:
            raise PipelineError(f"{len(req.sources)} sources x {req.num_samples} samples is more than "
                                f"{MAX_ROWS} images; ask for fewer")
        if not 0 <= req.seed <= MAX_SEED - MAX_ROWS:
            raise PipelineError(f"seed must be an integer from 0 to {MAX_SEED - MAX_ROWS}, got {req.seed}")
        temperature = d["temperature"] if req.temperature is None else req.temperature
        if not (np.isfinite(temperature) and 0 < temperature <= 10):
            raise PipelineError(f"temperature must be > 0 and <= 10, got {temperature}")
        rows = [read_source(d, s, f"source {i + 1}" if len(req.sources) > 1 else "the source")
                for i, s in enumerate(req.sources)]
        sources = [r for r in rows for _ in range(req.num_samples)]
        seeds = [req.seed + k for k in range(len(sources))]     # sample k alone: translate --seed seed+k
        if d["source_kind"] == "vector":
            sources = np.stack(sources)
        t = time.perf_counter()
        out = engine.sample(task, sources, seeds, temperature)
        latency = (time.perf_counter() - t) * 1e3
        result = {"rows": len(rows), "cols": req.num_samples, "seeds": seeds, "temperature": temperature,
                  "latency_ms": latency}
        if d["has_decoder"]:
            result["images"] = [png_url(x) for x in out]
        else:
            result["latents"] = np.asarray(out, np.float64).round(6).tolist()
        return result

    def editable(task: str, what: str) -> dict:
        d = view(task)
        if not d["can_edit"]:
            raise PipelineError(f"{task} cannot {what} (it needs a target encoder and a decoder)")
        return d

    @app.post("/api/{task}/edit")
    async def edit(task: str, request: Request):
        d = editable(task, "edit images")
        form = await request.form()
        image = await read_upload(form.get("image"), d, "the image")
        src = read_source(d, _json_field(form.get("source", ""), "source"), "the image's description")
        new = read_source(d, _json_field(form.get("new_source", ""), "new_source"), "the change")
        srcs = [src, src] if d["source_kind"] == "text" else np.stack([src, src])
        news = [src, new] if d["source_kind"] == "text" else np.stack([src, new])
        t = time.perf_counter()
        recon, edited = await run_in_threadpool(engine.transfer, task, np.stack([image, image]), srcs, news)
        latency = (time.perf_counter() - t) * 1e3
        return {"input": png_url(image), "reconstruction": png_url(recon), "edited": png_url(edited),
                "latency_ms": latency}

    @app.post("/api/{task}/transfer")
    async def transfer(task: str, request: Request):
        d = editable(task, "transfer between images")
        form = await request.form()
        images = np.stack([await read_upload(form.get(f"image_{k}"), d, f"image {k.upper()}") for k in "ab"])
        srcs = [read_source(d, _json_field(form.get(f"source_{k}", ""), f"source_{k}"),
                            f"the description of image {k.upper()}") for k in "ab"]
        if d["source_kind"] == "vector":
            srcs = list(np.stack(srcs))
        # cell (i, j): image i's residual (what its source leaves unexplained) under source j
        t = time.perf_counter()
        out = await run_in_threadpool(engine.transfer, task, images[[0, 0, 1, 1]], [srcs[i] for i in (0, 0, 1, 1)],
                              [srcs[j] for j in (0, 1, 0, 1)])
        latency = (time.perf_counter() - t) * 1e3
        return {"inputs": [png_url(x) for x in images], "grid": [[png_url(out[0]), png_url(out[1])],
                                                                 [png_url(out[2]), png_url(out[3])]],
                "latency_ms": latency}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.views = views
    return app
