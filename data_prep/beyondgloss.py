"""Add BeyondGloss side data (docs/beyondgloss.md) to an ArrayRecord dataset written by `data_prep.build_dataset`.

    python -m data_prep.beyondgloss --dataset DS --out OUT [--name NAME] [--splits train,dev,test]
        [--descriptions DIR [--description_key refined|chunks]]     -> feature `description` (str)
        [--description_vectors DIR [--description_dim 1024]]        -> feature `description_vec` (float32 [D])
        [--hand_pose DIR | --synthsign SYNTHSIGN_ROOT]              -> feature `hand_pose` (float32 [T, 288])
        [--skip_bad] [--examples_per_shard 64]

DS is the source dataset folder (as given to training: `OUT/NAME/1.0.0` or a parent); the result
is a new dataset `OUT/NAME/1.0.0` holding every feature of the source (frames copied as stored,
never re-encoded) plus the new ones, next to the frames in the same records. Inputs, per video
(`split` and `name` as in the dataset; the authors' layouts first, see
`hfa_jax/data/beyondgloss_io.py`):

  --descriptions         DIR/{split}/{name}.json or DIR/{name}.json  (describe_segments.py + refine.py JSON)
  --description_vectors  DIR/{split}/{name}.lmdb (LMDB, key b"data"; needs `pip install lmdb`), or .pkl / .npy
  --hand_pose            DIR/{split}/{name}/{name}.lzma (HaMeR, {"features": [T, 288]}), or .lzma/.pkl/.npy
  --synthsign            a SynthSign tree: targets derived from extras/{split}/{name}.json
                         (hand_traj, handshape, hand_orient; hfa_jax.data.hand_targets)

Pickles are read only through the restricted unpickler (containers + numpy arrays). Bad input
(missing file, wrong number of frames vs the video's `num_frames`, wrong width, unreadable or
refused pickle) stops with one line naming the file, unless `--skip_bad`: then the video is left
out of the new dataset and listed in OUT/beyondgloss_bad.tsv (split, name, file, reason).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Sequence

import numpy as np

from data_prep import build_dataset as bd
from hfa_jax.data import beyondgloss_io as bgio
from hfa_jax.data import hand_targets
from hfa_jax.data import source as source_lib
from hfa_jax.data.annotations import BadVideo
from hfa_jax.errors import ConfigError, DataError, cli_main

__all__ = ["Inputs", "new_features", "video_fields", "convert", "main"]


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Where the side data comes from (None = not added)."""

    descriptions: str | None = None
    description_key: str = "refined"
    description_vectors: str | None = None
    description_dim: int = 1024
    hand_pose: str | None = None
    synthsign: str | None = None  # SynthSign tree root (or its extras/ folder)

    def __post_init__(self):
        if self.hand_pose and self.synthsign:
            raise ConfigError("pass either --hand_pose (HaMeR files) or --synthsign (derived targets), not both")
        if not (self.descriptions or self.description_vectors or self.hand_pose or self.synthsign):
            raise ConfigError("nothing to add: pass --descriptions, --description_vectors, --hand_pose or --synthsign")
        for flag, path in (("--descriptions", self.descriptions), ("--description_vectors", self.description_vectors),
                           ("--hand_pose", self.hand_pose), ("--synthsign", self.synthsign)):
            if path and not os.path.isdir(path):
                raise ConfigError(f"{flag} {path!r} is not a folder")
        if self.description_key not in bgio.DESCRIPTION_KEYS:
            raise ConfigError(f"--description_key {self.description_key!r}: use one of {bgio.DESCRIPTION_KEYS}")

    @property
    def extras_dir(self) -> str | None:
        if not self.synthsign:
            return None
        sub = os.path.join(self.synthsign, "extras")
        return sub if os.path.isdir(sub) else self.synthsign


def new_features(source_features, inputs: Inputs):
    """The output `FeaturesDict`: the source's features plus the requested BeyondGloss ones."""
    import tensorflow_datasets as tfds

    f = tfds.features
    spec = dict(source_features.items())
    if inputs.descriptions:
        spec["description"] = f.Text()
    if inputs.description_vectors:
        spec["description_vec"] = f.Tensor(shape=(inputs.description_dim,), dtype=np.float32)
    if inputs.hand_pose or inputs.synthsign:
        spec["hand_pose"] = f.Tensor(shape=(None, bgio.HAND_POSE_DIM), dtype=np.float32)
    return f.FeaturesDict(spec)


def video_fields(split: str, name: str, num_frames: int, inputs: Inputs) -> dict[str, Any]:
    """The new feature values of one video. Raises DataError (one line, naming the file)."""
    out: dict[str, Any] = {}
    if inputs.descriptions:
        path = bgio.find_video_file(inputs.descriptions, split, name, bgio.DESCRIPTION_SUFFIXES)
        if path is None:
            raise DataError(f"{inputs.descriptions}: no description file for {split}/{name} "
                            f"(looked for {split}/{name}.json, {name}.json)")
        out["description"] = bgio.read_description_json(path, key=inputs.description_key)
    if inputs.description_vectors:
        path = bgio.find_video_file(inputs.description_vectors, split, name, bgio.VECTOR_SUFFIXES)
        if path is None:
            raise DataError(f"{inputs.description_vectors}: no description vector for {split}/{name} "
                            f"(looked for {split}/{name}.lmdb|.pkl|.npy)")
        out["description_vec"] = bgio.check_vector(bgio.load_vector_file(path), inputs.description_dim, where=path)
    if inputs.hand_pose:
        path = bgio.find_video_file(inputs.hand_pose, split, name, bgio.HAND_POSE_SUFFIXES)
        if path is None:
            raise DataError(f"{inputs.hand_pose}: no hand-pose file for {split}/{name} "
                            f"(looked for {split}/{name}/{name}.lzma, {split}/{name}.lzma|.pkl|.npy)")
        out["hand_pose"] = bgio.check_hand_pose(bgio.load_hand_pose_file(path), num_frames, where=path)
    if inputs.synthsign:
        path = os.path.join(inputs.extras_dir or "", split, name + ".json")
        ex = hand_targets.load_synthsign_extras(path, num_frames)
        pose = hand_targets.synthsign_hand_pose(ex["hand_traj"], ex["handshape"], ex.get("hand_orient"), where=path)
        out["hand_pose"] = bgio.check_hand_pose(pose, num_frames, where=path)
    return out


def _write_split(ds_dir: str, name: str, split: str, features, examples, per_shard: int) -> int:
    """Serialises `examples` into tmp shards, then renames them to tfds' shard names."""
    import tensorflow_datasets as tfds

    adapter = tfds.core.file_adapters.ArrayRecordFileAdapter
    tmp_paths: list[str] = []
    batch: list[bytes] = []
    count = 0

    def flush() -> None:
        tmp = os.path.join(ds_dir, f".{split}.beyondgloss.{len(tmp_paths):05d}.tmp")
        adapter.write_examples(tmp, ((i, ex) for i, ex in enumerate(batch)))
        tmp_paths.append(tmp)
        batch.clear()

    try:
        for ex in examples:
            batch.append(features.serialize_example(ex))
            count += 1
            if len(batch) >= per_shard:
                flush()
        if batch:
            flush()
        for k, tmp in enumerate(tmp_paths):
            os.replace(tmp, bd.shard_path(ds_dir, name, split, k, len(tmp_paths)))
        tmp_paths.clear()
    finally:
        for tmp in tmp_paths:
            if os.path.exists(tmp):
                os.remove(tmp)
    return count


def convert(dataset: str, out: str, inputs: Inputs, *, name: str | None = None,
            splits: Sequence[str] | None = None, skip_bad: bool = False,
            examples_per_shard: int = 64, progress: bool = True) -> dict[str, Any]:
    """Writes the source dataset plus the BeyondGloss features to OUT/NAME/1.0.0.

    Returns ``{"dataset_dir", "counts": {split: n}, "bad": [BadVideo, ...]}``. Raises DataError on
    the first bad video unless ``skip_bad``.
    """
    from tqdm import tqdm

    import tensorflow_datasets as tfds

    from hfa_jax.data import pipeline

    if examples_per_shard < 1:
        raise ConfigError("--examples_per_shard must be >= 1")
    src_dir = source_lib.find_builder_dir(dataset)
    builder = tfds.builder_from_directory(src_dir)
    name = name or builder.info.name
    all_splits = sorted(builder.info.splits.keys())
    splits = list(splits) if splits else all_splits
    unknown = [s for s in splits if s not in all_splits]
    if unknown:
        raise ConfigError(f"split(s) {unknown} not in {src_dir} (has {all_splits})")
    ds_dir = bd.dataset_dir(out, name)
    if os.path.abspath(ds_dir) == os.path.abspath(src_dir):
        raise ConfigError(f"--out/--name would overwrite the source dataset {src_dir}; write to a new --out")
    if os.path.exists(os.path.join(ds_dir, "features.json")) or os.path.exists(os.path.join(ds_dir, "dataset_info.json")):
        raise DataError(f"{ds_dir}: a dataset already exists there; choose a new --out or delete it")
    os.makedirs(ds_dir, exist_ok=True)
    features = new_features(builder.info.features, inputs)
    keep = set(builder.info.features.keys())
    bad: list[BadVideo] = []
    counts: dict[str, int] = {}

    for split in splits:
        source = pipeline.open_split(src_dir, split)

        def examples(source=source, split=split):
            for i in tqdm(range(len(source)), desc=f"beyondgloss {split}", unit="video", disable=not progress):
                ex = source[i]
                try:
                    extra = video_fields(split, ex["name"], int(ex["num_frames"]), inputs)
                except DataError as e:
                    file, _, reason = str(e).partition(": ")
                    item = BadVideo(split, ex["name"], file, reason or str(e))
                    if not skip_bad:
                        raise DataError(f"{e} (or pass --skip_bad to skip and list such videos)") from None
                    bad.append(item)
                    continue
                row = {k: v for k, v in ex.items() if k in keep}
                row.update(extra)
                yield row

        counts[split] = _write_split(ds_dir, name, split, features, examples(), examples_per_shard)
        if counts[split] == 0:
            raise DataError(f"split {split!r}: every video was bad (see {os.path.join(out, 'beyondgloss_bad.tsv')}); "
                            "nothing to write")
    bd.finalize_metadata(ds_dir, name, features,
                         description="Sign-language videos with BeyondGloss side data (data_prep.beyondgloss).")
    if skip_bad:
        with open(os.path.join(out, "beyondgloss_bad.tsv"), "w", encoding="utf-8") as f:
            f.write("split\tname\tfile\treason\n")
            for b in bad:
                f.write(f"{b.split}\t{b.name}\t{b.file}\t{b.reason}\n")
    return {"dataset_dir": ds_dir, "counts": counts, "bad": bad}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m data_prep.beyondgloss",
                                description="Add BeyondGloss descriptions / hand-pose targets to an ArrayRecord dataset.")
    p.add_argument("--dataset", required=True, help="source dataset folder (written by data_prep.build_dataset)")
    p.add_argument("--out", required=True, help="output root; the dataset lands in OUT/NAME/1.0.0")
    p.add_argument("--name", default=None, help="output dataset name (default: the source's)")
    p.add_argument("--splits", default="", help="comma-separated splits (default: all)")
    p.add_argument("--descriptions", default=None, help="folder of per-video description JSONs")
    p.add_argument("--description_key", default="refined", choices=bgio.DESCRIPTION_KEYS)
    p.add_argument("--description_vectors", default=None, help="folder of precomputed description vectors")
    p.add_argument("--description_dim", type=int, default=1024)
    p.add_argument("--hand_pose", default=None, help="folder of per-video HaMeR [T, 288] files")
    p.add_argument("--synthsign", default=None, help="SynthSign tree: derive hand_pose from its extras")
    p.add_argument("--skip_bad", action="store_true", help="skip bad videos and list them in OUT/beyondgloss_bad.tsv")
    p.add_argument("--examples_per_shard", type=int, default=64)
    p.add_argument("--no_progress", action="store_true")
    return p.parse_args(argv)


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = _parse_args(argv)
    inputs = Inputs(descriptions=a.descriptions, description_key=a.description_key,
                    description_vectors=a.description_vectors, description_dim=a.description_dim,
                    hand_pose=a.hand_pose, synthsign=a.synthsign)
    splits = [s for s in a.splits.split(",") if s] or None
    res = convert(a.dataset, a.out, inputs, name=a.name, splits=splits, skip_bad=a.skip_bad,
                  examples_per_shard=a.examples_per_shard, progress=not a.no_progress)
    print(f"wrote {res['dataset_dir']}: " + ", ".join(f"{s} {n}" for s, n in res["counts"].items()))
    if a.skip_bad:
        print(f"skipped {len(res['bad'])} bad video(s); see {os.path.join(a.out, 'beyondgloss_bad.tsv')}")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
