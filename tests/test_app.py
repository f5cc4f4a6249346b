"""The page's API (`python -m runtime app`), in-process through Starlette's TestClient: every panel's call
gives exactly what runtime.Pipeline gives for the same seed, every bad input one clear message, and the
web stack stays out of `import runtime`. The real-browser test is test_app_browser.py."""
import base64
import io
import json
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_export import ATTRIBUTES, ROOT, copy_bundle

from runtime import Pipeline, PipelineError
from runtime.__main__ import main as cli
from runtime.images import fit_image

pytest.importorskip("fastapi", reason="the [app] extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from runtime.app.describe import attribute_groups  # noqa: E402
from runtime.app.engines import LocalEngine, TritonEngine, open_engine  # noqa: E402
from runtime.app.server import create_app  # noqa: E402

TASKS = ("attributes", "text2image", "features", "decoder_only")
_buf = io.BytesIO()
Image.new("RGB", (4, 4)).save(_buf, format="PNG")
TINY_PNG = _buf.getvalue()



@pytest.fixture(scope="module")
def engines(bundles, tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    for task in TASKS:
        copy_bundle(bundles.get(task), root / task)
    return root


def client_for(engines, **kwargs) -> TestClient:
    engine, paths, manifests = open_engine(engines, None)
    return TestClient(create_app(engine, paths, manifests, **kwargs), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(engines):
    return client_for(engines)


@pytest.fixture(scope="module")
def pipes(engines):
    return {t: Pipeline.load(engines / t) for t in ("attributes", "text2image", "features")}


def png(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def encoded(image: np.ndarray, fmt: str = "PNG", size: tuple[int, int] | None = None) -> bytes:
    im = Image.fromarray(image)
    im = im.resize(size, Image.NEAREST) if size else im
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def onehot(*names: str) -> dict:
    return {n: int(n in names) for n in ATTRIBUTES}


# ---- what the page shows -------------------------------------------------------------------------------

def test_bundle_listing_panels_and_attribute_groups(client):
    info = client.get("/api/bundles").json()
    views = {b["task"]: b for b in info["bundles"]}
    assert list(views) == sorted(TASKS) and info["engine"] == "in-process runtime.Pipeline"
    assert [(t, views[t]["has_decoder"], views[t]["can_edit"]) for t in sorted(TASKS)] == [
        ("attributes", True, True), ("decoder_only", True, False), ("features", False, False),
        ("text2image", True, True)]
    groups = views["attributes"]["attributes"]["groups"]
    assert [(g["name"], g["members"], g["one_hot"]) for g in groups] == [
        ("color", ["color_red", "color_blue"], True), ("shape", ["shape_circle", "shape_square"], True),
        ("size_big", ["size_big"], False)]
    assert views["text2image"]["example"] == "a small red circle" and views["attributes"]["image"] == [16, 16, 3]
    assert "random-init decoder" in views["decoder_only"]["warnings"][0]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_attribute_groups_follow_real_data():
    names = ["shape_circle", "shape_square", "size_large", "Wearing_Hat", "Wearing_Earrings"]
    rows = np.array([[1, 0, 1, 1, 1], [0, 1, 0, 0, 0]], np.float32)        # two hats and earrings at once
    assert [(g["name"], g["one_hot"]) for g in attribute_groups(names, rows)] == [
        ("shape", True), ("size_large", False), ("Wearing_Hat", False), ("Wearing_Earrings", False)]
    assert [(g["name"], g["one_hot"]) for g in attribute_groups(names, None)][-1] == ("Wearing", True)
    domains = attribute_groups(["flat", "textured"], np.array([[1, 0], [0, 1]], np.float32))
    assert [(g["members"], g["one_hot"]) for g in domains] == [(["flat", "textured"], True)]
    assert all(not g["one_hot"] for g in attribute_groups(["flat", "textured"], np.array([[1, 1], [0, 1.0]])))


# ---- every call against runtime.Pipeline --------------------------------------------------------------

def test_caption_samples_are_pipeline_translate_per_seed(client, pipes):
    captions = ["a small red circle", "two blue squares"]
    r = client.post("/api/text2image/sample", json={"sources": captions, "num_samples": 3, "seed": 5,
                                                    "temperature": 0.8})
    assert r.status_code == 200, r.text
    data = r.json()
    images = [png(u) for u in data["images"]]
    assert (data["rows"], data["cols"], data["seeds"]) == (2, 3, [5, 6, 7, 8, 9, 10]) and data["latency_ms"] > 0
    for k, image in enumerate(images):
        ref = pipes["text2image"].translate([captions[k // 3]], num_samples=1, seed=5 + k, temperature=0.8)[0]
        assert image.shape == (16, 16, 3) and np.array_equal(image, ref)
    again = client.post("/api/text2image/sample", json={"sources": captions[:1], "num_samples": 1, "seed": 5,
                                                        "temperature": 0.8}).json()
    assert again["images"][0] == data["images"][0]                     # a row never depends on the others
    assert not np.array_equal(images[0], images[1])


def test_attribute_samples_and_latents(client, pipes):
    r = client.post("/api/attributes/sample", json={"sources": [onehot("color_blue", "shape_square")],
                                                    "num_samples": 2, "seed": 0})
    cond = np.array([[0, 1, 0, 1, 0]], np.float32)
    for k, url in enumerate(r.json()["images"]):
        assert np.array_equal(png(url), pipes["attributes"].translate(cond, seed=k)[0])
    vectors = [[0.1, -0.2, 0.3, 0.0], [1, 2, 3, 4]]
    r = client.post("/api/features/sample", json={"sources": vectors, "num_samples": 2, "seed": 3})
    z = np.array(r.json()["latents"])
    assert z.shape == (4, 8) and "images" not in r.json()
    for k in range(4):
        ref = pipes["features"].translate(np.array(vectors[k // 2:k // 2 + 1]), seed=3 + k)[0]
        assert np.abs(z[k] - ref).max() <= 1e-6


def test_edit_an_uploaded_image_of_another_size_and_format(client, pipes):
    p = pipes["attributes"]
    sample = p.translate(np.array([[1, 0, 1, 0, 0]], np.float32), seed=4)[0]
    upload = encoded(sample, "JPEG", size=(64, 40))                    # wider than tall, JPEG
    form = {"source": json.dumps(onehot("color_red", "shape_circle")),
            "new_source": json.dumps(onehot("color_blue", "shape_circle"))}
    r = client.post("/api/attributes/edit", data=form, files={"image": ("photo.jpg", upload, "image/jpeg")})
    assert r.status_code == 200, r.text
    out = {k: png(r.json()[k]) for k in ("input", "reconstruction", "edited")}
    fitted = fit_image(upload, (16, 16))
    assert np.array_equal(out["input"], fitted)
    src, new = np.array([[1, 0, 1, 0, 0]] * 2, np.float32), np.array([[1, 0, 1, 0, 0], [0, 1, 1, 0, 0]], np.float32)
    ref = p.transfer(np.stack([fitted, fitted]), src, new)
    assert np.array_equal(out["reconstruction"], ref[0]) and np.array_equal(out["edited"], ref[1])
    assert not np.array_equal(out["edited"], out["reconstruction"])    # the change changed the image
    same = client.post("/api/attributes/edit", data={**form, "new_source": form["source"]},
                       files={"image": ("photo.jpg", upload, "image/jpeg")}).json()
    assert same["edited"] == same["reconstruction"]                     # and no change changes nothing


def test_text_edit_and_exemplar_transfer_grid(client, pipes):
    p = pipes["text2image"]
    a, b = p.translate(["a red square"], seed=1)[0], p.translate(["a blue circle"], seed=2)[0]
    files = {"image_a": ("a.png", encoded(a), "image/png"), "image_b": ("b.webp", encoded(b, "WEBP"), "image/webp")}
    r = client.post("/api/text2image/transfer", files=files,
                    data={"source_a": '"a red square"', "source_b": '"a blue circle"'})
    assert r.status_code == 200, r.text
    grid = [[png(u) for u in row] for row in r.json()["grid"]]
    images = np.stack([png(u) for u in r.json()["inputs"]])
    ref = p.transfer(images[[0, 0, 1, 1]], ["a red square"] * 2 + ["a blue circle"] * 2,
                     ["a red square", "a blue circle"] * 2)
    assert all(np.array_equal(grid[i][j], ref[2 * i + j]) for i in range(2) for j in range(2))
    r = client.post("/api/text2image/edit", files={"image": ("a.png", encoded(a), "image/png")},
                    data={"source": '"a red square"', "new_source": '"a green triangle"'})
    assert r.status_code == 200 and r.json()["edited"] != r.json()["reconstruction"]


# ---- bad input: one clear message, and the server keeps serving ------------------------------------------

@pytest.mark.parametrize("url, kwargs, status, msg", [
    ("/api/text2image/sample", {"json": {"sources": ["   "]}}, 400, "the source is empty; type a caption"),
    ("/api/text2image/sample", {"json": {"sources": ["x"], "num_samples": 0}}, 400, "number of samples must be"),
    ("/api/text2image/sample", {"json": {"sources": ["x"] * 5, "num_samples": 16}},
     400, "more than 64 images"),
    ("/api/text2image/sample", {"json": {"sources": ["x"], "temperature": 0}}, 400, "temperature must be > 0"),
    ("/api/text2image/sample", {"json": {"sources": ["x"], "seed": -1}}, 400, "seed must be an integer"),
    ("/api/text2image/sample", {"json": {"sources": ["x"], "seed": "abc"}}, 400, "bad request: seed"),
    ("/api/text2image/sample", {"content": b"not json", "headers": {"content-type": "application/json"}}, 400,
     "bad request"),
    ("/api/attributes/sample", {"json": {"sources": [{"color_red": 1}]}}, 400, "missing ['color_blue'"),
    ("/api/features/sample", {"json": {"sources": [[1, 2]]}}, 400, "must be a list of 4 numbers"),
    ("/api/nope/sample", {"json": {"sources": ["x"]}}, 404, "no bundle named 'nope'"),
    ("/api/features/edit", {"data": {}}, 400, "features cannot edit images"),
    ("/api/attributes/edit", {"data": {"source": "{}", "new_source": "{}"}}, 400, "choose an image file"),
    ("/api/attributes/edit", {"files": {"image": ("notes.txt", b"hello, not an image", "text/plain")},
                              "data": {"source": "{}", "new_source": "{}"}}, 400,
     "the image (notes.txt) is not an image Pillow can read"),
    ("/api/attributes/edit", {"files": {"image": ("cut.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png")},
                              "data": {"source": "{}", "new_source": "{}"}}, 400, "cut.png"),
    ("/api/attributes/edit", {"files": {"image": ("e.png", b"", "image/png")}}, 400, "is an empty file"),
    ("/api/attributes/edit", {"files": {"image": ("a.png", TINY_PNG, "image/png")}, "data": {"source": "{oops"}}, 400,
     "source is not valid JSON"),
])
def test_bad_requests_get_one_clear_message(client, url, kwargs, status, msg):
    r = client.post(url, **kwargs)
    assert r.status_code == status and msg in r.json()["error"], r.text
    assert "\n" not in r.json()["error"]
    assert client.post("/api/features/sample", json={"sources": [[0, 0, 0, 0]]}).status_code == 200


def test_a_broken_bundle_is_reported_and_the_others_work(engines, tmp_path):
    root = tmp_path / "engines"
    copy_bundle(engines / "features", root / "features")
    copy_bundle(engines / "attributes", root / "broken")
    (root / "broken" / "flow_forward.onnx").write_bytes(b"tampered")
    copy_bundle(engines / "features", root / "unreadable")
    (root / "unreadable" / "manifest.json").write_text("{not json")
    c = client_for(root)
    views = {b["task"]: b for b in c.get("/api/bundles").json()["bundles"]}
    assert "flow_forward.onnx' fails its SHA-256" in views["broken"]["error"] and "error" not in views["features"]
    assert "manifest.json" in views["unreadable"]["error"]
    r = c.post("/api/broken/sample", json={"sources": [onehot("color_red")]})
    assert r.status_code == 400 and r.json()["error"].startswith("broken could not be opened")
    assert c.post("/api/features/sample", json={"sources": [[0, 0, 0, 0]]}).status_code == 200


def test_uploads_are_size_limited(engines):
    c = client_for(engines, max_upload_mb=0.05)
    big = encoded(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))   # ~120 KB of noise
    r = c.post("/api/attributes/edit", files={"image": ("big.png", big, "image/png")},
               data={"source": "{}", "new_source": "{}"})
    assert r.status_code == 413 and r.json()["error"].startswith("upload too large (0.1 MB); the limit is 0.05 MB")

    def chunks():                                    # no Content-Length: counted while it streams
        for _ in range(8):
            yield b"x" * 10_000
    r = c.post("/api/attributes/edit", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "upload too large" in r.json()["error"]
    assert c.post("/api/features/sample", json={"sources": [[0, 0, 0, 0]]}).status_code == 200


def test_fit_image_crops_the_centre_and_reads_any_mode(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = (200, 30, 30)                   # the centre square is red, the sides black
    out = fit_image(encoded(wide), (8, 8))
    assert out.shape == (8, 8, 3) and (np.abs(out[:, 1:-1].astype(int) - (200, 30, 30)) <= 3).all()
    assert out[:, [0, -1], 0].min() > 150                       # bicubic: the black sides bleed in a little
    Image.fromarray(wide).convert("P").save(tmp_path / "p.gif")
    Image.fromarray(wide).convert("LA").save(tmp_path / "la.png")
    for path in (tmp_path / "p.gif", tmp_path / "la.png"):
        assert fit_image(path, (4, 4)).shape == (4, 4, 3)
    assert fit_image(tmp_path / "la.png", (4, 4), channels=1).shape == (4, 4, 1)
    clear = np.zeros((8, 8, 4), np.uint8)                 # fully transparent: white, not black
    assert (fit_image(encoded(clear), (4, 4)) == 255).all()
    with pytest.raises(PipelineError, match="more than the 0 megapixels"):
        import runtime.images
        old, runtime.images.MAX_PIXELS = runtime.images.MAX_PIXELS, 100
        try:
            fit_image(encoded(wide), (4, 4))
        finally:
            runtime.images.MAX_PIXELS = old


# ---- the command ----------------------------------------------------------------------------------------

def test_cli_app_errors_are_one_line(engines, tmp_path, capsys):
    assert cli(["app", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: no bundles under {tmp_path}")
    assert cli(["app", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'missing'} is not a folder")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert cli(["app", str(engines), "--port", str(s.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot listen on 127.0.0.1:" in err[0] and "pick another --port" in err[0]
    with socket.socket() as s:                       # a free port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli(["app", str(engines), "--triton", f"127.0.0.1:{port}"]) == 2
    assert "cannot reach Triton at 127.0.0.1:" in capsys.readouterr().err


def test_runtime_import_stays_free_of_the_web_stack():
    code = ("import sys, runtime, runtime.__main__\n"
            "bad = [m for m in ('fastapi', 'uvicorn', 'starlette', 'multipart', 'tritonclient', 'torch')"
            " if m in sys.modules]\nassert not bad, bad\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_without_the_app_extra_the_command_says_what_to_install(engines):
    block = ("import sys\nclass _Block:\n    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] in ('fastapi', 'uvicorn'):\n"
             "            raise ImportError('blocked', name=name.split('.')[0])\n"
             "sys.meta_path.insert(0, _Block())\n")
    code = block + f"from runtime.__main__ import main\nsys.exit(main(['app', {str(engines)!r}, '--port', '0']))\n"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: the page needs the app extra (uvicorn is missing): pip install '.[app]'"], p.stderr


def test_triton_engine_unreachable_is_one_message():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pytest.importorskip("tritonclient.http")
    with pytest.raises(PipelineError, match=f"cannot reach Triton at 127.0.0.1:{port}"):
        TritonEngine(f"127.0.0.1:{port}", {})


def test_local_engine_loads_each_bundle_once(engines):
    engine = LocalEngine({"features": engines / "features"})
    assert engine.pipeline("features") is engine.pipeline("features")


@pytest.mark.slow
def test_triton_engine_matches_in_process(engines, tmp_path):
    """--triton against a real `python -m runtime serve` (issue 16): the same bytes as the in-process engine."""
    import importlib.util
    import os
    import time
    if importlib.util.find_spec("runtime.serve") is None or importlib.util.find_spec("pytriton") is None:
        pytest.skip("runtime serve (issue 16) or nvidia-pytriton is not in this checkout")
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    serve_dir = tmp_path / "engines"
    for task in ("attributes", "text2image", "features"):
        copy_bundle(engines / task, serve_dir / task)
    env = {**os.environ,                 # serve picks a short PYTRITON_HOME itself (unix socket paths are short)
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", str(serve_dir), "--http-port", str(ports[0]),
                             "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import tritonclient.http as http
        client, deadline = http.InferenceServerClient(f"127.0.0.1:{ports[0]}"), time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if all(client.is_model_ready(m) for m in ("attributes_edit", "text2image", "features")):
                    break
            except Exception:                        # not listening yet
                pass
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
        engine, _, manifests = open_engine(serve_dir, f"127.0.0.1:{ports[0]}")
        local, _, _ = open_engine(serve_dir, None)
        for task, sources in (("text2image", ["a red square", "two blue circles"]),
                              ("attributes", np.eye(5, dtype=np.float32)[[0, 3]]),
                              ("features", np.array([[0.1, 0.2, 0.3, 0.4]] * 2, np.float32))):
            assert np.array_equal(engine.sample(task, sources, [4, 9], 0.7), local.sample(task, sources, [4, 9], 0.7))
        x = local.sample("attributes", np.eye(5, dtype=np.float32)[[0, 0]], [1, 2], 1.0)
        src, new = np.eye(5, dtype=np.float32)[[0, 0]], np.eye(5, dtype=np.float32)[[0, 1]]
        assert np.array_equal(engine.transfer("attributes", x, src, new), local.transfer("attributes", x, src, new))
        with pytest.raises(PipelineError, match="Triton \\(text2image\\): .*empty"):
            engine.sample("text2image", [" "], [0], 1.0)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
