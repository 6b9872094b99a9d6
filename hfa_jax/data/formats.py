"""The source dataset formats (``--format`` of the ``data_prep`` tools): one registry, one entry each.

A format is how a corpus lies on disk before conversion (the written dataset's layout is
:mod:`hfa_jax.data.format`). Every tool reads this table: ``data_prep.build_dataset`` (the
records and their frames), ``data_prep.trim_vocab`` and ``data_prep.prototypes`` (the training
sentences), ``data_prep.pseudo_glosses`` (the sentences of every split and how to split them into
words) and :mod:`hfa_jax.model_folder` (the source videos' frame rate and size). Adding a corpus
is one :class:`DatasetFormat` in :data:`FORMATS`, with its reader in
:mod:`hfa_jax.data.annotations`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from hfa_jax.data import annotations, asl_annotations
from hfa_jax.data.annotations import BadVideo, VideoRecord
from hfa_jax.errors import ConfigError, DataError

__all__ = ["DatasetFormat", "FORMATS", "DEFAULT_FORMAT", "get", "names", "of_dataset"]

# (frames root or tree, labels folder or file, split, *, bad, check_frames) -> records
Reader = Callable[..., list[VideoRecord]]


def _phoenix14t(root: str, labels: str | None, split: str, *, bad: list[BadVideo] | None,
                check_frames: bool) -> list[VideoRecord]:
    return annotations.read_phoenix14t(root, split, bad=bad, check_frames=check_frames)


def _gfslt(root: str, labels: str, split: str, *, bad: list[BadVideo] | None,
           check_frames: bool) -> list[VideoRecord]:
    return annotations.read_gfslt_labels(labels, root, split, bad=bad, check_frames=check_frames)


def _csl_daily(root: str, labels: str, split: str, *, bad: list[BadVideo] | None,
               check_frames: bool) -> list[VideoRecord]:
    return annotations.read_csl_daily(labels, root, split, bad=bad, check_frames=check_frames)


def _synthsign_extras(root: str) -> str | None:
    """A SynthSign tree's ``extras/`` folder (hand trajectories, descriptions), or None."""
    extras = os.path.join(annotations.find_phoenix14t_root(root), "extras")
    return extras if os.path.isdir(extras) else None


@dataclasses.dataclass(frozen=True)
class DatasetFormat:
    """One source layout.

    ``labels``: the sentences are in label files (``--labels``, by default ``ROOT/labels``, where
    SynthSign writes them) apart from the frames (``--root``); otherwise ``--root`` holds both.
    ``words``: how a sentence splits into words, for pseudo-gloss tagging and fastText: ``"spaces"``
    (German: spaCy / HanTa lemmas) or ``"jieba"`` (Chinese segmentation).
    ``fps``, ``width``, ``height``: the source videos, before the square resize.
    """

    name: str
    title: str
    lang: str                 # mBART language code of the translations
    words: str
    fps: float
    width: int
    height: int
    labels: bool
    read: Reader
    extras: Callable[[str], str | None] | None = None  # root -> SynthSign extras folder, or None
    # Video files cut by times (the ASL corpora, hfa_jax.data.asl_annotations) rather than frame
    # folders; such web corpora skip bad clips by default (videos vanish from YouTube).
    clips: bool = False

    def labels_dir(self, root: str | None, labels: str | None) -> str:
        """The label files' folder (``labels``, else ``ROOT/labels``); ConfigError if neither."""
        labels = labels or (os.path.join(root, "labels") if root else None)
        if not labels:
            raise ConfigError(f"--format {self.name} needs --labels (the folder holding labels.{{train,dev,test}})")
        return labels

    def records(self, root: str | None, labels: str | None, split: str, *, bad: list[BadVideo] | None = None,
                check_frames: bool = True, **options) -> list[VideoRecord]:
        """The records of one split; with ``check_frames=False`` text only (no frame is looked at).
        ``options``: reading options of the ASL readers (``how2sign_source``, ``captions``,
        ``rules``; :mod:`hfa_jax.data.asl_annotations`)."""
        if self.clips:
            if self.labels and not labels:
                raise ConfigError(f"--format {self.name} needs --labels (docs/asl.md)")
            if not root:
                raise ConfigError(f"--format {self.name} needs --root (docs/asl.md)")
            return self.read(root, labels, split, bad=bad, check_frames=check_frames, **options)
        if self.labels:
            labels = self.labels_dir(root if not check_frames else None, labels)
            if check_frames and not os.path.isdir(root or ""):
                raise DataError(f"{root}: frames root not found; pass --root the frames folder")
            return self.read(root or "", labels, split, bad=bad, check_frames=check_frames)
        if not root:
            raise ConfigError(f"--format {self.name} needs --root (the folder holding annotations/)")
        return self.read(root, None, split, bad=bad, check_frames=check_frames)

    def sentences(self, root: str | None, labels: str | None, split: str) -> list[str]:
        """The translations of one split, in record order (text only)."""
        return [r.translation for r in self.records(root, labels, split, check_frames=False)]

    def texts(self, root: str | None, labels: str | None, splits) -> dict[str, str]:
        """``{"split/name": translation}`` over ``splits`` (text only)."""
        return {f"{split}/{r.name}": r.translation for split in splits
                for r in self.records(root, labels, split, check_frames=False)}

    def extras_dir(self, root: str) -> str | None:
        return self.extras(root) if self.extras is not None else None


FORMATS: dict[str, DatasetFormat] = {f.name: f for f in (
    DatasetFormat("phoenix14t", "RWTH-PHOENIX-Weather 2014T, official layout (also SynthSign trees)",
                  lang="de_DE", words="spaces", fps=25.0, width=210, height=260, labels=False,
                  read=_phoenix14t, extras=_synthsign_extras),
    DatasetFormat("gfslt", "PHOENIX14T through GFSLT-VLP's label files", lang="de_DE", words="spaces",
                  fps=25.0, width=210, height=260, labels=True, read=_gfslt),
    DatasetFormat("csl_daily", "CSL-Daily: GFSLT-style label files + frame folders", lang="zh_CN",
                  words="jieba", fps=30.0, width=512, height=512, labels=True, read=_csl_daily),
)}
DEFAULT_FORMAT = "phoenix14t"


def _how2sign(root: str, labels: str | None, split: str, *, bad, check_frames: bool, **options):
    return asl_annotations.read_how2sign(root, split, bad=bad, **options)


def _openasl(root: str, labels: str, split: str, *, bad, check_frames: bool, **options):
    return asl_annotations.read_openasl(labels, root, split, bad=bad)


def _youtube_asl(root: str, labels: str, split: str, *, bad, check_frames: bool, **options):
    return asl_annotations.read_youtube_asl(labels, root, split, bad=bad, **options)


# The ASL corpora (docs/asl.md): English, videos cut by times. fps / width / height: the
# corpora's typical source video (How2Sign's front camera, YouTube's 720p at 30 fps).
for _f in (
    DatasetFormat("how2sign", "How2Sign: realigned CSVs + rgb_front clips (or raw videos)", lang="en_XX",
                  words="spaces", fps=24.0, width=1280, height=720, labels=False, read=_how2sign, clips=True),
    DatasetFormat("openasl", "OpenASL: the TSV + the downloaded YouTube videos", lang="en_XX",
                  words="spaces", fps=30.0, width=1280, height=720, labels=True, read=_openasl, clips=True),
    DatasetFormat("youtube_asl", "YouTube-ASL: the video-id list + videos and English captions",
                  lang="en_XX", words="spaces", fps=30.0, width=1280, height=720, labels=True,
                  read=_youtube_asl, clips=True),
):
    FORMATS[_f.name] = _f


def names() -> tuple[str, ...]:
    """The format names, sorted (the tools' ``--format`` choices)."""
    return tuple(sorted(FORMATS))


def get(name: str) -> DatasetFormat:
    """The format called ``name``; ConfigError naming the known ones otherwise."""
    if name not in FORMATS:
        raise ConfigError(f"unknown --format {name!r}; use one of {', '.join(names())}")
    return FORMATS[name]


def of_dataset(dataset_name: str) -> DatasetFormat:
    """The format a converted dataset came from, by its name (``build_dataset`` names it after the
    format unless ``--name`` says otherwise); PHOENIX14T where the name is not a format's."""
    return FORMATS.get(dataset_name, FORMATS[DEFAULT_FORMAT])
