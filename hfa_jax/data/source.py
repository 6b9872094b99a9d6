"""One split of the on-disk dataset (:mod:`hfa_jax.data.format`) as a random-access source.

:func:`open_split` finds the tfds folder (``OUT``, ``OUT/NAME`` or ``OUT/NAME/VERSION``) and
returns an :class:`ArrayRecordSplit`: ``split[i]`` is one example with its frames still encoded
(records are read as raw bytes and parsed with tfds' NumPy example parser, no TensorFlow), the
input of :func:`hfa_jax.data.pipeline.make_loader`.

tensorflow_datasets is imported where a split is opened, not at the top: it takes ~1.5 s, and
grain's worker processes unpickle this class without needing it until they read.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from hfa_jax.data import format as fmt_lib
from hfa_jax.errors import DataError

__all__ = ["ArrayRecordSplit", "find_builder_dir", "open_split", "source_num_frames"]



def find_builder_dir(dataset_dir: str) -> str:
    """Returns the folder holding ``dataset_info.json`` at or (up to two levels) below dataset_dir.

    tfds writes ``<data_dir>/<name>/<version>/``; users may point at any of these levels.
    """
    if not os.path.isdir(dataset_dir):
        raise DataError(
            f"dataset folder {dataset_dir!r} does not exist; run `python -m data_prep.build_dataset` "
            "to create it or fix the path"
        )
    for pattern in ("", "*", os.path.join("*", "*")):
        hits = sorted(glob.glob(os.path.join(dataset_dir, pattern, "dataset_info.json")))
        if len(hits) == 1:
            return os.path.dirname(hits[0])
        if len(hits) > 1:
            found = ", ".join(os.path.dirname(h) for h in hits)
            raise DataError(
                f"dataset folder {dataset_dir!r} holds several tfds datasets ({found}); "
                "pass the one to use"
            )
    raise DataError(
        f"no dataset_info.json in or below {dataset_dir!r}; it is not a tfds dataset folder written "
        "by `python -m data_prep.build_dataset`"
    )


class ArrayRecordSplit:
    """Random-access view of one split of a tfds ArrayRecord dataset, frames left encoded.

    ``split[i]`` is a dict with the stored features: ``frames`` (list of encoded JPEG/PNG
    ``bytes``), ``num_frames`` (int), text features as ``str`` (``name``, ``text``, ``gloss``,
    ``signer``, ...), numeric features as NumPy arrays, plus ``index`` (= i). It implements grain's
    ``RandomAccessDataSource`` protocol. The underlying reader is opened lazily in each process (the
    object is pickled to grain's worker processes), and no TensorFlow is imported.
    """

    def __init__(self, builder_dir: str, split: str):
        import tensorflow_datasets as tfds  # lazy: heavy, see the module docstring

        self.builder_dir = os.path.abspath(builder_dir)
        self.split = split
        builder = tfds.builder_from_directory(self.builder_dir)
        splits = builder.info.splits
        if split not in splits:
            raise DataError(
                f"split {split!r} not in dataset {self.builder_dir!r} (has: {sorted(splits.keys())}); "
                "pick one of those or rebuild the dataset with that split"
            )
        self.features = builder.info.features
        if any(k not in self.features for k in fmt_lib.REQUIRED_FEATURES):
            raise DataError(
                f"dataset {self.builder_dir!r} has no `frames`/`num_frames` features "
                f"(has: {sorted(self.features.keys())}); rebuild it with data_prep.build_dataset"
            )
        self._num_records = int(splits[split].num_examples)
        self._text_keys = frozenset(
            k for k, f in self.features.items() if isinstance(f, tfds.features.Text)
        )
        self._reader = None

    # grain pickles the source into worker processes: drop the open reader and reopen there.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def _open(self):
        # lazy: heavy, see the module docstring (run in each grain worker process)
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core import example_parser

        builder = tfds.builder_from_directory(self.builder_dir)
        raw = builder.as_data_source(
            split=self.split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
        )
        # Parse the serialized tf.train.Example with NumPy only; Image features stay as the
        # encoded bytes (their serialized form), so nothing is decoded before frame selection.
        parser = example_parser.ExampleParserNp(builder.info.features.get_serialized_info())
        self._reader = (raw, parser)
        return self._reader

    def __len__(self) -> int:
        return self._num_records

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self._num_records:
            raise IndexError(f"index {index} out of range for {self!r}")
        raw, parser = self._reader or self._open()
        try:
            parsed = parser.parse_example(raw[index])
        except Exception as e:  # corrupt record: say where, not a protobuf traceback
            raise DataError(
                f"record {index} of split {self.split!r} in {self.builder_dir!r} cannot be parsed "
                f"({type(e).__name__}: {e}); rebuild the dataset"
            ) from None
        example: dict[str, Any] = {}
        for key, value in parsed.items():
            if key in self._text_keys:
                example[key] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            elif key == fmt_lib.FRAMES:
                example[key] = list(value)
            else:
                example[key] = value
        example[fmt_lib.NUM_FRAMES] = int(example[fmt_lib.NUM_FRAMES])
        example["index"] = index
        return example

    def __repr__(self) -> str:
        # grain validates restored iterator states against repr(source): keep it stable.
        return f"ArrayRecordSplit(builder_dir={self.builder_dir!r}, split={self.split!r})"

    def num_frames(self, progress: bool = True) -> np.ndarray:
        """``[len(self)] int64``: every record's ``num_frames``, for length-grouped batching.

        Read once (a pass over the split, with a progress bar) and cached as
        ``num_frames.<split>.npy`` beside ``dataset_info.json``; the cache is ignored when its
        length does not match the split, and skipped silently on a read-only dataset folder.
        """
        cache = os.path.join(self.builder_dir, f"num_frames.{self.split}.npy")
        if os.path.exists(cache):
            cached = np.load(cache, allow_pickle=False)
            if cached.shape == (len(self),):
                return cached.astype(np.int64)
        out = np.array([self[i][fmt_lib.NUM_FRAMES] for i in tqdm(range(len(self)), desc=f"num_frames {self.split}",
                                                             unit="clip", disable=not progress)], np.int64)
        try:
            tmp = f"{cache}.tmp{os.getpid()}.npy"
            np.save(tmp, out)
            os.replace(tmp, cache)  # atomic: a concurrent reader sees the old file or the new one
        except OSError:
            pass
        return out


def source_num_frames(source: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Every example's ``num_frames`` (``ArrayRecordSplit.num_frames`` when the source has it)."""
    if hasattr(source, "num_frames") and callable(source.num_frames):
        return np.asarray(source.num_frames(), np.int64)
    return np.array([int(source[i][fmt_lib.NUM_FRAMES]) for i in range(len(source))], np.int64)


def open_split(dataset_dir: str, split: str) -> ArrayRecordSplit:
    """Opens ``split`` of the tfds ArrayRecord dataset in ``dataset_dir`` (no TensorFlow needed).

    Args:
      dataset_dir: the tfds folder holding ``dataset_info.json`` or a parent up to two levels
        above it (``<data_dir>/<name>/<version>``).
      split: "train" | "dev" | "test" (any split the dataset has).
    """
    return ArrayRecordSplit(find_builder_dir(dataset_dir), split)
