"""The on-disk training dataset: the contract between its writer (``data_prep.build_dataset``)
and its reader (:mod:`hfa_jax.data.source`, :mod:`hfa_jax.data.pipeline`).

A standard tensorflow-datasets folder with ArrayRecord shards, one example per video::

    OUT/NAME/VERSION/dataset_info.json, features.json     (tfds metadata)
    OUT/NAME/VERSION/NAME-{split}.array_record-{i:05d}-of-{n:05d}

Per-example features (``features.json`` is tfds' serialisation of :func:`features_spec`)::

    name, text, gloss, signer   Text (str; "" when absent)
    num_frames                  int32 scalar
    frames                      Sequence of Image(size, size, 3), encoded as jpeg or png
    hand_traj                   float32 [T, 2, 2]   ([[lx, ly], [rx, ry]] per frame; SynthSign only)
    description                 Text                (SynthSign only)

The reader needs ``frames`` and ``num_frames``; every other feature is passed through. Frames
stay encoded on disk and are decoded only after frame selection.

tensorflow_datasets is imported inside the functions that need it: it takes ~1.5 s to import,
and the constants here are read by command-line ``--help`` and by grain worker processes that
never open a dataset.
"""

from __future__ import annotations

import os

import numpy as np

# The dataset version written (the folder level under NAME) and the shard file type.
VERSION = "1.0.0"
FILE_FORMAT = "array_record"
IMAGE_FORMATS = ("jpeg", "png")

# Feature names.
NAME = "name"
TEXT = "text"
GLOSS = "gloss"
SIGNER = "signer"
NUM_FRAMES = "num_frames"
FRAMES = "frames"
HAND_TRAJ = "hand_traj"
DESCRIPTION = "description"

TEXT_FEATURES = (NAME, TEXT, GLOSS, SIGNER)
EXTRA_FEATURES = (HAND_TRAJ, DESCRIPTION)  # SynthSign trees (``extras/{split}/{name}.json``)
REQUIRED_FEATURES = (FRAMES, NUM_FRAMES)  # what the reader cannot do without

# Dtypes and shapes of the numeric features.
NUM_FRAMES_DTYPE = np.int32
HAND_TRAJ_DTYPE = np.float32
HAND_TRAJ_SHAPE = (None, 2, 2)  # [T, hand (left, right), (x, y)]


def features_spec(size: int, image_format: str, extras: bool):
    """The dataset's ``tfds.features.FeaturesDict``: frames of ``size x size`` pixels encoded as
    ``image_format`` (jpeg|png); ``extras`` adds ``hand_traj`` and ``description``."""
    import tensorflow_datasets as tfds  # lazy: heavy, see the module docstring

    f = tfds.features
    spec = {
        NAME: f.Text(),
        FRAMES: f.Sequence(f.Image(shape=(size, size, 3), encoding_format=image_format)),
        NUM_FRAMES: f.Scalar(NUM_FRAMES_DTYPE),
        TEXT: f.Text(),
        GLOSS: f.Text(),
        SIGNER: f.Text(),
    }
    if extras:
        spec[HAND_TRAJ] = f.Tensor(shape=HAND_TRAJ_SHAPE, dtype=HAND_TRAJ_DTYPE)
        spec[DESCRIPTION] = f.Text()
    return f.FeaturesDict(spec)


def dataset_dir(out: str, name: str, version: str = VERSION) -> str:
    """The tfds dataset folder (``tfds.builder_from_directory`` argument): OUT/NAME/VERSION."""
    return os.path.join(os.path.abspath(out), name, version)


def shard_template(ds_dir: str, name: str, split: str | None = None):
    """tfds' ``ShardedFileTemplate`` of the shard files (NAME-SPLIT.array_record-00000-of-00004)."""
    import tensorflow_datasets as tfds  # lazy: heavy, see the module docstring

    return tfds.core.ShardedFileTemplate(data_dir=ds_dir, dataset_name=name, split=split,
                                         filetype_suffix=FILE_FORMAT)
