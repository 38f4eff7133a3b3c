"""End to end: `styleforge serve` on 127.0.0.1 with a tiny model, driven by a real headless Chromium (Playwright).

The browser is Debian's chromium (Playwright's own download needs the network); where it is missing the test
installs it when it runs as root with apt-get, and otherwise skips saying why. Set STYLEFORGE_WEB_SCREENSHOT=PATH
to also save a screenshot of the page (the README's picture comes from here).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the web page needs gradio (pip install 'styleforge[web]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip install 'styleforge[test]')")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
pytestmark = pytest.mark.slow


def chromium_path() -> str:
    """Debian's chromium, installed here if missing and allowed; otherwise the test is skipped with the reason."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no chromium found and this machine cannot install it (needs root and apt-get: "
                    "apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, capture_output=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"no chromium found and `apt-get install chromium` failed ({type(e).__name__})")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("`apt-get install chromium` installed no chromium executable")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from styleforge.testing import save_tiny_model

    tmp = tmp_path_factory.mktemp("web")
    model = save_tiny_model(tmp / "tiny", "sd1")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp / "serve.log", "w")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "styleforge.cli.main", "serve", "--port", str(port), "--model",
                             str(model), "--workdir", str(tmp / "work")], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"styleforge serve exited: {(tmp / 'serve.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - started > 180:
                raise AssertionError("the page did not answer within 180 s")
            time.sleep(0.3)
        yield {"url": url, "log": tmp / "serve.log", "proc": proc, "tmp": tmp, "startup_s": time.monotonic() - started}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def page(server):
    executable = chromium_path()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(60_000)
        page.goto(server["url"])
        page.wait_for_selector("#tab-region", state="attached")
        yield page
        browser.close()


def draw_strokes(page, canvas_selector: str) -> None:
    """Paint two strokes across the lower middle of the canvas with the mouse (press, drag, release).

    Few mouse events: each one redraws the canvas, slow in a software-rendered headless browser."""
    page.get_by_role("button", name="Brush").first.click()
    canvas = page.locator(canvas_selector).first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.75
    for dy in (0, 14):
        page.mouse.move(x0, y0 + dy)
        page.mouse.down()
        for i in range(1, 4):
            page.mouse.move(x0 + i * box["width"] * 0.1, y0 + dy)
        page.mouse.up()


def result_command(page, tab: str) -> str:
    return page.locator(f"#{tab} .sf-command textarea").input_value()


def wait_for_new_command(page, tab: str, before: str, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = result_command(page, tab)
        if now and now != before:
            return now
        time.sleep(0.2)
    raise AssertionError(f"no new result on {tab} within {timeout_s} s")


def test_region_tab_restyles_the_examples_with_a_painted_mask(page, server, tmp_path):
    from styleforge.io import read_metadata

    page.get_by_text("landscape + coffee: paint the region").click()  # the first example
    page.wait_for_selector("#region-style-1 img")
    draw_strokes(page, "#tab-region canvas")
    assert page.locator("#tab-region").get_by_label("--paste-back").is_checked()  # the command's default
    started = time.monotonic()
    page.locator("#tab-region .sf-run").click()
    command = wait_for_new_command(page, "tab-region", "")
    round_trip = time.monotonic() - started
    assert command.startswith("styleforge region apply ") and "--mask mask1.png" in command and "paste-back" not in command
    assert "--style style_coffee.png" in command and "--content=content.png" in command
    page.wait_for_selector("#tab-region .sf-result img")
    assert page.locator("#tab-region .sf-result img").count() >= 2  # the result and its strip
    # the download link serves the command's own PNG, with its metadata
    links = [a.get_attribute("href") for a in page.locator("#tab-region .sf-files a[href]").all()]
    href = next(h for h in links if h.split("?")[0].endswith("/result.png"))
    response = page.request.get(href)
    assert response.ok
    (tmp_path / "download.png").write_bytes(response.body())
    meta = read_metadata(tmp_path / "download.png")
    assert meta["method"] == "region" and Path(meta["style"][0]).name == "style_coffee.png"
    assert meta["mask"] and Path(meta["mask"][0]).name == "mask1.png"
    # the painted mask is what went in: white inside the strokes, black elsewhere, the content's size
    masks = list((server["tmp"] / "work").rglob("mask1.png"))
    assert masks
    from PIL import Image
    import numpy as np

    mask = np.asarray(Image.open(masks[-1]))
    assert mask.shape[:2] == Image.open(EXAMPLES / "content_landscape.png").size[::-1]
    assert 0.005 < (mask > 0).mean() < 0.5
    print(f"\nregion round trip in the browser: {round_trip:.2f} s; serve start to answering page: "
          f"{server['startup_s']:.1f} s")
    shot = os.environ.get("STYLEFORGE_WEB_SCREENSHOT")
    if shot:
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=shot, full_page=True)
    print(f"region test body: {time.monotonic() - started:.1f} s after Run")


def test_corrupt_upload_is_one_message_and_the_next_request_works(page, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    page.get_by_role("tab", name="Region").click()
    before = result_command(page, "tab-region")
    page.locator("#region-style-1 button[aria-label='Remove Image']").first.click()
    page.locator("#region-style-1 input[type=file]").set_input_files(str(bad))
    toast = page.locator(".toast-body").filter(has_text="broken.png").first
    toast.wait_for()  # refused on upload, with the loader's message
    text = toast.inner_text()
    assert "truncated or corrupt" in text and "Traceback" not in text
    assert page.locator("#region-style-1 img").count() == 0  # the slot was emptied
    page.locator("#tab-region .sf-run").click()  # no style now: the page says so, the server stays up
    page.locator(".toast-body").filter(has_text="style image").first.wait_for()
    # a good upload in the same slot runs again
    page.locator("#region-style-1 input[type=file]").set_input_files(str(EXAMPLES / "style_astronaut.png"))
    page.wait_for_selector("#region-style-1 img")
    page.locator("#tab-region .sf-run").click()
    command = wait_for_new_command(page, "tab-region", before)
    assert "--style style_astronaut.png" in command


def test_progress_bar_follows_a_diffusion_run(page):
    page.get_by_role("tab", name="Translate").click()
    page.locator("#translate-image input[type=file]").set_input_files(str(EXAMPLES / "content_landscape.png"))
    page.wait_for_selector("#translate-image img")
    page.locator("#translate-source input, #translate-source textarea").first.fill("cat")
    page.locator("#translate-target input, #translate-target textarea").first.fill("dog")
    page.locator("#translate-caption input, #translate-caption textarea").first.fill("a photo of a cat")
    # long enough (a few seconds) for Gradio's throttled progress updates to reach the page even on a quiet machine
    page.locator("#translate-steps input").first.fill("100")
    page.locator("#tab-translate").get_by_text("Advanced (the command's other options").click()
    page.locator("#tab-translate #opt-size input").first.fill("32")
    page.locator("#tab-translate #opt-reg_steps input").first.fill("0")
    page.locator("#tab-translate #opt-sentence_source input").first.click()
    page.get_by_role("option", name="single").click()
    page.locator("#tab-translate .sf-run").click()
    bar = page.locator("#tab-translate .progress-bar").first
    bar.wait_for(state="attached", timeout=120_000)
    command = wait_for_new_command(page, "tab-translate", "", timeout_s=300)
    assert command.startswith("styleforge translate content_landscape.png ") and "--steps=100" in command.replace(
        "--num-inference-steps", "--steps")
    page.wait_for_selector("#tab-translate .sf-result img")
