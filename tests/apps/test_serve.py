"""The web page (``python -m hfa_jax.serve``): through Gradio's own Python client against a server
on 127.0.0.1, and in a real headless Chromium (the system's, driven by Playwright) as a person
would use it: upload an mp4, wait for the translation, see the alignment image; the page fetches
nothing from outside this machine. Under load: 20 requests at once, good and hostile uploads, one
long clip that must not hold up the short ones; uploads deleted, no server paths in messages."""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time

import numpy as np
import pytest

from hfa_jax.data import video as video_lib
from tests.apps import fixtures as fx

# One xdist worker runs the application tests: they share the session's trained model.
pytestmark = pytest.mark.xdist_group("apps")

pytest.importorskip("gradio", reason='the web page needs the [app] extra: pip install -e ".[app]"')

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def page_url(translator, encoded):
    from hfa_jax import serve

    # the session's Translator (the export round trip is tested apart): its programs are compiled
    app = serve.build_app(translator, examples=encoded["mp4"][:2])
    _, url = serve.launch(app, fx.free_port(), block=False)
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


def test_uploads_are_deleted_and_example_clips_kept(translator, encoded, tmp_path, monkeypatch):
    """Through the page's handler: an upload (a file in Gradio's upload folder) is deleted once
    translated, an example clip (Gradio's cached copy) is kept for the next click."""
    from hfa_jax import serve

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    app = serve.build_app(translator, examples=[encoded["mp4"][0]])
    handler = next(fn.fn for fn in app.fns.values() if fn.api_name == "translate")
    (example,) = [c for c in app.blocks.values() if getattr(c, "keep_in_cache", None)][0].keep_in_cache
    upload = tmp_path / "gradio" / "0123abcd" / "mine.mp4"
    upload.parent.mkdir(parents=True)
    shutil.copy(encoded["mp4"][1], upload)
    want = translator([encoded["mp4"][0], encoded["mp4"][1]])
    assert handler(example)[0] == want[0] and os.path.isfile(example)
    assert handler(str(upload))[0] == want[1]
    assert not upload.exists() and not upload.parent.exists()
    text, _, _, _, info = handler(str(upload))            # a second request for a deleted upload
    assert text == "" and "upload it again" in info and str(tmp_path) not in info
    assert handler(example)[0] == want[0]                  # the example still works
    assert os.path.isfile(encoded["mp4"][0])               # and its original is untouched


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
            # not "networkidle": the Live tab's stream keeps Gradio's heartbeat connection open
            page.goto(page_url, wait_until="load", timeout=60_000)
            page.locator("#video input[type=file]").wait_for(state="attached", timeout=60_000)
            page.locator("#video input[type=file]").set_input_files(encoded["mp4"][2])
            box = page.locator("#translation textarea")
            page.wait_for_function("(w) => document.querySelector('#translation textarea').value === w", arg=want,
                                   timeout=120_000)
            assert box.input_value() == want
            img = page.locator("#alignment img")
            img.wait_for(state="visible", timeout=30_000)
            assert img.evaluate("i => i.naturalWidth") > 400
            fx.save_screenshot(page, tmp_path, "serve.png")  # docs/images/serve.png
        finally:
            browser.close()
    assert outside == [], outside   # fully offline: no fonts, scripts or analytics from outside


def test_messages_show_no_server_paths():
    from hfa_jax import serve

    upload = "/tmp/gradio/3f2a/holiday.mp4"
    assert serve.scrub(f"{upload}: not a video file that FFmpeg can read (Invalid data)", upload) == \
        "holiday.mp4: not a video file that FFmpeg can read (Invalid data)"
    assert serve.scrub("cannot open /srv/models/x/tokenizer/a.model (No such file)\nsecond line") == \
        "cannot open a.model (No such file)"
    assert serve.scrub("C:\\Users\\me\\clip.mp4: bad; ratio 3/4 at 10:20") == "clip.mp4: bad; ratio 3/4 at 10:20"


class _GatedPage:
    """The session's Translator behind the page's own reading limits; a clip named ``long*``
    waits in its read until ``release`` is set (a long clip, as long as the test wants)."""

    def __init__(self, translator, preprocessing, release: threading.Event):
        self._translator, self.preprocessing, self.release = translator, preprocessing, release

    def read(self, path: str):
        if os.path.basename(path).startswith("long"):
            assert self.release.wait(300)
        return video_lib.read_clip(path, self.preprocessing)

    def __getattr__(self, name: str):
        return getattr(self._translator, name)


def _hostile_uploads(folder, encoded) -> dict[str, str]:
    """Bad uploads, by file name -> words their message must hold ("" for any one-line refusal)."""
    from tests.apps.fixtures import write_with_pts

    (folder / "notes.mp4").write_text("this is not a video\n")
    (folder / "empty.webm").write_bytes(b"")
    data = open(encoded["mp4"][0], "rb").read()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 3])
    (folder / "noise.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    (folder / "picture.mp4").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(500))
    video_lib.write_video(str(folder / "wide.mp4"), np.full((4, 480, 640, 3), 90, np.uint8), 25)
    write_with_pts(str(folder / "gap.mkv"), [0, 36_000_000])
    return {"notes.mp4": "not a video file", "empty.webm": "not a video file", "cut.mp4": "", "noise.mkv": "",
            "picture.mp4": "", "wide.mp4": "over the limit max_pixels=90000", "gap.mkv": "over the limit max_seconds"}


def test_page_under_load(translator, encoded, tmp_path, monkeypatch):
    """20 requests at once on 127.0.0.1: one long clip (held in its read), ten good clips, seven
    hostile files and two uploads over the size limit. The ten good clips are translated as the
    session's Translator translates them while the long one is still running (two workers: a
    short clip is not stuck behind a long one), every bad one gets its one-line message without
    a server path, the oversized ones are refused at upload, the page serves afterwards, and no
    upload is left on disk."""
    from gradio_client import Client, handle_file

    from hfa_jax import serve

    temp = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(temp))   # read when the page is built
    release = threading.Event()
    page = _GatedPage(translator, dataclasses.replace(translator.preprocessing, max_pixels=300 * 300), release)
    app = serve.build_app(page, workers=2, queue=32)
    _, url = serve.launch(app, fx.free_port(), block=False, max_upload_mb=1.0)
    t0 = time.monotonic()
    try:
        uploads = tmp_path / "uploads"
        uploads.mkdir()
        sources = encoded["mp4"] + encoded["webm"]
        want = dict(zip(sources, translator(sources)))
        good = {}
        for i in range(10):
            src = sources[i % len(sources)]
            dst = uploads / f"good{i}{os.path.splitext(src)[1]}"
            shutil.copy(src, dst)
            good[str(dst)] = want[src]
        shutil.copy(sources[0], uploads / "long.mp4")
        bad = _hostile_uploads(uploads, encoded)
        big = []
        for name in ("huge.mp4", "huge2.webm"):
            (uploads / name).write_bytes(os.urandom(1_500_000))
            big.append(str(uploads / name))

        client = Client(url, verbose=False)
        long_job = client.submit(handle_file(str(uploads / "long.mp4")), api_name="/translate")
        jobs = {p: client.submit(handle_file(p), api_name="/translate")
                for p in list(good) + [str(uploads / n) for n in bad] + big}
        assert len(jobs) + 1 == 20
        for p, job in jobs.items():
            name = os.path.basename(p)
            if p in big:
                with pytest.raises(Exception):  # refused by Gradio before it reaches the model
                    job.result(timeout=120)
                continue
            text, strip, alignment, timeline, info = job.result(timeout=240)
            if p in good:
                assert text == good[p], name
                assert alignment and os.path.getsize(alignment) > 1000
            else:
                assert text == "" and alignment is None, name
                assert info.startswith("**Could not translate this file") and bad[name] in info, (name, info)
                assert "\n" not in info and str(tmp_path) not in info and "gradio" not in info, info
        assert not long_job.done()                  # every short clip went past the long one
        release.set()
        assert long_job.result(timeout=120)[0] == want[sources[0]]
        # the page still serves
        again = uploads / "again.webm"
        shutil.copy(sources[5], again)
        assert client.predict(handle_file(str(again)), api_name="/translate")[0] == want[sources[5]]
        elapsed = time.monotonic() - t0
    finally:
        release.set()
        app.close()
    assert elapsed < 300
    left = [os.path.join(d, f) for d, _, files in os.walk(temp) for f in files
            if f.lower().endswith(video_lib.VIDEO_EXTS)]
    assert left == [], left                          # every upload was deleted after its request
