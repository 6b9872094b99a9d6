"""Host batches -> global ``jax.Array``s sharded over the data axes of a device mesh.

Each process holds the rows of the global batch that its own loader produced (the loader reads a
disjoint shard per process, see :func:`hfa_jax.data.pipeline.make_loader`). Those rows become the
process's slice of one global array whose leading (batch) axis is split over ``batch_axes``; the
transfer copies uint8 frames as they are (augmentation/normalisation run on the device).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hfa_jax.errors import ConfigError
from hfa_jax.models.packing import pack_index, pack_index_per_microbatch


def batch_sharding(mesh: Mesh, ndim: int, batch_axes: Sequence[str] = ("data",)) -> NamedSharding:
    """Sharding of an ``ndim``-d array split along axis 0 over ``batch_axes``, replicated otherwise."""
    return NamedSharding(mesh, PartitionSpec(tuple(batch_axes), *([None] * (ndim - 1))))


# Batch fields whose axis 1 is the padded time axis of the bucket (pipeline._PadBatch).
TIME_FIELDS = ("frames", "frame_mask")


def pad_time(batch: Mapping[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """Pads the time axis of ``frames``/``frame_mask`` to ``length`` (zeros, mask False)."""
    out = dict(batch)
    for name in TIME_FIELDS:
        if name in out:
            value = np.asarray(out[name])
            if value.shape[1] > length:
                raise ValueError(f"batch field {name!r} has {value.shape[1]} time steps > {length}")
            pad = [(0, 0)] * value.ndim
            pad[1] = (0, length - value.shape[1])
            out[name] = np.pad(value, pad)
    return out


def agree_on_time_length(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Multi-host: pads every process's batch to the longest time axis among the processes.

    Each process buckets its own rows, so two hosts can pick different bucket lengths for the same
    step; one global array needs one shape. The longest is itself a bucket length, so the
    compiled step sees no new shapes. One tiny all-gather per batch; a no-op on one process.
    """
    if jax.process_count() == 1 or "frames" not in batch:
        return dict(batch)
    lengths = multihost_utils.process_allgather(np.int32(np.shape(batch["frames"])[1]))
    return pad_time(batch, int(np.max(lengths)))


def local_batch_shards(mesh: Mesh, batch_axes: Sequence[str] = ("data",)) -> int:
    """How many shards of the batch axis this process's devices hold (its rows split evenly)."""
    n_shards = math.prod(mesh.shape[a] for a in batch_axes)
    local_devices = {d for d in mesh.devices.flat if d.process_index == jax.process_index()}
    return max(1, n_shards * len(local_devices) // mesh.devices.size)


def packed_frame_index(frame_mask: np.ndarray, mesh: Mesh, levels: int,
                       batch_axes: Sequence[str] = ("data",), num_microbatches: int = 1) -> np.ndarray:
    """``frame_index [local shards, P]`` for this process's ``frame_mask [B_local, T]``: one
    packing group per data shard, so packing never moves frames between devices
    (:func:`hfa_jax.models.packing.pack_index`). With ``num_microbatches`` K > 1 the index is
    ``[local shards, K, P]``, one packing per micro-batch (``train.microbatches``,
    :func:`hfa_jax.models.packing.pack_index_per_microbatch`). Multi-host: every process takes
    the largest capacity ``P`` among them (one tiny all-gather), as one global array needs one shape."""
    groups = local_batch_shards(mesh, batch_axes)
    k = int(num_microbatches)

    def index_of(min_capacity: int = 0) -> np.ndarray:
        if k > 1:
            return pack_index_per_microbatch(frame_mask, k, groups, levels, min_capacity=min_capacity)
        return pack_index(frame_mask, groups, levels, min_capacity=min_capacity)

    index = index_of()
    if jax.process_count() > 1:
        p = int(np.max(multihost_utils.process_allgather(np.int32(index.shape[-1]))))
        index = index_of(p)
    return index


def to_global(
    batch: Mapping[str, np.ndarray],
    mesh: Mesh,
    batch_axes: Sequence[str] = ("data",),
) -> dict[str, jax.Array]:
    """Makes every field of a host batch a global array sharded on its leading axis.

    Args:
      batch: ``{name: [B_local, ...] array}``, the rows this process loaded (same B_local for all
        fields; dtypes are kept, so frames stay uint8).
      mesh: the device mesh (e.g. from ``make_mesh``); multi-host meshes are supported.
      batch_axes: mesh axes the batch is split over, e.g. ("data",) or ("data", "fsdp").

    Returns:
      ``{name: jax.Array}`` with global leading size ``B_local * process_count`` (for a mesh over
      all processes), sharded as ``PartitionSpec(batch_axes, None, ...)``.
    """
    batch_axes = tuple(batch_axes)
    unknown = [a for a in batch_axes if a not in mesh.shape]
    if unknown:
        raise ConfigError(
            f"batch axes {unknown} are not mesh axes {tuple(mesh.shape)}; fix config.mesh or the "
            "data axes"
        )
    # Devices of this process along the batch axes: each needs an equal slice of the local rows.
    local_shards = local_batch_shards(mesh, batch_axes)
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ConfigError(f"batch field {name!r} is a scalar; every field needs a batch axis")
        if value.shape[0] % local_shards:
            raise ConfigError(
                f"batch field {name!r} has {value.shape[0]} rows on this process, not divisible by "
                f"its {local_shards} data shards; make the per-process batch size a multiple of "
                f"{local_shards}"
            )
        sharding = batch_sharding(mesh, value.ndim, batch_axes)
        out[name] = jax.make_array_from_process_local_data(sharding, value)
    return out
