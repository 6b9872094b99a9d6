"""A local web page to try a model: upload or record a signed video, read its translation and see
why (frames, word x time alignment, pseudo-gloss timeline, timings).

    pip install -e ".[app]"
    python -m hfa_jax.serve --model my_model [--port 7860] [--examples DIR]

``--model``: an exported model folder or a fine-tuning workdir. Example clips: the video files in
``MODEL/examples/`` (the demo's export writes some) and in ``--examples``. The page is built with
Gradio and runs fully offline: analytics off, system fonts only, no server-side rendering, served
on 127.0.0.1 unless ``--host`` says otherwise. A bad upload shows a one-line message on the page,
with file names but no server paths.

Under load: uploads larger than ``--max_upload_mb`` are refused by Gradio before they reach the
model; each clip is held to the reading limits (``--max_seconds``, ``--max_source_frames``,
``--max_pixels``, default: the model's); ``--workers`` requests run at once (so a short clip is
not stuck behind a long one) and at most ``--queue`` more wait (later ones are turned away). An
upload is deleted as soon as its request is done; the pictures the page shows are deleted by
Gradio once they are ``CACHE_AGE_S`` old.

Live: the "Live" tab streams the browser's camera to the server (one frame per ``LIVE_EVERY_S``),
cut into segments and translated as they close (:mod:`hfa_jax.live_translator`); the same
sessions are open to programs through the API endpoints ``/live_open``, ``/live_push`` (a video
chunk) and ``/live_close`` (docs/live.md has curl and Python examples). At most ``--live_sessions``
sessions are open at once; one idle for ``LIVE_IDLE_S`` is closed.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import threading
import time
from typing import Any, Callable

from hfa_jax import compile_cache
from hfa_jax.data import video as video_lib
from hfa_jax.errors import DataError, UserError, cli_main

TITLE = "hfa_jax: sign language translation"
NO_HEAD = ("This model carries no pseudo-gloss head (it was exported without its pretraining stage), "
           "so there is no pseudo-gloss timeline.")
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
SYSTEM_MONO = ["ui-monospace", "monospace"]
MAX_UPLOAD_MB = 100.0   # a 2-minute phone video at 1080p is ~100-200 MB; the model reads 12 s
WORKERS = 2             # requests translated at once
QUEUE = 16              # requests waiting at most; more are turned away with Gradio's "queue full"
CACHE_EVERY_S, CACHE_AGE_S = 60, 300  # Gradio deletes its cached files (the pictures) this old
LIVE_SESSIONS = 8       # live sessions open at once
LIVE_IDLE_S = 600.0     # a live session without a frame this long is closed
LIVE_EVERY_S = 0.04     # the page sends a camera frame this often (the model's 25 fps)
LIVE_GAP_S = 1.0        # the page closes the open segment when no frame came for this long
# A directory part of an absolute path (POSIX or Windows) in a message: removed, the name kept.
_DIRS = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:[\\/][^\\/\s:'\"()]+)+[\\/]")

# Uploads being read, by path, so two requests for one cached upload (Gradio names uploads by
# their content and name) do not delete it under each other.
_ACTIVE: dict[str, int] = {}
_ACTIVE_LOCK = threading.Lock()


def _gradio():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported
    try:
        import gradio as gr
    except ImportError:
        raise UserError('the web page needs Gradio: pip install -e ".[app]"') from None
    return gr


def example_clips(model: str, extra: str = "") -> list[str]:
    out = []
    for d in (os.path.join(model, "examples"), extra):
        if d and os.path.isdir(d):
            out += sorted(p for p in glob.glob(os.path.join(d, "*")) if video_lib.is_video_file(p))
    return out


def scrub(message: str, path: str = "") -> str:
    """A message for the page: ``path`` becomes its file name and any other absolute path loses
    its folders (no server paths on the page); the first line only."""
    first = (str(message).strip().splitlines() or [""])[0]
    if path:
        first = first.replace(path, os.path.basename(path))
    return _DIRS.sub("", first)


def _is_upload(path: str, keep: set[str]) -> bool:
    """Whether ``path`` is a file Gradio stored for this request (not an example clip)."""
    from gradio.utils import get_upload_folder

    real = os.path.realpath(path)
    return real not in keep and real.startswith(os.path.realpath(get_upload_folder()) + os.sep)


def _remove_upload(path: str) -> None:
    """Deletes an upload once no request reads it, and its folder once empty."""
    with _ACTIVE_LOCK:
        _ACTIVE[path] -= 1
        if _ACTIVE[path]:
            return
        del _ACTIVE[path]
        try:
            os.remove(path)
            os.rmdir(os.path.dirname(path))  # only if empty: the folder holds same-content uploads
        except OSError:
            pass


def translate_for_page(translator, path: str | None, keep: set[str] | None = None) -> tuple[str, Any, Any, Any, str]:
    """One uploaded video -> (translation, frame strip, alignment image, timeline image or None,
    Markdown with the timings, warnings or the error). Never raises: a bad upload is a message.
    The upload is deleted afterwards unless it is one of ``keep`` (the example clips) or not in
    Gradio's upload folder."""
    if not path:
        return "", None, None, None, ""
    upload = _is_upload(path, keep or set())
    if upload:
        with _ACTIVE_LOCK:
            _ACTIVE[path] = _ACTIVE.get(path, 0) + 1
    try:
        return _translate(translator, path)
    finally:
        if upload:
            _remove_upload(path)


def _translate(translator, path: str) -> tuple[str, Any, Any, Any, str]:
    from hfa_jax import evidence

    t0 = time.perf_counter()
    try:
        if not os.path.isfile(path):
            raise DataError(f"{path}: the upload is gone (the server removed it); upload it again")
        clip = translator.read(path)
        read_s = time.perf_counter() - t0
        exp = translator.explain(clip)
    except UserError as e:
        return "", None, None, None, f"**Could not translate this file.** {scrub(str(e), path)}"
    except Exception as e:  # noqa: BLE001: the page shows a line, never a traceback
        return "", None, None, None, f"**Could not translate this file** ({type(e).__name__}: {scrub(str(e), path)})."
    t1 = time.perf_counter()
    strip = evidence.frame_strip(clip.frames, 8)
    fps = clip.fps_out
    alignment = evidence.to_image(evidence.alignment_figure(exp, clip.frames, fps))
    timeline = (evidence.to_image(evidence.timeline_figure(exp.timeline, len(clip.frames) / fps))
                if exp.timeline is not None else None)
    plots_s = time.perf_counter() - t1
    seconds = {"read video": read_s, **exp.seconds, "plots": plots_s, "total": time.perf_counter() - t0}
    src = (f"{clip.source_size[0]}x{clip.source_size[1]}"
           + (f" at {clip.source_fps:.2f} fps" if clip.source_fps else " (frame folder)"))
    used = "" if len(clip.frames) == clip.num_frames else f", the model reads {len(clip.frames)}"
    lines = [f"**Input:** {src} -> {clip.num_frames} frames ({clip.seconds:.2f} s at {fps:g} fps{used})", "",
             "**Time (s):** " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())]
    if clip.warnings:
        lines += [""] + [f"- warning: {w.split(': ', 1)[-1]}" for w in clip.warnings]  # without the path
    if timeline is None:
        lines += ["", NO_HEAD]
    return exp.text, strip, alignment, timeline, "\n".join(lines)


class LiveSessions:
    """Live translation sessions (one :class:`~hfa_jax.live_translator.LiveTranslator` each) by id,
    for the page's Live tab and the ``/live_*`` API. Thread-safe: each session has its own lock
    (a stream's frames are taken in order), the table has one. Programs are compiled once, by the
    first stream's warm-up (every Translator of one model shares them)."""

    def __init__(self, translator, limit: int = LIVE_SESSIONS, idle_s: float = LIVE_IDLE_S,
                 clock: Callable[[], float] = time.monotonic):
        self.translator, self.limit, self.idle_s = translator, limit, idle_s
        self.clock = clock  # seconds; frames are timed by their arrival on it
        self._lock = threading.Lock()
        self._sessions: dict[str, dict[str, Any]] = {}
        self._warm = False

    def open(self, mode: str = "activity", window_s: float = 0.0) -> str:
        """A new session -> its id; UserError (one line) for an unknown mode or a full table."""
        import uuid

        from hfa_jax.live_translator import ActivityParams, FixedParams, LiveTranslator

        if mode not in ("activity", "fixed"):
            raise UserError(f"mode {mode!r}: use 'activity' or 'fixed'")
        params = FixedParams(float(window_s)) if mode == "fixed" else ActivityParams()
        now = self.clock()
        with self._lock:
            for sid in [k for k, v in self._sessions.items() if now - v["used"] > self.idle_s]:
                del self._sessions[sid]
            if len(self._sessions) >= self.limit:
                raise UserError(f"{self.limit} live sessions are open; close one (/live_close) or wait")
            warm, self._warm = not self._warm, True
        live = LiveTranslator(self.translator, params, partial_every=8, warm_up=warm)
        sid = uuid.uuid4().hex
        with self._lock:
            self._sessions[sid] = {"live": live, "lock": threading.Lock(), "used": now, "t0": None,
                                   "offset": 0.0, "events": []}
        return sid

    def get(self, sid: str) -> dict[str, Any]:
        with self._lock:
            if sid not in self._sessions:
                raise UserError("no such live session (closed, expired or never opened); open one with /live_open")
            s = self._sessions[sid]
            s["used"] = self.clock()
            return s

    def push_frame(self, sid: str, frame: Any, t: float | None = None) -> list:
        """One frame (``[H, W, 3] uint8``); ``t``: its time (s); None: the arrival time."""
        s = self.get(sid)
        with s["lock"]:
            if t is None:
                now = self.clock()
                s["t0"] = now if s["t0"] is None else s["t0"]
                t = now - s["t0"]
            ev = s["live"].push(frame, t)
            s["events"] += ev
            return ev

    def push_chunk(self, sid: str, path: str) -> list:
        """A video file's frames, timed after the session's previous chunk (its timestamps plus the
        end of the previous chunk)."""
        s = self.get(sid)
        prep = self.translator.preprocessing
        with s["lock"]:
            events: list = []
            last, step = None, 1.0 / prep.fps
            for t, frame in video_lib._decode(path, prep):  # noqa: SLF001: the hardened reader
                if last is not None and t > last:
                    step = t - last
                last = t
                events += s["live"].push(frame, s["offset"] + t)
            if last is None:
                raise DataError(f"{path}: the video has no frames")
            s["offset"] += last + step
            s["events"] += events
            return events

    def flush(self, sid: str) -> list:
        """Closes the open segment (the stream paused); the session stays open."""
        s = self.get(sid)
        with s["lock"]:
            ev = s["live"].finish()
            s["events"] += ev
            return ev

    def close(self, sid: str) -> tuple[list, list]:
        """Closes the session -> (its last events, all its final events)."""
        ev = self.flush(sid)
        with self._lock:
            s = self._sessions.pop(sid, None)
        return ev, [e for e in (s or {}).get("events", []) if e.kind == "final"]


def event_dict(ev) -> dict[str, Any]:
    """A :class:`~hfa_jax.live_translator.LiveEvent` as JSON."""
    return {"kind": ev.kind, "segment": ev.segment, "text": ev.text, "start_s": round(ev.start_s, 3),
            "end_s": round(ev.end_s, 3), "compute_s": round(ev.compute_s, 4)}


def transcript_lines(finals: list) -> list[str]:
    from hfa_jax.live import timestamp

    return [f"[{timestamp(e.start_s)} --> {timestamp(e.end_s)}] {e.text}" for e in finals]


def _api_error(e: Exception, path: str = "") -> dict[str, Any]:
    if isinstance(e, UserError):
        return {"error": scrub(str(e), path)}
    return {"error": f"{type(e).__name__}: {scrub(str(e), path)}"}


# The browser side of the Live tab: why the camera is not streaming (denied, absent, unplugged,
# not a secure page), written into the #live_status element every second.
CAMERA_JS = """
() => {
  const say = (m) => { const el = document.querySelector('#live_status'); if (el && el.dataset.msg !== m) {
    el.dataset.msg = m; el.textContent = m; } };
  const check = async () => {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      say('Camera: this browser gives no camera to this page (it needs https or localhost).'); return; }
    try {
      const p = navigator.permissions ? await navigator.permissions.query({name: 'camera'}) : null;
      if (p && p.state === 'denied') { say('Camera: access denied. Allow the camera for this site and reload.'); return; }
    } catch (e) {}
    const devs = await navigator.mediaDevices.enumerateDevices();
    if (!devs.some((d) => d.kind === 'videoinput')) { say('Camera: no camera found (unplugged?).'); return; }
    const v = document.querySelector('#live_cam video');
    const tr = v && v.srcObject ? v.srcObject.getVideoTracks()[0] : null;
    if (tr && tr.readyState === 'ended') { say('Camera: disconnected. Plug it back in and press record again.'); return; }
    say(tr ? 'Camera: streaming.' : 'Camera: ready. Press record to start.');
  };
  check(); setInterval(check, 1000);
  if (navigator.mediaDevices) navigator.mediaDevices.addEventListener('devicechange', check);
}
"""


def _live_tab(gr, translator, sessions: LiveSessions, workers: int) -> None:
    """The Live tab: the camera streamed (one frame per LIVE_EVERY_S), the running and final
    translations, the transcript saved as WebVTT, the alignment of the last segment."""
    from hfa_jax import evidence
    from hfa_jax.live import write_vtt

    gr.Markdown("Sign to the camera and pause (hands still) between sentences: each pause closes a segment "
                "and its translation is added to the transcript. The running translation is refreshed while "
                "you sign.")
    sid = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Camera", elem_id="live_cam")
            status = gr.Markdown("Camera: checking...", elem_id="live_status")
            info = gr.Markdown(elem_id="live_info")
        with gr.Column(scale=1):
            running = gr.Textbox(label="Running translation", elem_id="live_running", interactive=False)
            transcript = gr.Textbox(label="Transcript", elem_id="live_transcript", interactive=False, lines=8)
            with gr.Row():
                save = gr.Button("Save transcript", elem_id="live_save")
                show = gr.Button("Alignment of the last segment", elem_id="live_align_btn")
            saved = gr.File(label="Transcript (WebVTT)", elem_id="live_file", interactive=False)
    picture = gr.Image(label="Last segment: word x time alignment", type="numpy", elem_id="live_alignment",
                       interactive=False)
    timer = gr.Timer(LIVE_GAP_S / 2, active=False)  # ticks only while a stream runs (an idle page stays idle)

    def text_of(s_id: str) -> tuple[str, str]:
        events = sessions.get(s_id)["events"]
        finals = [e for e in events if e.kind == "final"]
        last = events[-1] if events else None
        return (last.text if last is not None and last.kind == "partial" else "",
                "\n".join(transcript_lines(finals)))

    def on_frame(frame, s_id):
        if frame is None:
            return s_id, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            if s_id is None:
                s_id = sessions.open()
            sessions.push_frame(s_id, frame)
            s_id_ok = s_id
        except UserError as e:  # a full session table, an expired session
            return None, gr.skip(), gr.skip(), f"**Live:** {scrub(str(e))}", gr.skip()
        sessions.get(s_id_ok)["last_frame"] = sessions.clock()
        return (s_id_ok,) + text_of(s_id_ok) + ("", gr.Timer(active=True))

    def on_tick(s_id):
        """The stream paused (camera stopped, unplugged or denied): the open segment closes."""
        if s_id is None:
            return gr.skip(), gr.skip(), gr.Timer(active=False)
        try:
            s = sessions.get(s_id)
            if sessions.clock() - s.get("last_frame", 0) <= LIVE_GAP_S:
                return gr.skip(), gr.skip(), gr.skip()
            sessions.flush(s_id)
            s["t0"] = None  # the next frame starts a new stream time base after the gap
            return text_of(s_id) + (gr.Timer(active=False),)
        except UserError:
            return gr.skip(), gr.skip(), gr.Timer(active=False)

    def on_save(s_id):
        if s_id is None:
            return None, "**Live:** nothing to save yet"
        import tempfile

        finals = [e for e in sessions.get(s_id)["events"] if e.kind == "final"]
        path = os.path.join(tempfile.mkdtemp(prefix="hfa_live_"), "transcript.vtt")
        write_vtt(path, finals)
        return path, ""

    def on_align(s_id):
        live = sessions.get(s_id)["live"] if s_id is not None else None
        if live is None or live.last_segment is None:
            return None, "**Live:** no segment has closed yet"
        clip = live.last_segment
        exp = translator.explain(clip)
        return evidence.to_image(evidence.alignment_figure(exp, clip.frames, clip.fps_out)), ""

    cam.stream(on_frame, inputs=[cam, sid], outputs=[sid, running, transcript, info, timer], stream_every=LIVE_EVERY_S,
               concurrency_limit=sessions.limit, concurrency_id="live", api_visibility="private", show_progress="hidden")
    timer.tick(on_tick, inputs=[sid], outputs=[running, transcript, timer], api_visibility="private", show_progress="hidden")
    save.click(on_save, inputs=[sid], outputs=[saved, info], api_visibility="private")
    show.click(on_align, inputs=[sid], outputs=[picture, info], api_visibility="private",
               concurrency_limit=workers, concurrency_id="translate")


def _live_api(gr, sessions: LiveSessions, workers: int) -> None:
    """``/live_open`` (mode) -> {"session"}; ``/live_push`` (session, video chunk) -> {"events"};
    ``/live_close`` (session) -> {"events", "transcript", "finals"}; a problem -> {"error": line}."""
    with gr.Row(visible=False):
        a_mode = gr.Textbox(value="activity", label="mode")
        a_sid = gr.Textbox(label="session")
        a_chunk = gr.File(label="chunk", type="filepath")
        a_out = gr.JSON(label="result")
        trigger = gr.Button()

    def live_open(mode: str) -> dict:
        try:
            return {"session": sessions.open((mode or "activity").strip())}
        except Exception as e:  # noqa: BLE001: the API answers with a line, never a traceback
            return _api_error(e)

    def live_push(session: str, chunk: str | None) -> dict:
        if not chunk:
            return {"error": "no video chunk sent"}
        upload = _is_upload(chunk, set())
        if upload:
            with _ACTIVE_LOCK:
                _ACTIVE[chunk] = _ACTIVE.get(chunk, 0) + 1
        try:
            return {"events": [event_dict(e) for e in sessions.push_chunk(session, chunk)]}
        except Exception as e:  # noqa: BLE001
            return _api_error(e, chunk)
        finally:
            if upload:
                _remove_upload(chunk)

    def live_close(session: str) -> dict:
        try:
            events, finals = sessions.close(session)
        except Exception as e:  # noqa: BLE001
            return _api_error(e)
        return {"events": [event_dict(e) for e in events], "transcript": transcript_lines(finals),
                "finals": [event_dict(e) for e in finals]}

    trigger.click(live_open, [a_mode], [a_out], api_name="live_open")
    trigger.click(live_push, [a_sid, a_chunk], [a_out], api_name="live_push", concurrency_limit=workers,
                  concurrency_id="translate")
    trigger.click(live_close, [a_sid], [a_out], api_name="live_close")


def build_app(translator, examples: list[str] | None = None, *, workers: int = WORKERS, queue: int = QUEUE,
              live_sessions: int = LIVE_SESSIONS, clock: Callable[[], float] = time.monotonic):
    """The page as a ``gradio.Blocks`` (not launched). Its API endpoints are ``/translate`` (a clip)
    and ``/live_open``, ``/live_push``, ``/live_close`` (a live session); ``workers`` requests run
    at once, ``queue`` more may wait. ``clock``: the Live tab's time source (frames are timed by
    their arrival)."""
    gr = _gradio()
    sessions = LiveSessions(translator, live_sessions, clock=clock)
    prep = translator.preprocessing
    keep = {os.path.realpath(e) for e in examples or []}
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(CACHE_EVERY_S, CACHE_AGE_S)) as app:
        gr.Markdown(f"## {TITLE}\nUpload or record a signed video, or pick an example. The video is resampled "
                    f"to {prep.fps:g} fps, cut to the training aspect ({prep.source_width}:{prep.source_height}, "
                    f"centred) and resized to {prep.size} px; at most {prep.max_frames} frames are used. "
                    f"Clips up to {prep.max_seconds:g} s.")
        with gr.Tab("Clip", id="clip"):
            with gr.Row():
                with gr.Column(scale=1):
                    video = gr.Video(sources=["upload", "webcam"], label="Signed video", elem_id="video")
                    if examples:
                        gr.Examples(examples=[[e] for e in examples], inputs=[video], label="Example clips")
                with gr.Column(scale=1):
                    text = gr.Textbox(label="Translation", elem_id="translation", interactive=False, lines=2)
                    info = gr.Markdown(elem_id="info")
            strip = gr.Image(label="Frames", type="numpy", elem_id="frames", interactive=False)
            alignment = gr.Image(label="Word x time alignment (decoder cross-attention)", type="numpy",
                                 elem_id="alignment", interactive=False)
            timeline = gr.Image(label="Pseudo-gloss timeline", type="numpy", elem_id="timeline", interactive=False,
                                visible=translator.has_pseudo_gloss_head)
            def handle(path: str | None):
                # example clips are served from Gradio's cache too (its copies are in keep_in_cache)
                return translate_for_page(translator, path, keep | {os.path.realpath(k) for k in video.keep_in_cache})

            video.change(handle, inputs=[video],
                         outputs=[text, strip, alignment, timeline, info], api_name="translate",
                         concurrency_limit=workers, concurrency_id="translate")
        with gr.Tab("Live", id="live"):
            _live_tab(gr, translator, sessions, workers)
        _live_api(gr, sessions, workers)
        app.load(None, js=CAMERA_JS)
    app.queue(max_size=queue, default_concurrency_limit=workers)
    return app


def launch(app, port: int, host: str = "127.0.0.1", block: bool = True, max_upload_mb: float = MAX_UPLOAD_MB):
    """Starts the server (offline theme: system fonts only; uploads over ``max_upload_mb`` are
    refused). Returns (app, local_url)."""
    gr = _gradio()
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=SYSTEM_MONO)
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, share=False,
                           show_error=False, theme=theme, ssr_mode=False, mcp_server=False, quiet=True,
                           inbrowser=False, max_file_size=int(max_upload_mb * 1024 * 1024))
    return app, url


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (``error: ...``, exit status 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (see --help)")


def _in_range(args: argparse.Namespace) -> None:
    for name, lo, hi in (("port", 1, 65535), ("workers", 1, 64), ("queue", 1, 10_000), ("live_sessions", 1, 1000), ("max_upload_mb", 0.001, 1e6)):
        v = getattr(args, name)
        if not lo <= v <= hi:
            raise UserError(f"--{name} {v}: must be from {lo:g} to {hi:g}")


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = _Parser(description="A local web page to try a translation model.")
    p.add_argument("--model", required=True, help="an exported model folder or a fine-tuning workdir")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--examples", default="", help="a folder of example video files")
    p.add_argument("--max_upload_mb", type=float, default=MAX_UPLOAD_MB, help="largest upload accepted (MB)")
    p.add_argument("--max_seconds", type=float, default=None, help="refuse longer clips (default: the model's)")
    p.add_argument("--max_source_frames", type=int, default=None,
                   help="refuse clips of more decoded frames (default: the model's)")
    p.add_argument("--max_pixels", type=int, default=None, help="refuse larger frames (default: the model's)")
    p.add_argument("--workers", type=int, default=WORKERS, help="requests translated at once")
    p.add_argument("--queue", type=int, default=QUEUE, help="requests that may wait; more are turned away")
    p.add_argument("--live_sessions", type=int, default=LIVE_SESSIONS, help="live sessions open at once")
    compile_cache.add_argument(p)
    args = p.parse_args(argv)
    _in_range(args)
    try:
        video_lib.Preprocessing().with_limits(max_seconds=args.max_seconds, max_source_frames=args.max_source_frames,
                                              max_pixels=args.max_pixels)
    except DataError as e:
        raise UserError(str(e).replace("preprocessing: ", "argument --", 1)) from None
    _gradio()
    from hfa_jax.translator import Translator

    compile_cache.enable(args.compile_cache)
    tr = Translator.from_pretrained(args.model)
    tr.preprocessing = tr.preprocessing.with_limits(max_seconds=args.max_seconds,
                                                    max_source_frames=args.max_source_frames,
                                                    max_pixels=args.max_pixels)
    from hfa_jax.live_translator import LiveTranslator

    t0 = time.perf_counter()
    LiveTranslator(tr, partial_every=0)  # compiles every frame bucket now: no request waits on a compile
    print(f"compiled in {time.perf_counter() - t0:.1f} s", flush=True)
    examples = example_clips(args.model, args.examples)
    print(f"model: {args.model} (step {tr.step}); open http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    launch(build_app(tr, examples, workers=args.workers, queue=args.queue,
                     live_sessions=args.live_sessions), args.port, args.host, block=True,
           max_upload_mb=args.max_upload_mb)


if __name__ == "__main__":
    main(sys.argv[1:])
