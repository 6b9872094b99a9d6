"""The frozen text encoder's sentence vectors, computed once per sentence instead of every step.

Pretraining aligns each video with its sentence's vector from the frozen mBART text encoder
(:meth:`hfa_jax.models.hfa.HFAPretrain.encode_text`). Where that vector depends on the sentence
alone (:attr:`hfa_jax.train.tasks.Pretraining.caches_text_vectors`: the encoder frozen and
without dropout), the trainer computes it once per distinct sentence after the initial weights
are loaded (:func:`add_text_vectors`), stores it with each split's per-example fields
(``text_vec``, float32), and the loaders hand it to the steps, which then skip the text encoder:
a 12-layer mBART encoder's forward pass less per step.

The vectors come from the same method, on the same mesh with the same logical-axis rules, at the
batch size the steps would have encoded them at (the train batch for the training split, the
evaluation batch for the others); ``tests/train/test_text_vectors.py`` checks that a step fed
them computes exactly what it computes with the encoder inside it.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from hfa_jax.models.hfa import HFAPretrain
from hfa_jax.train.mesh import BATCH_AXES
from hfa_jax.train.tasks import Task

PyTree = Any

FIELD = "text_vec"


def sentence_vectors(model: nn.Module, params: Mapping[str, PyTree], ids: np.ndarray, mask: np.ndarray, *,
                     mesh, rules, batch_size: int) -> tuple[np.ndarray, int]:
    """(``text_vec [N, D]`` float32 of the rows ``ids [N, L]``, ``mask [N, L]``; the number of
    distinct rows). Each distinct row is encoded once, in batches of ``batch_size`` rows sharded
    over the mesh's batch axes as a step's batch is (the last batch filled with copies of its
    last row). Every process computes every vector."""
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, bool)
    keys = np.concatenate([ids, mask.astype(np.int32)], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    n = len(first)
    rows = np.concatenate([first, np.full(((-n) % batch_size,), first[-1])])
    in_sh = NamedSharding(mesh, P(BATCH_AXES, None))

    def encode(p, i, m):
        return model.apply({"params": p}, i, m, method=HFAPretrain.encode_text)

    chunks = []
    with mesh, nn.logical_axis_rules(rules):
        fn = jax.jit(encode, out_shardings=NamedSharding(mesh, P()))
        for start in range(0, len(rows), batch_size):
            take = rows[start:start + batch_size]
            shape = (batch_size, ids.shape[1])
            i = jax.make_array_from_callback(shape, in_sh, lambda idx, t=take: ids[t][idx])
            m = jax.make_array_from_callback(shape, in_sh, lambda idx, t=take: mask[t][idx])
            chunks.append(np.asarray(fn(params, i, m)))
    vecs = np.concatenate(chunks, axis=0)[:n]
    return vecs[np.asarray(inverse).reshape(-1)].astype(np.float32), n


def add_text_vectors(task: Task, model: nn.Module, params: Mapping[str, PyTree], fields: dict[str, dict], *,
                     mesh, rules) -> int:
    """Adds ``text_vec`` to every split's per-example ``fields`` (in place) when the task caches
    them (:attr:`~hfa_jax.train.tasks.Task.caches_text_vectors`); ``params``: the model's params
    (only ``text_encoder`` is read). Returns the number of distinct sentences encoded (0 when
    the task does not cache them)."""
    if not task.caches_text_vectors:
        return 0
    s = task.settings
    total = 0
    for split, f in fields.items():
        size = s.train.batch_size if split == s.data.train_split else s.eval.batch_size
        f[FIELD], n = sentence_vectors(model, params, f["text_ids"], f["text_mask"], mesh=mesh, rules=rules,
                                       batch_size=size)
        total += n
    return total
