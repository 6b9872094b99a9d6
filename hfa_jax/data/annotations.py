"""Dataset layouts on disk -> one typed :class:`VideoRecord` per signed sentence.

This module is the one place that knows each source layout (STYLE: "one place that knows the
PHOENIX14T layout"):

* the official PHOENIX14T release tree (:func:`read_phoenix14t`, docs/data.md),
* GFSLT-VLP label files, gzip pickles keyed `"split/name"` (:func:`read_gfslt_labels`),
* CSL-Daily label files in the same GFSLT style plus the CSL-Daily frame folders
  (:func:`read_csl_daily`).

Readers never decode images; they list frames and check that the folders exist. Problems that
concern one video (missing/empty frame folder, a CSV row with the wrong number of fields, a
duplicate name, a label entry without text) either raise :class:`DataError` (default) or, when the
caller passes a `bad` list, are appended to it as :class:`BadVideo` and the video is skipped —
never dropped silently. Problems that concern a whole file (missing file, wrong CSV header, a
label pickle with foreign objects) always raise.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Any

from hfa_jax.data.safe_pickle import load_gzip_pickle
from hfa_jax.errors import DataError

SPLITS = ("train", "dev", "test")

PHOENIX_HEADER = ("name", "video", "start", "end", "speaker", "orth", "translation")
PHOENIX_FRAMES_DIR = os.path.join("features", "fullFrame-210x260px")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class VideoRecord:
    """One signed sentence: where its frames are and what it says."""

    name: str  # official sample id, e.g. "25October_2010_Monday_tagesschau-17"
    split: str  # "train" | "dev" | "test"
    frame_paths: tuple[str, ...]  # absolute paths, sorted in frame order
    num_frames: int
    translation: str  # no final " ."
    gloss: str | None = None  # `orth` when present
    signer: str | None = None


@dataclasses.dataclass(frozen=True)
class BadVideo:
    """A video a reader or the converter refused, with the reason (goes to bad_videos.tsv)."""

    split: str
    name: str
    file: str  # the file or folder at fault (CSV with row, label file, frame folder, frame)
    reason: str  # one line: what is wrong and what to do

    def message(self) -> str:
        return f"{self.file}: {self.split}/{self.name}: {self.reason}"


def _report(bad: list[BadVideo] | None, item: BadVideo) -> None:
    """Raises for `item` unless the caller collects bad videos."""
    if bad is None:
        raise DataError(item.message() + " (or pass --skip_bad to skip and list such videos)")
    bad.append(item)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def strip_final_period(text: str) -> str:
    """'a b .' -> 'a b' (nslt `.de` files append " ."; the official CSV has none)."""
    text = text.strip()
    if text.endswith(" ."):
        text = text[:-2].rstrip()
    return text


_DIGITS = re.compile(r"(\d+)")


def _natural_key(filename: str) -> tuple:
    """'images0010.png' sorts after 'images0009.png' even without zero padding."""
    return tuple(int(p) if p.isdigit() else p for p in _DIGITS.split(filename))


def list_frames(folder: str, suffixes: tuple[str, ...] = _IMAGE_SUFFIXES) -> tuple[str, ...]:
    """Image files of `folder` in frame order (natural sort of the file names), absolute."""
    names = [n for n in os.listdir(folder) if n.lower().endswith(suffixes) and not n.startswith(".")]
    names.sort(key=_natural_key)
    return tuple(os.path.join(os.path.abspath(folder), n) for n in names)


def _frames_of_folder(
    folder: str, split: str, name: str, where: str, bad: list[BadVideo] | None,
    suffixes: tuple[str, ...] = _IMAGE_SUFFIXES,
) -> tuple[str, ...] | None:
    if not os.path.isdir(folder):
        _report(bad, BadVideo(split, name, folder, f"frame folder missing (listed in {where}); "
                                                   "restore the frames or remove the entry"))
        return None
    frames = list_frames(folder, suffixes)
    if not frames:
        _report(bad, BadVideo(split, name, folder, f"frame folder has no {'/'.join(suffixes)} "
                                                   "frames; restore the frames or remove the entry"))
        return None
    return frames


# ----------------------------------------------------------------------------------------------
# PHOENIX14T, official release tree
# ----------------------------------------------------------------------------------------------


def find_phoenix14t_root(root: str) -> str:
    """Returns the folder holding `annotations/` and `features/`.

    Accepts that folder itself or one of its release parents (`PHOENIX-2014-T-release-v3/` or the
    folder above it), since the archive unpacks to
    `PHOENIX-2014-T-release-v3/PHOENIX-2014-T/{annotations,features}`.
    """
    for cand in (root, os.path.join(root, "PHOENIX-2014-T"),
                 os.path.join(root, "PHOENIX-2014-T-release-v3", "PHOENIX-2014-T")):
        if os.path.isdir(os.path.join(cand, "annotations", "manual")):
            return os.path.abspath(cand)
    raise DataError(
        f"{root}: no PHOENIX14T tree here (expected annotations/manual/PHOENIX-2014-T.*.corpus.csv "
        "and features/fullFrame-210x260px/); pass --root the folder holding annotations/ and features/"
    )


def read_phoenix14t(root: str, split: str, *, bad: list[BadVideo] | None = None,
                    check_frames: bool = True) -> list[VideoRecord]:
    """Reads one split of the official PHOENIX14T tree (docs/data.md).

    Layout (`root` = the folder holding `annotations/` and `features/`, or a release parent)::

        annotations/manual/PHOENIX-2014-T.{split}.corpus.csv   '|'-separated, UTF-8, header
            name|video|start|end|speaker|orth|translation
        features/fullFrame-210x260px/{split}/{name}/images0001.png ...   (210 wide x 260 high)

    If `{split}/{name}/` does not exist, the CSV's `video` column (`{name}/1/*.png`, the
    PHOENIX-2014 convention) is tried relative to the split folder before the video is reported.

    Args:
      root: dataset root (see above).
      split: "train" | "dev" | "test".
      bad: when given, per-video problems are appended here and the video skipped; else they raise.
      check_frames: list the frame folders (default). False skips the file system (frame_paths
        empty, num_frames 0) — for text-only use.

    Returns:
      Records in CSV order.
    """
    _check_split(split)
    root = find_phoenix14t_root(root)
    csv_path = os.path.join(root, "annotations", "manual", f"PHOENIX-2014-T.{split}.corpus.csv")
    if not os.path.isfile(csv_path):
        raise DataError(f"{csv_path}: annotation file missing; restore it from the PHOENIX14T release")
    split_dir = os.path.join(root, PHOENIX_FRAMES_DIR, split)
    records: list[VideoRecord] = []
    first_line: dict[str, int] = {}
    with open(csv_path, encoding="utf-8", newline="") as f:
        # QUOTE_NONE: the corpus has no quoting; a stray '"' in a sentence must stay text.
        reader = csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != PHOENIX_HEADER:
            raise DataError(
                f"{csv_path}: line 1: header is {'|'.join(header or [])!r}, expected "
                f"{'|'.join(PHOENIX_HEADER)!r}; pass the official PHOENIX-2014-T.{split}.corpus.csv"
            )
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line (e.g. trailing newline): not a video
            name = row[0].strip() or f"<line {line}>"
            if len(row) != len(PHOENIX_HEADER):
                _report(bad, BadVideo(split, name, f"{csv_path}:{line}",
                                      f"row has {len(row)} '|'-separated fields, expected "
                                      f"{len(PHOENIX_HEADER)}; fix or delete the row"))
                continue
            fields = dict(zip(PHOENIX_HEADER, (c.strip() for c in row)))
            if name in first_line:
                _report(bad, BadVideo(split, name, f"{csv_path}:{line}",
                                      f"duplicate name (first at line {first_line[name]}); "
                                      "delete one of the rows"))
                continue
            first_line[name] = line
            frames: tuple[str, ...] = ()
            if check_frames:
                folder = os.path.join(split_dir, name)
                if not os.path.isdir(folder):
                    alt = os.path.dirname(os.path.join(split_dir, fields["video"]))
                    if fields["video"] and os.path.isdir(alt):
                        folder = alt
                got = _frames_of_folder(folder, split, name, f"{csv_path}:{line}", bad, (".png",))
                if got is None:
                    continue
                frames = got
            records.append(VideoRecord(
                name=name, split=split, frame_paths=frames, num_frames=len(frames),
                translation=strip_final_period(fields["translation"]),
                gloss=fields["orth"] or None, signer=fields["speaker"] or None,
            ))
    return records


# ----------------------------------------------------------------------------------------------
# GFSLT-style label pickles (PHOENIX14T from GFSLT-VLP, CSL-Daily from the HFA authors)
# ----------------------------------------------------------------------------------------------


def _label_file(labels: str, split: str) -> str:
    """`labels` is a `labels.{split}` file or the folder holding the three of them."""
    if os.path.isdir(labels):
        path = os.path.join(labels, f"labels.{split}")
        if not os.path.isfile(path):
            raise DataError(f"{path}: label file for split {split!r} missing; "
                            "pass --labels the folder holding labels.train/dev/test")
        return path
    if not os.path.isfile(labels):
        raise DataError(f"{labels}: label file or folder not found; check --labels")
    return labels


def _load_label_dict(path: str) -> dict[str, Any]:
    data = load_gzip_pickle(path)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DataError(f"{path}: expected a dict of sample dicts (GFSLT-VLP label format), got "
                        f"{type(data).__name__}; pass the labels.{{train,dev,test}} files")
    return data


def _entry_name(key: Any, entry: dict[str, Any], split: str) -> str:
    """GFSLT PHOENIX keys/names are 'split/name'; CSL-Daily ones are bare names."""
    name = str(entry.get("name", key))
    prefix = split + "/"
    return name[len(prefix):] if name.startswith(prefix) else name


def _text_of(entry: dict[str, Any]) -> str | None:
    text = entry.get("text")
    return strip_final_period(text) if isinstance(text, str) and text.strip() else None


def _label_entries(path: str, split: str, bad: list[BadVideo] | None):
    """Yields `(name, entry, where)` per label-file entry; duplicate names are reported, skipped."""
    seen: set[str] = set()
    for key, entry in _load_label_dict(path).items():
        name = _entry_name(key, entry, split)
        where = f"{path} [{key!r}]"
        if name in seen:
            _report(bad, BadVideo(split, name, where, "duplicate name; delete one entry"))
            continue
        seen.add(name)
        yield name, entry, where


def read_gfslt_labels(labels_path: str, frames_root: str, split: str, *,
                      bad: list[BadVideo] | None = None,
                      check_frames: bool = True) -> list[VideoRecord]:
    """Reads a GFSLT-VLP label file (PHOENIX14T) through the restricted unpickler.

    Label format: gzip pickle, dict `"split/name" -> {name: "split/name", gloss, text, length,
    imgs_path: ["split/name/images0001.png", ...]}`; `imgs_path` is relative to
    `frames_root` = `.../features/fullFrame-210x260px/` (GFSLT-VLP's `img_path`).
    Note (gfslt-labels PROVENANCE): GFSLT's `gloss` is not the official `orth` for dev/test.

    Args:
      labels_path: `labels.{split}` or the folder holding the three label files.
      frames_root: folder the `imgs_path` entries are relative to.
      split: "train" | "dev" | "test".
      bad: collect per-video problems instead of raising (see module docstring).
      check_frames: check that every video's frame folder exists and holds its frames. False
        trusts the label file (paths are joined, not checked).

    Returns:
      Records in label-file order; `name` without the "split/" prefix; signer None.
    """
    _check_split(split)
    path = _label_file(labels_path, split)
    records: list[VideoRecord] = []
    for name, entry, where in _label_entries(path, split, bad):
        text = _text_of(entry)
        rel = entry.get("imgs_path")
        if text is None or not isinstance(rel, (list, tuple)) or not all(isinstance(p, str) for p in rel):
            _report(bad, BadVideo(split, name, where, "entry lacks a 'text' string or an 'imgs_path' "
                                                      "list; regenerate the label file"))
            continue
        if not rel:
            _report(bad, BadVideo(split, name, where, "entry lists no frames (empty imgs_path)"))
            continue
        frames = tuple(os.path.abspath(os.path.join(frames_root, p)) for p in rel)
        if check_frames:
            folder = os.path.dirname(frames[0])
            listed = _frames_of_folder(folder, split, name, where, bad)
            if listed is None:
                continue
            missing = sorted(set(frames) - set(listed))
            if missing:
                _report(bad, BadVideo(split, name, missing[0],
                                      f"{len(missing)} of {len(frames)} listed frames missing; "
                                      "restore the frames or regenerate the label file"))
                continue
        gloss = entry.get("gloss")
        records.append(VideoRecord(
            name=name, split=split, frame_paths=frames, num_frames=len(frames), translation=text,
            gloss=gloss if isinstance(gloss, str) and gloss else None, signer=None,
        ))
    return records


def read_csl_daily(labels_dir_or_file: str, frames_root: str, split: str, *,
                   bad: list[BadVideo] | None = None,
                   check_frames: bool = True) -> list[VideoRecord]:
    """Reads CSL-Daily: GFSLT-style label pickles + the CSL-Daily frame folders.

    Labels (`labels.{train,dev,test}`, as in GFSLT-VLP and elsobhano/MLLM `data/csldaily/`):
    gzip pickle, dict `name -> {name, gloss (space-separated), text (Chinese sentence),
    length (frames)}`, optionally with `imgs_path` (then used like :func:`read_gfslt_labels`).

    Frames: the CSL-Daily release layout used by GFSLT-VLP / MLLM-style loaders,
    `CSL-Daily/sentence/frames_512x512/{name}/*.jpg` (512x512 JPEG frames, frame order = sorted
    file names). Pass `frames_root` = the `frames_512x512` folder; each video's frames are the
    sorted `*.jpg` (also `*.jpeg`/`*.png`) files of `frames_root/{name}/`. When the label gives a
    `length`, the folder must hold exactly that many frames (a short folder is an incomplete
    extraction, reported as a bad video).

    Args:
      labels_dir_or_file: `labels.{split}` or the folder holding the three label files.
      frames_root: the `frames_512x512` folder.
      split: "train" | "dev" | "test".
      bad: collect per-video problems instead of raising.
      check_frames: list the frame folders (default). False skips the file system: frame_paths
        empty (unless the label lists `imgs_path`), num_frames = the label's `length`.
    """
    _check_split(split)
    path = _label_file(labels_dir_or_file, split)
    records: list[VideoRecord] = []
    for name, entry, where in _label_entries(path, split, bad):
        text = _text_of(entry)
        if text is None:
            _report(bad, BadVideo(split, name, where, "entry lacks a 'text' string; "
                                                      "regenerate the label file"))
            continue
        length = entry.get("length")
        length = length if isinstance(length, int) and not isinstance(length, bool) else None
        rel = entry.get("imgs_path")
        frames: tuple[str, ...] = ()
        if isinstance(rel, (list, tuple)) and rel:
            frames = tuple(os.path.abspath(os.path.join(frames_root, str(p))) for p in rel)
        if check_frames:
            folder = os.path.dirname(frames[0]) if frames else os.path.join(frames_root, name)
            listed = _frames_of_folder(folder, split, name, where, bad)
            if listed is None:
                continue
            if frames:
                missing = sorted(set(frames) - set(listed))
                if missing:
                    _report(bad, BadVideo(split, name, missing[0],
                                          f"{len(missing)} of {len(frames)} listed frames missing; "
                                          "restore the frames"))
                    continue
            else:
                frames = listed
            if length is not None and length != len(frames):
                _report(bad, BadVideo(split, name, folder,
                                      f"label says {length} frames, folder has {len(frames)}; "
                                      "re-extract the frames of this video"))
                continue
        num_frames = len(frames) if (frames or check_frames) else (length or 0)
        gloss = entry.get("gloss")
        records.append(VideoRecord(
            name=name, split=split, frame_paths=frames, num_frames=num_frames, translation=text,
            gloss=gloss if isinstance(gloss, str) and gloss else None, signer=None,
        ))
    return records

