"""Convert a sign-language dataset on disk into a tensorflow-datasets ArrayRecord dataset.

    python -m data_prep.build_dataset --format phoenix14t --root ROOT --out OUT
        [--splits train,dev,test] [--size 256] [--image_format jpeg|png] [--jpeg_quality 95]
        [--skip_bad] [--workers N] [--videos_per_shard 64] [--name NAME]
    python -m data_prep.build_dataset --format gfslt --labels DIR --root FRAMES_ROOT --out OUT
    python -m data_prep.build_dataset --format csl_daily --labels DIR --root FRAMES_ROOT --out OUT

Every frame is decoded once (Pillow), resized to size x size (bicubic, Pillow's default filter for
`Image.resize`, which is what the GFSLT-VLP / HFA loaders apply) and re-encoded as JPEG or PNG.

On-disk result (the format of `hfa_jax.data.format`: a standard TFDS dataset folder, written with
tfds' own machinery: the `FeaturesDict` serialises examples, `ArrayRecordFileAdapter` writes the
shards, `tfds.folder_dataset.write_metadata` writes `dataset_info.json` / `features.json`)::

    OUT/NAME/1.0.0/dataset_info.json, features.json
    OUT/NAME/1.0.0/NAME-{split}.array_record-{i:05d}-of-{n:05d}
    OUT/NAME/_work/...            resume bookkeeping (plans, per-shard sidecars); safe to delete
    OUT/bad_videos.tsv            with --skip_bad: split, name, file, reason of every skipped video

Open it without TensorFlow::

    tfds.data_source(NAME, data_dir=OUT)["train"]                  # or
    tfds.builder_from_directory("OUT/NAME/1.0.0").as_data_source("train")

Per-example features (`hfa_jax.data.format`): `name`, `text`, `gloss`, `signer` (Text; "" when
absent), `num_frames` (int32), `frames` (Sequence of Image(size, size, 3) encoded as jpeg|png),
and for SynthSign trees (which carry `extras/{split}/{name}.json`) `hand_traj` (float32
[T, 2, 2]) and `description`.

Resumable: each shard is written under a temporary name in `_work/` and renamed into place when
complete, after its sidecar (example count, skipped videos); a rerun with the same settings skips
completed shards. Bad input stops with one line (file, row, what to do) unless `--skip_bad`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import time
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from data_prep.clip_frames import ClipError, ClipLimits, cut_clip
from hfa_jax.data import annotations as annotations_lib
from hfa_jax.data import asl_annotations as asl_lib
from hfa_jax.data import format as fmt_lib
from hfa_jax.data import formats
from hfa_jax.data.annotations import BadVideo, VideoRecord
from hfa_jax.data.asl_annotations import CaptionFilter, ClipRecord
from hfa_jax.data.format import IMAGE_FORMATS, dataset_dir
from hfa_jax.errors import ConfigError, DataError, cli_main

DEFAULT_VERSION = fmt_lib.VERSION
_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG"}
_PLAN_VERSION = 1


def _tfds():
    # Imported lazily so `--help` stays fast (~1.5 s); tfds itself never imports TF here.
    import tensorflow_datasets as tfds

    return tfds


# ----------------------------------------------------------------------------------------------
# Features and encoding
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EncodeOptions:
    """How frames are stored: size x size pixels, jpeg (at jpeg_quality) or png."""

    size: int = 256
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    extras: bool = False  # hand_traj + description features (SynthSign)

    def __post_init__(self):
        if self.image_format not in IMAGE_FORMATS:
            raise ConfigError(f"image_format {self.image_format!r} unknown; use jpeg or png")
        if not 8 <= self.size <= 4096:
            raise ConfigError(f"size {self.size} out of range; use e.g. --size 256")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality {self.jpeg_quality} out of range 1..100")


def make_features(opts: EncodeOptions):
    """The dataset's `tfds.features.FeaturesDict` for these options (`hfa_jax.data.format`)."""
    return fmt_lib.features_spec(opts.size, opts.image_format, opts.extras)


def encode_image(frame: np.ndarray, opts: EncodeOptions) -> bytes:
    """uint8 [H, W, 3] -> encoded size x size image bytes (resized with bicubic if needed)."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise DataError(f"frame is {frame.dtype} {list(frame.shape)}, expected uint8 [H, W, 3]")
    return _encode_pil(Image.fromarray(np.ascontiguousarray(frame)), opts)


def _encode_pil(img: Image.Image, opts: EncodeOptions) -> bytes:
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (opts.size, opts.size):
        img = img.resize((opts.size, opts.size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if opts.image_format == "jpeg":
        img.save(buf, format="JPEG", quality=opts.jpeg_quality)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def _check_encoded(data: bytes, opts: EncodeOptions, where: str) -> bytes:
    """Header-only check of pre-encoded frame bytes (format and size), no decode."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, size = img.format, img.size
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{where}: encoded frame is not a readable image ({e}); "
                        "pass uint8 arrays or valid image bytes") from None
    if fmt != _PIL_FORMAT[opts.image_format] or size != (opts.size, opts.size):
        raise DataError(f"{where}: encoded frame is {fmt} {size[0]}x{size[1]}, the dataset stores "
                        f"{opts.image_format} {opts.size}x{opts.size}; pass uint8 arrays to "
                        "re-encode, or matching bytes")
    return data


def _example_dict(name: str, frames: list[bytes], text: str, gloss: str | None,
                  signer: str | None, extras: dict[str, Any] | None, opts: EncodeOptions) -> dict:
    ex: dict[str, Any] = {
        fmt_lib.NAME: name,
        fmt_lib.FRAMES: frames,
        fmt_lib.NUM_FRAMES: fmt_lib.NUM_FRAMES_DTYPE(len(frames)),
        fmt_lib.TEXT: text,
        fmt_lib.GLOSS: gloss or "",
        fmt_lib.SIGNER: signer or "",
    }
    if opts.extras:
        assert extras is not None
        for key in fmt_lib.EXTRA_FEATURES:
            ex[key] = extras[key]
    return ex


def _load_extras(path: str, num_frames: int) -> dict[str, Any] | str:
    """SynthSign `extras/{split}/{name}.json` -> {hand_traj [T,2,2] f32, description}, or a reason."""
    if not os.path.isfile(path):
        return "extras file missing (the tree has extras/); regenerate the SynthSign tree"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        traj = np.asarray(data[fmt_lib.HAND_TRAJ], dtype=fmt_lib.HAND_TRAJ_DTYPE)
        desc = data[fmt_lib.DESCRIPTION]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"extras file unreadable ({type(e).__name__}: {str(e)[:80]}); regenerate it"
    if traj.shape != (num_frames, 2, 2) or not isinstance(desc, str):
        return (f"extras hand_traj has shape {list(traj.shape)}, expected [{num_frames}, 2, 2] "
                "(one [[lx,ly],[rx,ry]] per frame); regenerate it")
    return {fmt_lib.HAND_TRAJ: traj, fmt_lib.DESCRIPTION: desc}


def load_clip(record: ClipRecord, opts: EncodeOptions,
              limits: ClipLimits = ClipLimits()) -> tuple[dict, None] | tuple[None, BadVideo]:
    """Cuts `record` out of its video file (`data_prep.clip_frames`), resizing and encoding each
    frame as it is decoded. Returns (example dict, None) or (None, BadVideo)."""
    try:
        frames = cut_clip(record.video, record.start, record.end,
                          lambda img: _encode_pil(img, opts), limits)
    except ClipError as e:
        return None, BadVideo(record.split, record.name, record.video, str(e))
    return _example_dict(record.name, frames, record.translation, record.gloss, record.signer,
                         None, opts), None


def load_video(record: VideoRecord | ClipRecord, opts: EncodeOptions,
               extras_path: str | None = None,
               limits: ClipLimits = ClipLimits()) -> tuple[dict, None] | tuple[None, BadVideo]:
    """Decodes every frame of `record` once, checks it, resizes and re-encodes it.

    Returns (example dict ready for `FeaturesDict.serialize_example`, None) or (None, BadVideo)
    for an unreadable/truncated frame, mixed frame sizes or bad extras.
    """
    if isinstance(record, ClipRecord):
        return load_clip(record, opts, limits)
    frames: list[bytes] = []
    first_size: tuple[int, int] | None = None
    first_name = ""
    for path in record.frame_paths:
        try:
            with Image.open(path) as img:
                img.load()  # full decode: raises on truncated data
                if first_size is None:
                    first_size, first_name = img.size, os.path.basename(path)
                elif img.size != first_size:
                    return None, BadVideo(
                        record.split, record.name, path,
                        f"mixed frame sizes: {first_name} is {first_size[0]}x{first_size[1]}, "
                        f"{os.path.basename(path)} is {img.size[0]}x{img.size[1]}; re-extract the frames")
                frames.append(_encode_pil(img, opts))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            return None, BadVideo(record.split, record.name, path,
                                  f"unreadable frame ({type(e).__name__}: {str(e)[:80]}); "
                                  "re-extract the frames of this video")
    if not frames:
        return None, BadVideo(record.split, record.name, record.name, "no frames")
    extras = None
    if opts.extras:
        got = _load_extras(extras_path or "", len(frames))
        if isinstance(got, str):
            return None, BadVideo(record.split, record.name, extras_path or "", got)
        extras = got
    return _example_dict(record.name, frames, record.translation, record.gloss, record.signer,
                         extras, opts), None


# ----------------------------------------------------------------------------------------------
# Dataset folder, shards, metadata
# ----------------------------------------------------------------------------------------------


def _work_dir(out: str, name: str) -> str:
    return os.path.join(os.path.abspath(out), name, "_work")


def shard_path(ds_dir: str, name: str, split: str, index: int, num_shards: int) -> str:
    """tfds' default file name: NAME-SPLIT.array_record-00000-of-00004."""
    template = fmt_lib.shard_template(ds_dir, name, split)
    return os.fspath(template.sharded_filepath(shard_index=index, num_shards=num_shards))


def _write_shard(path: str, tmp_path: str, serialized: Sequence[bytes]) -> None:
    """Writes a shard under `tmp_path` with tfds' ArrayRecord adapter, then renames it atomically."""
    tfds = _tfds()
    adapter = tfds.core.file_adapters.ArrayRecordFileAdapter
    adapter.write_examples(tmp_path, ((i, ex) for i, ex in enumerate(serialized)))
    os.replace(tmp_path, path)


def _write_json(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)


def _check_features(ds_dir: str, features) -> None:
    """Refuses to mix splits written with different sizes/formats/extras in one dataset."""
    if not os.path.isfile(os.path.join(ds_dir, "features.json")):
        return
    tfds = _tfds()
    existing = tfds.features.FeatureConnector.from_config(ds_dir)
    if existing.to_json() != features.to_json():
        raise DataError(
            f"{ds_dir}: already holds a dataset with other features (frame size, image format "
            "or extras differ); write into a new --out folder or delete this one")


def _split_shards(ds_dir: str, name: str) -> dict[str, list[str]]:
    """Complete shard files per split found in `ds_dir` (checks that no shard is missing)."""
    template = fmt_lib.shard_template(ds_dir, name)
    found: dict[str, dict[int, tuple[int, str]]] = {}
    for fname in sorted(os.listdir(ds_dir)):
        info = template.parse_filename_info(fname)
        if info is None or info.dataset_name != name:
            continue
        found.setdefault(info.split, {})[info.shard_index] = (info.num_shards, fname)
    shards: dict[str, list[str]] = {}
    for split, by_index in found.items():
        totals = {n for n, _ in by_index.values()}
        if len(totals) != 1 or sorted(by_index) != list(range(totals.pop())):
            raise DataError(f"{ds_dir}: split {split!r} has an incomplete or mixed set of shards "
                            "(interrupted run?); rerun the conversion to finish it")
        shards[split] = [os.path.join(ds_dir, by_index[i][1]) for i in sorted(by_index)]
    return shards


def finalize_metadata(ds_dir: str, name: str, features, description: str | None = None) -> None:
    """Writes dataset_info.json + features.json for every split present in `ds_dir` (tfds API)."""
    tfds = _tfds()
    adapter = tfds.core.file_adapters.ArrayRecordFileAdapter
    split_infos = []
    for split, paths in sorted(_split_shards(ds_dir, name).items()):
        split_infos.append(tfds.core.SplitInfo(
            name=split,
            shard_lengths=[adapter.num_examples(p) for p in paths],
            num_bytes=sum(os.path.getsize(p) for p in paths),
            filename_template=None,
        ))
    if not split_infos:
        raise DataError(f"{ds_dir}: no shards written; nothing to describe")
    tfds.folder_dataset.write_metadata(
        data_dir=ds_dir, features=features, split_infos=split_infos, check_data=False,
        description=description or "Sign-language videos converted by hfa_jax data_prep.build_dataset.",
    )


def _remove_split_shards(ds_dir: str, name: str, split: str) -> None:
    template = fmt_lib.shard_template(ds_dir, name)
    for fname in os.listdir(ds_dir):
        info = template.parse_filename_info(fname)
        if info is not None and info.dataset_name == name and info.split == split:
            os.remove(os.path.join(ds_dir, fname))


def write_examples(
    out_dir: str,
    split: str,
    examples: Iterable[dict],
    *,
    name: str = "hfa_sign",
    version: str = DEFAULT_VERSION,
    image_format: str = "jpeg",
    jpeg_quality: int = 95,
    size: int = 256,
    extras: bool | None = None,
    examples_per_shard: int = 64,
    description: str | None = None,
) -> str:
    """Writes (replaces) one split of the TFDS ArrayRecord dataset OUT/NAME/VERSION.

    Args:
      out_dir: output root (the CLI's --out); the dataset lands in `dataset_dir(out_dir, name)`.
      split: split name ("train", "dev", "test", or any tfds-valid name).
      examples: dicts with `name: str`, `frames` (uint8 [T, H, W, 3], resized to size x size if
        needed, or a list of already-encoded `image_format` size x size bytes), `text: str`,
        optional `gloss`, `signer` (str or None), and with extras `hand_traj` (float [T, 2, 2]) and
        `description: str`.
      image_format, jpeg_quality, size: frame storage (see EncodeOptions).
      extras: include hand_traj/description features; None = decided by the first example. All
        splits of one dataset must agree (DataError otherwise).
      examples_per_shard: shard size.
      description: dataset description for dataset_info.json.

    Returns:
      The dataset folder (argument of `tfds.builder_from_directory`).
    """
    tfds = _tfds()
    if examples_per_shard < 1:
        raise ConfigError("examples_per_shard must be >= 1")
    ds_dir = dataset_dir(out_dir, name, version)
    work = _work_dir(out_dir, name)
    os.makedirs(ds_dir, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    opts: EncodeOptions | None = None
    features = None
    tmp_paths: list[str] = []
    batch: list[bytes] = []
    seen: set[str] = set()

    def flush() -> None:
        tmp = os.path.join(work, f"{split}.write_examples.{len(tmp_paths):05d}.tmp")
        tfds.core.file_adapters.ArrayRecordFileAdapter.write_examples(
            tmp, ((i, ex) for i, ex in enumerate(batch)))
        tmp_paths.append(tmp)
        batch.clear()

    try:
        for i, ex in enumerate(examples):
            where = f"write_examples(split={split!r}) example {i}"
            missing = [k for k in (fmt_lib.NAME, fmt_lib.FRAMES, fmt_lib.TEXT) if k not in ex]
            if missing:
                raise DataError(f"{where}: missing key(s) {missing}; each example needs name, frames, text")
            if opts is None:
                use_extras = (fmt_lib.HAND_TRAJ in ex) if extras is None else extras
                opts = EncodeOptions(size=size, image_format=image_format,
                                     jpeg_quality=jpeg_quality, extras=use_extras)
                features = make_features(opts)
                _check_features(ds_dir, features)
            name_i = str(ex[fmt_lib.NAME])
            if name_i in seen:
                raise DataError(f"{where}: duplicate name {name_i!r}; names must be unique per split")
            seen.add(name_i)
            raw = ex[fmt_lib.FRAMES]
            if isinstance(raw, np.ndarray):
                if raw.dtype != np.uint8 or raw.ndim != 4 or raw.shape[-1] != 3 or len(raw) == 0:
                    raise DataError(f"{where}: frames {raw.dtype} {list(raw.shape)}, expected uint8 "
                                    "[T>0, H, W, 3]")
                frames = [encode_image(fr, opts) for fr in raw]
            else:  # a list of encoded frames (or of uint8 [H, W, 3] arrays)
                frames = [encode_image(b, opts) if isinstance(b, np.ndarray)
                          else _check_encoded(bytes(b), opts, where) for b in raw]
                if not frames:
                    raise DataError(f"{where}: no frames")
            extra_vals = None
            if opts.extras:
                if any(k not in ex for k in fmt_lib.EXTRA_FEATURES):
                    raise DataError(f"{where}: dataset has hand_traj/description features but this "
                                    "example lacks them")
                traj = np.asarray(ex[fmt_lib.HAND_TRAJ], dtype=fmt_lib.HAND_TRAJ_DTYPE)
                if traj.shape != (len(frames), 2, 2):
                    raise DataError(f"{where}: hand_traj shape {list(traj.shape)}, expected "
                                    f"[{len(frames)}, 2, 2]")
                extra_vals = {fmt_lib.HAND_TRAJ: traj, fmt_lib.DESCRIPTION: str(ex[fmt_lib.DESCRIPTION])}
            example = _example_dict(name_i, frames, str(ex[fmt_lib.TEXT]), ex.get(fmt_lib.GLOSS),
                                    ex.get(fmt_lib.SIGNER), extra_vals, opts)
            batch.append(features.serialize_example(example))
            if len(batch) >= examples_per_shard:
                flush()
        if opts is None:
            raise DataError(f"write_examples(split={split!r}): no examples given")
        if batch:
            flush()
        _remove_split_shards(ds_dir, name, split)
        for k, tmp in enumerate(tmp_paths):
            os.replace(tmp, shard_path(ds_dir, name, split, k, len(tmp_paths)))
        tmp_paths.clear()
    finally:
        for tmp in tmp_paths:
            if os.path.exists(tmp):
                os.remove(tmp)
    finalize_metadata(ds_dir, name, features, description)
    return ds_dir


# ----------------------------------------------------------------------------------------------
# Command line: read a source layout, convert in parallel, resumably
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """Reading options of the video-and-times formats (ignored by the frame-folder ones)."""

    how2sign_source: str = "clips"  # "clips": the rgb_front sentence clips; "raw": cut raw videos
    captions: str | None = None  # YouTube-ASL caption folder (default: the videos folder)
    caption_filter: CaptionFilter = CaptionFilter()
    clip_limits: ClipLimits = ClipLimits()

    def reader_options(self, fmt: str) -> dict[str, Any]:
        """The keyword options of `fmt`'s reader (hfa_jax.data.asl_annotations)."""
        if fmt == "how2sign":
            return {"source": self.how2sign_source}
        if fmt == "youtube_asl":
            return {"captions": self.captions, "rules": self.caption_filter}
        return {}


def read_source(fmt: str, root: str, labels: str | None, split: str,
                bad: list[BadVideo] | None,
                source: SourceOptions = SourceOptions()) -> tuple[list, str | None]:
    """Records of one split of the source (its format from :mod:`hfa_jax.data.formats`), and the
    SynthSign extras folder (or None)."""
    spec = formats.get(fmt)
    recs = spec.records(root, labels, split, bad=bad, **source.reader_options(fmt))
    return recs, (None if spec.clips else spec.extras_dir(root))


def _plan(records: list[VideoRecord], settings: dict, plan_path: str, *, write: bool) -> None:
    """Checks `records` + `settings` against a saved plan; saves it (write=True) if none."""
    plan = {"plan_version": _PLAN_VERSION, "settings": settings,
            "names": [r.name for r in records]}
    if os.path.isfile(plan_path):
        with open(plan_path, encoding="utf-8") as f:
            old = json.load(f)
        if old != plan:
            what = ("settings " + ", ".join(f"{k}: {old['settings'].get(k)!r} -> {v!r}"
                                           for k, v in settings.items()
                                           if old.get("settings", {}).get(k) != v)
                    if old.get("settings") != settings else "the list of videos changed")
            raise DataError(f"{plan_path}: this output was started with different input ({what}); "
                            "rerun with the original flags, or use a new --out")
        return
    if write:
        _write_json(plan_path, plan)


def _read_sidecar(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------
# The conversion: a deterministic shard plan, run as an Apache Beam pipeline
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ShardTask:
    """One output shard to write: its videos (in order), where it goes, and its sidecar."""

    split: str
    index: int
    num_shards: int
    records: list
    extras_paths: list
    path: str
    sidecar: str

    @property
    def failure_file(self) -> str:
        return self.sidecar[:-len(".json")] + ".failed.json"


def convert_shard(task: ShardTask, opts: EncodeOptions, features, limits: ClipLimits,
                  skip_bad: bool) -> dict:
    """Converts the videos of one shard and writes it: sidecar first, then the shard file under a
    temporary name renamed into place (a shard counts as done only when both exist). A bad video
    without `skip_bad` writes `task.failure_file` (its one-line message) and raises DataError."""
    written: list[bytes] = []
    bad: list[BadVideo] = []
    num_frames = 0
    for record, extras_path in zip(task.records, task.extras_paths):
        example, problem = load_video(record, opts, extras_path, limits)
        if problem is not None:
            if not skip_bad:
                message = problem.message() + " (or pass --skip_bad to skip and list such videos)"
                _write_json(task.failure_file, {"message": message})
                raise DataError(message)
            bad.append(problem)
            continue
        written.append(features.serialize_example(example))
        num_frames += len(example[fmt_lib.FRAMES])
    side = {"split": task.split, "shard": task.index, "num_examples": len(written),
            "num_frames": num_frames, "bad": [dataclasses.asdict(b) for b in bad]}
    _write_json(task.sidecar, side)
    _write_shard(task.path, task.sidecar[:-len(".json")] + ".tmp", written)
    return side


def convert(fmt: str, root: str, out: str, *, labels: str | None = None,
            splits: Sequence[str] = annotations_lib.SPLITS, size: int = 256,
            image_format: str = "jpeg", jpeg_quality: int = 95, skip_bad: bool | None = None,
            workers: int | None = None, videos_per_shard: int = 64, name: str | None = None,
            progress: bool = True, source: SourceOptions = SourceOptions(),
            beam_args: Sequence[str] = (), engine: str = "auto") -> dict[str, Any]:
    """Converts `splits` of a source into OUT/NAME/1.0.0 (see module docstring). Resumable.

    The shard plan is computed here; the pending shards are converted by an Apache Beam pipeline
    (:mod:`data_prep.beam_build`): the DirectRunner on this machine with `workers` processes by
    default, or any runner named in `beam_args` (e.g. ``--runner=DataflowRunner ...``);
    `engine="local"` (or "auto" without apache-beam installed) runs the same shard function on a
    local process pool instead, with the same output.

    Returns a summary: {"dataset_dir", "splits": {split: {"videos", "frames", "bad"}}, "bad": [...],
    "seconds", "frames_per_second", ...}; it is also written to OUT/build_summary.json. Raises
    DataError on the first bad video unless skip_bad (default: on for the web ASL corpora).
    """
    start = time.time()
    if videos_per_shard < 1 or (workers is not None and workers < 1):
        raise ConfigError("--videos_per_shard and --workers must be >= 1")
    spec = formats.get(fmt)
    if skip_bad is None:
        skip_bad = spec.clips  # web corpora lose videos: skip and count them by default
    name = name or fmt  # the dataset is named after its format (hfa_jax.data.formats.of_dataset)
    workers = max(1, workers or os.cpu_count() or 1)
    ds_dir = dataset_dir(out, name)
    work = _work_dir(out, name)

    # 1. Read every split first: reader-level problems surface before any work is done.
    reader_bad: list[BadVideo] = []
    per_split: dict[str, list] = {}
    extras_dir: str | None = None
    for split in splits:
        recs, extras_dir = read_source(fmt, root, labels, split,
                                       reader_bad if skip_bad else None, source)
        if not recs:
            raise DataError(f"{root}: split {split!r} has no usable videos; check --root/--labels")
        per_split[split] = recs
    opts = EncodeOptions(size=size, image_format=image_format, jpeg_quality=jpeg_quality,
                         extras=extras_dir is not None)
    features = make_features(opts)
    settings: dict[str, Any] = {"format": fmt, "size": size, "image_format": image_format,
                                "jpeg_quality": jpeg_quality if image_format == "jpeg" else None,
                                "extras": opts.extras, "videos_per_shard": videos_per_shard}
    if spec.clips:
        settings["clip_limits"] = dataclasses.asdict(source.clip_limits)
    # A rerun must have the inputs and settings of the run it resumes (checked before writing).
    plans = {split: os.path.join(work, f"{split}.plan.json") for split in per_split}
    for split, recs in per_split.items():
        _plan(recs, settings, plans[split], write=False)
    os.makedirs(ds_dir, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    _check_features(ds_dir, features)

    # 2. Deterministic shard plan per split; completed shards (file + sidecar) are skipped.
    pending: list[ShardTask] = []
    done: list[dict] = []
    for split, recs in per_split.items():
        _plan(recs, settings, plans[split], write=True)
        n = max(1, -(-len(recs) // videos_per_shard))
        for i in range(n):
            path = shard_path(ds_dir, name, split, i, n)
            sidecar = os.path.join(work, f"{os.path.basename(path)}.json")
            side = _read_sidecar(sidecar)
            if side is not None and os.path.isfile(path):
                done.append(side)
                continue
            chunk = recs[i * videos_per_shard:(i + 1) * videos_per_shard]
            extras = [(os.path.join(extras_dir, r.split, r.name + ".json") if extras_dir else None)
                      for r in chunk]
            task = ShardTask(split, i, n, chunk, extras, path, sidecar)
            if os.path.exists(task.failure_file):
                os.remove(task.failure_file)
            pending.append(task)

    # 3. Convert the pending shards on Apache Beam (or the local pool).
    summary_engine = "none (nothing left to convert)"
    if pending:
        from data_prep import beam_build  # lazy: Beam takes seconds to import

        summary_engine = beam_build.run(pending, opts, source.clip_limits, skip_bad,
                                        workers=workers, beam_args=beam_args, progress=progress,
                                        engine=engine)
        for task in pending:
            side = _read_sidecar(task.sidecar)
            if side is None or not os.path.isfile(task.path):
                raise DataError(f"{task.path}: the pipeline finished without writing this shard; "
                                "rerun the same command to resume")
            done.append(side)
    converted_now = {(s["split"], s["shard"]) for s in done} & {(t.split, t.index) for t in pending}

    # 4. Metadata (tfds), the report of skipped videos and the summary.
    finalize_metadata(ds_dir, name, features)
    all_bad = reader_bad + [BadVideo(**b) for side in done for b in side["bad"]]
    summary: dict[str, Any] = {"dataset_dir": ds_dir, "format": fmt, "engine": summary_engine,
                               "splits": {}, "bad": all_bad}
    for split in per_split:
        sides = [s for s in done if s["split"] == split]
        summary["splits"][split] = {
            "videos": sum(s["num_examples"] for s in sides),
            "frames": sum(s["num_frames"] for s in sides),
            "bad": sum(1 for b in all_bad if b.split == split),
        }
    if skip_bad:
        with open(os.path.join(out, "bad_videos.tsv"), "w", encoding="utf-8") as f:
            f.write("split\tname\tfile\treason\n")
            for b in all_bad:
                f.write("\t".join(x.replace("\t", " ").replace("\n", " ")
                                  for x in (b.split, b.name, b.file, b.reason)) + "\n")
    seconds = time.time() - start
    now = [s for s in done if (s["split"], s["shard"]) in converted_now]
    summary["seconds"] = seconds
    summary["videos_converted_now"] = sum(s["num_examples"] for s in now)
    summary["frames_converted_now"] = sum(s["num_frames"] for s in now)
    summary["frames_per_second"] = summary["frames_converted_now"] / max(seconds, 1e-9)
    summary["clips_per_second_per_core"] = summary["videos_converted_now"] / max(seconds, 1e-9) / workers
    _write_json(os.path.join(out, "build_summary.json"), {
        **{k: v for k, v in summary.items() if k != "bad"},
        "workers": workers,
        "bad_count": len(all_bad),
        "bad_by_reason": _count_reasons(all_bad),
    })
    return summary


def _count_reasons(bad: Sequence[BadVideo]) -> dict[str, int]:
    """Skipped videos per kind of problem (the reason up to its first ';' or '(')."""
    counts: dict[str, int] = {}
    for b in bad:
        key = b.reason.split(";")[0].split("(")[0].strip()
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.build_dataset",
        description="Convert PHOENIX14T / GFSLT-VLP / CSL-Daily frames, or How2Sign / OpenASL / "
                    "YouTube-ASL videos, into a TFDS ArrayRecord dataset, on Apache Beam. Flags "
                    "not listed here go to Beam (e.g. --runner=DataflowRunner --project=P ...).")
    p.add_argument("--format", required=True, choices=formats.names())
    p.add_argument("--root", required=True,
                   help="phoenix14t: folder holding annotations/ and features/; gfslt: the "
                        "fullFrame-210x260px folder; csl_daily: the frames_512x512 folder; "
                        "how2sign: the folder holding the realigned CSVs and the clip folders; "
                        "openasl / youtube_asl: the folder of downloaded videos ({id}.mp4)")
    p.add_argument("--labels", help="gfslt/csl_daily: folder holding labels.{train,dev,test}; "
                                    "openasl: the TSV; youtube_asl: the video id list")
    p.add_argument("--out", required=True, help="output root; the dataset goes to OUT/NAME/1.0.0")
    p.add_argument("--name", help="dataset name (default: the format name)")
    p.add_argument("--splits", default=None,
                   help="comma-separated (default train,dev,test; youtube_asl: train, or "
                        "train,dev with --dev_fraction)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--image_format", default="jpeg", choices=IMAGE_FORMATS)
    p.add_argument("--jpeg_quality", type=int, default=95)
    bad = p.add_mutually_exclusive_group()
    bad.add_argument("--skip_bad", action="store_true", default=None,
                     help="skip bad videos, list them in OUT/bad_videos.tsv, count them in the "
                          "summary (the default for how2sign, openasl and youtube_asl)")
    bad.add_argument("--stop_on_bad", dest="skip_bad", action="store_false",
                     help="stop at the first bad video (the default for the frame-folder formats)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes of Beam's DirectRunner (default: all cores)")
    p.add_argument("--videos_per_shard", type=int, default=64)
    p.add_argument("--engine", default="auto", choices=("auto", "beam", "local"),
                   help="beam: an Apache Beam pipeline (DirectRunner, or the runner in Beam's "
                        "flags); local: a process pool; auto: beam when apache-beam is installed")
    clips = p.add_argument_group("video-and-times formats (how2sign, openasl, youtube_asl)")
    clips.add_argument("--how2sign_source", default="clips", choices=asl_lib.HOW2SIGN_SOURCES,
                       help="clips: the rgb_front sentence clips; raw: cut the raw front videos")
    clips.add_argument("--captions", help="youtube_asl: caption folder (default: --root)")
    clips.add_argument("--fps", type=float, default=None,
                       help="keep frames at this rate (default: every frame of the source)")
    clips.add_argument("--max_clip_frames", type=int, default=ClipLimits.max_frames)
    clips.add_argument("--max_clip_seconds", type=float, default=ClipLimits.max_seconds)
    clips.add_argument("--min_caption_seconds", type=float, default=CaptionFilter.min_seconds)
    clips.add_argument("--max_caption_seconds", type=float, default=CaptionFilter.max_seconds)
    clips.add_argument("--dev_fraction", type=float, default=0.0,
                       help="youtube_asl: fraction of videos held out as a dev split")
    return p.parse_known_args(argv)


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args, beam_args = _parse_args(argv)
    if args.fps is not None and not 0.1 <= args.fps <= 240:
        raise ConfigError(f"--fps {args.fps} out of range; use e.g. --fps 25")
    if args.max_clip_frames < 1 or args.max_clip_seconds <= 0:
        raise ConfigError("--max_clip_frames and --max_clip_seconds must be positive")
    default_splits = ("train,dev" if args.dev_fraction > 0 else "train") \
        if args.format == "youtube_asl" else "train,dev,test"
    splits = [s.strip() for s in (args.splits or default_splits).split(",") if s.strip()]
    source = SourceOptions(
        how2sign_source=args.how2sign_source, captions=args.captions,
        caption_filter=CaptionFilter(args.min_caption_seconds, args.max_caption_seconds,
                                     args.dev_fraction),
        clip_limits=ClipLimits(max_frames=args.max_clip_frames, max_seconds=args.max_clip_seconds,
                               fps=args.fps))
    summary = convert(
        args.format, args.root, args.out, labels=args.labels, splits=splits, size=args.size,
        image_format=args.image_format, jpeg_quality=args.jpeg_quality, skip_bad=args.skip_bad,
        workers=args.workers, videos_per_shard=args.videos_per_shard, name=args.name,
        source=source, beam_args=beam_args, engine=args.engine)
    for split, s in summary["splits"].items():
        print(f"{split}: {s['videos']} videos, {s['frames']} frames written, {s['bad']} bad skipped")
    n_bad = len(summary["bad"])
    if n_bad or args.skip_bad or formats.get(args.format).clips:
        print(f"bad videos: {n_bad} (listed in {os.path.join(args.out, 'bad_videos.tsv')})")
    print(f"converted {summary['frames_converted_now']} frames in {summary['seconds']:.1f}s "
          f"({summary['frames_per_second']:.0f} frames/s, "
          f"{summary['clips_per_second_per_core']:.2f} clips/s per worker, engine: "
          f"{summary['engine']})")
    print(f"dataset: {summary['dataset_dir']}  (open: tfds.builder_from_directory(path)"
          ".as_data_source(split))")
    return summary


if __name__ == "__main__":
    main()
