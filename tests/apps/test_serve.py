"""The web page (``python -m hfa_jax.serve``): through Gradio's own Python client against a server
on 127.0.0.1, and in a real headless Chromium (the system's, driven by Playwright) as a person
would use it: upload an mp4, wait for the translation, see the alignment image; the page fetches
nothing from outside this machine."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

# One xdist worker runs the application tests: they share the session's trained model.
pytestmark = pytest.mark.xdist_group("apps")

pytest.importorskip("gradio", reason='the web page needs the [app] extra: pip install -e ".[app]"')

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_url(translator, encoded):
    from hfa_jax import serve

    # the session's Translator (the export round trip is tested apart): its programs are compiled
    app = serve.build_app(translator, examples=encoded["mp4"][:2])
    _, url = serve.launch(app, _free_port(), block=False)
    yield url
    app.close()


def test_page_through_the_gradio_client(page_url, tmp_path, translator, encoded):
    from gradio_client import Client, handle_file

    client = Client(page_url, verbose=False)
    text, strip, alignment, timeline, info = client.predict(handle_file(encoded["mp4"][1]), api_name="/translate")
    assert text == translator([encoded["mp4"][1]])[0]
    for img in (strip, alignment, timeline):
        assert img and os.path.getsize(img) > 1000
    assert "**Time (s):**" in info and "total" in info and "pseudo-gloss head" not in info
    bad = tmp_path / "holiday.mp4"
    bad.write_text("not a video at all")
    text, strip, alignment, timeline, info = client.predict(handle_file(str(bad)), api_name="/translate")
    assert text == "" and alignment is None
    assert info.startswith("**Could not translate this file.**") and "not a video file" in info
    assert "Traceback" not in info


def test_page_without_pseudo_gloss_head_says_so(translator, encoded):
    from hfa_jax import serve

    head, translator.bundle.pg_head = translator.bundle.pg_head, None
    try:
        text, _, alignment, timeline, info = serve.translate_for_page(translator, encoded["mp4"][0])
    finally:
        translator.bundle.pg_head = head
    assert text and alignment is not None and timeline is None and serve.NO_HEAD in info


@pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (apt-get install chromium); .ci/run installs it")
def test_page_in_headless_chromium(page_url, encoded, translator, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the [test] extra)")
    want = translator([encoded["mp4"][2]])[0]
    outside = []
    with sync_api.sync_playwright() as p:
        # a fresh profile; Playwright never downloads a browser: it drives the system's
        browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       headless=True, args=CHROMIUM_FLAGS,
                                                       viewport={"width": 1280, "height": 1400})
        try:
            page = browser.new_page()
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
                ("http://127.0.0.1", "http://localhost", "data:", "blob:")) else None)
            page.goto(page_url, wait_until="networkidle", timeout=60_000)
            page.locator("#video input[type=file]").set_input_files(encoded["mp4"][2])
            box = page.locator("#translation textarea")
            page.wait_for_function("(w) => document.querySelector('#translation textarea').value === w", arg=want,
                                   timeout=120_000)
            assert box.input_value() == want
            img = page.locator("#alignment img")
            img.wait_for(state="visible", timeout=30_000)
            assert img.evaluate("i => i.naturalWidth") > 400
            page.wait_for_timeout(500)
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("HFA_SCREENSHOT_DIR"):  # refresh docs/images/serve.png
                shutil.copy(shot, os.path.join(os.environ["HFA_SCREENSHOT_DIR"], "serve.png"))
        finally:
            browser.close()
    assert outside == [], outside   # fully offline: no fonts, scripts or analytics from outside
