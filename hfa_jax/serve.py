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
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import threading
import time
from typing import Any

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


def build_app(translator, examples: list[str] | None = None, *, workers: int = WORKERS, queue: int = QUEUE):
    """The page as a ``gradio.Blocks`` (not launched). Its API endpoint is ``/translate``;
    ``workers`` requests run at once, ``queue`` more may wait."""
    gr = _gradio()
    prep = translator.preprocessing
    keep = {os.path.realpath(e) for e in examples or []}
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(CACHE_EVERY_S, CACHE_AGE_S)) as app:
        gr.Markdown(f"## {TITLE}\nUpload or record a signed video, or pick an example. The video is resampled "
                    f"to {prep.fps:g} fps, cut to the training aspect ({prep.source_width}:{prep.source_height}, "
                    f"centred) and resized to {prep.size} px; at most {prep.max_frames} frames are used. "
                    f"Clips up to {prep.max_seconds:g} s.")
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
    for name, lo, hi in (("port", 1, 65535), ("workers", 1, 64), ("queue", 1, 10_000), ("max_upload_mb", 0.001, 1e6)):
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
    examples = example_clips(args.model, args.examples)
    print(f"model: {args.model} (step {tr.step}); open http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    launch(build_app(tr, examples, workers=args.workers, queue=args.queue), args.port, args.host, block=True,
           max_upload_mb=args.max_upload_mb)


if __name__ == "__main__":
    main(sys.argv[1:])
