"""Micro-batched gradients: the global batch in ``K`` sequential parts, one exact gradient.

``train.microbatches = K`` runs the model on ``B / K`` examples at a time, so the activations of
only one micro-batch are live, and still applies one optimiser update per global batch. The
loss and its gradient equal those of the one-batch step (up to float rounding), because every
loss term is handled by the rule that makes its sum exact:

* **Example terms** (:class:`ExampleTerm`): means over the examples, tokens or frames of the
  batch (pseudo-gloss BCE, translation cross-entropy, hand-pose MSE). Micro-batch ``k`` computes
  its own mean ``m_k`` over ``n_k`` counted items; the global mean is
  ``sum_k m_k * n_k / max(N, 1)`` with ``N = sum_k n_k``. Weighting by the counts matters: a
  token-averaged cross-entropy is not the mean of the micro-batches' means when their token
  counts differ. Gradients are accumulated with the same weights in a ``lax.scan``.
* **Batch terms** (:class:`BatchTerm`): losses that couple the examples of the whole batch (the
  video-text and description contrastive losses), computed with cached representations as
  GradCache (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
  Limited Setup"):

  1. a forward pass per micro-batch, without gradients, gives its pooled embeddings (``rows``:
     ``[b, D]`` outputs) and the shared scalars (``shared``, e.g. ``logit_scale``);
  2. the batch terms and their gradient with respect to all ``[B, D]`` embeddings and the
     shared scalars are computed once, on the global batch;
  3. each micro-batch runs its forward pass again with gradients and adds
     ``<dL/d rows_k, rows_k>`` (its slice of that gradient) to its example terms, so one
     backward pass gives the vector-Jacobian product of both. A shared scalar's gradient is
     added in micro-batch 0 only, so it counts once.

  This costs one extra forward pass per micro-batch, only when the loss has batch terms.

Micro-batch ``k`` holds the rows ``k, k + K, k + 2K, ...`` of the global batch. A batch sharded
over ``D`` data shards in contiguous blocks then gives every micro-batch ``B / (K D)`` rows on
each shard (no data moves), which is why ``B`` must be divisible by ``K * D``
(:func:`check_microbatches`).

What is *not* the one-batch step:

* BatchNorm in training normalises with the statistics of its micro-batch, not of the global
  batch, as gradient accumulation does in PyTorch. The running statistics advance once per
  update, by the mean of the micro-batches' updates (one momentum step, as with ``K = 1``).
  Exactness therefore holds with BatchNorm in evaluation mode, or when every micro-batch has
  the statistics of the whole batch (the tests use both).
* Dropout: ``apply_fn`` receives the micro-batch index and must draw its dropout masks from
  it (e.g. ``fold_in(rng, index)``), the same in both passes, so the second pass reproduces
  the cached embeddings.
* Frame packing (``data.pack_frames``): the packing index is per micro-batch,
  ``frame_index [G, K, P]`` (:func:`pack_index_per_microbatch`).

The entry point :func:`value_and_grad` returns what
``jax.value_and_grad(loss_of, has_aux=True)`` returns in the train step:
``((loss, (parts, new_batch_stats)), grads)``, for ``K = 1`` as for ``K > 1``: the train step
calls nothing else. A task's objective (:meth:`hfa_jax.train.tasks.Task.objective`) is written
once, as an ordered list of example and batch terms.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from hfa_jax.errors import ConfigError
from hfa_jax.models.packing import pack_index_per_microbatch  # re-exported: the index split_batch expects

PyTree = Any
Batch = Mapping[str, jax.Array]
# apply_fn(params, micro_batch, index) -> (outputs, new_batch_stats)
ApplyFn = Callable[[PyTree, Batch, Any], tuple[Any, PyTree]]

__all__ = [
    "ExampleTerm",
    "BatchTerm",
    "LossTerms",
    "full_batch_loss",
    "value_and_grad",
    "split_batch",
    "merge_rows",
    "check_microbatches",
    "pack_index_per_microbatch",
]


# ---------------------------------------------------------------------------------------------
# A loss as example terms and batch terms

@dataclasses.dataclass(frozen=True)
class ExampleTerm:
    """A loss term that is a mean over the counted items of its batch.

    ``value(outputs, batch)``: the term on a (micro-)batch, i.e. ``sum / max(count, 1)``;
    ``count(batch)``: what that mean divides by (examples, tokens or frames; float32 scalar).
    """

    name: str
    weight: float
    value: Callable[[Any, Batch], jax.Array]
    count: Callable[[Batch], jax.Array]


@dataclasses.dataclass(frozen=True)
class BatchTerm:
    """A loss term over the pooled embeddings of the whole batch (contrastive).

    ``value(embeddings, batch)`` with ``embeddings = {key: outputs[key]}`` for ``rows``
    (``[B, D]``, one row per example) and ``shared`` (outputs without a batch axis, the same
    for every micro-batch, e.g. ``logit_scale``).
    """

    name: str
    weight: float
    value: Callable[[Mapping[str, jax.Array], Batch], jax.Array]
    rows: tuple[str, ...]
    shared: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class LossTerms:
    """A loss ``sum_t weight_t * term_t`` over an ordered list of example and batch terms (the
    sum is taken in this order, so the one-batch loss is the same float whatever the split)."""

    terms: tuple[ExampleTerm | BatchTerm, ...] = ()

    @property
    def example(self) -> tuple[ExampleTerm, ...]:
        return tuple(t for t in self.terms if isinstance(t, ExampleTerm))

    @property
    def batch(self) -> tuple[BatchTerm, ...]:
        return tuple(t for t in self.terms if isinstance(t, BatchTerm))

    @property
    def rows(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k for t in self.batch for k in t.rows))

    @property
    def shared(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k for t in self.batch for k in t.shared))

    def total(self, values: Mapping[str, jax.Array]) -> jax.Array:
        return sum(t.weight * values[t.name] for t in self.terms)


def _parts(terms: LossTerms, values: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
    total = terms.total(values)
    return total, {**values, "loss": total}


def full_batch_loss(terms: LossTerms, outputs: Any, batch: Batch) -> tuple[jax.Array, dict]:
    """``(total, parts)`` of one batch, every term on it (the evaluation step's loss; the train
    step takes it through :func:`value_and_grad` with ``K = 1``)."""
    values = {t.name: t.value(outputs, batch) for t in terms.example}
    embeddings = {k: outputs[k] for k in (*terms.rows, *terms.shared)}
    values.update({t.name: t.value(embeddings, batch) for t in terms.batch})
    return _parts(terms, values)


# ---------------------------------------------------------------------------------------------
# Splitting the batch

def split_batch(batch: Batch, num_microbatches: int) -> dict:
    """``{name: [B, ...]}`` -> ``{name: [K, B/K, ...]}``; micro-batch ``k`` holds the rows
    ``k, k + K, ...``. A packing index ``frame_index [G, K, P]`` becomes ``[K, G, P]``."""
    k = num_microbatches
    sizes = {name: x.shape[0] for name, x in batch.items() if name != "frame_index"}
    b = next(iter(sizes.values()))
    bad = sorted(name for name, n in sizes.items() if n != b)
    if bad:
        raise ValueError(f"split_batch: fields {bad} do not have the batch size {b} as leading axis")
    if b % k:
        raise ConfigError(f"train.microbatches={k} does not divide the batch of {b} rows")
    out = {name: jnp.swapaxes(x.reshape(b // k, k, *x.shape[1:]), 0, 1)
           for name, x in batch.items() if name != "frame_index"}
    if "frame_index" in batch:
        index = batch["frame_index"]
        if index.ndim != 3 or index.shape[1] != k:
            raise ValueError(f"split_batch: frame_index has shape {index.shape}; with train.microbatches={k} "
                             f"it must be [G, {k}, P] (microbatch.pack_index_per_microbatch)")
        out["frame_index"] = jnp.swapaxes(index, 0, 1)
    return out


def merge_rows(x: jax.Array) -> jax.Array:
    """``[K, b, ...]`` per-micro-batch rows -> ``[K * b, ...]`` in the global batch's row order
    (the inverse of :func:`split_batch`)."""
    k, b = x.shape[:2]
    return jnp.swapaxes(x, 0, 1).reshape(k * b, *x.shape[2:])


def _mean_over_microbatches(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: jnp.mean(x, axis=0).astype(x.dtype), tree)


# ---------------------------------------------------------------------------------------------
# The gradient

def value_and_grad(apply_fn: ApplyFn, terms: LossTerms, params: PyTree, batch: Batch,
                   num_microbatches: int) -> tuple[tuple[jax.Array, tuple[dict, PyTree]], PyTree]:
    """Loss, parts, new BatchNorm statistics and the gradient of ``terms`` over the global batch.

    Args:
      apply_fn: ``(params, micro_batch, index) -> (outputs, new_batch_stats)``, the model's
        training forward pass on one micro-batch (``index``: int32 scalar, 0..K-1; it must fix
        the dropout masks, see the module docstring). Outputs hold what ``terms`` read.
      terms: the loss (:meth:`hfa_jax.train.tasks.Task.objective`).
      params: the differentiated parameters.
      batch: ``{name: [B, ...]}`` the global batch (anything ``apply_fn`` needs, e.g. the
        augmented ``pixels``, travels in it and is split with it).
      num_microbatches: ``K``; 1 is the plain one-batch step.

    Returns:
      ``((loss, (parts, new_batch_stats)), grads)`` as ``jax.value_and_grad(..., has_aux=True)``:
      ``parts`` holds every term by name and ``loss``; ``new_batch_stats`` is the mean of the
      micro-batches' updated statistics.
    """
    k = int(num_microbatches)
    if k == 1:
        def loss_of(p):
            out, new_bs = apply_fn(p, batch, 0)
            total, parts = full_batch_loss(terms, out, batch)
            return total, (parts, new_bs)
        return jax.value_and_grad(loss_of, has_aux=True)(params)

    micro = split_batch(batch, k)
    index = jnp.arange(k, dtype=jnp.int32)
    counts = {t.name: jnp.maximum(t.count(batch), 1.0) for t in terms.example}

    # 1-2. cached embeddings of every micro-batch, the batch terms and their gradient once.
    batch_values: dict[str, jax.Array] = {}
    row_grads: dict[str, jax.Array] = {}
    shared_grads: dict[str, jax.Array] = {}
    if terms.batch:
        def embed(_, xs):
            mb, i = xs
            out, _ = apply_fn(params, mb, i)
            return None, ({key: out[key] for key in terms.rows}, {key: out[key] for key in terms.shared})

        _, (rows, shared) = jax.lax.scan(embed, None, (micro, index))
        rows = {key: merge_rows(v) for key, v in rows.items()}
        shared = {key: v[0] for key, v in shared.items()}

        def batch_loss(rows, shared):
            values = {t.name: t.value({**rows, **shared}, batch) for t in terms.batch}
            return sum(t.weight * values[t.name] for t in terms.batch), values

        (_, batch_values), (g_rows, shared_grads) = jax.value_and_grad(batch_loss, argnums=(0, 1), has_aux=True)(
            rows, shared)
        row_grads = split_batch(g_rows, k)

    # 3. one backward pass per micro-batch: its example terms plus <cached gradient, embeddings>.
    def micro_step(grad_sum, xs):
        mb, i, g_rows_k = xs

        def objective(p):
            out, new_bs = apply_fn(p, mb, i)
            weighted = {t.name: t.value(out, mb) * t.count(mb) / counts[t.name] for t in terms.example}
            obj = sum((t.weight * weighted[t.name] for t in terms.example), jnp.float32(0.0))
            for key, g in g_rows_k.items():
                obj = obj + jnp.sum(jax.lax.stop_gradient(g) * out[key].astype(jnp.float32))
            for key, g in shared_grads.items():
                first = (i == 0).astype(jnp.float32)  # a shared output's gradient counts once
                obj = obj + first * jnp.sum(jax.lax.stop_gradient(g) * out[key].astype(jnp.float32))
            return obj, (weighted, new_bs)

        (_, (weighted, new_bs)), g = jax.value_and_grad(objective, has_aux=True)(params)
        return jax.tree.map(jnp.add, grad_sum, g), (weighted, new_bs)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (weighted, new_bs) = jax.lax.scan(micro_step, zeros, (micro, index, row_grads))
    values = {name: jnp.sum(v) for name, v in weighted.items()}
    values.update(batch_values)
    total, parts = _parts(terms, values)
    return (total, (parts, _mean_over_microbatches(new_bs))), grads


# ---------------------------------------------------------------------------------------------
# Configuration and host-side helpers

def check_microbatches(batch_size: int, num_microbatches: int, data_shards: int) -> None:
    """``train.microbatches`` must be >= 1 and ``train.batch_size`` divisible by it times the
    data shards (each micro-batch has the same rows on every shard)."""
    k = int(num_microbatches)
    if k < 1:
        raise ConfigError(f"config.train.microbatches={num_microbatches} must be >= 1 (1 = the whole batch at once)")
    if int(batch_size) % (k * int(data_shards)):
        raise ConfigError(
            f"config.train.batch_size={batch_size} is not divisible by train.microbatches x data shards = "
            f"{k} x {data_shards}; use a batch size that is a multiple of {k * int(data_shards)} or change "
            "train.microbatches")

