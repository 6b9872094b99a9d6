"""Anyone's video in: a video file or a folder of frames -> the frames a model was trained on.

The rules (:class:`Preprocessing`, stored with an exported model as ``preprocessing.json``):

1. **Frame rate.** A video file is resampled in time to the training rate (PHOENIX14T and
   SynthSign: 25 fps) by nearest timestamp: output frame ``k`` is the decoded frame whose
   presentation time is nearest to ``k / fps`` (ties to the earlier frame). Slower videos repeat
   frames, faster ones drop frames; a 25 fps video keeps every frame. A folder of frames has no
   timestamps and is taken to be at the training rate already. The rule runs over the decoded
   stream as it comes (:class:`_Resampler`): a frame whose timestamp is not after the previous
   frame's is dropped, and nothing is allocated for what the timestamps claim.
2. **Aspect and size (the crop rule).** The largest centred box of the training videos' aspect
   (PHOENIX14T: 210 wide x 260 high) is cut out of each frame, then resized to the stored square
   size (``size x size``, bicubic, Pillow) exactly as ``data_prep.build_dataset`` resized the
   training frames. A frame already at the training aspect is only resized; a landscape webcam
   frame loses its left and right margins (keep the signer centred). The model then takes the
   centre ``crop_size`` square, as in evaluation (:func:`hfa_jax.data.augment.augment`).
3. **Colour.** Every frame is converted to 8-bit RGB (FFmpeg's ``rgb24``; Pillow's ``RGB`` for
   image files), whatever the pixel format or the alpha channel.

4. **Length.** Only the frames the model reads are kept (:func:`select_frames`: the first
   ``max_frames``, or an evenly spaced subset); each is cut and resized as soon as it is decoded,
   so no full-size frame is kept. An evenly spaced subset of a clip longer than ``max_frames``
   needs its length first: such a video is decoded twice (the first pass keeps nothing).

**Limits** (fields of :class:`Preprocessing`, changed in ``preprocessing.json`` or by the
``--max_seconds``, ``--max_source_frames`` and ``--max_pixels`` flags): ``max_seconds`` of video
(by its timestamps), ``max_source_frames`` decoded frames (or image files in a frame folder) and
``max_pixels`` per frame. A clip over a limit is refused with one line naming the limit.

**Memory.** Reading one clip holds at most: the kept frames, written in place into one array
(``max_frames * size * size * 3`` bytes: 59 MB at HFA's 300 x 256 px, 0.3 MB at the demo's
32 x 54 px), one decoded frame and its RGB copy at the source size (at most ``max_pixels``:
4.5 * 8.3 M = 37 MB at 4K) and FFmpeg's decoder buffers (a few frames at the source size). It
does not grow with the clip's length (tests/apps/test_video.py measures it).

Bad inputs raise :class:`hfa_jax.errors.DataError` with one line naming the file; inputs far from
the training data (very short, longer than the frame limit, an extreme aspect, a tiny frame) are
read, with one-line warnings in :attr:`Clip.warnings`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from hfa_jax.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".ogv")
# Below this many frames at the training rate a clip is "very short" (PHOENIX14T's shortest
# training clips have ~16 frames, about 0.6 s).
MIN_FRAMES = 16
# The crop rule keeps less than this fraction of the frame's width or height: "extreme aspect".
MIN_KEPT_FRACTION = 0.4


# Defaults of the reading limits (docs/using_a_model.md): 2 minutes of video, 10 000 decoded
# frames (2 min at 83 fps), 4K UHD frames.
MAX_SECONDS = 120.0
MAX_SOURCE_FRAMES = 10_000
MAX_PIXELS = 3840 * 2160
# Fields added after the first model folders were written: absent means the default.
OPTIONAL_FIELDS = ("max_seconds", "max_source_frames", "max_pixels")
# Sane ranges of each field (inclusive): a preprocessing.json outside them is refused, as it
# would make reading allocate without bound (fps 1e9, max_frames 1e9, size 1e6).
RANGES: dict[str, tuple[float, float]] = {
    "fps": (1.0, 240.0), "source_width": (1, 16384), "source_height": (1, 16384), "size": (8, 1024),
    "crop_size": (8, 1024), "max_frames": (1, 10_000), "max_seconds": (0.1, 24 * 3600.0),
    "max_source_frames": (1, 10_000_000), "max_pixels": (64, 1 << 28),
}


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its input frames (see the module docstring for the rules).

    fps: the training frame rate. source_width / source_height: the training videos' frame size,
    whose aspect the crop rule restores. size: the stored square frame size. crop_size: the
    model's input crop. max_frames / frame_selection: the frame limit and which frames a longer
    clip keeps ("first": the first max_frames, as HFA trains; otherwise an evenly spaced subset,
    the deterministic form of the random subsample the model trained on). max_seconds /
    max_source_frames / max_pixels: the reading limits (a clip over one is refused)."""

    fps: float = 25.0
    source_width: int = 210
    source_height: int = 260
    size: int = 256
    crop_size: int = 224
    max_frames: int = 300
    frame_selection: str = "first"
    max_seconds: float = MAX_SECONDS
    max_source_frames: int = MAX_SOURCE_FRAMES
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        self.check()

    def check(self, where: str = "preprocessing") -> None:
        """Raises DataError (one line naming the field) for a value outside :data:`RANGES`."""
        for name, (lo, hi) in RANGES.items():
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
                raise DataError(f"{where}: {name}={v!r} is out of range; it must be a number from {lo:g} to {hi:g}")
        if self.crop_size > self.size:
            raise DataError(f"{where}: crop_size={self.crop_size} is larger than size={self.size}")
        if not isinstance(self.frame_selection, str):
            raise DataError(f"{where}: frame_selection={self.frame_selection!r} must be a string")

    @property
    def aspect(self) -> float:
        """Training aspect, width / height."""
        return self.source_width / self.source_height

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "resize": "bicubic (Pillow)", "colour": "RGB uint8",
                "crop_rule": "largest centred box of aspect source_width:source_height, resized to "
                             "size x size; the model takes the centre crop_size square",
                "resample": "nearest timestamp to k / fps (frame folders: taken as fps already)"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "preprocessing") -> "Preprocessing":
        if not isinstance(d, Mapping):
            raise DataError(f"{where}: expected a JSON object of preprocessing fields, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(d) - set(OPTIONAL_FIELDS))
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}")
        default = cls()
        values = {}
        for k in names & set(d):
            kind = type(getattr(default, k))
            v = d[k]
            # JSON numbers only (a bool is an int to Python); an int field takes a whole float
            ok = isinstance(v, str) if kind is str else (isinstance(v, (int, float)) and not isinstance(v, bool))
            if ok and kind is int and isinstance(v, float):
                ok = v.is_integer()
            if not ok:
                raise DataError(f"{where}: {k}={v!r} is not a {'string' if kind is str else 'number'}")
            values[k] = kind(v)
        try:
            return cls(**values)
        except DataError as e:  # name the file, not "preprocessing"
            raise DataError(f"{where}: {str(e).split(': ', 1)[1]}") from None

    def with_limits(self, *, max_seconds: float | None = None, max_source_frames: int | None = None,
                    max_pixels: int | None = None) -> "Preprocessing":
        """A copy with the given reading limits changed (None: unchanged); DataError if out of range."""
        change = {k: v for k, v in (("max_seconds", max_seconds), ("max_source_frames", max_source_frames),
                                    ("max_pixels", max_pixels)) if v is not None}
        return dataclasses.replace(self, **change)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def load(cls, path: str) -> "Preprocessing":
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read the preprocessing file ({e})") from None
        return cls.from_dict(d, path)


@dataclasses.dataclass
class Clip:
    """One input, read and preprocessed.

    name: the file's or folder's name without extension. frames: ``[T, size, size, 3] uint8``,
    the frames the model reads: at the training rate, after the frame limit
    (:func:`select_frames`). num_frames: the clip's length at the training rate before the frame
    limit. source_fps: the file's rate (None for a frame folder). source_size: (width, height)
    of the input frames. warnings: one-line notes on how far the input is from the training data."""

    path: str
    name: str
    frames: np.ndarray
    source_fps: float | None
    source_size: tuple[int, int]
    warnings: list[str] = dataclasses.field(default_factory=list)
    fps_out: float = 25.0
    num_frames: int = -1  # -1: len(frames) (a clip made by hand, before any frame limit)

    def __post_init__(self) -> None:
        if self.num_frames < 0:
            self.num_frames = len(self.frames)

    @property
    def seconds(self) -> float:
        """The clip's length (s) at the training rate, before the frame limit."""
        return self.num_frames / max(self.fps_out, 1e-9)


def crop_box(width: int, height: int, aspect: float) -> tuple[int, int, int, int]:
    """The largest centred box of ``aspect`` (width / height) in a ``width x height`` frame, as
    Pillow's ``(left, top, right, bottom)``."""
    if width / height > aspect:  # too wide: cut the sides
        w = min(width, max(1, int(round(height * aspect))))
        left = (width - w) // 2
        return left, 0, left + w, height
    h = min(height, max(1, int(round(width / aspect))))
    top = (height - h) // 2
    return 0, top, width, top + h


def map_frame(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """One frame -> ``[size, size, 3] uint8`` RGB: the crop rule, then a bicubic resize."""
    image = image.convert("RGB")
    box = crop_box(image.width, image.height, prep.aspect)
    if box != (0, 0, image.width, image.height):
        image = image.crop(box)
    if image.size != (prep.size, prep.size):
        image = image.resize((prep.size, prep.size), Image.Resampling.BICUBIC)
    return np.asarray(image, np.uint8)


def resample_indices(times: Sequence[float], fps: float) -> np.ndarray:
    """Frame presentation times (seconds, ascending) -> the index of the source frame to use for
    each output frame ``k / fps``, ``k = 0 .. round((last - first) * fps)`` (nearest time, ties
    to the earlier frame)."""
    t = np.asarray(times, np.float64) - float(times[0])
    n_out = int(np.floor(t[-1] * fps + 0.5)) + 1
    target = np.arange(n_out) / fps
    right = np.clip(np.searchsorted(t, target, side="left"), 0, len(t) - 1)
    left = np.clip(right - 1, 0, len(t) - 1)
    # 1e-6 s: container timestamps are rounded to their time base
    take_left = (target - t[left]) <= (t[right] - target) + 1e-6
    return np.where(take_left, left, right)


def is_video_file(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(VIDEO_EXTS)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        raise DataError(f"{path}: cannot read this folder ({e.strerror or e}); check its permissions") from None


def frame_files(folder: str) -> list[str]:
    """The image files directly in ``folder``, sorted by name."""
    return [os.path.join(folder, f) for f in _listdir(folder) if f.lower().endswith(IMAGE_EXTS)]


def list_inputs(path: str) -> list[str]:
    """What ``--input`` names -> the clips to translate: a video file or a frame folder is one
    clip; a folder of video files and/or frame folders is many (sorted by name). Other files in
    such a folder are ignored; a path that does not exist raises DataError."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such file or folder; pass a video file, a folder of frames or a "
                        "folder of either")
    if frame_files(path):
        return [path]
    out = []
    for name in _listdir(path):
        p = os.path.join(path, name)
        if p.lower().endswith(VIDEO_EXTS) and os.path.isfile(p):
            out.append(p)
        elif os.path.isdir(p) and frame_files(p):
            out.append(p)
    if not out:
        raise DataError(f"{path}: no video files ({', '.join(VIDEO_EXTS)}) or frame folders "
                        f"({'/'.join(IMAGE_EXTS)} images) in this folder")
    return out


def clip_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    return os.path.splitext(base)[0] if os.path.isfile(path) else base


def input_key(path: str, root: str) -> str:
    """The name an input is filed under in outputs (TSV rows, ``--explain`` pictures): its path
    relative to ``root`` (what ``--input`` named), extension kept, so ``a/``, ``a.mp4`` and
    ``a.mov`` in one folder stay apart; ``root`` itself (one input) -> its base name."""
    path, root = os.path.normpath(path), os.path.normpath(root)
    if path == root:
        return os.path.basename(os.path.abspath(path))
    return os.path.relpath(path, root).replace(os.sep, "/")


def read_clip(path: str, prep: Preprocessing) -> Clip:
    """A video file or a folder of frames -> :class:`Clip` (the rules of the module docstring).

    Raises DataError (one line, naming the file) for a missing path, a file that is not a video,
    a video without frames, a corrupt file, an unreadable folder or image, and a clip over one of
    the reading limits (naming the limit)."""
    if os.path.isdir(path):
        frames, n, size = _read_folder(path, prep)
        clip = Clip(path, clip_name(path), frames, None, size, fps_out=prep.fps, num_frames=n)
        notes: list[str] = []
    elif os.path.isfile(path):
        frames, n, size, fps, notes = _read_video(path, prep)
        clip = Clip(path, clip_name(path), frames, fps, size, fps_out=prep.fps, num_frames=n)
    else:
        raise DataError(f"{path}: no such file or folder; pass a video file or a folder of frames")
    clip.warnings = notes + input_warnings(clip, prep)
    return clip


def _limit(path: str, what: str, name: str, value: float, flag: str) -> DataError:
    """The one-line refusal of a clip over a reading limit: which limit, and how to change it."""
    return DataError(f"{path}: {what}, over the limit {name}={value:g}; raise it with --{flag} or in the "
                     f"model's preprocessing.json if the clip is meant to be read")


def kept_indices(n: int, prep: Preprocessing) -> np.ndarray:
    """Which of ``n`` frames at the training rate the model reads (the rule of :func:`select_frames`)."""
    if n <= prep.max_frames:
        return np.arange(n)
    if prep.frame_selection == "first":  # HFA: the first max_frames frames
        return np.arange(prep.max_frames)
    # trained on random subsamples: an evenly spaced one (deterministic)
    return np.linspace(0, n - 1, prep.max_frames).round().astype(int)


def _read_folder(path: str, prep: Preprocessing) -> tuple[np.ndarray, int, tuple[int, int]]:
    files = frame_files(path)
    if not files:
        raise DataError(f"{path}: no {'/'.join(IMAGE_EXTS)} frames in this folder")
    if len(files) > prep.max_source_frames:
        raise _limit(path, f"{len(files)} frame files", "max_source_frames", prep.max_source_frames,
                     "max_source_frames")
    keep = {int(k): j for j, k in enumerate(kept_indices(len(files), prep))}  # file index -> row
    frames: np.ndarray | None = None
    size = None
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:  # reads the header only: the size is checked before the pixels
                if size is None:
                    size = im.size
                    if size[0] * size[1] > prep.max_pixels:
                        raise _limit(f, f"{size[0]}x{size[1]} frames", "max_pixels", prep.max_pixels, "max_pixels")
                elif im.size != size:
                    raise DataError(f"{f}: frame is {im.size[0]}x{im.size[1]}, the folder's first frame "
                                    f"is {size[0]}x{size[1]}; all frames of a clip must have one size")
                if i in keep:
                    im.load()
                    mapped = map_frame(im, prep)
                    if frames is None:  # written in place, as the video reader does
                        frames = np.empty((len(keep),) + mapped.shape, mapped.dtype)
                    frames[keep[i]] = mapped
        except DataError:
            raise
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{f}: not a readable image ({e})") from None
    assert size is not None and frames is not None
    return frames, len(files), size


def _decode(path: str, prep: Preprocessing) -> Iterator[tuple[float, Any]]:
    """(time in seconds, av.VideoFrame) of the first video stream, in decoding order (FFmpeg's
    decoders return frames in presentation order), within the reading limits."""
    import av  # PyAV: a runtime dependency, imported here as it loads FFmpeg

    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OverflowError, UnicodeError, MemoryError) as e:
        raise DataError(f"{path}: not a video file that FFmpeg can read ({_reason(e)})") from None
    with container:
        if not container.streams.video:
            raise DataError(f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # FFmpeg has no decoder for what the header names
            raise DataError(f"{path}: FFmpeg has no decoder for the codec of its video stream")
        w, h = stream.codec_context.width or 0, stream.codec_context.height or 0
        if w * h > prep.max_pixels:
            raise _limit(path, f"{w}x{h} frames", "max_pixels", prep.max_pixels, "max_pixels")
        # FFmpeg's own guard, for frames larger than the header says (checked again below)
        stream.codec_context.options = {"max_pixels": str(prep.max_pixels)}
        declared = (container.duration or 0) / 1e6  # AV_TIME_BASE: microseconds
        if declared > prep.max_seconds:
            raise _limit(path, f"the file says it lasts {declared:.0f} s", "max_seconds", prep.max_seconds,
                         "max_seconds")
        stream.thread_type = "AUTO"
        tb = stream.time_base
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        decoded = 0
        try:
            for frame in container.decode(stream):
                decoded += 1
                if decoded > prep.max_source_frames:
                    raise _limit(path, f"more than {prep.max_source_frames} frames", "max_source_frames",
                                 prep.max_source_frames, "max_source_frames")
                if frame.width * frame.height > prep.max_pixels:
                    raise _limit(path, f"{frame.width}x{frame.height} frames", "max_pixels", prep.max_pixels,
                                 "max_pixels")
                if frame.pts is not None and tb is not None:
                    t = float(frame.pts * tb)
                else:  # no timestamps: the stream's nominal rate
                    t = (decoded - 1) / rate
                yield t, frame
        except (av.FFmpegError, ValueError, OverflowError, ZeroDivisionError, MemoryError) as e:
            raise DataError(f"{path}: the video is corrupt after {decoded} frame(s) ({_reason(e)}); "
                            "re-encode or re-download it") from None


def _reason(e: Exception) -> str:
    return (str(getattr(e, "strerror", None) or e).strip().splitlines() or [type(e).__name__])[0]


class _Resampler:
    """The frame-rate rule of :func:`resample_indices`, over a stream of (time, frame): output
    frame ``k`` is the frame nearest to ``k / fps`` (ties to the earlier). Frames arrive one at a
    time; each output frame is settled as soon as the next frame's time is known, and only the
    wanted ones (``keep``, ascending output indices) are mapped and held. Output frames that a
    gap in the timestamps repeats are counted, not allocated."""

    def __init__(self, fps: float, keep: np.ndarray, map_fn: Any):
        self.fps, self.keep, self.map_fn = fps, np.asarray(keep, np.int64), map_fn
        self.t0: float | None = None
        self.prev: tuple[float, Any] | None = None  # (time since the first frame, frame)
        self.next_k = 0   # the first output frame not yet settled
        # the kept frames, written in place: pages past the last one written are never touched
        self.out: np.ndarray | None = None
        self.n = 0        # kept frames written
        self.count = 0    # frames taken (not dropped)
        self.dropped = 0  # frames whose time was not after the previous frame's

    def _emit(self, frame: Any, stop: int) -> None:
        """Output frames ``next_k .. stop - 1`` show ``frame``."""
        lo, hi = np.searchsorted(self.keep, [self.next_k, stop])
        if hi > lo:
            mapped = np.asarray(self.map_fn(frame))
            if self.out is None:
                self.out = np.empty((len(self.keep),) + mapped.shape, mapped.dtype)
            self.out[self.n: self.n + hi - lo] = mapped
            self.n += int(hi - lo)
        self.next_k = max(self.next_k, stop)

    @property
    def frames(self) -> np.ndarray:
        """The kept frames so far, ``[n, ...]``."""
        return self.out[: self.n] if self.out is not None else np.zeros((0,))

    def push(self, t: float) -> bool:
        """Time of the next decoded frame -> whether it is taken (call :meth:`take` with it)."""
        if self.t0 is None:
            self.t0 = t
            return True
        rel = t - self.t0
        if rel <= self.prev[0]:  # type: ignore[index]
            self.dropped += 1
            return False
        return True

    def take(self, t: float, frame: Any) -> None:
        rel = t - self.t0  # type: ignore[operator]
        self.count += 1
        if self.prev is not None:
            a, fps = self.prev[0], self.fps

            def left(k: int) -> bool:  # resample_indices' test: k / fps is nearer to a than to rel
                return (k / fps - a) <= (rel - k / fps) + 1e-6

            k = max(self.next_k, int(np.floor((a + rel) / 2 * fps)))  # near the midpoint, then exact
            while left(k):
                k += 1
            while k > self.next_k and not left(k - 1):
                k -= 1
            self._emit(self.prev[1], k)
        self.prev = (rel, frame)

    def finish(self) -> int:
        """Settles the last frames; returns the number of output frames (before the frame limit)."""
        if self.prev is None:
            return 0
        n_out = int(np.floor(self.prev[0] * self.fps + 0.5)) + 1
        self._emit(self.prev[1], n_out)
        self.prev = None
        return n_out


def _read_video(path: str, prep: Preprocessing) -> tuple[np.ndarray, int, tuple[int, int], float, list[str]]:
    """(kept frames, length at the training rate, source size, source fps, notes)."""

    def one_pass(keep: np.ndarray) -> tuple[_Resampler, int, tuple[int, int], float]:
        rs = _Resampler(prep.fps, keep, lambda f: map_frame(f.to_image(), prep))  # rgb24
        size, first, last = (0, 0), 0.0, 0.0
        for t, frame in _decode(path, prep):
            if not rs.push(t):
                continue
            if rs.count == 0:
                size, first = (frame.width, frame.height), t
            elif t - first > prep.max_seconds:
                raise _limit(path, f"its timestamps reach {t - first:.0f} s", "max_seconds", prep.max_seconds,
                             "max_seconds")
            last = t
            rs.take(t, frame)
        n_out = rs.finish()
        if rs.count == 0:
            raise DataError(f"{path}: the video has no frames")
        span = last - first
        return rs, n_out, size, (rs.count - 1) / span if span > 0 else prep.fps

    # One pass keeps the first max_frames output frames: all a "first" model reads, and all of any
    # clip within the limit. An evenly spaced subset of a longer clip needs its length: a second pass.
    rs, n_out, size, fps_in = one_pass(np.arange(prep.max_frames))
    frames = rs.frames
    if n_out > prep.max_frames and prep.frame_selection != "first":
        del frames
        rs.out = None  # freed before the second pass fills its own
        rs, n_again, _, _ = one_pass(kept_indices(n_out, prep))
        if n_again != n_out:  # decoding is deterministic; a file that changes while read is refused
            raise DataError(f"{path}: the video changed while it was read")
        frames = rs.frames
    notes = ([f"{path}: {rs.dropped} frame(s) whose timestamp was not after the previous frame's were dropped"]
             if rs.dropped else [])
    return frames, n_out, size, float(fps_in), notes


def input_warnings(clip: Clip, prep: Preprocessing) -> list[str]:
    """One-line notes on how far ``clip`` is from the training data."""
    out = []
    n = clip.num_frames
    if n < MIN_FRAMES:
        out.append(f"{clip.path}: very short ({n} frames = {n / prep.fps:.2f} s at {prep.fps:g} fps); "
                   f"the training clips have at least ~{MIN_FRAMES}")
    if n > prep.max_frames:
        kept = ("the first" if prep.frame_selection == "first" else "an evenly spaced")
        out.append(f"{clip.path}: {n} frames ({n / prep.fps:.1f} s) is longer than the model's limit of "
                   f"{prep.max_frames} ({prep.max_frames / prep.fps:.1f} s); {kept} {prep.max_frames} are kept")
    w, h = clip.source_size
    left, top, right, bottom = crop_box(w, h, prep.aspect)
    kept_w, kept_h = (right - left) / w, (bottom - top) / h
    if min(kept_w, kept_h) < MIN_KEPT_FRACTION:
        out.append(f"{clip.path}: extreme aspect {w}x{h}: the crop to the training aspect "
                   f"{prep.source_width}:{prep.source_height} keeps only {100 * min(kept_w, kept_h):.0f}% of the "
                   f"{'width' if kept_w < kept_h else 'height'}; centre the signer")
    if min(right - left, bottom - top) < prep.size / 2:
        out.append(f"{clip.path}: small frames ({w}x{h}) are upscaled more than 2x to {prep.size}x{prep.size}")
    return out


def select_frames(frames: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Applies the frame limit: ``[T, ...] -> [min(T, max_frames), ...]`` (:func:`kept_indices`).
    A :class:`Clip` read by :func:`read_clip` holds these frames already."""
    if len(frames) <= prep.max_frames:
        return frames
    return frames[kept_indices(len(frames), prep)]


def write_video(path: str, frames: np.ndarray, fps: float, *, codec: str | None = None,
                pix_fmt: str = "yuv420p", **options: str) -> None:
    """``frames [T, H, W, 3] uint8`` RGB -> a video file (codec by extension: mp4 -> libx264,
    webm -> libvpx-vp9, avi -> mpeg4, mov -> libx264). Used by the tests and the page's examples."""
    import av
    from fractions import Fraction

    ext = os.path.splitext(path)[1].lower()
    codec = codec or {".mp4": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4", ".mov": "libx264",
                      ".mkv": "libx264"}.get(ext, "libx264")
    h, w = frames.shape[1:3]
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(path, mode="w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = w - w % 2, h - h % 2
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = dict(options)
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: stream.height, : stream.width]), format="rgb24")
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
