"""Live translation: frames in as they arrive, sentences out as the signer pauses.

    from hfa_jax import Translator
    from hfa_jax.live_translator import LiveTranslator
    live = LiveTranslator(Translator.from_pretrained("my_model"))   # warms up at start
    for frame in camera:                                           # [H, W, 3] uint8 RGB, any size
        for event in live.push(frame):                             # or live.push(frame, t=seconds)
            print(event.kind, f"{event.start_s:.2f}-{event.end_s:.2f}", event.text)
    for event in live.finish():                                    # closes the open segment
        ...

The model was trained on one sentence per clip, so the stream is cut into segments and each
segment is translated as a clip:

* **activity** mode (the default, :class:`ActivityParams`): the motion energy of the frames
  themselves, no extra model. Each frame (after the model's own crop and resize) is turned grey
  and shrunk to at most ``grid x grid`` by block means; its energy is the mean absolute
  difference to the previous frame (grey levels, 0-255), averaged over the last ``smooth``
  frames. A segment opens when the energy reaches ``on`` (it starts ``smooth - 1 + pre_roll``
  frames earlier, to catch the onset the average delays) and closes once it has stayed below
  ``off`` for ``min_rest_s`` (it ends where the rest began, plus ``tail_s``), or when it reaches
  ``max_segment_s``. ``on > off`` is the hysteresis: a hand drifting at rest does not toggle it.
  Segments shorter than ``min_segment_s`` are dropped (a twitch, a camera bump).
* **fixed** mode (:class:`FixedParams`): back-to-back windows of ``window_s`` seconds, whatever
  the frames show.

Events (:class:`LiveEvent`): while a segment is open and at least ``min_segment_s`` long, a
``partial`` hypothesis (the segment so far, translated) every ``partial_every`` frames (the first
once it is ``max(min_segment_s, partial_every frames)`` long); when it
closes, its ``final`` text. A final text is exactly what :class:`~hfa_jax.translator.Translator`
gives for the segment's frames as a clip: the same frames (the same crop and resize, the same
frame-rate rule as :mod:`hfa_jax.data.video`), the same compiled programs.

**Time.** Frames pushed without a time are taken to be at the model's frame rate (``fps``);
with ``t`` (seconds, e.g. a camera's or a file's timestamps) they are resampled to it by nearest
timestamp, the rule :func:`hfa_jax.data.video.resample_indices` applies to files, frame by frame.
Event times are stream seconds: output frame ``k`` is at ``k / fps``.

**Latency.** Translations run inside :meth:`LiveTranslator.push`, on the caller's thread; every
shape (one per frame bucket of the model) is compiled by :meth:`LiveTranslator.warm_up` at start,
so no push waits on a compile. A final text comes ``min_rest_s`` of stream time after the signing
stops (the rest that closes the segment) plus its compute time (``LiveEvent.compute_s``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterable

import numpy as np
from PIL import Image

from hfa_jax.data import video as video_lib
from hfa_jax.errors import DataError

__all__ = ["ActivityParams", "FixedParams", "LiveEvent", "LiveTranslator", "motion_energy", "grey_grid", "boundary_scores"]


@dataclasses.dataclass(frozen=True)
class ActivityParams:
    """Cut on signing activity (motion energy). Energies are grey levels (0-255) of mean absolute
    frame difference on a ``grid x grid`` grey image; durations are seconds of stream time."""

    on: float = 2.0            # open a segment when the smoothed energy reaches this
    off: float = 1.0           # ... and count rest while it is below this (off <= on)
    smooth: int = 3            # frames averaged (causal moving mean)
    grid: int = 32             # grey image side, at most (block means of the model's frame)
    min_rest_s: float = 0.32   # rest that closes a segment
    min_segment_s: float = 0.4  # shorter segments are dropped
    max_segment_s: float = 0.0  # a segment is cut at this length (0: the model's frame limit)
    pre_roll: int = 1          # extra frames kept before the detected onset
    tail_s: float = 0.08       # rest kept after the end of the motion (at most min_rest_s)

    def check(self) -> None:
        if not 0 <= self.off <= self.on:
            raise DataError(f"activity: need 0 <= off <= on, got off={self.off:g}, on={self.on:g}")
        if self.smooth < 1 or self.grid < 1 or self.pre_roll < 0:
            raise DataError("activity: smooth and grid must be >= 1, pre_roll >= 0")
        if self.min_rest_s <= 0 or self.min_segment_s < 0 or self.max_segment_s < 0:
            raise DataError("activity: min_rest_s must be > 0, min_segment_s and max_segment_s >= 0")
        if not 0 <= self.tail_s <= self.min_rest_s:
            raise DataError(f"activity: tail_s={self.tail_s:g} must be from 0 to min_rest_s={self.min_rest_s:g}")


@dataclasses.dataclass(frozen=True)
class FixedParams:
    """Back-to-back windows of ``window_s`` seconds (0: the model's frame limit)."""

    window_s: float = 0.0

    def check(self) -> None:
        if self.window_s < 0:
            raise DataError(f"fixed: window_s={self.window_s:g} must be >= 0")


@dataclasses.dataclass
class LiveEvent:
    """One output of the stream.

    kind: ``"partial"`` (the open segment so far) or ``"final"`` (a closed segment). segment:
    its number (0, 1, ...). start_s / end_s: stream seconds of its frames ``[start, end)``.
    frames: their indices ``(start, end)`` at the model's rate. compute_s: seconds spent
    translating it. emitted_at_s: the stream time at which the event was emitted (the frame
    that triggered it); ``emitted_at_s - end_s`` is the stream-time delay of a final text."""

    kind: str
    segment: int
    text: str
    start_s: float
    end_s: float
    frames: tuple[int, int]
    compute_s: float
    emitted_at_s: float


def grey_grid(frame: np.ndarray, grid: int) -> np.ndarray:
    """``[S, S, 3] uint8`` -> ``[g, g] float32`` grey (ITU-R 601 luma) block means, ``g <= grid``
    (blocks of ``ceil(S / grid)`` pixels; the remainder rows and columns are left out)."""
    grey = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    b = max(1, -(-grey.shape[0] // grid))
    h, w = grey.shape[0] // b, grey.shape[1] // b
    return grey[: h * b, : w * b].reshape(h, b, w, b).mean(axis=(1, 3))


def motion_energy(frames: np.ndarray, grid: int = 32) -> np.ndarray:
    """``[T, S, S, 3]`` -> ``[T]`` mean absolute difference of consecutive grey grids (0 for the
    first frame): the unsmoothed energy of :class:`ActivityParams`."""
    out = np.zeros(len(frames), np.float32)
    prev = None
    for i, f in enumerate(frames):
        g = grey_grid(f, grid)
        if prev is not None:
            out[i] = float(np.abs(g - prev).mean())
        prev = g
    return out


class _StreamResampler:
    """Frames with timestamps -> frames at ``fps`` by nearest timestamp (ties to the earlier),
    as :func:`hfa_jax.data.video.resample_indices`, one frame at a time. A frame whose time is
    not after the previous one's is dropped."""

    def __init__(self, fps: float):
        self.fps = fps
        self.t0: float | None = None
        self.prev: tuple[float, Any] | None = None
        self.next_k = 0
        self.dropped = 0

    def push(self, t: float, frame: Any) -> list[Any]:
        if self.t0 is None:
            self.t0 = t
        rel = t - self.t0
        if self.prev is not None and rel <= self.prev[0]:
            self.dropped += 1
            return []
        out = []
        if self.prev is not None:
            a = self.prev[0]
            while (self.next_k / self.fps - a) <= (rel - self.next_k / self.fps) + 1e-6:
                out.append(self.prev[1])
                self.next_k += 1
        self.prev = (rel, frame)
        return out

    def finish(self) -> list[Any]:
        if self.prev is None:
            return []
        n_out = int(np.floor(self.prev[0] * self.fps + 0.5)) + 1
        out = [self.prev[1]] * max(0, n_out - self.next_k)
        self.next_k = max(self.next_k, n_out)
        self.prev = None
        return out


class LiveTranslator:
    """A :class:`~hfa_jax.translator.Translator` over a stream of frames (see the module docstring).

    ``segmentation``: :class:`ActivityParams` or :class:`FixedParams`. ``partial_every``: frames
    between partial hypotheses (0: none). ``warm_up``: compile every frame bucket now."""

    def __init__(self, translator, segmentation: ActivityParams | FixedParams | None = None, *,
                 partial_every: int = 8, warm_up: bool = True):
        self.translator = translator
        self.prep: video_lib.Preprocessing = translator.preprocessing
        self.params = segmentation if segmentation is not None else ActivityParams()
        self.params.check()
        if partial_every < 0:
            raise DataError(f"partial_every={partial_every} must be >= 0")
        self.partial_every = partial_every
        fps = self.prep.fps
        limit = self.prep.max_frames
        if isinstance(self.params, ActivityParams):
            p = self.params
            self.max_len = int(round(p.max_segment_s * fps)) if p.max_segment_s else limit
            self.min_len = int(round(p.min_segment_s * fps))
            self.min_rest = max(1, int(round(p.min_rest_s * fps)))
            self.tail = int(round(p.tail_s * fps))
        else:
            self.max_len = int(round(self.params.window_s * fps)) if self.params.window_s else limit
            self.min_len = 1
        self.max_len = max(1, self.max_len)
        self.reset()
        if warm_up:
            self.warm_up()

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forgets the stream (frames, open segment, numbering); compiled programs are kept."""
        self._resampler = _StreamResampler(self.prep.fps)
        self._frames: dict[int, np.ndarray] = {}  # index -> mapped frame (only what may be needed)
        self.n = 0                 # frames taken so far (at the model's rate)
        self._prev_grid: np.ndarray | None = None
        self._energy: list[float] = []
        self._open: int | None = None   # start frame of the open segment
        self._rest_from: int | None = None  # first frame of the current rest while open
        self._last_end = 0
        self._segments = 0
        self.energy_trace: list[float] = []  # smoothed energy per frame (for plots and tuning)
        self.segments: list[tuple[int, int]] = []  # closed segments (frame indices [start, end))
        self.last_segment: video_lib.Clip | None = None  # the frames of the last closed segment

    def warm_up(self) -> float:
        """Compiles the translation program of every frame bucket (up to the longest segment);
        returns the seconds it took."""
        t0 = time.perf_counter()
        s = self.prep.size
        longest = min(self.max_len, self.prep.max_frames)
        for b in self.translator.buckets:
            n = min(b, longest)
            self.translator.translate_clips([video_lib.Clip("", "warm-up", np.zeros((n, s, s, 3), np.uint8), None, (s, s),
                                                            fps_out=self.prep.fps)])
            if b >= longest:
                break
        return time.perf_counter() - t0

    # -- frames in -------------------------------------------------------------------------
    def _map(self, frame: Any) -> np.ndarray:
        if isinstance(frame, np.ndarray):
            if frame.ndim != 3 or frame.shape[2] not in (3, 4) or frame.dtype != np.uint8:
                raise DataError(f"a frame must be [H, W, 3] uint8 RGB, got {frame.shape} {frame.dtype}")
            if frame.shape[:2] == (self.prep.size, self.prep.size) and frame.shape[2] == 3 and \
                    self.prep.source_width == self.prep.source_height:
                return frame
            image = Image.fromarray(frame)
        elif isinstance(frame, Image.Image):
            image = frame
        else:  # an av.VideoFrame (PyAV), as hfa_jax.data.video reads files
            image = frame.to_image()
        return video_lib.map_frame(image, self.prep)

    def push(self, frame: Any, t: float | None = None) -> list[LiveEvent]:
        """One frame (``[H, W, 3] uint8`` RGB, a PIL image or a PyAV frame) -> the events it
        triggers. ``t``: its time in seconds (resampled to the model's rate); None: the next frame
        at the model's rate."""
        if t is None:
            return self._take(self._map(frame))
        events: list[LiveEvent] = []
        for f in self._resampler.push(float(t), frame):
            events += self._take(self._map(f))
        return events

    def push_many(self, frames: Iterable[Any]) -> list[LiveEvent]:
        events: list[LiveEvent] = []
        for f in frames:
            events += self.push(f)
        return events

    def finish(self) -> list[LiveEvent]:
        """End of stream (or a pause): the last timed frames, then the open segment closes (if long
        enough). Frames pushed afterwards continue the stream at the next frame index, with a new
        time base: the pause is not counted in the stream times."""
        events: list[LiveEvent] = []
        for f in self._resampler.finish():
            events += self._take(self._map(f))
        self._resampler = _StreamResampler(self.prep.fps)
        if self._open is not None:
            end = self.n
            if isinstance(self.params, ActivityParams) and self._rest_from is not None:
                end = min(self.n, self._rest_from + self.tail)
            events += self._close(end)
        return events

    # -- segmentation ------------------------------------------------------------------------
    def _take(self, mapped: np.ndarray) -> list[LiveEvent]:
        k = self.n
        self._frames[k] = mapped
        self.n += 1
        if isinstance(self.params, FixedParams):
            if self._open is None:
                self._open = k
            if self.n - self._open >= self.max_len:
                return self._close(self.n)
            return self._maybe_partial()
        p = self.params
        g = grey_grid(mapped, p.grid)
        self._energy.append(0.0 if self._prev_grid is None else float(np.abs(g - self._prev_grid).mean()))
        self._prev_grid = g
        e = float(np.mean(self._energy[-p.smooth:]))
        self.energy_trace.append(e)
        events: list[LiveEvent] = []
        if self._open is None:
            if e >= p.on and k > 0:
                # the moving mean lags: the motion began up to smooth - 1 frames ago
                self._open = max(self._last_end, k - (p.smooth - 1) - p.pre_roll, 0)
                self._rest_from = None
        else:
            if e < p.off:
                if self._rest_from is None:
                    self._rest_from = k
                if k + 1 - self._rest_from >= self.min_rest:
                    events += self._close(min(self.n, self._rest_from + self.tail))
            elif e >= p.on or self._rest_from is None:
                self._rest_from = None
        if self._open is not None and self.n - self._open >= self.max_len:
            events += self._close(self.n)
        if self._open is None:
            self._forget(keep_from=self.n - (p.smooth + p.pre_roll))
        else:
            events += self._maybe_partial()
        return events

    def _forget(self, keep_from: int) -> None:
        for i in [i for i in self._frames if i < keep_from]:
            del self._frames[i]

    def _clip(self, start: int, end: int) -> video_lib.Clip:
        frames = np.stack([self._frames[i] for i in range(start, end)])
        return video_lib.Clip("", f"segment{self._segments}", frames, None, (self.prep.size, self.prep.size),
                              fps_out=self.prep.fps)

    def clip(self, segment: tuple[int, int]) -> video_lib.Clip:
        """The frames of a segment still held (the last closed one is kept until the next opens)."""
        return self._clip(*segment)

    def _translate(self, start: int, end: int) -> tuple[str, float]:
        t0 = time.perf_counter()
        text = self.translator([self._clip(start, end)])[0]
        return text, time.perf_counter() - t0

    def _event(self, kind: str, start: int, end: int) -> LiveEvent:
        text, secs = self._translate(start, end)
        fps = self.prep.fps
        return LiveEvent(kind, self._segments, text, start / fps, end / fps, (start, end), secs, (self.n - 1) / fps)

    def _maybe_partial(self) -> list[LiveEvent]:
        assert self._open is not None
        length = self.n - self._open
        first = max(self.min_len, self.partial_every, 1)  # the first partial, then every partial_every
        if self.partial_every and length >= first and (length - first) % self.partial_every == 0:
            return [self._event("partial", self._open, self.n)]
        return []

    def _close(self, end: int) -> list[LiveEvent]:
        start, self._open, self._rest_from = self._open, None, None
        assert start is not None
        self._last_end = end
        if end - start < self.min_len:
            return []
        ev = self._event("final", start, end)
        self.segments.append((start, end))
        self.last_segment = self._clip(start, end)
        self._segments += 1
        if isinstance(self.params, FixedParams):
            self._forget(keep_from=end)
        return [ev]



def boundary_scores(predicted: list[tuple[float, float]], true: list[tuple[float, float]],
                    tolerance_s: float = 0.5) -> dict[str, float]:
    """Precision and recall of segment boundaries: every start and end (seconds) of ``predicted``
    is matched to at most one true boundary of the same kind within ``tolerance_s`` (greedy,
    nearest pairs first). Returns precision, recall, matched, predicted and true counts."""
    matched = 0
    for i in (0, 1):
        p = [s[i] for s in predicted]
        t = [s[i] for s in true]
        pairs = sorted((abs(a - b), j, m) for j, a in enumerate(p) for m, b in enumerate(t) if abs(a - b) <= tolerance_s)
        used_p: set[int] = set()
        used_t: set[int] = set()
        for _, j, m in pairs:
            if j not in used_p and m not in used_t:
                used_p.add(j)
                used_t.add(m)
                matched += 1
    n_p, n_t = 2 * len(predicted), 2 * len(true)
    return {"precision": matched / n_p if n_p else 1.0, "recall": matched / n_t if n_t else 1.0,
            "matched": matched, "predicted": n_p, "true": n_t}
