"""The Live tab in a real browser: the system's headless Chromium (driven by Playwright, never a
downloaded browser) with its fake camera playing SynthSign clips joined by rests (a y4m file
written here), streamed to the page; the test waits for the transcript to show the first clip's
sentence, then saves the transcript and draws the last segment's alignment. Bounded: at most
~2 minutes of streaming; skipped where Chromium is missing."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytestmark = pytest.mark.xdist_group("apps")

pytest.importorskip("gradio", reason='the web page needs the [app] extra: pip install -e ".[app]"')

from tests.apps.test_live import make_stream  # noqa: E402
from tests.apps import fixtures as fx  # noqa: E402
from tests.apps.test_serve import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402

STREAM_TIMEOUT_MS = 120_000


def write_y4m(path: str, frames: list[np.ndarray], fps: int = 25) -> str:
    """RGB frames ``[H, W, 3] uint8`` (H and W even) -> a YUV4MPEG2 4:2:0 file (full-range
    BT.601 colours), the format of Chromium's ``--use-file-for-fake-video-capture``."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for fr in frames:
            x = fr.astype(np.float32)
            y = x @ np.float32([0.299, 0.587, 0.114])
            u = x @ np.float32([-0.168736, -0.331264, 0.5]) + 128
            v = x @ np.float32([0.5, -0.418688, -0.081312]) + 128
            f.write(b"FRAME\n")
            for c in (y, u.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)), v.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))):
                f.write(np.clip(np.round(c), 0, 255).astype(np.uint8).tobytes())
    return path


@pytest.mark.slow  # a real browser and a 2-minute bound; kept out of the 15-minute first command
@pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (apt-get install chromium); .ci/run installs it")
def test_live_tab_with_a_fake_camera(translator, clips, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the [test] extra)")
    from hfa_jax import serve

    frames, _ = make_stream(clips)
    y4m = write_y4m(str(tmp_path / "clip.y4m"), frames)
    app = serve.build_app(translator)
    _, url = serve.launch(app, fx.free_port(), block=False)
    want = clips[0][1]  # the first clip's sentence (the stream loops; frames travel as lossy images)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_FLAGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                                       f"--use-file-for-fake-video-capture={y4m}"],
                viewport={"width": 1280, "height": 1300})
            try:
                page = browser.new_page()
                page.goto(url, wait_until="load", timeout=60_000)
                page.get_by_role("tab", name="Live").click()
                page.locator("#live_cam button", has_text="Click to Access Webcam").click(timeout=30_000)
                page.locator("#live_cam button.capture-button").click(timeout=30_000)  # start streaming
                page.wait_for_function(
                    "(w) => { const v = document.querySelector('#live_transcript textarea').value;"
                    " return v.split('\\n').filter((l) => l.endsWith('] ' + w)).length >= 1"
                    " && v.split('\\n').length >= 3; }", arg=want, timeout=STREAM_TIMEOUT_MS)
                assert page.locator("#live_status").inner_text() == "Camera: streaming."
                lines = page.locator("#live_transcript textarea").input_value().splitlines()
                starts = [re.match(r"\[(\d\d):(\d\d):(\d\d\.\d\d\d) -->", ln).groups() for ln in lines]
                secs = [int(h) * 3600 + int(m) * 60 + float(s) for h, m, s in starts]
                assert secs == sorted(secs)
                page.locator("#live_align_btn").click()
                page.locator("#live_alignment img").wait_for(state="visible", timeout=60_000)
                page.locator("#live_save").click()
                page.locator("#live_file a").first.wait_for(state="attached", timeout=30_000)
                fx.save_screenshot(page, tmp_path, "live_tab.png")  # docs/images/live_tab.png
            finally:
                browser.close()
    finally:
        app.close()
