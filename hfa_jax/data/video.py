"""Anyone's video in: a video file or a folder of frames -> the frames a model was trained on.

The rules (:class:`Preprocessing`, stored with an exported model as ``preprocessing.json``):

1. **Frame rate.** A video file is resampled in time to the training rate (PHOENIX14T and
   SynthSign: 25 fps) by nearest timestamp: output frame ``k`` is the decoded frame whose
   presentation time is nearest to ``k / fps`` (ties to the earlier frame). Slower videos repeat
   frames, faster ones drop frames; a 25 fps video keeps every frame. A folder of frames has no
   timestamps and is taken to be at the training rate already.
2. **Aspect and size (the crop rule).** The largest centred box of the training videos' aspect
   (PHOENIX14T: 210 wide x 260 high) is cut out of each frame, then resized to the stored square
   size (``size x size``, bicubic, Pillow) exactly as ``data_prep.build_dataset`` resized the
   training frames. A frame already at the training aspect is only resized; a landscape webcam
   frame loses its left and right margins (keep the signer centred). The model then takes the
   centre ``crop_size`` square, as in evaluation (:func:`hfa_jax.data.augment.augment`).
3. **Colour.** Every frame is converted to 8-bit RGB (FFmpeg's ``rgb24``; Pillow's ``RGB`` for
   image files), whatever the pixel format or the alpha channel.

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


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its input frames (see the module docstring for the rules).

    fps: the training frame rate. source_width / source_height: the training videos' frame size,
    whose aspect the crop rule restores. size: the stored square frame size. crop_size: the
    model's input crop. max_frames / frame_selection: the frame limit and which frames a longer
    clip keeps ("first": the first max_frames, as HFA trains; otherwise an evenly spaced subset,
    the deterministic form of the random subsample the model trained on)."""

    fps: float = 25.0
    source_width: int = 210
    source_height: int = 260
    size: int = 256
    crop_size: int = 224
    max_frames: int = 300
    frame_selection: str = "first"

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
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(d))
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}")
        return cls(**{k: type(getattr(cls(), k))(d[k]) for k in names})

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

    name: the file's or folder's name without extension. frames: ``[T, size, size, 3] uint8``
    at the training rate (before the frame limit). source_fps: the file's rate (None for a frame
    folder). source_size: (width, height) of the input frames. warnings: one-line notes on how
    far the input is from the training data."""

    path: str
    name: str
    frames: np.ndarray
    source_fps: float | None
    source_size: tuple[int, int]
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.frames) / max(self.fps_out, 1e-9)

    fps_out: float = 25.0


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


def read_clip(path: str, prep: Preprocessing) -> Clip:
    """A video file or a folder of frames -> :class:`Clip` (the rules of the module docstring).

    Raises DataError (one line, naming the file) for a missing path, a file that is not a video,
    a video without frames, a corrupt file, an unreadable folder or image."""
    if os.path.isdir(path):
        frames, size = _read_folder(path, prep)
        clip = Clip(path, clip_name(path), frames, None, size, fps_out=prep.fps)
    elif os.path.isfile(path):
        frames, size, fps = _read_video(path, prep)
        clip = Clip(path, clip_name(path), frames, fps, size, fps_out=prep.fps)
    else:
        raise DataError(f"{path}: no such file or folder; pass a video file or a folder of frames")
    clip.warnings = input_warnings(clip, prep)
    return clip


def _read_folder(path: str, prep: Preprocessing) -> tuple[np.ndarray, tuple[int, int]]:
    files = frame_files(path)
    if not files:
        raise DataError(f"{path}: no {'/'.join(IMAGE_EXTS)} frames in this folder")
    frames, size = [], None
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                if size is None:
                    size = im.size
                elif im.size != size:
                    raise DataError(f"{f}: frame is {im.size[0]}x{im.size[1]}, the folder's first frame "
                                    f"is {size[0]}x{size[1]}; all frames of a clip must have one size")
                frames.append(map_frame(im, prep))
        except DataError:
            raise
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{f}: not a readable image ({e})") from None
    return np.stack(frames), size


def _decode(path: str) -> Iterator[tuple[float, Any]]:
    """(time in seconds, av.VideoFrame) of the first video stream, in presentation order."""
    import av  # PyAV: a runtime dependency, imported here as it loads FFmpeg

    try:
        container = av.open(path)
    except av.FFmpegError as e:
        raise DataError(f"{path}: not a video file that FFmpeg can read ({_reason(e)})") from None
    with container:
        if not container.streams.video:
            raise DataError(f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base
        decoded = 0
        try:
            for i, frame in enumerate(container.decode(stream)):
                decoded += 1
                if frame.pts is not None and tb is not None:
                    t = float(frame.pts * tb)
                else:  # no timestamps: the stream's nominal rate
                    t = i / float(stream.average_rate or stream.guessed_rate or 25)
                yield t, frame
        except av.FFmpegError as e:
            raise DataError(f"{path}: the video is corrupt after {decoded} frame(s) ({_reason(e)}); "
                            "re-encode or re-download it") from None


def _reason(e: Exception) -> str:
    return str(getattr(e, "strerror", None) or e).strip().splitlines()[0]


def _read_video(path: str, prep: Preprocessing) -> tuple[np.ndarray, tuple[int, int], float]:
    times, images = [], []
    for t, frame in _decode(path):
        times.append(t)
        images.append(frame.to_image())  # rgb24
    if not images:
        raise DataError(f"{path}: the video has no frames")
    order = np.argsort(np.asarray(times), kind="stable")  # presentation order
    times = [times[i] for i in order]
    images = [images[i] for i in order]
    span = times[-1] - times[0]
    fps_in = (len(times) - 1) / span if span > 0 else prep.fps
    idx = resample_indices(times, prep.fps)
    mapped: dict[int, np.ndarray] = {}
    frames = []
    for i in idx:
        if i not in mapped:
            mapped[int(i)] = map_frame(images[i], prep)
        frames.append(mapped[int(i)])
    return np.stack(frames), images[0].size, float(fps_in)


def input_warnings(clip: Clip, prep: Preprocessing) -> list[str]:
    """One-line notes on how far ``clip`` is from the training data."""
    out = []
    n = len(clip.frames)
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
    """Applies the frame limit: ``[T, ...] -> [min(T, max_frames), ...]``."""
    if len(frames) <= prep.max_frames:
        return frames
    if prep.frame_selection == "first":  # HFA: the first max_frames frames
        return frames[: prep.max_frames]
    # trained on random subsamples: an evenly spaced one (deterministic)
    return frames[np.linspace(0, len(frames) - 1, prep.max_frames).round().astype(int)]


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
