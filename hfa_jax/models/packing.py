"""Frame packing: run the per-frame encoder on the valid frames of a padded batch only.

A training batch is padded to its bucket length: ``frames [B, T, ...]`` with ``frame_mask [B, T]``.
The frame encoder (ViT) treats every frame on its own and dominates the step, so the padding
costs as much as real frames: on PHOENIX14T (train clips 16-300 frames, mean 116.5) a shuffled
batch of 16 pads to 244.9 frames on average, i.e. half of the ViT work is padding. PyTorch
implementations avoid it with a dynamic shape (GFSLT-VLP concatenates the clips' frames before
its CNN); under ``jit`` the number of frames must be static, so the host picks a *capacity*
``P`` from a few levels per bucket and the step is compiled once per (bucket, capacity).

Layout. The batch rows are split into ``G`` equal *groups* (one per data shard, so every group
lives on one device and packing never moves frames between devices). ``index [G, P]`` int32
holds, per group, the flat positions ``row * T + t`` (rows counted inside the group) of its valid
frames in order, then the filler value ``rows_per_group * T`` (out of range): filler slots read
a zero frame and their outputs are dropped. ``P`` is the same for all groups: the group with
the most valid frames, rounded up to the next of ``levels`` equal steps of ``rows_per_group * T``.

Host side (numpy): :func:`pack_index`. Device side (jnp, inside ``jit``): :func:`gather_frames`
and :func:`scatter_frames`. Outputs at padded positions are zeros, which the model's masked
BatchNorm and temporal encoder ignore (tested to give the unpacked values at valid frames).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from hfa_jax.errors import ConfigError

Array = jax.Array

__all__ = ["capacity", "pack_index", "pack_index_per_microbatch", "leaves_out_frames", "gather_frames",
           "scatter_frames"]


def capacity(valid: int, group_frames: int, levels: int) -> int:
    """Packed frames per group for at most ``valid`` valid frames among ``group_frames`` slots:
    ``valid`` rounded up to a multiple of ``ceil(group_frames / levels)``, at most
    ``group_frames`` and at least one step (so a group of padding still has a static shape)."""
    if levels <= 0:
        raise ConfigError(f"frame packing levels={levels} must be positive (0 turns packing off upstream)")
    step = math.ceil(group_frames / levels)
    return min(group_frames, max(step, math.ceil(valid / step) * step))


def pack_index(frame_mask: np.ndarray, groups: int, levels: int, min_capacity: int = 0) -> np.ndarray:
    """``frame_mask [B, T]`` bool -> ``index [groups, P]`` int32 (see the module docstring).

    ``min_capacity`` raises ``P`` (multi-host runs agree on the largest ``P`` among processes).
    """
    mask = np.asarray(frame_mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"frame_mask must be [B, T], got shape {mask.shape}")
    b, t = mask.shape
    if groups <= 0 or b % groups:
        raise ConfigError(f"frame packing: {b} batch rows do not split into {groups} data shards")
    flat = mask.reshape(groups, (b // groups) * t)
    n = flat.shape[1]
    p = max(capacity(int(flat.sum(1).max()), n, levels), min(int(min_capacity), n))
    index = np.full((groups, p), n, np.int32)
    for g in range(groups):
        pos = np.flatnonzero(flat[g])
        index[g, : pos.size] = pos
    return index


def pack_index_per_microbatch(frame_mask: np.ndarray, num_microbatches: int, groups: int, levels: int,
                              min_capacity: int = 0) -> np.ndarray:
    """Frame packing when the batch runs as ``K`` micro-batches (``train.microbatches``):
    ``frame_mask [B, T]`` bool -> ``index [groups, K, P]`` int32, the :func:`pack_index` of each
    micro-batch's rows ``k::K`` with one capacity ``P`` for all (at least ``min_capacity``).

    Micro-batch ``k`` of a batch sharded over ``groups`` data shards in contiguous blocks holds,
    on shard ``g``, the rows ``k::K`` of that shard's block; with ``B / groups`` divisible by
    ``K`` those are exactly group ``g`` of ``pack_index(frame_mask[k::K], groups, ...)``, so the
    leading axis stays the data shards' and no frame moves between devices.
    """
    k = int(num_microbatches)
    mask = np.asarray(frame_mask, bool)
    if mask.shape[0] % (k * max(int(groups), 1)):
        raise ConfigError(f"frame packing: {mask.shape[0]} batch rows do not split into {k} micro-batches "
                          f"x {groups} data shards")
    parts = [mask[i::k] for i in range(k)]
    p = max([pack_index(m, groups, levels).shape[1] for m in parts] + [int(min_capacity)])
    return np.stack([pack_index(m, groups, levels, min_capacity=p) for m in parts], axis=1)


def leaves_out_frames(index: np.ndarray, frame_mask: np.ndarray) -> bool:
    """Whether ``index`` packs fewer frames than the batch has slots. If not, the caller runs the
    plain (unpacked) program: a gather and scatter of every frame would buy nothing."""
    return int(np.size(index)) < int(np.size(frame_mask))


def gather_frames(frames: Array, index: Array) -> Array:
    """``frames [B, T, ...]``, ``index [G, P]`` -> ``[G * P, ...]`` packed frames (zeros in
    filler slots). The reshape to ``[G, B/G * T, ...]`` keeps a batch sharded over G devices
    local to each device."""
    g, p = index.shape
    b, t = frames.shape[:2]
    grouped = frames.reshape(g, (b // g) * t, *frames.shape[2:])
    packed = jax.vmap(lambda f, i: f.at[i].get(mode="fill", fill_value=0, indices_are_sorted=True))(grouped, index)
    return packed.reshape(g * p, *frames.shape[2:])


def scatter_frames(values: Array, index: Array, batch: int, time: int) -> Array:
    """``values [G * P, ...]`` (per packed frame), ``index [G, P]`` -> ``[batch, time, ...]``
    with zeros at the frames that were not packed (padding)."""
    g, p = index.shape
    tail = values.shape[1:]
    grouped = values.reshape(g, p, *tail)
    zeros = jnp.zeros(((batch // g) * time, *tail), values.dtype)
    out = jax.vmap(lambda v, i: zeros.at[i].set(v, mode="drop", indices_are_sorted=True))(grouped, index)
    return out.reshape(batch, time, *tail)
