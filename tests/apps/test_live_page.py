"""The page's live translation: the ``/live_open``, ``/live_push``, ``/live_close`` API on a server
on 127.0.0.1 (through Gradio's Python client and through plain HTTP, as docs/live.md's curl
example does), and the Live tab's handlers (camera frames in, transcript, WebVTT, alignment),
each held to the LiveTranslator on the same frames."""

from __future__ import annotations

import json
import os
import urllib.request

import numpy as np
import pytest

from hfa_jax.data import video as video_lib
from hfa_jax.live_translator import ActivityParams, LiveTranslator

pytestmark = pytest.mark.xdist_group("apps")

pytest.importorskip("gradio", reason='the web page needs the [app] extra: pip install -e ".[app]"')

from tests.apps import fixtures as fx  # noqa: E402
from tests.apps.test_live import make_stream  # noqa: E402


@pytest.fixture(scope="module")
def chunks(clips, tmp_path_factory):
    """The stream of test_live (four clips joined by rests) as two mp4 chunks."""
    frames, true = make_stream(clips)
    d = tmp_path_factory.mktemp("chunks")
    half = len(frames) // 2
    out = []
    for i, part in enumerate((frames[:half], frames[half:])):
        path = str(d / f"chunk{i}.mp4")
        video_lib.write_video(path, np.stack(part), 25.0, crf="18")
        out.append(path)
    return out, true


def _reference(translator, paths: list[str]) -> list[str]:
    """Final texts of the LiveTranslator fed the chunks' decoded frames, timed back to back."""
    from hfa_jax.live import file_frames

    live = LiveTranslator(translator, ActivityParams(), partial_every=8, warm_up=False)
    offset, events = 0.0, []
    for p in paths:
        last = None
        for t, frame in file_frames(p, translator.preprocessing, False):
            events += live.push(frame, offset + t)
            last = t
        offset += last + 1 / 25
    events += live.finish()
    return [e.text for e in events if e.kind == "final"]


@pytest.fixture(scope="module")
def server(translator):
    from hfa_jax import serve

    app = serve.build_app(translator)
    _, url = serve.launch(app, fx.free_port(), block=False)
    yield url
    app.close()


def test_live_api_through_the_python_client(server, chunks, translator):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    sid = client.predict("activity", api_name="/live_open")["session"]
    events = []
    for p in chunks[0]:
        out = client.predict(sid, handle_file(p), api_name="/live_push")
        assert "error" not in out, out
        events += out["events"]
    out = client.predict(sid, api_name="/live_close")
    finals = [e for e in events + out["events"] if e["kind"] == "final"]
    assert [e["text"] for e in finals] == _reference(translator, chunks[0])
    assert len(finals) >= 3 and len(out["transcript"]) == len(finals)
    assert any(e["kind"] == "partial" for e in events)
    # a closed session is one line
    out = client.predict(sid, handle_file(chunks[0][0]), api_name="/live_push")
    assert out["error"].startswith("no such live session") and "\n" not in out["error"]
    assert "error" in client.predict("sideways", api_name="/live_open")


def _call(url: str, name: str, data: list) -> object:
    """Gradio's HTTP protocol, as in docs/live.md: POST the inputs, GET the result stream."""
    req = urllib.request.Request(f"{url}gradio_api/call/{name}", json.dumps({"data": data}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        event_id = json.load(r)["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{name}/{event_id}", timeout=300) as r:
        lines = r.read().decode().splitlines()
    assert "event: complete" in lines, lines
    return json.loads(lines[lines.index("event: complete") + 1][len("data: "):])[0]


def _upload(url: str, path: str) -> str:
    """POST a file to Gradio's upload route (curl -F files=@FILE) -> its server path."""
    with open(path, "rb") as f:
        body = f.read()
    boundary = "hfa-live-test"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"chunk.mp4\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{url}gradio_api/upload", form,
                                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        (server_path,) = json.load(r)
    return server_path


def test_live_api_over_plain_http(server, chunks, translator):
    sid = _call(server, "live_open", ["activity"])["session"]
    path = _upload(server, chunks[0][0])
    out = _call(server, "live_push", [sid, {"path": path, "meta": {"_type": "gradio.FileData"}}])
    assert "events" in out and all(set(e) >= {"kind", "text", "start_s", "end_s"} for e in out["events"])
    assert not os.path.exists(path)  # the upload is deleted once read
    out = _call(server, "live_close", [sid])
    assert len(out["transcript"]) >= 1
    # a whole clip through /translate (the Clip tab), as docs/live.md's curl example
    path = _upload(server, chunks[0][1])
    assert _call(server, "translate", [{"path": path, "meta": {"_type": "gradio.FileData"}}]) == \
        translator([chunks[0][1]])[0]


def test_live_tab_handlers(translator, clips, tmp_path):
    """The tab's stream handler fed camera frames at 25 fps (a fake clock), then a pause: the
    transcript holds the LiveTranslator's finals on the same frames; save and alignment work."""
    from hfa_jax import serve

    clock = {"t": 100.0}
    app = serve.build_app(translator, clock=lambda: clock["t"])
    fns = {fn.fn.__name__: fn.fn for fn in app.fns.values() if fn.fn is not None}
    frames, true = make_stream(clips)
    sid = None
    for f in frames:
        sid, running, transcript, info, _ = fns["on_frame"](f, sid)
        clock["t"] += 0.04
    clock["t"] += 2 * serve.LIVE_GAP_S
    running, transcript, _ = fns["on_tick"](sid)
    live = LiveTranslator(translator, ActivityParams(), partial_every=8, warm_up=False)
    events = []
    for i, f in enumerate(frames):
        events += live.push(f, i * 0.04)
    events += live.finish()
    want = [e.text for e in events if e.kind == "final"]
    lines = transcript.splitlines()
    assert [ln.split("] ", 1)[1] for ln in lines] == want and len(want) >= 3
    path, _ = fns["on_save"](sid)
    text = open(path, encoding="utf-8").read()
    assert text.startswith("WEBVTT") and text.count(" --> ") == sum(1 for w in want if w.strip())
    picture, msg = fns["on_align"](sid)
    assert picture.ndim == 3 and picture.shape[2] == 3 and msg == ""
    assert fns["on_align"](None)[1].startswith("**Live:** no segment")
