"""The page in a real browser: `python -m runtime app` started on loopback as a subprocess, driven by
headless Chromium (Debian's `chromium`) through Playwright. Caption -> samples, an uploaded image's
attribute edit, a bad upload's message, an empty caption's message, and a screenshot."""
import base64
import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_export import ROOT, copy_bundle

from runtime import Pipeline
from runtime.images import fit_image

sys.path.insert(0, str(ROOT / "scripts"))
from app_screenshot import CHROMIUM, generate, launch_chromium, start_app, stop_app  # noqa: E402

if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install '.[app]'")
pytest.importorskip("fastapi", reason="the [app] extra is not installed: pip install '.[app]'")
from playwright.sync_api import sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def engines(bundles, tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    for task in ("attributes", "text2image"):
        copy_bundle(bundles.get(task), root / task)
    return root


@pytest.fixture(scope="module")
def app_url(engines):
    proc, url = start_app(engines, "--max-upload-mb", "1")
    yield url
    log = stop_app(proc)
    assert "Traceback" not in log, log                                  # every error was a handled one


@pytest.fixture(scope="module")
def page(app_url):
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(app_url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        yield page
        browser.close()
    assert not errors, errors                                           # no JavaScript exception on the page


def decoded(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def sources(locator) -> list[np.ndarray]:
    return [decoded(locator.nth(i).get_attribute("src")) for i in range(locator.count())]


def test_caption_gives_seeded_samples(page, engines):
    page.click("#tabs button[data-task='text2image']")
    page.locator("#bundle-text2image textarea[name=sample]").fill("a small blue square")
    page.locator("#bundle-text2image input[name=num_samples]").fill("3")
    page.locator("#bundle-text2image input[name=seed]").fill("7")
    page.evaluate("""() => { window.sawBusy = false;                 // record the busy state as it happens
        const panel = document.querySelector("#bundle-text2image .panel");
        new MutationObserver(() => { if (panel.classList.contains("busy") &&
            panel.querySelector("button[data-action=sample]").disabled) window.sawBusy = true; })
          .observe(panel, {attributes: true}); }""")
    panel = generate(page, "text2image")
    assert page.evaluate("window.sawBusy")
    assert "ms to compute" in panel.locator(".status").inner_text()
    images = sources(panel.locator(".result img"))
    p = Pipeline.load(engines / "text2image")
    assert len(images) == 3
    for k, image in enumerate(images):
        assert image.shape == (16, 16, 3)
        assert np.array_equal(image, p.translate(["a small blue square"], seed=7 + k)[0])
    assert panel.locator("button[data-action='sample']").is_enabled()          # busy state is over


def test_edit_an_uploaded_image(page, engines, tmp_path):
    p = Pipeline.load(engines / "attributes")
    red_circle = np.array([[1, 0, 1, 0, 0]], np.float32)
    upload = tmp_path / "my photo.jpg"
    Image.fromarray(p.translate(red_circle, seed=3)[0]).resize((90, 60), Image.BICUBIC).save(upload, quality=95)
    page.click("#tabs button[data-task='attributes']")
    edit = page.locator("#bundle-attributes .panel", has=page.locator("button[data-action='edit']"))
    edit.locator("input[type=file]").set_input_files(str(upload))
    shows, change = edit.locator("fieldset").nth(0), edit.locator("fieldset").nth(1)
    for box in (shows, change):
        box.locator("input[data-attr=color_red]").check()
        box.locator("input[data-attr=shape_circle]").check()
        box.locator("input[data-attr=size_big]").uncheck()
    change.locator("input[data-attr=color_blue]").check()                   # red -> blue, nothing else
    generate(page, "attributes", "edit")
    mine, recon, edited = sources(edit.locator(".result img"))
    fitted = fit_image(upload.read_bytes(), (16, 16))
    assert np.array_equal(mine, fitted)                                     # cropped and resized as documented
    ref = p.transfer(np.stack([fitted, fitted]), np.repeat(red_circle, 2, 0), np.array([[1, 0, 1, 0, 0],
                                                                                        [0, 1, 1, 0, 0]]))
    assert np.array_equal(recon, ref[0]) and np.array_equal(edited, ref[1])
    assert np.abs(edited.astype(int) - recon).sum() > 0                      # the colour change changed pixels
    change.locator("input[data-attr=color_red]").check()                    # undo the change: nothing moves
    generate(page, "attributes", "edit")
    _, recon2, edited2 = sources(edit.locator(".result img"))
    assert np.array_equal(recon2, edited2) and np.array_equal(recon2, recon)


def test_bad_input_shows_a_message_and_the_page_keeps_working(page, tmp_path):
    edit = page.locator("#bundle-attributes .panel", has=page.locator("button[data-action='edit']"))
    page.click("#tabs button[data-task='attributes']")
    (tmp_path / "notes.png").write_text("this is text, not a picture")
    edit.locator("input[type=file]").set_input_files(str(tmp_path / "notes.png"))
    generate(page, "attributes", "edit")
    assert "the image (notes.png) is not an image Pillow can read" in edit.locator(".status.error").inner_text()
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (3 * 2**20))                                   # over the app's --max-upload-mb 1
    edit.locator("input[type=file]").set_input_files(str(big))
    generate(page, "attributes", "edit")
    assert "upload too large (3.0 MB); the limit is 1 MB" in edit.locator(".status.error").inner_text()
    page.click("#tabs button[data-task='text2image']")
    page.locator("#bundle-text2image textarea[name=sample]").fill("   ")
    panel = generate(page, "text2image")
    assert "the source is empty; type a caption" in panel.locator(".status.error").inner_text()
    page.locator("#bundle-text2image textarea[name=sample]").fill("a red square")
    page.locator("#bundle-text2image input[name=num_samples]").fill("3")
    panel = generate(page, "text2image")                                   # the server still answers
    assert panel.locator(".status.latency").count() == 1 and panel.locator(".result img").count() == 3


def test_screenshot(page, tmp_path):
    generate(page, "attributes")
    out = tmp_path / "app.png"
    page.screenshot(path=str(out), full_page=True)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width == 1100 and im.height >= 900
    shutil.copy(out, tmp_path.parent / "app-browser-test.png")            # kept beside the test's folder
