"""A local web page to try a model: upload or record a signed video, read its translation and see
why (frames, word x time alignment, pseudo-gloss timeline, timings).

    pip install -e ".[app]"
    python -m hfa_jax.serve --model my_model [--port 7860] [--examples DIR]

``--model``: an exported model folder or a fine-tuning workdir. Example clips: the video files in
``MODEL/examples/`` (the demo's export writes some) and in ``--examples``. The page is built with
Gradio and runs fully offline: analytics off, system fonts only, no server-side rendering, served
on 127.0.0.1 unless ``--host`` says otherwise. A bad upload shows a one-line message on the page.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from typing import Any


from hfa_jax.data import video as video_lib
from hfa_jax.errors import UserError, cli_main

TITLE = "hfa_jax: sign language translation"
NO_HEAD = ("This model carries no pseudo-gloss head (it was exported without its pretraining stage), "
           "so there is no pseudo-gloss timeline.")
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
SYSTEM_MONO = ["ui-monospace", "monospace"]


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


def translate_for_page(translator, path: str | None) -> tuple[str, Any, Any, Any, str]:
    """One uploaded video -> (translation, frame strip, alignment image, timeline image or None,
    Markdown with the timings, warnings or the error). Never raises: a bad upload is a message."""
    from hfa_jax import evidence

    if not path:
        return "", None, None, None, ""
    t0 = time.perf_counter()
    try:
        clip = translator.read(path)
        read_s = time.perf_counter() - t0
        exp = translator.explain(clip)
    except UserError as e:
        return "", None, None, None, f"**Could not translate this file.** {e}"
    except Exception as e:  # noqa: BLE001: the page shows a line, never a traceback
        first = (str(e).strip().splitlines() or [""])[0]
        return "", None, None, None, f"**Could not translate this file** ({type(e).__name__}: {first})."
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
    lines = [f"**Input:** {src} -> {len(clip.frames)} frames ({clip.seconds:.2f} s at {fps:g} fps)", "",
             "**Time (s):** " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())]
    if clip.warnings:
        lines += [""] + [f"- warning: {w.split(': ', 1)[-1]}" for w in clip.warnings]  # without the path
    if timeline is None:
        lines += ["", NO_HEAD]
    return exp.text, strip, alignment, timeline, "\n".join(lines)


def build_app(translator, examples: list[str] | None = None):
    """The page as a ``gradio.Blocks`` (not launched). Its API endpoint is ``/translate``."""
    gr = _gradio()
    prep = translator.preprocessing
    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"## {TITLE}\nUpload or record a signed video, or pick an example. The video is resampled "
                    f"to {prep.fps:g} fps, cut to the training aspect ({prep.source_width}:{prep.source_height}, "
                    f"centred) and resized to {prep.size} px; at most {prep.max_frames} frames are used.")
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
        video.change(lambda p: translate_for_page(translator, p), inputs=[video],
                     outputs=[text, strip, alignment, timeline, info], api_name="translate")
    return app


def launch(app, port: int, host: str = "127.0.0.1", block: bool = True):
    """Starts the server (offline theme: system fonts only). Returns (app, local_url)."""
    gr = _gradio()
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=SYSTEM_MONO)
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, share=False,
                           show_error=False, theme=theme, ssr_mode=False, mcp_server=False, quiet=True,
                           inbrowser=False)
    return app, url


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="A local web page to try a translation model.")
    p.add_argument("--model", required=True, help="an exported model folder or a fine-tuning workdir")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--examples", default="", help="a folder of example video files")
    args = p.parse_args(argv)
    _gradio()
    from hfa_jax.translator import Translator

    tr = Translator.from_pretrained(args.model)
    examples = example_clips(args.model, args.examples)
    print(f"model: {args.model} (step {tr.step}); open http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    launch(build_app(tr, examples), args.port, args.host, block=True)


if __name__ == "__main__":
    main(sys.argv[1:])
