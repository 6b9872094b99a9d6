"""The sentences of a dataset written by ``data_prep.build_dataset``, whatever its source format.

The text tools (``trim_vocab``, ``pseudo_glosses``) read corpora with their own layouts
(PHOENIX14T trees, CSL-Daily labels); for every other format (How2Sign, OpenASL, YouTube-ASL)
they read the built dataset instead, which holds each sentence once, keyed ``split/name``.
"""

from __future__ import annotations

from typing import Sequence

from hfa_jax.errors import ConfigError

SPLITS = ("train", "dev", "test")


def dataset_text(dataset_dir: str, splits: Sequence[str] = SPLITS) -> dict[str, str]:
    """{"split/name": sentence} of the `splits` the dataset has (frames are not decoded)."""
    import tensorflow_datasets as tfds  # lazy: heavy

    from hfa_jax.data.source import find_builder_dir, open_split

    present = tfds.builder_from_directory(find_builder_dir(dataset_dir)).info.splits.keys()
    texts: dict[str, str] = {}
    for split in (s for s in splits if s in present):
        src = open_split(dataset_dir, split)
        for i in range(len(src)):
            ex = src[i]
            texts[f"{split}/{ex['name']}"] = ex["text"]
    if not texts:
        raise ConfigError(f"{dataset_dir}: none of the splits {', '.join(splits)} is in this "
                          f"dataset (it has {', '.join(sorted(present)) or 'none'})")
    return texts
