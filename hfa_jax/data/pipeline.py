"""Host input pipeline: tfds ArrayRecord split -> grain -> padded uint8 host batches.

The training format (:mod:`hfa_jax.data.format`, written by ``data_prep.build_dataset``) stores one
example per video with the frames as encoded JPEG/PNG bytes. This module

1. opens a split as a random-access source without TensorFlow (:func:`open_split`, from
   :mod:`hfa_jax.data.source`): frame bytes stay *encoded*;
2. builds a grain pipeline (:func:`make_loader`): seeded global shuffle (re-shuffled every epoch),
   frame selection (the first ``max_frames`` frames as in HFA, or a sorted random subsample as in
   GFSLT-VLP), decoding of *only the selected* frames, and batching with per-batch padding of the
   time axis to the smallest bucket length that holds the longest clip of the batch, so that a
   jit-compiled step sees at most ``len(buckets)`` distinct shapes.

Batches are dicts of NumPy arrays (frames stay uint8 on the host; normalisation happens on the
accelerator in :mod:`hfa_jax.data.augment`)::

    frames:     [B, T, H, W, 3] uint8   (padding frames are zero)
    frame_mask: [B, T] bool              (True = real frame)
    index:      [B] int32                (row in the source; -1 for filler rows, see below)
    ...         whatever ``example_fn`` adds, stacked along a new leading batch axis

Determinism and resumption. Batches are formed on the index level (``MapDataset.batch`` before
``to_iter_dataset``), so which examples land in which batch depends only on ``seed``/``batch_size``,
not on ``worker_count``; workers each produce whole batches and grain interleaves them back in
order. The random frame subsample of an example is seeded from ``(seed, epoch, source index)``.
The iterator returned by ``iter(loader)`` is a grain ``DatasetIterator`` with ``get_state()``
(a JSON-serialisable dict) and ``set_state(state)``; grain's orbax handler
(``grain.python.PyGrainCheckpointSave``) stores it next to the model checkpoint.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any, Callable, Mapping, Sequence

import grain.python as grain
import jax
import numpy as np
from absl import flags
from PIL import Image

from hfa_jax.data import format as fmt_lib
# open_split / ArrayRecordSplit are re-exported: callers open a split as pipeline.open_split
from hfa_jax.data.source import ArrayRecordSplit, open_split, source_num_frames  # noqa: F401
from hfa_jax.errors import ConfigError, DataError

# Bucket lengths for the padded time axis. PHOENIX14T clips have 16-475 frames (median 112) and at
# most 300 are kept (docs/data.md), so five buckets keep padding waste moderate with few recompiles.
DEFAULT_BUCKETS: tuple[int, ...] = (64, 128, 192, 256, 300)

FRAME_SELECTIONS = ("first", "random")

# Keys produced by the batching step itself; ``example_fn`` may not use them.
_RESERVED_KEYS = frozenset({"frames", "frame_mask", "index"})


# --------------------------------------------------------------------------------------------
# Per-example steps
# --------------------------------------------------------------------------------------------


def select_frames(
    num_frames: int, max_frames: int, mode: str, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Indices of the frames to keep, sorted: ``[min(num_frames, max_frames)]`` int64.

    "first": the first ``max_frames`` frames (HFA, elsobhano/MLLM `images[:max_length]`).
    "random": a sorted uniform subsample without replacement when the clip is longer (GFSLT-VLP
    `sorted(random.sample(range(n), k=max_length))`); all frames otherwise.
    """
    if num_frames <= max_frames:
        return np.arange(num_frames)
    if mode == "first":
        return np.arange(max_frames)
    if mode == "random":
        if rng is None:
            raise ValueError("frame selection 'random' needs an rng")
        return np.sort(rng.choice(num_frames, size=max_frames, replace=False))
    raise ConfigError(f"frame_selection={mode!r} is not one of {FRAME_SELECTIONS}")


def decode_frames(blobs: Sequence[bytes]) -> np.ndarray:
    """Decodes JPEG/PNG frame bytes into ``[N, H, W, 3] uint8`` (all frames must share H, W)."""
    if len(blobs) == 0:
        raise DataError("an example has no frames; rebuild the dataset (empty clips are invalid)")
    out = None
    for i, blob in enumerate(blobs):
        with Image.open(io.BytesIO(blob)) as im:
            if im.mode != "RGB":
                im = im.convert("RGB")
            arr = np.asarray(im)
        if out is None:
            out = np.empty((len(blobs),) + arr.shape, np.uint8)
        elif arr.shape != out.shape[1:]:
            raise DataError(
                f"frame {i} has shape {arr.shape}, frame 0 has {out.shape[1:]}; all frames of a "
                "clip must have one size: rebuild the dataset"
            )
        out[i] = arr
    return out


@dataclasses.dataclass(frozen=True)
class _PrepareExample:
    """map_with_index step: select frames, decode them, run ``example_fn``.

    ``position`` is the element's position in the (sharded, shuffled, repeated) stream, so
    ``position // epoch_length`` is the epoch.
    """

    seed: int
    epoch_length: int
    frame_selection: str
    max_frames: int
    example_fn: Callable[[Mapping[str, Any]], Mapping[str, np.ndarray]] | None

    def __call__(self, position: int, example: Mapping[str, Any]) -> dict[str, Any]:
        index = int(example["index"])
        frame_bytes = example[fmt_lib.FRAMES]
        num_frames = min(int(example[fmt_lib.NUM_FRAMES]), len(frame_bytes))
        rng = None
        if self.frame_selection == "random":
            epoch = position // self.epoch_length
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, index]))
        keep = select_frames(num_frames, self.max_frames, self.frame_selection, rng)
        out: dict[str, Any] = {
            "frames": decode_frames([frame_bytes[i] for i in keep]),
            "index": np.int32(index),
        }
        if self.example_fn is not None:
            # `frame_indices`: the kept frames, so per-frame fields can follow the selection.
            extra = self.example_fn({**example, "frame_indices": keep})
            clash = _RESERVED_KEYS.intersection(extra)
            if clash:
                raise ConfigError(
                    f"example_fn returned reserved keys {sorted(clash)}; rename them"
                )
            out.update({k: np.asarray(v) for k, v in extra.items()})
        return out


class _LengthGroupedOrder:
    """Index map for length-grouped batching: position in the stream -> source index.

    Epoch ``e`` is a seeded permutation of the (sharded) examples, cut into windows of
    ``window_batches * batch_size``; inside a window the examples are sorted by length and cut
    into batches, and the batch order inside the window is shuffled. Batches then hold clips of
    similar length (little padding) while every epoch still visits every example once, in a new
    order. ``n % batch_size`` examples (random ones, different each epoch) sit out each epoch so
    that batches never straddle two epochs. Pure index arithmetic: the grain iterator state (a
    position) restores it exactly.
    """

    def __init__(self, indices: np.ndarray, lengths: np.ndarray, *, batch_size: int, window_batches: int, seed: int):
        self.indices = np.asarray(indices, np.int64)
        self.lengths = np.asarray(lengths, np.int64)
        self.batch_size = batch_size
        self.window = window_batches * batch_size
        self.seed = seed
        self.epoch_length = (len(self.indices) // batch_size) * batch_size
        self._cache: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x6C656E, epoch]))
        perm = rng.permutation(len(self.indices))[: self.epoch_length]
        out = []
        for start in range(0, len(perm), self.window):
            win = perm[start : start + self.window]
            win = win[np.argsort(self.lengths[win], kind="stable")]
            batches = win.reshape(-1, self.batch_size)
            out.append(batches[rng.permutation(len(batches))].reshape(-1))
        order = self.indices[np.concatenate(out)]
        self._cache = (epoch, order)
        return order

    def __call__(self, position: int) -> int:
        epoch, j = divmod(int(position), self.epoch_length)
        return int(self.epoch_order(epoch)[j])

    def __getstate__(self) -> dict[str, Any]:  # pickled to grain workers without the cache
        state = dict(self.__dict__)
        state["_cache"] = None
        return state


@dataclasses.dataclass(frozen=True)
class _ReadAt:
    """map_with_index step for length grouping: read the source example the order points at."""

    source: Any
    order: _LengthGroupedOrder

    def __call__(self, position: int, _unused: Any) -> Mapping[str, Any]:
        return self.source[self.order(position)]


def bucket_length(num_frames: int, buckets: Sequence[int]) -> int:
    """Smallest bucket ``>= num_frames`` (buckets sorted ascending)."""
    for b in buckets:
        if b >= num_frames:
            return b
    raise DataError(f"clip of {num_frames} frames is longer than the largest bucket {buckets[-1]}")


def aligned_zeros(shape: tuple[int, ...], dtype=np.uint8, alignment: int = 64) -> np.ndarray:
    """``np.zeros`` whose data starts on an ``alignment``-byte boundary. JAX's CPU client aliases
    such host arrays instead of copying them (``device_put`` of a 50 MB frame batch: 0.3 ms
    instead of 30 ms); NumPy's own large allocations sit 16 bytes past a page boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(nbytes + alignment, np.uint8)
    start = (-raw.ctypes.data) % alignment
    return raw[start : start + nbytes].view(dtype).reshape(shape)


class _PadBatch:
    """Batch function: stacks examples and pads time to a bucket, optionally filling up the batch.

    With ``fill_batch`` a short last batch gets filler rows (``index`` -1, all-False mask, zeros
    elsewhere) so every batch has exactly ``batch_size`` rows: shapes stay static for jit.

    In a grain worker process (``enable_shared_memory_output``, grain's batch protocol) the frames
    are written straight into a shared-memory array: the batch is not copied again to reach the
    main process, and the padding is never written (a new shared-memory segment reads as zeros).
    """

    def __init__(self, batch_size: int, buckets: tuple[int, ...], fill_batch: bool):
        self.batch_size = batch_size
        self.buckets = tuple(buckets)
        self.fill_batch = fill_batch
        self.shared_memory = False

    def enable_shared_memory_output(self) -> None:
        self.shared_memory = True

    def _zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.shared_memory:
            return grain.SharedMemoryArray(shape, np.uint8)  # zero-filled by the OS
        return aligned_zeros(shape)

    def __call__(self, elements: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        lengths = [e["frames"].shape[0] for e in elements]
        t = bucket_length(max(lengths), self.buckets)
        frame_shape = elements[0]["frames"].shape[1:]
        b = self.batch_size if self.fill_batch else len(elements)
        frames = self._zeros((b, t) + frame_shape)
        mask = np.zeros((b, t), bool)
        index = np.full((b,), -1, np.int32)
        for row, (e, n) in enumerate(zip(elements, lengths)):
            if e["frames"].shape[1:] != frame_shape:
                raise DataError(
                    f"example {int(e['index'])} has frames of shape {e['frames'].shape[1:]}, others "
                    f"{frame_shape}; build the dataset with one frame size"
                )
            frames[row, :n] = e["frames"]
            mask[row, :n] = True
            index[row] = e["index"]
        batch = {"frames": frames, "frame_mask": mask, "index": index}
        for key in elements[0]:
            if key in _RESERVED_KEYS:
                continue
            try:
                stacked = np.stack([np.asarray(e[key]) for e in elements])
            except ValueError:
                shapes = sorted({np.shape(e[key]) for e in elements})
                raise ConfigError(
                    f"example_fn field {key!r} has varying shapes {shapes}; it must return one "
                    "fixed shape per field (pad it)"
                ) from None
            if len(elements) < b:
                filler = np.zeros((b - len(elements),) + stacked.shape[1:], stacked.dtype)
                stacked = np.concatenate([stacked, filler])
            batch[key] = stacked
        return batch


# --------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------


def make_loader(
    source: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    frame_selection: str = "first",
    max_frames: int = 300,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    drop_remainder: bool,
    worker_count: int = 0,
    example_fn: Callable[[Mapping[str, Any]], Mapping[str, np.ndarray]] | None = None,
    fill_last_batch: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    read_threads: int = 1,
    prefetch_batches: int = 2,
    length_grouping: int = 0,
    num_frames: np.ndarray | None = None,
    start_batch: int = 0,
) -> grain.IterDataset:
    """Builds the grain pipeline over ``source`` (e.g. :func:`open_split`) yielding host batches.

    Args:
      source: random-access source of examples with ``frames`` (encoded bytes), ``num_frames``,
        ``index``, as returned by :func:`open_split`.
      batch_size: examples per batch *on this host* (per process).
      seed: shuffling and random-frame-selection seed (non-negative, < 2**32).
      shuffle: global shuffle, a different permutation every epoch.
      num_epochs: number of passes; None repeats forever.
      frame_selection: "first" (HFA) or "random" (GFSLT-VLP): which ``max_frames`` frames to keep.
      max_frames: the most frames kept per clip (the paper: 300).
      buckets: allowed padded lengths T, ascending; the last must be >= max_frames.
      drop_remainder: drop the last incomplete batch (training).
      worker_count: grain worker processes decoding batches (0 = in this process).
      example_fn: ``example -> {field: array}`` adding fixed-shape numeric fields per example
        (the example dict is the source row: str fields, ``index``, encoded ``frames``, plus
        ``frame_indices``: the sorted indices of the kept frames, for per-frame fields). It runs
        in the worker processes, so it must be picklable.
      fill_last_batch: without ``drop_remainder``, pad the last batch to ``batch_size`` with filler
        rows (``index`` -1, mask all False) so that every batch has the same shape.
      shard_index, shard_count: this process's rows of every global batch (``batch_size *
        shard_count`` rows); default ``jax.process_index()``/``jax.process_count()``. The global
        batches are the same for any ``shard_count``.
      read_threads: threads per process computing batches (decoding releases the GIL).
      prefetch_batches: batches buffered per process (bounded: batches are large).
      length_grouping: with ``shuffle``, batch clips of similar length: each epoch's shuffled
        order is cut into windows of this many batches, sorted by length inside a window, and the
        window's batches are shuffled (:class:`_LengthGroupedOrder`). Padding, and with it the
        frames the model processes for nothing, drops sharply (PHOENIX14T: 16-475 frames per
        clip). 0 (default) = plain shuffling, the references' behaviour. Needs ``drop_remainder``.
      num_frames: every source example's frame count (default: :func:`source_num_frames`,
        cached beside an ArrayRecord dataset); only read with ``length_grouping``.
      start_batch: skip this many (per-process) batches: resuming at step ``start_batch`` of a
        training loader, on any number of processes (batches are a function of the position).

    Returns:
      A grain ``IterDataset``; ``it = iter(loader)`` yields batch dicts (see module docstring) and
      supports ``it.get_state()`` / ``it.set_state(state)``. Restoring requires the same
      arguments (grain checks ``worker_count``).
    """
    buckets = tuple(int(b) for b in buckets)
    if frame_selection not in FRAME_SELECTIONS:
        raise ConfigError(f"frame_selection={frame_selection!r} is not one of {FRAME_SELECTIONS}")
    if batch_size <= 0:
        raise ConfigError(f"batch_size={batch_size} must be positive")
    if max_frames <= 0:
        raise ConfigError(f"max_frames={max_frames} must be positive")
    if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] <= 0:
        raise ConfigError(f"buckets={buckets} must be strictly ascending positive lengths")
    if buckets[-1] < max_frames:
        raise ConfigError(
            f"largest bucket {buckets[-1]} < max_frames={max_frames}; add a bucket >= max_frames"
        )
    if not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed} must be in [0, 2**32)")
    if num_epochs is not None and num_epochs <= 0:
        raise ConfigError(f"num_epochs={num_epochs} must be positive or None")
    if length_grouping < 0:
        raise ConfigError(f"length_grouping={length_grouping} must be >= 0 (0 = off)")
    if length_grouping and not (shuffle and drop_remainder):
        raise ConfigError("length_grouping needs shuffle=True and drop_remainder=True (a training loader)")
    if shard_index is None or shard_count is None:
        shard_index, shard_count = jax.process_index(), jax.process_count()
    if len(source) == 0:
        raise DataError(f"source {source!r} is empty")

    # One global stream of examples, the same whatever the number of processes: shuffled (or
    # length-grouped) over the whole source and cut into global batches of batch_size x
    # shard_count rows; each process reads its own block of rows of every global batch
    # (_ProcessRows). A run's batches, and so its result, do not depend on how many hosts it has.
    global_batch = batch_size * shard_count
    if length_grouping:
        lengths = source_num_frames(source) if num_frames is None else np.asarray(num_frames, np.int64)
        if lengths.shape != (len(source),):
            raise ConfigError(f"num_frames has shape {lengths.shape}; the source has {len(source)} examples")
        order = _LengthGroupedOrder(np.arange(len(source)), lengths, batch_size=global_batch,
                                    window_batches=length_grouping, seed=seed)
        epoch_length = order.epoch_length
        if epoch_length == 0:
            raise DataError(f"{len(source)} examples < the global batch of {global_batch}")
        ds = grain.MapDataset.range(epoch_length)
        if num_epochs != 1:
            ds = ds.repeat(num_epochs)
        ds = ds.map_with_index(_ReadAt(source, order))
    else:
        ds = grain.MapDataset.source(source)
        epoch_length = len(ds)
        if shuffle:
            ds = ds.shuffle(seed=seed)  # re-permuted every epoch once repeated (seed + epoch)
        if num_epochs != 1:
            ds = ds.repeat(num_epochs)
    ds = ds.map_with_index(
        _PrepareExample(
            seed=seed,
            epoch_length=epoch_length,
            frame_selection=frame_selection,
            max_frames=max_frames,
            example_fn=example_fn,
        )
    )
    if shard_count > 1:
        ds = _ProcessRows(ds, rows=batch_size, shard_index=shard_index, shard_count=shard_count,
                          fill=not drop_remainder)
    if start_batch:
        ds = ds[start_batch * batch_size:]
    # Which examples form a batch is fixed here, on the MapDataset (independent of worker and
    # thread counts); the examples are decoded ahead by the read threads, and stacked + padded
    # as the batch leaves the pipeline (in a worker process: straight into shared memory, see
    # _PadBatch; a batch that is never handed over never holds a shared-memory segment).
    pad_batch = _PadBatch(batch_size, buckets, fill_batch=fill_last_batch and not drop_remainder)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=list)
    ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
    )
    ds = _SharedMemoryBatches(ds.map(pad_batch), pad_batch)
    if worker_count > 0:
        _ensure_absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return ds


class _ProcessRows(grain.MapDataset):
    """One process's rows of a global stream: element ``k`` is global element
    ``(k // rows) * rows * shard_count + shard_index * rows + k % rows``.

    With ``fill`` (evaluation: one pass, no dropped remainder) the last global batch is completed
    with filler examples (``index`` -1, one frame of the first example: the smallest bucket), so
    that every process yields the same number of batches; the loss and translation code skips
    rows with a negative index.
    """

    def __init__(self, parent: grain.MapDataset, *, rows: int, shard_index: int, shard_count: int, fill: bool):
        super().__init__(parent)
        self._rows, self._index, self._count, self._fill = rows, shard_index, shard_count, fill

    def __len__(self) -> int:
        n, global_batch = len(self._parent), self._rows * self._count
        batches = -(-n // global_batch) if self._fill else n // global_batch
        return batches * self._rows

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.slice(k)
        j, r = divmod(int(k), self._rows)
        g = j * self._rows * self._count + self._index * self._rows + r
        if g < len(self._parent):
            return self._parent[g]
        filler = dict(self._parent[0])
        filler["frames"] = filler["frames"][:1]
        filler["index"] = np.int32(-1)
        return filler

    def __str__(self) -> str:
        return f"ProcessRows(rows={self._rows}, shard={self._index}/{self._count})"


class _SharedMemoryBatches(grain.IterDataset):
    """Passes ``parent`` through unchanged; in a grain worker process (grain calls
    ``enable_shared_memory_output`` on the dataset it runs) it switches ``pad_batch`` to writing
    batches into shared memory. Batching itself stays on the MapDataset, so which examples form
    a batch does not depend on the worker count."""

    def __init__(self, parent: grain.IterDataset, pad_batch: _PadBatch):
        super().__init__(parent)
        self._pad_batch = pad_batch

    def __iter__(self) -> grain.DatasetIterator:
        return self._parent.__iter__()

    def enable_shared_memory_output(self) -> None:
        self._pad_batch.enable_shared_memory_output()

    def __str__(self) -> str:
        return "SharedMemoryBatches"


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside `absl.app.run` nobody parsed them."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
    """Batches per epoch for ``num_examples`` examples (for progress bars and schedules)."""
    if drop_remainder:
        return num_examples // batch_size
    return math.ceil(num_examples / batch_size)
