"""Multi-process reading: every process reads its own rows of the same global batches, so a run's
batches do not depend on the number of processes; resuming at a batch works on any count."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.build_dataset import write_examples
from hfa_jax.data import pipeline as P
from hfa_jax.data.sharding import pad_time

SIZE = 8
LENGTHS = [3, 12, 5, 17, 9, 2, 11, 7, 14, 1, 6, 8, 4]  # 13 examples: not a multiple of any batch
BUCKETS = (4, 8, 10)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("rows"))
    examples = []
    for i, n in enumerate(LENGTHS):
        clip = np.zeros((n, SIZE, SIZE, 3), np.uint8)
        clip[..., 0] = 10 + i
        clip[..., 1] = np.arange(n, dtype=np.uint8)[:, None, None]
        examples.append({"name": f"v{i}", "frames": clip, "text": f"t {i}"})
    write_examples(out, "train", examples, image_format="png", size=SIZE, examples_per_shard=5)
    return out


def batches(ds_dir, *, shard_index, shard_count, batch_size, n, **kw):
    it = iter(P.make_loader(P.open_split(ds_dir, "train"), batch_size=batch_size, seed=3, max_frames=10,
                            buckets=BUCKETS, shard_index=shard_index, shard_count=shard_count, **kw))
    return [next(it) for _ in range(n)]


def global_batches(ds_dir, shard_count, global_batch, n, **kw):
    """Each process's batches, rows stacked in process order (time padded to the longest)."""
    per = [batches(ds_dir, shard_index=p, shard_count=shard_count, batch_size=global_batch // shard_count,
                   n=n, **kw) for p in range(shard_count)]
    out = []
    for step in zip(*per):
        t = max(b["frames"].shape[1] for b in step)
        padded = [pad_time(b, t) for b in step]  # as the trainer does across processes
        out.append({k: np.concatenate([b[k] for b in padded]) for k in ("index", "frame_mask")}
                   | {"frames": np.concatenate([b["frames"] for b in padded])})
    return out


TRAIN = dict(shuffle=True, num_epochs=None, drop_remainder=True, frame_selection="random")


@pytest.mark.parametrize("extra", [{}, {"length_grouping": 2}], ids=["shuffled", "length_grouped"])
def test_global_batches_do_not_depend_on_the_number_of_processes(dataset, extra):
    one = global_batches(dataset, 1, 4, 7, **TRAIN, **extra)  # 7 batches of 4: crosses two epochs
    for count in (2, 4):
        many = global_batches(dataset, count, 4, 7, **TRAIN, **extra)
        for a, b in zip(one, many):
            np.testing.assert_array_equal(a["index"], b["index"])
            np.testing.assert_array_equal(a["frame_mask"], b["frame_mask"])
            np.testing.assert_array_equal(a["frames"], b["frames"])  # same random frame selection


def test_resuming_at_a_batch_on_another_process_count(dataset):
    full = global_batches(dataset, 1, 4, 6, **TRAIN)
    later = global_batches(dataset, 2, 4, 3, start_batch=3, **TRAIN)
    for a, b in zip(full[3:], later):
        np.testing.assert_array_equal(a["index"], b["index"])


def test_evaluation_pass_covers_every_example_once_with_equal_batch_counts(dataset):
    kw = dict(shuffle=False, num_epochs=1, drop_remainder=False)
    per = [batches(dataset, shard_index=p, shard_count=3, batch_size=2, n=3, **kw) for p in range(3)]
    for p in range(3):  # 13 examples, global batch 6: 3 batches on every process, none left over
        with pytest.raises(StopIteration):
            next(iter(P.make_loader(P.open_split(dataset, "train"), batch_size=2, seed=3, max_frames=10,
                                    buckets=BUCKETS, shard_index=p, shard_count=3, start_batch=3, **kw)))
    seen = [int(i) for step in zip(*per) for b in step for i in b["index"] if i >= 0]
    assert sorted(seen) == list(range(len(LENGTHS)))
    one = [int(i) for b in batches(dataset, shard_index=0, shard_count=1, batch_size=6, n=3, **kw)
           for i in b["index"] if i >= 0]
    assert seen == one  # the same order as one process reading global batches of 6
