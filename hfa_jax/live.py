"""Live translation from the command line: a video file or a camera in, the transcript out.

    python -m hfa_jax.live --model my_model --input video.mp4 [--realtime] [--vtt out.vtt]
    python -m hfa_jax.live --model my_model --camera 0 [--vtt out.vtt]

Each closed segment prints one line, ``[start --> end] text`` (stream time, ``HH:MM:SS.mmm``),
as soon as it is translated; ``--partials`` also prints the running hypotheses (``~`` lines) on
standard error. ``--vtt`` writes the final lines as a WebVTT subtitle file (on exit, also after
Ctrl-C). A file is read as fast as it decodes, or at its own frame rate with ``--realtime`` (as a
camera would deliver it). A camera is read with PyAV (FFmpeg's ``v4l2`` input on Linux,
``avfoundation`` on macOS) until Ctrl-C. Segmentation and its flags: :mod:`hfa_jax.live_translator`
and docs/live.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Iterator, TextIO

from hfa_jax.errors import DataError, UserError, cli_main
from hfa_jax.live_translator import ActivityParams, FixedParams, LiveEvent, LiveTranslator

# A live stream may be long: the reading limits of a file default to an hour (the model's own
# limits are for one clip).
LIVE_MAX_SECONDS = 3600.0


def timestamp(seconds: float) -> str:
    """Seconds -> WebVTT ``HH:MM:SS.mmm``."""
    ms = int(round(max(0.0, seconds) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def write_vtt(path: str, finals: list[LiveEvent], duration_s: float | None = None) -> None:
    """The final texts as WebVTT cues, in order; a cue ends no later than ``duration_s`` and
    starts no earlier than the previous one ends (segments do not overlap; this only guards the
    millisecond rounding). Written to a temporary file, then renamed."""
    lines = ["WEBVTT", ""]
    last = 0.0
    for ev in finals:
        if not ev.text.strip():
            continue
        start, end = max(ev.start_s, last), ev.end_s
        if duration_s is not None:
            end = min(end, duration_s)
        if end <= start:
            continue
        lines += [timestamp(start) + " --> " + timestamp(end), ev.text.replace("-->", "->"), ""]
        last = end
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)


def file_frames(path: str, translator_prep, realtime: bool) -> Iterator[tuple[float, Any]]:
    """(time, av.VideoFrame) of a video file, within the reading limits; with ``realtime``,
    each frame is held back until its time has come on the wall clock."""
    from hfa_jax.data import video as video_lib

    start_wall = None
    t0 = 0.0
    for t, frame in video_lib._decode(path, translator_prep):  # noqa: SLF001: the hardened reader
        if realtime:
            if start_wall is None:
                start_wall, t0 = time.monotonic(), t
            wait = (t - t0) - (time.monotonic() - start_wall)
            if wait > 0:
                time.sleep(wait)
        yield t, frame


def open_camera(index: int) -> Any:
    """Camera ``index`` opened with PyAV (an ``av`` input container); UserError in one line when
    it cannot be opened (no such device, no permission, no v4l2/avfoundation input in FFmpeg)."""
    import av

    if sys.platform == "darwin":
        target, fmt, options = str(index), "avfoundation", {"framerate": "30"}
    else:
        target, fmt, options = f"/dev/video{index}", "v4l2", {}
    try:
        container = av.open(target, format=fmt, options=options)
        if not container.streams.video:
            raise ValueError("it has no video stream")
    except (av.FFmpegError, OSError, ValueError) as e:
        reason = (str(getattr(e, "strerror", None) or e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"--camera {index}: cannot open {target} with FFmpeg's {fmt} input ({reason})") from None
    return container


def camera_frames(container: Any) -> Iterator[tuple[float, Any]]:
    """(time since the first frame, av.VideoFrame) from an opened camera, until Ctrl-C."""
    with container:
        stream = container.streams.video[0]
        t_first = None
        for i, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else i / 25.0
            t_first = t if t_first is None else t_first
            yield t - t_first, frame


def run(live: LiveTranslator, frames: Iterator[tuple[float, Any]], out: TextIO, err: TextIO | None) -> list[LiveEvent]:
    """Streams ``frames`` through ``live``, printing each final line to ``out`` (and partials to
    ``err``); returns the final events. Ctrl-C ends the stream (the open segment is closed)."""
    finals: list[LiveEvent] = []

    def show(events: list[LiveEvent]) -> None:
        for ev in events:
            if ev.kind == "final":
                finals.append(ev)
                print(f"[{timestamp(ev.start_s)} --> {timestamp(ev.end_s)}] {ev.text}", file=out, flush=True)
            elif err is not None:
                print(f"~ [{timestamp(ev.start_s)} ...] {ev.text}", file=err, flush=True)

    try:
        for t, frame in frames:
            show(live.push(frame, t))
    except KeyboardInterrupt:
        pass
    show(live.finish())
    return finals


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (see --help)")


@cli_main
def main(argv: list[str] | None = None) -> None:
    d = ActivityParams()
    p = _Parser(description="Live sign language translation of a video file or a camera.")
    p.add_argument("--model", required=True, help="an exported model folder or a fine-tuning workdir")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="a video file")
    src.add_argument("--camera", type=int, help="a camera number (Linux: /dev/videoN)")
    p.add_argument("--realtime", action="store_true", help="play a file at its frame rate")
    p.add_argument("--vtt", default="", help="write the transcript as WebVTT subtitles here")
    p.add_argument("--partials", action="store_true", help="print running hypotheses on standard error")
    p.add_argument("--partial_every", type=int, default=8, help="frames between running hypotheses")
    p.add_argument("--mode", choices=("activity", "fixed"), default="activity", help="how the stream is cut")
    p.add_argument("--on", type=float, default=d.on, help="activity: motion energy that opens a segment")
    p.add_argument("--off", type=float, default=d.off, help="activity: motion energy counted as rest")
    p.add_argument("--min_rest_s", type=float, default=d.min_rest_s, help="activity: rest that closes a segment")
    p.add_argument("--min_segment_s", type=float, default=d.min_segment_s, help="activity: shorter segments are dropped")
    p.add_argument("--max_segment_s", type=float, default=d.max_segment_s,
                   help="activity: longest segment (0: the model's frame limit)")
    p.add_argument("--window_s", type=float, default=0.0, help="fixed: window length (0: the model's frame limit)")
    p.add_argument("--max_seconds", type=float, default=LIVE_MAX_SECONDS, help="longest file read")
    args = p.parse_args(argv)
    if args.input is not None and not os.path.isfile(args.input):
        raise UserError(f"--input {args.input}: no such file")
    if args.partial_every < 0:
        raise UserError("--partial_every must be >= 0")
    camera = open_camera(args.camera) if args.camera is not None else None  # fails before the model loads
    from hfa_jax.translator import Translator

    tr = Translator.from_pretrained(args.model)
    try:
        prep = tr.preprocessing.with_limits(max_seconds=args.max_seconds,
                                            max_source_frames=int(args.max_seconds * 240) + 1)
        seg = (FixedParams(args.window_s) if args.mode == "fixed" else
               ActivityParams(on=args.on, off=args.off, min_rest_s=args.min_rest_s, min_segment_s=args.min_segment_s,
                              max_segment_s=args.max_segment_s, tail_s=min(d.tail_s, args.min_rest_s)))
    except DataError as e:
        raise UserError(str(e)) from None
    t0 = time.perf_counter()
    live = LiveTranslator(tr, seg, partial_every=args.partial_every if args.partials else 0)
    print(f"# model {args.model} (step {tr.step}); warm-up {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    frames = camera_frames(camera) if camera is not None else file_frames(args.input, prep, args.realtime)
    finals = run(live, frames, sys.stdout, sys.stderr if args.partials else None)
    if args.vtt:
        write_vtt(args.vtt, finals, live.n / live.prep.fps)
        print(f"# wrote {args.vtt} ({len(finals)} cues)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
