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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hfa_jax.errors import ConfigError


def batch_sharding(mesh: Mesh, ndim: int, batch_axes: Sequence[str] = ("data",)) -> NamedSharding:
    """Sharding of an ``ndim``-d array split along axis 0 over ``batch_axes``, replicated otherwise."""
    return NamedSharding(mesh, PartitionSpec(tuple(batch_axes), *([None] * (ndim - 1))))


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
    n_shards = math.prod(mesh.shape[a] for a in batch_axes)
    # Devices of this process along the batch axes: each needs an equal slice of the local rows.
    local_devices = {d for d in mesh.devices.flat if d.process_index == jax.process_index()}
    local_shards = max(1, n_shards * len(local_devices) // mesh.devices.size)
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
