"""Tests for hfa_jax.data.pipeline on tiny datasets written with data_prep.build_dataset."""

from __future__ import annotations

import os

import numpy as np
import pytest

from data_prep.build_dataset import write_examples
from hfa_jax.data import pipeline as P
from hfa_jax.errors import ConfigError, DataError

SIZE = 16
LENGTHS = [3, 12, 5, 17, 9, 2, 11, 7, 14, 1]  # frames per example; max_frames below is 10
MAX_FRAMES = 10
BUCKETS = (4, 8, 10)


def make_clip(i: int, n: int) -> np.ndarray:
    """Frames that say who they are: channel 0 = example id, 1 = frame id, 2 = a texture."""
    clip = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    clip[..., 0] = 10 + i
    clip[..., 1] = np.arange(n, dtype=np.uint8)[:, None, None]
    clip[..., 2] = (np.arange(SIZE)[None, :, None] * 7 + np.arange(SIZE)[None, None, :] * 3) % 256
    return clip


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [make_clip(i, n) for i, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, clips) -> str:
    out = str(tmp_path_factory.mktemp("ds"))
    examples = [
        {"name": f"video{i}", "frames": c, "text": f"satz nummer {i}", "gloss": f"G{i}"}
        for i, c in enumerate(clips)
    ]
    write_examples(out, "train", examples, image_format="png", size=SIZE, examples_per_shard=4)
    write_examples(out, "dev", examples[:3], image_format="png", size=SIZE)
    return out


@pytest.fixture(scope="module")
def jpeg_dataset(tmp_path_factory, clips) -> str:
    out = str(tmp_path_factory.mktemp("ds_jpeg"))
    examples = [{"name": f"video{i}", "frames": c, "text": "t"} for i, c in enumerate(clips[:3])]
    write_examples(out, "dev", examples, image_format="jpeg", size=SIZE)
    return out


def loader(ds_dir, split="train", **kw):
    args = dict(
        batch_size=3,
        seed=7,
        shuffle=False,
        num_epochs=1,
        max_frames=MAX_FRAMES,
        buckets=BUCKETS,
        drop_remainder=False,
        shard_index=0,
        shard_count=1,
    )
    args.update(kw)
    return P.make_loader(P.open_split(ds_dir, split), **args)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]), err_msg=k)


def expected_row(clip: np.ndarray, keep: np.ndarray, t: int):
    """Naive reference for one batch row: selected frames, zero-padded to t, and the mask."""
    frames = np.zeros((t,) + clip.shape[1:], np.uint8)
    frames[: len(keep)] = clip[keep]
    mask = np.arange(t) < len(keep)
    return frames, mask


def test_open_split_reads_examples(dataset, clips):
    src = P.open_split(dataset, "train")
    assert len(src) == len(LENGTHS)
    ex = src[3]
    assert ex["name"] == "video3" and ex["text"] == "satz nummer 3" and ex["gloss"] == "G3"
    assert ex["signer"] == "" and ex["index"] == 3 and ex["num_frames"] == LENGTHS[3]
    assert len(ex["frames"]) == LENGTHS[3] and all(isinstance(b, bytes) for b in ex["frames"])
    np.testing.assert_array_equal(P.decode_frames(ex["frames"]), clips[3])  # PNG is lossless
    # The dataset folder itself, or its <name>/<version> leaf, both work.
    assert len(P.open_split(src.builder_dir, "dev")) == 3


def test_open_split_errors(dataset, tmp_path, clips):
    with pytest.raises(DataError, match="does not exist"):
        P.open_split(str(tmp_path / "nope"), "train")
    with pytest.raises(DataError, match="no dataset_info.json"):
        P.open_split(str(tmp_path), "train")
    with pytest.raises(DataError, match="split 'test' not in"):
        P.open_split(dataset, "test")
    for name in ("one", "two"):
        write_examples(str(tmp_path / "two"), "dev", [{"name": "v", "frames": clips[0], "text": ""}],
                       name=name, image_format="png", size=SIZE)
    with pytest.raises(DataError, match="several tfds datasets"):
        P.open_split(str(tmp_path / "two"), "dev")


def test_first_frames_bucket_padding_and_filler_rows(dataset, clips):
    batches = list(loader(dataset))
    assert len(batches) == 4  # 10 examples, batch 3, last batch filled up
    seen = []
    for batch in batches:
        assert set(batch) == {"frames", "frame_mask", "index"}
        assert batch["frames"].dtype == np.uint8 and batch["frame_mask"].dtype == bool
        assert batch["index"].dtype == np.int32 and batch["frames"].shape[0] == 3
        real = [int(i) for i in batch["index"] if i >= 0]
        longest = max(min(LENGTHS[i], MAX_FRAMES) for i in real)
        t = min(b for b in BUCKETS if b >= longest)  # smallest bucket holding the longest clip
        assert batch["frames"].shape == (3, t, SIZE, SIZE, 3)
        for row, i in enumerate(batch["index"]):
            if i < 0:  # filler row of the last batch
                assert not batch["frame_mask"][row].any() and not batch["frames"][row].any()
                continue
            keep = np.arange(min(LENGTHS[i], MAX_FRAMES))
            frames, mask = expected_row(clips[i], keep, t)
            np.testing.assert_array_equal(batch["frames"][row], frames)
            np.testing.assert_array_equal(batch["frame_mask"][row], mask)
        seen += real
    assert seen == list(range(len(LENGTHS)))  # no shuffle: source order, each once


def test_drop_remainder_gives_full_batches(dataset):
    batches = list(loader(dataset, drop_remainder=True, batch_size=4))
    assert len(batches) == P.num_batches(len(LENGTHS), 4, True) == 2
    assert all(b["frames"].shape[0] == 4 and (b["index"] >= 0).all() for b in batches)


def test_random_subsample_sorted_reproducible_and_epoch_dependent(dataset, clips):
    def selections(shuffle):
        sel = {}
        for pos, batch in enumerate(loader(dataset, frame_selection="random", num_epochs=2,
                                           batch_size=2, shuffle=shuffle)):
            for row, i in enumerate(batch["index"]):
                n = int(batch["frame_mask"][row].sum())
                # Frame ids are written into channel 1 of every frame.
                ids = batch["frames"][row, :n, 0, 0, 1].astype(int)
                epoch = 0 if (int(i), 0) not in sel else 1
                sel[(int(i), epoch)] = ids
        return sel

    a, b, c = selections(False), selections(False), selections(True)
    assert len(a) == 2 * len(LENGTHS)
    for (i, epoch), ids in a.items():
        n = LENGTHS[i]
        assert len(ids) == min(n, MAX_FRAMES)
        assert np.all(np.diff(ids) > 0) and ids.min() >= 0 and ids.max() < n  # sorted subset
        if n <= MAX_FRAMES:
            np.testing.assert_array_equal(ids, np.arange(n))
        np.testing.assert_array_equal(ids, b[(i, epoch)])  # reproducible
        # Seeded by (seed, epoch, index): independent of where the example lands in the stream.
        np.testing.assert_array_equal(ids, c[(i, epoch)])
    long = [i for i, n in enumerate(LENGTHS) if n > MAX_FRAMES]
    assert any(not np.array_equal(a[(i, 0)], a[(i, 1)]) for i in long)  # new draw each epoch


def test_shuffle_is_seeded_and_reshuffles_each_epoch(dataset):
    def order(seed):
        it = loader(dataset, shuffle=True, seed=seed, num_epochs=2, batch_size=5)
        return [int(i) for b in it for i in b["index"]]

    o1, o2, o3 = order(1), order(1), order(2)
    n = len(LENGTHS)
    assert o1 == o2 and o1 != o3
    assert sorted(o1[:n]) == sorted(o1[n:]) == list(range(n))  # each epoch a permutation
    assert o1[:n] != o1[n:] and o1[:n] != list(range(n))


def test_state_restore_reproduces_the_batches(dataset):
    kw = dict(shuffle=True, num_epochs=None, frame_selection="random", batch_size=2)
    it = iter(loader(dataset, **kw))
    take(it, 3)
    state = it.get_state()
    expected = take(it, 6)  # crosses an epoch boundary (5 batches per epoch)
    fresh = iter(loader(dataset, **kw))
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 6), expected)


@pytest.mark.parametrize("parallel", [dict(worker_count=2), dict(read_threads=3)],
                         ids=["worker_processes", "decoding_threads"])
def test_parallel_loading_gives_the_same_batches_and_resumes(dataset, parallel):
    # Worker processes (batches written into shared memory) and decoding threads (the trainer's
    # default, data.read_threads=2) must not change the batches, and a saved iterator state must
    # resume the same stream.
    kw = dict(shuffle=True, num_epochs=None, frame_selection="random", batch_size=2)
    reference = take(iter(loader(dataset, **kw)), 7)
    it = iter(loader(dataset, **parallel, **kw))
    first = take(it, 3)
    state = it.get_state()
    rest = take(it, 4)
    assert_batches_equal(first + rest, reference)
    fresh = iter(loader(dataset, **parallel, **kw))
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 4), rest)


def test_example_fn_adds_fixed_shape_fields(dataset):
    def example_fn(ex):
        return {
            "text_len": np.int32(len(ex["text"])),
            "gloss_id": np.array([int(ex["gloss"][1:]), ex["num_frames"]], np.int64),
        }

    batches = list(loader(dataset, example_fn=example_fn, batch_size=4))
    for batch in batches:
        assert batch["text_len"].shape == (4,) and batch["gloss_id"].shape == (4, 2)
        for row, i in enumerate(batch["index"]):
            if i < 0:
                assert batch["text_len"][row] == 0 and not batch["gloss_id"][row].any()
            else:
                assert batch["text_len"][row] == len(f"satz nummer {i}")
                assert list(batch["gloss_id"][row]) == [i, LENGTHS[i]]

    with pytest.raises(ConfigError, match="reserved"):
        next(iter(loader(dataset, example_fn=lambda ex: {"index": np.int32(0)})))
    with pytest.raises(ConfigError, match="varying shapes"):
        next(iter(loader(dataset, example_fn=lambda ex: {"x": np.zeros(ex["index"])})))


def test_host_shards_are_disjoint_and_cover_the_data(dataset):
    got = []
    for shard in range(2):
        it = loader(dataset, shard_index=shard, shard_count=2, batch_size=5)
        got.append([int(i) for b in it for i in b["index"] if i >= 0])
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == list(range(len(LENGTHS)))


def test_num_frames_are_read_once_and_cached(dataset):
    src = P.open_split(dataset, "train")
    got = src.num_frames(progress=False)
    np.testing.assert_array_equal(got, LENGTHS)
    cache = os.path.join(src.builder_dir, "num_frames.train.npy")
    assert os.path.exists(cache)
    np.save(cache, np.array(LENGTHS) * 0 + 5)  # the cache, not a second pass, answers now
    assert list(P.open_split(dataset, "train").num_frames(progress=False)) == [5] * len(LENGTHS)
    np.save(cache, np.array([1, 2]))  # wrong length: ignored and rewritten
    np.testing.assert_array_equal(P.source_num_frames(P.open_split(dataset, "train")), LENGTHS)


def _grouped_lengths(order_fn, lengths, n_batches, batch_size):
    return [[lengths[order_fn(b * batch_size + j)] for j in range(batch_size)] for b in range(n_batches)]


def test_length_grouping_visits_every_example_and_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(16, 476, 400)  # PHOENIX14T's range
    idx = np.arange(400)
    order = P._LengthGroupedOrder(idx, lengths, batch_size=8, window_batches=10, seed=3)
    e0, e1 = order.epoch_order(0).copy(), order.epoch_order(1).copy()
    assert sorted(e0) == sorted(e1) == list(range(400))  # 400 % 8 == 0: nobody sits out
    assert not np.array_equal(e0, e1)  # a new order every epoch
    assert np.array_equal(e0, P._LengthGroupedOrder(idx, lengths, batch_size=8, window_batches=10, seed=3).epoch_order(0))

    def padded(order_idx):
        t = np.minimum(lengths[order_idx], 300).reshape(-1, 8)
        return (t.max(1, keepdims=True) - t).sum() / (t.max(1, keepdims=True) * 8).sum()

    plain = padded(rng.permutation(400))
    grouped = padded(e0)
    assert grouped < plain / 3, (grouped, plain)
    # batches are not sorted globally: long and short batches alternate inside a window
    maxima = np.minimum(lengths[e0], 300).reshape(-1, 8).max(1)[:10]
    assert not (np.all(np.diff(maxima) >= 0) or np.all(np.diff(maxima) <= 0))
    # an odd count: the remainder sits out, different examples in different epochs
    odd = P._LengthGroupedOrder(idx[:397], lengths[:397], batch_size=8, window_batches=10, seed=3)
    assert odd.epoch_length == 392 and len(set(odd.epoch_order(0))) == 392
    assert set(odd.epoch_order(0)) != set(odd.epoch_order(1))


def test_length_grouped_loader_batches_similar_lengths_and_resumes(dataset):
    kw = dict(shuffle=True, num_epochs=None, drop_remainder=True, batch_size=2, length_grouping=5)
    it = iter(loader(dataset, **kw))
    first_epoch = take(it, 5)
    seen = [int(i) for b in first_epoch for i in b["index"]]
    assert sorted(seen) == list(range(len(LENGTHS)))
    clipped = np.minimum(np.array(LENGTHS), MAX_FRAMES)
    for b in first_epoch:  # one window = the whole epoch: neighbours in length order
        n = sorted(clipped[b["index"]])
        ranks = [sorted(clipped).index(x) for x in n]
        assert ranks[1] - ranks[0] <= 2
        assert b["frame_mask"].sum(1).tolist() == clipped[b["index"]].tolist()
    state = it.get_state()
    expected = take(it, 6)
    fresh = iter(loader(dataset, **kw))
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 6), expected)
    with pytest.raises(ConfigError, match="length_grouping"):
        loader(dataset, shuffle=False, drop_remainder=True, length_grouping=2)
    with pytest.raises(ConfigError, match="num_frames"):
        loader(dataset, **{**kw, "num_frames": np.ones(3)})


def test_jpeg_frames_decode_close_to_the_originals(jpeg_dataset, clips):
    batch = next(iter(loader(jpeg_dataset, split="dev")))
    for row, i in enumerate(batch["index"]):
        n = min(LENGTHS[i], MAX_FRAMES)
        diff = np.abs(batch["frames"][row, :n].astype(int) - clips[i][:n].astype(int))
        assert diff.mean() < 4.0


def test_config_errors(dataset):
    with pytest.raises(ConfigError, match="largest bucket"):
        loader(dataset, max_frames=300, buckets=(64, 128))
    with pytest.raises(ConfigError, match="frame_selection"):
        loader(dataset, frame_selection="middle")
    with pytest.raises(ConfigError, match="ascending"):
        loader(dataset, buckets=(8, 4, 10))


def test_select_frames_reference():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(P.select_frames(5, 10, "random", rng), np.arange(5))
    np.testing.assert_array_equal(P.select_frames(50, 10, "first"), np.arange(10))
    counts = np.zeros(50)
    for _ in range(400):
        ids = P.select_frames(50, 10, "random", rng)
        assert len(np.unique(ids)) == 10 and np.all(np.diff(ids) > 0)
        counts[ids] += 1
    # Uniform subsample: every frame is kept about 10/50 of the time.
    assert np.abs(counts / 400 - 0.2).max() < 0.1


def test_in_process_batches_are_aligned_for_zero_copy_transfer(dataset):
    from hfa_jax.data.pipeline import aligned_zeros

    for shape, dtype in (((3, 5, 7), np.uint8), ((4, 3), np.float32)):
        a = aligned_zeros(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.ctypes.data % 64 == 0 and not a.any()
    batch = next(iter(loader(dataset, batch_size=2)))
    assert batch["frames"].ctypes.data % 64 == 0
