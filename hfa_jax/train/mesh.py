"""Device mesh and shardings: one code path for data parallelism on one host and FSDP on a pod.

The mesh has two axes, ``data`` and ``fsdp`` (maxtext / big_vision convention). The batch is
split over both axes (every device sees a different slice of examples).

Parameters are placed by their logical axis names. Every parameter of the hfa_jax models names
its dimensions (:mod:`hfa_jax.models.axes`: ``embed``, ``mlp``, ``heads``, ``vocab``, ``lora``,
``norm``; large activations are constrained with ``batch``, ``frames``, ``length``, ``embed``,
``vocab``), and ``config.mesh.rules`` maps those names onto mesh axes, maxtext style: a list of
``(logical name, mesh axis | [mesh axes] | None)``, first match wins, a mesh axis is used at most
once per array, unlisted names stay unsharded; :data:`DEFAULT_RULES` when the config gives none.
With the defaults every model width (``embed``) is sharded over ``fsdp`` (FSDP: with ``fsdp=1``
that is replication, i.e. plain data parallelism) and vocabularies, hidden widths, heads, LoRA
ranks and norms are replicated; activations split their ``batch`` over both axes. A rule such
as ``("mlp", "fsdp")`` placed before ``("embed", "fsdp")`` shards feed-forward hidden widths
instead. A named dimension whose size the mesh axes do not divide stays unsharded.

Fallback, for leaves without logical names (parameters of a module that does not annotate them,
or state leaves that match no parameter, see :func:`state_shardings`): big_vision's ``fsdp``
heuristic shards the largest dimension divisible by the ``fsdp`` size, and leaves arrays smaller
than ``min_size`` elements replicated (``config.mesh.auto_fsdp=False``: replicate them all).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hfa_jax.errors import ConfigError
from hfa_jax.train.freeze import path_keys

PyTree = Any
BATCH_AXES = ("data", "fsdp")

# Default logical -> mesh axis rules (maxtext style; names in hfa_jax.models.axes). "batch" comes
# first so that an activation [batch, ..., embed] takes both axes for its batch, leaving its
# embed unsharded; a parameter has no batch dimension, so its embed takes fsdp.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("frames", None),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", None),
    ("heads", None),
    ("kv", None),
    ("vocab", None),
    ("lora", None),
    ("norm", None),
)


def make_mesh(*, data: int, fsdp: int, devices: Sequence[Any] | None = None) -> Mesh:
    """Mesh of shape ``(data, fsdp)`` over all (global) devices, or over ``devices`` (e.g. the
    devices of a TPU topology description, for ahead-of-time compilation).

    ``data = -1`` (``config.mesh.data``) takes every device not used by ``fsdp``.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ConfigError(f"config.mesh.fsdp={fsdp} does not divide the {n} devices; choose a divisor of {n}")
    if data == -1:
        data = n // fsdp
    if data * fsdp != n:
        raise ConfigError(f"config.mesh.data={data} x config.mesh.fsdp={fsdp} != {n} devices; set data=-1")
    return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def logical_rules(rules: Sequence[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...]:
    """``config.mesh.rules`` as flax's logical axis rules; :data:`DEFAULT_RULES` when None."""
    if rules is None:
        return DEFAULT_RULES
    return tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _auto_fsdp_spec(shape: Sequence[int], fsdp: int, min_size: int) -> P:
    """big_vision's ``fsdp`` strategy: shard the largest divisible dimension over ``fsdp``."""
    if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in order:
        if shape[i] % fsdp == 0:
            spec = [None] * len(shape)
            spec[i] = "fsdp"
            return P(*spec)
    return P()


def _divisible(sharding: NamedSharding, shape: Sequence[int]) -> NamedSharding:
    """``sharding`` with the mesh axes of every dimension they do not divide dropped (that
    dimension unsharded): e.g. a 300-wide ``embed`` on ``fsdp=8``."""
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    for i, axes in enumerate(spec):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if names and shape[i] % int(np.prod([sharding.mesh.shape[a] for a in names])):
            spec[i] = None
    return NamedSharding(sharding.mesh, P(*spec))


def variable_shardings(boxed_abstract: PyTree, mesh: Mesh, rules, *, auto_fsdp: bool = True,
                       min_size: int = 2 ** 14) -> PyTree:
    """Shardings for a logically-boxed abstract variables tree (``jax.eval_shape`` of
    ``model.init`` under ``nn.logical_axis_rules``), in the unboxed structure.

    Leaves annotated with logical names use ``nn.logical_to_mesh_sharding`` with ``rules``
    (dimensions the mesh axes do not divide stay unsharded); the others the ``fsdp`` heuristic
    (if ``auto_fsdp``) or replication (the module docstring's fallback).
    """
    fsdp = mesh.shape["fsdp"]
    logical = nn.get_partition_spec(boxed_abstract)  # P() for unannotated leaves
    mesh_sh = nn.logical_to_mesh_sharding(logical, mesh, rules)
    annotated = jax.tree.map(lambda x: isinstance(x, nn.meta.AxisMetadata), boxed_abstract,
                             is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
    unboxed = nn.meta.unbox(boxed_abstract)

    def pick(x, sh, ann):
        if ann:
            return _divisible(sh, x.shape)
        spec = _auto_fsdp_spec(x.shape, fsdp, min_size) if auto_fsdp else P()
        return NamedSharding(mesh, spec)

    return jax.tree.map(pick, unboxed, mesh_sh, annotated)


def state_shardings(abstract_state: PyTree, param_shardings_by_path: dict, mesh: Mesh, *,
                    auto_fsdp: bool = True, min_size: int = 2 ** 14) -> PyTree:
    """Shardings for a whole train state (params, optimiser moments, step, rng ...).

    A leaf whose key path ends with a parameter's path (e.g. ``opt_state/.../mu/<param path>``)
    and has its shape takes that parameter's sharding, so Adam moments live where their parameter
    lives; scalars are replicated; anything else uses the fallback heuristic / replication.
    """
    fsdp = mesh.shape["fsdp"]

    def pick(path, x):
        keys = path_keys(path)
        for start in range(len(keys)):
            sh = param_shardings_by_path.get(keys[start:])
            if sh is not None and sh[1] == tuple(x.shape):
                return sh[0]
        if not hasattr(x, "shape") or len(x.shape) == 0:
            return replicated(mesh)
        spec = _auto_fsdp_spec(x.shape, fsdp, min_size) if auto_fsdp else P()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(pick, abstract_state)


def shardings_by_path(abstract_params: PyTree, shardings: PyTree) -> dict:
    """``{path tuple: (sharding, shape)}`` for :func:`state_shardings`."""
    out = {}
    flat_p = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, x), s in zip(flat_p, flat_s):
        out[path_keys(path)] = (s, tuple(x.shape))
    return out
