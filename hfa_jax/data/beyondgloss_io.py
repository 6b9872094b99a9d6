"""Readers for the BeyondGloss side data (docs/beyondgloss.md) and the trainer's per-example hand-pose field.

Formats (elsobhano/BeyondGloss):

* Descriptions, text: one JSON per video as written by ``sign_video_descriptor/describe_segments.py``
  (``{"directory": ..., "chunk_0": str, "chunk_1": str, ...}``, one chunk per 16-frame segment)
  and ``sign_video_descriptor/refine.py`` (adds the merged sentence under ``"refined"``).
* Descriptions, precomputed vectors (what ``slt_framework`` trains on; encoded offline with
  mBART-large-50): ``{desc_path}/{split}/{name}.lmdb``, an LMDB environment whose key ``b"data"``
  holds a pickled ``[1, 1024]`` array (``dataset/utils.py: read_lmdb_folder``).
* HaMeR targets: ``{hamer_path}/{split}/{name}/{name}.lzma``, an LZMA-compressed pickle of
  ``{"features": [T, 288] array}`` (``dataset/utils.py: read_hamer_features``).

Pickles run code when loaded, so every pickle here goes through
:func:`hfa_jax.data.safe_pickle.restricted_load` with ``allow_numpy=True``: plain containers and
numpy arrays load, any other global (``os.system``, a torch tensor, ...) is refused before it is
looked up. ``.npy`` files are read with ``allow_pickle=False``. LMDB needs the optional ``lmdb``
package (``pip install lmdb``); a folder of ``{name}.pkl`` / ``{name}.npy`` files works without it.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import lzma
import os
import re
from typing import Any, Mapping

import numpy as np

from hfa_jax.data.hand_targets import HAND_POSE_DIM
from hfa_jax.data.safe_pickle import restricted_load
from hfa_jax.errors import ConfigError, DataError

__all__ = [
    "HAND_POSE_DIM",
    "read_description_json",
    "load_pickle_file",
    "read_lmdb_pickle",
    "load_hand_pose_file",
    "load_vector_file",
    "check_hand_pose",
    "check_vector",
    "find_video_file",
    "HAND_POSE_SUFFIXES",
    "VECTOR_SUFFIXES",
    "HandPoseField",
    "CombinedExampleFn",
    "description_fields",
    "load_synthsign_descriptions",
]

DESCRIPTION_KEYS = ("refined", "chunks")
_CHUNK = re.compile(r"^chunk_(\d+)$")

# Per-video file layouts searched, in order, under ROOT (authors' layout first).
HAND_POSE_SUFFIXES = ("{split}/{name}/{name}.lzma", "{split}/{name}.lzma", "{split}/{name}.pkl",
                      "{split}/{name}.npy", "{name}/{name}.lzma", "{name}.lzma", "{name}.pkl", "{name}.npy")
VECTOR_SUFFIXES = ("{split}/{name}.lmdb", "{split}/{name}.pkl", "{split}/{name}.npy",
                   "{name}.lmdb", "{name}.pkl", "{name}.npy")
DESCRIPTION_SUFFIXES = ("{split}/{name}.json", "{name}.json")


def find_video_file(root: str, split: str, name: str, suffixes: tuple[str, ...]) -> str | None:
    """The first existing ``root/<suffix>`` for this video (files, or LMDB folders), else None."""
    for pattern in suffixes:
        path = os.path.join(root, pattern.format(split=split, name=name))
        if os.path.exists(path):
            return path
    return None


# ----------------------------------------------------------------------------- descriptions
def read_description_json(path: str, *, key: str = "refined") -> str:
    """One video's description text from a BeyondGloss description JSON.

    Args:
      path: the JSON file.
      key: ``"refined"``: the merged, LLM-refined sentence (what the authors trained on);
        ``"chunks"``: the raw segment descriptions ``chunk_0, chunk_1, ...`` in numeric order,
        joined with single spaces (``refine.py`` concatenates them with no separator before
        refining; a space keeps sentence boundaries for direct encoding).

    Raises:
      DataError: missing/unreadable file, not an object, or no usable text under ``key``.
    """
    if key not in DESCRIPTION_KEYS:
        raise ConfigError(f"description key {key!r} unknown; use one of {DESCRIPTION_KEYS}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: description file missing; generate it (README: descriptions) or pass --skip_bad")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable description JSON ({type(e).__name__}: {str(e)[:80]}); regenerate it") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: description JSON must be an object with 'refined' / 'chunk_<i>' keys")
    if key == "refined":
        text = data.get("refined")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}: no non-empty 'refined' text (refine.py failed or was not run); "
                            "rerun it, or use --description_key chunks")
        return " ".join(text.split())
    chunks = sorted((int(m.group(1)), v) for k, v in data.items() if (m := _CHUNK.match(k)))
    if not chunks or not all(isinstance(v, str) for _, v in chunks):
        raise DataError(f"{path}: no 'chunk_<i>' strings; regenerate it with describe_segments.py")
    idx = [i for i, _ in chunks]
    if idx != list(range(len(idx))):
        raise DataError(f"{path}: segment keys {['chunk_%d' % i for i in idx]} are not chunk_0..chunk_{len(idx) - 1}; "
                        "regenerate it")
    return " ".join(" ".join(v.split()) for _, v in chunks if v.strip())


def load_synthsign_descriptions(root: str, split: str) -> list[str]:
    """The ``description`` of every ``root/extras/{split}/*.json`` of a SynthSign tree, in file
    name order (e.g. to train the demo tokenizer on them)."""
    folder = os.path.join(root, "extras", split)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no SynthSign extras folder; generate the tree with `python -m data_prep.synthsign`")
    out = []
    for fname in sorted(os.listdir(folder)):
        if not fname.endswith(".json"):
            continue
        path = os.path.join(folder, fname)
        try:
            with open(path, encoding="utf-8") as f:
                text = json.load(f)["description"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: unreadable SynthSign extras ({type(e).__name__}); regenerate it") from None
        out.append(str(text))
    return out


# ----------------------------------------------------------------------------- pickles
def load_pickle_file(path: str) -> Any:
    """A (``.lzma``/``.xz``, gzip or plain) pickle file through the restricted unpickler
    (containers + numpy arrays only)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file missing")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        # xz container, or the legacy "alone" .lzma stream (what `lzma.open` writes by default
        # is xz; FORMAT_AUTO reads both).
        if raw[:6] == b"\xfd7zXZ\x00" or path.endswith((".lzma", ".xz")):
            raw = lzma.decompress(raw)
        elif raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise DataError(f"{path}: corrupt compressed stream ({str(e)[:100]}); regenerate the file") from None
    return restricted_load(io.BytesIO(raw), allow_numpy=True, source=path)


def read_lmdb_pickle(path: str, key: bytes = b"data") -> Any:
    """The pickled value under ``key`` of the LMDB environment folder ``path`` (the authors'
    per-video ``{name}.lmdb``), through the restricted unpickler. Needs ``pip install lmdb``."""
    try:
        import lmdb  # lazy: an optional dependency (pip install lmdb)
    except ImportError:
        raise DataError(f"{path}: reading LMDB needs the optional package lmdb (pip install lmdb), or "
                        "export the vectors as {name}.npy / {name}.pkl files") from None
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=os.path.isdir(path))
    except lmdb.Error as e:
        raise DataError(f"{path}: not a readable LMDB environment ({str(e)[:100]})") from None
    try:
        with env.begin() as txn:
            raw = txn.get(key)
    finally:
        env.close()
    if raw is None:
        raise DataError(f"{path}: LMDB has no key {key!r}; expected the authors' layout (key b'data')")
    return restricted_load(io.BytesIO(bytes(raw)), allow_numpy=True, source=path)


def _to_array(obj: Any, path: str, *, dict_key: str | None) -> np.ndarray:
    if isinstance(obj, dict):
        if dict_key is None or dict_key not in obj:
            raise DataError(f"{path}: holds a dict with keys {sorted(map(str, obj))[:8]}; expected "
                            f"{'a key ' + repr(dict_key) if dict_key else 'an array'}")
        obj = obj[dict_key]
    try:
        arr = np.asarray(obj, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: not a numeric array ({type(e).__name__}: {str(e)[:80]})") from None
    return arr


def _load_any(path: str, dict_key: str | None) -> np.ndarray:
    if os.path.isdir(path) or path.endswith(".lmdb"):
        return _to_array(read_lmdb_pickle(path), path, dict_key=dict_key)
    if path.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: unreadable .npy ({str(e)[:100]}); re-export it as a plain float array") from None
    return _to_array(load_pickle_file(path), path, dict_key=dict_key)


def load_hand_pose_file(path: str) -> np.ndarray:
    """HaMeR targets of one video (``.lzma``/``.pkl`` pickle of ``{"features": [T, 288]}`` or of
    the bare array; or ``.npy``) -> float32 array (shape checked by :func:`check_hand_pose`)."""
    return _load_any(path, dict_key="features")


def load_vector_file(path: str) -> np.ndarray:
    """A precomputed description vector (``.lmdb`` / ``.pkl`` / ``.npy``; ``[D]`` or ``[1, D]``)."""
    return _load_any(path, dict_key="features")


def check_hand_pose(arr: np.ndarray, num_frames: int, *, dim: int = HAND_POSE_DIM, where: str = "") -> np.ndarray:
    """Validates per-frame targets against the video: ``[num_frames, dim]`` finite float32."""
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise DataError(f"{where}: hand-pose targets have shape {list(arr.shape)}, expected [T, {dim}] "
                        "(HaMeR MANO hand_pose + global_orient of both hands per frame); re-export them")
    if arr.shape[0] != num_frames:
        raise DataError(f"{where}: hand-pose targets have {arr.shape[0]} frames but the video has {num_frames}; "
                        "run HaMeR on exactly the dataset's frames (one row per frame, zeros when no hand)")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{where}: hand-pose targets contain NaN/Inf; write zeros for frames without a hand")
    return arr.astype(np.float32)


def check_vector(arr: np.ndarray, dim: int | None, *, where: str = "") -> np.ndarray:
    """``[D]`` or ``[1, D]`` -> ``[D]`` finite float32, D == dim when given."""
    arr = np.asarray(arr, np.float32)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or (dim is not None and arr.shape[0] != dim):
        raise DataError(f"{where}: description vector has shape {list(arr.shape)}, expected [{dim or 'D'}] "
                        "(or [1, D]); use vectors from one text encoder")
    if not np.all(np.isfinite(arr)) or not np.any(arr):
        raise DataError(f"{where}: description vector is all zeros or not finite; re-encode it")
    return arr


# ----------------------------------------------------------------------------- trainer fields
def description_fields(values: list[Any], *, tokenizer: Any = None, max_len: int = 128,
                       vectors: bool = False, dim: int | None = None, where: str = "") -> dict[str, np.ndarray]:
    """Per-example description fields of one split (rows in source order), for the trainer's
    row lookup.

    Args:
      values: per row, the ``description`` text (``vectors=False``) or the ``description_vec``
        array (``vectors=True``); None where the dataset lacks the feature.
      tokenizer: :class:`hfa_jax.text.tokenizer.Tokenizer` (texts): encoded as the frozen text
        encoder's source (``encode_source``: tokens + ``</s>`` + lang, like the sentences).
      max_len: description token length (longer descriptions are truncated by the tokenizer).
      vectors: precomputed vectors instead of texts.
      dim: expected vector width (the model's description width).
      where: dataset/split for error messages.

    Returns:
      ``{"desc_ids": [N, max_len] int32, "desc_mask": [N, max_len] bool}`` or
      ``{"desc_vec": [N, dim] float32}``.
    """
    missing = [i for i, v in enumerate(values) if v is None]
    feature = "description_vec" if vectors else "description"
    if missing:
        raise DataError(f"{where}: row {missing[0]} (and {len(missing) - 1} more) has no `{feature}` feature; add it "
                        "with `python -m data_prep.beyondgloss` or turn model.beyondgloss.description off")
    if vectors:
        return {"desc_vec": np.stack([check_vector(v, dim, where=f"{where} row {i}") for i, v in enumerate(values)])}
    empty = [i for i, v in enumerate(values) if not str(v).strip()]
    if empty:
        raise DataError(f"{where}: row {empty[0]} has an empty description; regenerate the descriptions")
    ids, mask = tokenizer.encode_source([str(v) for v in values], int(max_len))
    return {"desc_ids": np.asarray(ids, np.int32), "desc_mask": np.asarray(mask, bool)}


@dataclasses.dataclass(frozen=True)
class HandPoseField:
    """``example_fn`` adding the stored ``hand_pose`` of an example at a fixed length.

    ``example["hand_pose"] [N, 288]`` -> ``{"hand_pose": [length, 288] float32}``: the rows of
    the frames the pipeline kept (``example["frame_indices"]``, passed by
    :func:`hfa_jax.data.pipeline.make_loader`; without it the first ``min(N, length)`` rows), in
    order and zero-padded, so row t is frame t of the batch under either frame selection
    ("first" or "random"). Set ``length`` to the largest bucket and slice the batch field to the
    batch's T (``[:, :T]``; the loss does it). Picklable (grain workers).
    """

    length: int
    dim: int = HAND_POSE_DIM
    key: str = "hand_pose"

    def __call__(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if self.key not in example:
            raise DataError(f"example {example.get('name', example.get('index'))!r} has no {self.key!r} feature; "
                            "add it with `python -m data_prep.beyondgloss` or turn model.beyondgloss.hand_pose off")
        src = np.asarray(example[self.key], np.float32).reshape(-1, self.dim)
        keep = example.get("frame_indices")
        if keep is not None:
            keep = np.asarray(keep, np.int64)
            if keep.size and int(keep.max()) >= src.shape[0]:
                raise DataError(f"example {example.get('name', example.get('index'))!r}: {self.key} has "
                                f"{src.shape[0]} rows but frame {int(keep.max())} was kept; rebuild the "
                                "targets with `python -m data_prep.beyondgloss` (one row per frame)")
            src = src[keep]
        out = np.zeros((self.length, self.dim), np.float32)
        n = min(self.length, src.shape[0])
        out[:n] = src[:n]
        return {"hand_pose": out}


@dataclasses.dataclass(frozen=True)
class CombinedExampleFn:
    """Merges the dicts of several ``example_fn``s (keys must not collide). Picklable."""

    fns: tuple[Any, ...]

    def __call__(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for fn in self.fns:
            got = fn(example)
            clash = set(out).intersection(got)
            if clash:
                raise ConfigError(f"example_fn fields {sorted(clash)} produced twice; rename one")
            out.update(got)
        return out
