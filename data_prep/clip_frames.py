"""Cut one sentence out of a video file and return its frames, encoded, with bounded memory.

Used by ``data_prep.build_dataset`` for the corpora that ship videos and times (How2Sign,
OpenASL, YouTube-ASL: :mod:`hfa_jax.data.asl_annotations`). Each decoded frame is resized to the
stored size and encoded at once, so memory holds one full-size frame at a time plus the encoded
clip (about ``max_frames`` x 15 kB of JPEG at 256 x 256), whatever the file's resolution or length.

Frame choice is a bounded rule over the decoded stream: the decoder seeks to the key frame before
``start``, frames before ``start`` are dropped, decoding stops at the first frame at or after
``end`` (or after ``max_frames`` kept frames, or ``max_decoded`` decoded ones). With ``fps`` set,
a frame is kept when its timestamp reaches the next multiple of ``1 / fps`` from the clip start
(so a 30 fps source read at 25 fps drops one frame in six); nothing is ever allocated from what
the file's timestamps claim.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from PIL import Image

# PyAV raises its own error classes; every one derives from av.FFmpegError or OSError/ValueError.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, EOFError)


@dataclasses.dataclass(frozen=True)
class ClipLimits:
    """Bounds of one clip: kept frames, decoded frames, and the longest cut in seconds."""

    max_frames: int = 1024
    max_decoded: int = 20_000
    max_seconds: float = 120.0
    fps: float | None = None  # None: every frame of the source


class ClipError(Exception):
    """A clip that cannot be cut: the message is one line (what is wrong, what to do)."""


def cut_clip(path: str, start: float | None, end: float | None,
             encode: Callable[[Image.Image], bytes], limits: ClipLimits = ClipLimits()) -> list[bytes]:
    """Frames of ``path`` in ``[start, end)`` seconds, each passed through ``encode`` (a PIL RGB
    image -> bytes). Raises :class:`ClipError` for an unreadable file, times outside the video,
    or a cut longer than the limits."""
    import av  # lazy: PyAV loads FFmpeg

    if start is not None and end is not None and end - start > limits.max_seconds:
        raise ClipError(f"cut of {end - start:.1f}s is longer than the {limits.max_seconds:.0f}s "
                        "limit; split the sentence or raise --max_clip_seconds")
    frames: list[bytes] = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ClipError("no video stream in the file; re-download it")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            duration = (float(container.duration) / 1e6 if container.duration else None)
            if start is not None and duration is not None and start >= duration:
                raise ClipError(f"start time {start:.2f}s is beyond the video's end "
                                f"({duration:.2f}s); check the times or the downloaded file")
            if start is not None and start > 0 and stream.time_base:
                container.seek(int(start / float(stream.time_base)), stream=stream, backward=True)
            step = 1.0 / limits.fps if limits.fps else None
            next_t = start or 0.0
            decoded = 0
            for frame in container.decode(stream):
                decoded += 1
                if decoded > limits.max_decoded:
                    raise ClipError(f"more than {limits.max_decoded} frames decoded for one clip; "
                                    "the file's timestamps are broken, re-encode it")
                t = frame.time
                if t is None:
                    t = next_t
                if start is not None and t < start - 1e-6:
                    continue
                if end is not None and t >= end - 1e-6:
                    break
                if step is not None:
                    if t < next_t - 1e-6:
                        continue
                    while next_t <= t + 1e-6:
                        next_t += step
                if len(frames) >= limits.max_frames:
                    break
                frames.append(encode(frame.to_image()))
    except ClipError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV's error classes vary with FFmpeg; report one line
        if not isinstance(e, _DECODE_ERRORS) and type(e).__module__.split(".")[0] != "av":
            raise
        raise ClipError(f"video unreadable ({type(e).__name__}: {str(e)[:80]}); re-download it") from None
    if not frames:
        where = (f"in [{start:.2f}s, {end:.2f}s)" if start is not None and end is not None
                 else "in the file")
        raise ClipError(f"no frames {where}; check the times or the downloaded file")
    return frames
