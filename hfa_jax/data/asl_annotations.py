"""American Sign Language corpora on disk -> one typed :class:`ClipRecord` per signed sentence.

The sibling of :mod:`hfa_jax.data.annotations` for corpora that ship *videos and times* instead of
frame folders. Each reader follows its corpus's own documentation:

* **How2Sign** (Duarte et al., CVPR 2021; https://how2sign.github.io, "Download" page). The
  re-aligned English translations are tab-separated files
  ``how2sign_realigned_{train,val,test}.csv`` with the header ``VIDEO_ID VIDEO_NAME SENTENCE_ID
  SENTENCE_NAME START_REALIGNED END_REALIGNED SENTENCE`` (times in seconds). The front-camera
  sentence clips unpack to ``{split}_rgb_front_clips/raw_videos/{SENTENCE_NAME}.mp4``; the raw
  front videos to ``{split}_raw_videos/raw_videos/{VIDEO_NAME}.mp4``, which are cut at
  ``START_REALIGNED .. END_REALIGNED``. How2Sign's ``val`` split is our ``dev``.
* **OpenASL** (Shi et al., EMNLP 2022; https://github.com/chevalierNoir/OpenASL, README). One TSV
  (``openasl-v1.0.tsv``) with a header that names at least ``vid`` (the clip id), ``yid`` (the
  YouTube id), ``start``, ``end`` (``HH:MM:SS.mmm``), ``raw-text`` and ``split``
  (``train``/``valid``/``test``). The user downloads the YouTube videos as ``{yid}.{ext}``; each
  row is cut from its video at ``start .. end``. ``valid`` is our ``dev``.
* **YouTube-ASL** (Uthus et al., NeurIPS 2023 Datasets and Benchmarks; the released list of video
  ids). The corpus is a list of YouTube ids, one per line; the user downloads each video as
  ``{id}.{ext}`` and its English caption track as ``{id}.en.vtt`` (or ``{id}.vtt``/``.srt``), as
  ``yt-dlp --write-subs --sub-langs en`` names them. Each caption cue is one clip, cut at the cue's
  times. The paper trains on caption-level clips and evaluates on How2Sign, so every clip goes to
  ``train`` unless ``dev_fraction`` holds out whole videos (by a hash of the id).
  The filtering rules applied here (:class:`CaptionFilter`, each a flag of the builder): cue text
  is stripped of markup (``<...>`` tags, ``{...}`` styling) and of sound descriptions in brackets
  (``[Music]``, ``(applause)``); cues left empty are dropped; cues shorter than
  ``min_seconds`` (0.2 s) or longer than ``max_seconds`` (60 s) are dropped; identical consecutive
  cues of rolling captions are merged into one. A clip is named ``{id}-{start in ms, 8 digits}``. These are our rules for caption-level clips, not a
  reproduction of the paper's landmark pipeline, which the paper describes only at that level.

Readers never decode video; they check that the files exist and that the times are sane. A
problem that concerns one clip (a missing video, an unreadable row, times out of order) goes to
the caller's ``bad`` list as a :class:`~hfa_jax.data.annotations.BadVideo` and the clip is skipped,
or raises :class:`DataError` when the caller passes no list. Whole-file problems always raise.
Times beyond a video's end are found when the clip is decoded (``data_prep.build_dataset``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import html
import os
import re
from typing import Iterable

from hfa_jax.data.annotations import SPLITS, BadVideo, _check_split, _report
from hfa_jax.errors import DataError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    """One signed sentence cut from a video file: ``video`` from ``start`` to ``end`` seconds
    (None: from the start / to the end of the file)."""

    name: str
    split: str
    video: str  # absolute path
    start: float | None
    end: float | None
    translation: str
    signer: str | None = None
    gloss: str | None = None

    @property
    def duration(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return self.end - self.start


def parse_time(text: str) -> float:
    """``'12.5'`` / ``'00:00:12.500'`` / ``'00:12,500'`` (SRT) -> seconds; ValueError otherwise."""
    text = text.strip().replace(",", ".")
    if not text:
        raise ValueError("empty time")
    parts = text.split(":")
    if len(parts) > 3:
        raise ValueError(f"not a time: {text!r}")
    seconds = 0.0
    for p in parts:
        value = float(p)
        if not (value >= 0.0) or value != value or value == float("inf"):
            raise ValueError(f"not a time: {text!r}")
        seconds = seconds * 60.0 + value
    return seconds


def _find_video(folders: Iterable[str], stem: str) -> str | None:
    for folder in folders:
        for ext in VIDEO_SUFFIXES:
            path = os.path.join(folder, stem + ext)
            if os.path.isfile(path):
                return os.path.abspath(path)
    return None


def _check_times(start: float, end: float) -> str | None:
    if end <= start:
        return f"end time {end:.3f}s is not after start time {start:.3f}s"
    return None


# ----------------------------------------------------------------------------------------------
# How2Sign
# ----------------------------------------------------------------------------------------------

HOW2SIGN_HEADER = ("VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START_REALIGNED",
                   "END_REALIGNED", "SENTENCE")
HOW2SIGN_SPLIT = {"train": "train", "dev": "val", "test": "test"}
HOW2SIGN_SOURCES = ("clips", "raw")


def how2sign_csv(root: str, split: str) -> str:
    """The realigned translation file of ``split`` under ``root`` (or its ``how2sign/`` level)."""
    fname = f"how2sign_realigned_{HOW2SIGN_SPLIT[split]}.csv"
    for cand in (root, os.path.join(root, "how2sign"), os.path.join(root, "sentence_level")):
        path = os.path.join(cand, fname)
        if os.path.isfile(path):
            return path
    raise DataError(f"{root}: {fname} not found; pass --root the folder holding the How2Sign "
                    "realigned CSVs and the {split}_rgb_front_clips/ (or {split}_raw_videos/) folders")


def read_how2sign(root: str, split: str, *, source: str = "clips",
                  bad: list[BadVideo] | None = None) -> list[ClipRecord]:
    """Reads one split of How2Sign (see the module docstring for the layout).

    source: ``"clips"`` uses the sentence clips (``{split}_rgb_front_clips/raw_videos``) whole;
    ``"raw"`` cuts the raw front videos (``{split}_raw_videos/raw_videos``) at the realigned times.
    """
    _check_split(split)
    if source not in HOW2SIGN_SOURCES:
        raise DataError(f"unknown How2Sign source {source!r}; use clips or raw")
    path = how2sign_csv(root, split)
    base = os.path.dirname(path)
    theirs = HOW2SIGN_SPLIT[split]
    sub = f"{theirs}_rgb_front_clips" if source == "clips" else f"{theirs}_raw_videos"
    folders = [os.path.join(b, sub, "raw_videos") for b in (base, root)] + [
        os.path.join(b, sub) for b in (base, root)]
    records: list[ClipRecord] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = tuple(h.strip() for h in next(rows, ()))
        if header != HOW2SIGN_HEADER:
            raise DataError(f"{path}: header is {list(header)}, expected the How2Sign realigned "
                            f"columns {list(HOW2SIGN_HEADER)} (tab-separated)")
        for line_no, row in enumerate(rows, start=2):
            where = f"{path}:{line_no}"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(HOW2SIGN_HEADER):
                _report(bad, BadVideo(split, row[3] if len(row) > 3 else f"row{line_no}", where,
                                      f"row has {len(row)} fields, expected "
                                      f"{len(HOW2SIGN_HEADER)} (tab-separated); fix the row"))
                continue
            _, video_name, _, sentence_name, start_s, end_s, sentence = (c.strip() for c in row)
            name = sentence_name
            if name in seen:
                _report(bad, BadVideo(split, name, where, "duplicate SENTENCE_NAME; names must be unique"))
                continue
            try:
                start, end = parse_time(start_s), parse_time(end_s)
            except ValueError as e:
                _report(bad, BadVideo(split, name, where, f"unreadable time ({e}); fix the row"))
                continue
            problem = _check_times(start, end)
            if problem:
                _report(bad, BadVideo(split, name, where, problem + "; fix or drop the row"))
                continue
            if not sentence:
                _report(bad, BadVideo(split, name, where, "empty SENTENCE; fix or drop the row"))
                continue
            stem = sentence_name if source == "clips" else video_name
            video = _find_video(folders, stem)
            if video is None:
                _report(bad, BadVideo(split, name, os.path.join(folders[0], stem + ".mp4"),
                                      "video missing; download it or drop the row"))
                continue
            seen.add(name)
            cut = (None, None) if source == "clips" else (start, end)
            records.append(ClipRecord(name, split, video, cut[0], cut[1], sentence,
                                      signer=None, gloss=None))
    return records


# ----------------------------------------------------------------------------------------------
# OpenASL
# ----------------------------------------------------------------------------------------------

OPENASL_REQUIRED = ("vid", "yid", "start", "end", "split")
OPENASL_TEXT = ("raw-text", "tokenized-text")
OPENASL_SPLIT = {"train": "train", "valid": "dev", "dev": "dev", "val": "dev", "test": "test"}


def read_openasl(tsv: str, videos: str, split: str, *,
                 bad: list[BadVideo] | None = None) -> list[ClipRecord]:
    """Rows of the OpenASL TSV whose ``split`` maps to ``split``, cut from ``videos/{yid}.*``."""
    _check_split(split)
    if not os.path.isfile(tsv):
        raise DataError(f"{tsv}: OpenASL TSV not found; pass --labels the openasl-v1.0.tsv file")
    if not os.path.isdir(videos):
        raise DataError(f"{videos}: videos folder not found; pass --root the folder of the "
                        "downloaded YouTube videos ({yid}.mp4)")
    records: list[ClipRecord] = []
    seen: set[str] = set()
    with open(tsv, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.strip() for h in next(rows, [])]
        missing = [c for c in OPENASL_REQUIRED if c not in header]
        text_col = next((c for c in OPENASL_TEXT if c in header), None)
        if missing or text_col is None:
            raise DataError(f"{tsv}: header lacks {missing or ['raw-text']}; expected the OpenASL "
                            f"columns {list(OPENASL_REQUIRED + OPENASL_TEXT[:1])} (tab-separated)")
        col = {c: header.index(c) for c in (*OPENASL_REQUIRED, text_col)}
        for line_no, row in enumerate(rows, start=2):
            where = f"{tsv}:{line_no}"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                _report(bad, BadVideo(split, f"row{line_no}", where,
                                      f"row has {len(row)} fields, expected {len(header)}; fix the row"))
                continue
            theirs = row[col["split"]].strip()
            ours = OPENASL_SPLIT.get(theirs)
            if ours is None:
                _report(bad, BadVideo(split, row[col["vid"]], where,
                                      f"unknown split {theirs!r}; use train, valid or test"))
                continue
            if ours != split:
                continue
            name, yid = row[col["vid"]].strip(), row[col["yid"]].strip()
            if name in seen:
                _report(bad, BadVideo(split, name, where, "duplicate vid; names must be unique"))
                continue
            try:
                start, end = parse_time(row[col["start"]]), parse_time(row[col["end"]])
            except ValueError as e:
                _report(bad, BadVideo(split, name, where, f"unreadable time ({e}); fix the row"))
                continue
            problem = _check_times(start, end)
            text = row[col[text_col]].strip()
            if problem or not text:
                _report(bad, BadVideo(split, name, where,
                                      (problem or "empty text") + "; fix or drop the row"))
                continue
            video = _find_video([videos], yid)
            if video is None:
                _report(bad, BadVideo(split, name, os.path.join(videos, yid + ".mp4"),
                                      "video missing (not downloaded or removed from YouTube); "
                                      "download it or drop the row"))
                continue
            seen.add(name)
            records.append(ClipRecord(name, split, video, start, end, text))
    return records


# ----------------------------------------------------------------------------------------------
# YouTube-ASL
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CaptionFilter:
    """Which caption cues become clips (module docstring: the YouTube-ASL rules)."""

    min_seconds: float = 0.2
    max_seconds: float = 60.0
    dev_fraction: float = 0.0  # whole videos held out for dev, chosen by a hash of the id

    def __post_init__(self):
        if not 0.0 <= self.min_seconds < self.max_seconds:
            raise DataError(f"caption filter: need 0 <= min_seconds < max_seconds, got "
                            f"{self.min_seconds} and {self.max_seconds}")
        if not 0.0 <= self.dev_fraction < 1.0:
            raise DataError(f"caption filter: dev_fraction {self.dev_fraction} not in [0, 1)")


_TAG = re.compile(r"<[^>]*>|\{[^}]*\}")
_SOUND = re.compile(r"\[[^\]]*\]|\([^)]*\)")
_ARROW = re.compile(r"^\s*([0-9:.,]+)\s*-->\s*([0-9:.,]+)")


def clean_caption(text: str) -> str:
    """Cue text without markup, sound descriptions and extra white space."""
    text = html.unescape(_TAG.sub(" ", text))
    text = _SOUND.sub(" ", text)
    return " ".join(text.split())


def parse_captions(path: str) -> list[tuple[float, float, str]]:
    """WebVTT or SRT cues -> [(start, end, raw text)]; DataError for an unreadable file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: caption file unreadable ({type(e).__name__}); re-download it") from None
    cues: list[tuple[float, float, str]] = []
    i = 0
    while i < len(lines):
        m = _ARROW.match(lines[i])
        if not m:
            i += 1
            continue
        try:
            start, end = parse_time(m.group(1)), parse_time(m.group(2))
        except ValueError:
            i += 1
            continue
        i += 1
        text: list[str] = []
        while i < len(lines) and lines[i].strip():
            text.append(lines[i])
            i += 1
        cues.append((start, end, " ".join(text)))
    return cues


def _caption_file(captions: str, vid: str) -> str | None:
    for suffix in (".en.vtt", ".vtt", ".en.srt", ".srt"):
        path = os.path.join(captions, vid + suffix)
        if os.path.isfile(path):
            return path
    return None


def youtube_asl_split(video_id: str, dev_fraction: float) -> str:
    """``train`` or ``dev`` for a whole video, stable across runs and machines."""
    if dev_fraction <= 0.0:
        return "train"
    h = int.from_bytes(hashlib.sha256(video_id.encode()).digest()[:8], "big") / 2.0 ** 64
    return "dev" if h < dev_fraction else "train"


def read_youtube_asl(ids_file: str, videos: str, split: str, *, captions: str | None = None,
                     rules: CaptionFilter = CaptionFilter(),
                     bad: list[BadVideo] | None = None) -> list[ClipRecord]:
    """Caption-level clips of the videos listed in ``ids_file`` (one id per line)."""
    _check_split(split)
    captions = captions or videos
    if not os.path.isfile(ids_file):
        raise DataError(f"{ids_file}: YouTube-ASL id list not found; pass --labels the id list")
    if not os.path.isdir(videos):
        raise DataError(f"{videos}: videos folder not found; pass --root the downloaded videos")
    with open(ids_file, encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    records: list[ClipRecord] = []
    for vid in dict.fromkeys(ids):  # in list order, duplicates once
        if youtube_asl_split(vid, rules.dev_fraction) != split:
            continue
        video = _find_video([videos], vid)
        if video is None:
            _report(bad, BadVideo(split, vid, os.path.join(videos, vid + ".mp4"),
                                  "video missing (not downloaded or removed from YouTube); skipped"))
            continue
        cap = _caption_file(captions, vid)
        if cap is None:
            _report(bad, BadVideo(split, vid, os.path.join(captions, vid + ".en.vtt"),
                                  "caption file missing; download the English captions"))
            continue
        merged: list[list] = []
        for start, end, raw in parse_captions(cap):
            text = clean_caption(raw)
            if not text or end <= start:
                continue
            if merged and merged[-1][2] == text and start <= merged[-1][1] + 1e-3:
                merged[-1][1] = max(merged[-1][1], end)  # rolling captions repeat a cue
                continue
            merged.append([start, end, text])
        for start, end, text in merged:
            if not rules.min_seconds <= end - start <= rules.max_seconds:
                continue
            # Named by the cue's start in milliseconds: stable when the filter flags change.
            records.append(ClipRecord(f"{vid}-{round(start * 1000):08d}", split, video, start,
                                      end, text))
    return records


__all__ = ["ClipRecord", "CaptionFilter", "read_how2sign", "read_openasl", "read_youtube_asl",
           "parse_captions", "clean_caption", "parse_time", "youtube_asl_split", "SPLITS"]
