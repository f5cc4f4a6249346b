"""Start `python -m runtime app` and drive it in headless Chromium: docs/app.png, and the helpers the
browser test (tests/test_app_browser.py) uses.

    python scripts/app_screenshot.py engines docs/app.png [--task attributes]

Chromium comes from Debian's `chromium` package (apt-get install chromium) and is driven by
Playwright's Python API (`pip install playwright`); Playwright's own browser download is never used,
so it works offline. The app runs on loopback on a free port and is ended by its PID.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(engines: Path, *extra: str, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """(process, url) of `python -m runtime app ENGINES` on 127.0.0.1, once /api/bundles answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "app", str(engines), "--port", str(port), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "api/bundles", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    stop_app(proc)
    raise RuntimeError(f"the app did not answer on {url} within {timeout:.0f} s")


def stop_app(proc: subprocess.Popen) -> str:
    """End the app by its PID (SIGINT, as Ctrl+C; then SIGKILL); its output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read()


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def generate(page, task: str, button: str = "sample"):
    """Click a panel's button on the task's tab and wait for its latency (or error) line."""
    page.click(f"#tabs button[data-task='{task}']")
    from playwright.sync_api import expect
    panel = page.locator(f"#bundle-{task} .panel", has=page.locator(f"button[data-action='{button}']"))
    answers = int(panel.get_attribute("data-answers") or 0)
    panel.locator(f"button[data-action='{button}']").click()
    expect(panel).to_have_attribute("data-answers", str(answers + 1), timeout=120_000)
    return panel


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engines")
    ap.add_argument("out")
    ap.add_argument("--task", default="attributes", help="the tab to show")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--caption", action="append", help="text bundles: the caption to sample (a second one: "
                    "the edit's target and image B's caption)")
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--triton", help="pass --triton URL to the app (a running python -m runtime serve)")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright
    proc, url = start_app(Path(args.engines), *(["--triton", args.triton] if args.triton else []))
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page(viewport={"width": args.width, "height": 800}, device_scale_factor=1)
            page.goto(url + f"#{args.task}")
            page.wait_for_selector("body[data-ready='1']")
            tab = page.locator(f"#bundle-{args.task}")
            tab.locator("input[name=seed]").fill(str(args.seed))
            if args.caption:
                tab.locator("textarea[name=sample]").fill(args.caption[0])
            panel = generate(page, args.task)
            if tab.locator("button[data-action='edit']").count():    # sample 1 -> edit and A; another -> B
                panel.locator("button[data-use=edit]").first.click()
                panel.locator("button[data-use=a]").first.click()
                edit = tab.locator(".panel", has=page.locator("button[data-action='edit']"))
                for group in edit.locator("fieldset").nth(1).locator(".group").all()[:1]:
                    group.locator("input[type=radio]:not(:checked)").first.check()
                if args.caption and len(args.caption) > 1:
                    tab.locator("textarea[name=sample]").fill(args.caption[1])
                    edit.locator("input[name=new_source]").fill(args.caption[1])
                else:
                    for group in panel.locator(".group").all():
                        group.locator("input[type=radio]:not(:checked)").first.check()
                generate(page, args.task)
                panel.locator("button[data-use=b]").first.click()
                generate(page, args.task, "edit")
                generate(page, args.task, "transfer")
            page.evaluate("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
            page.mouse.move(0, 0)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        stop_app(proc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
