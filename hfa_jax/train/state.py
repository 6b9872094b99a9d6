"""The train state: its layout, and the conversions between it and the model's variables.

A train state is a dict pytree, saved as is by :mod:`hfa_jax.train.checkpoint`::

    step         int32 scalar: optimiser updates applied so far
    trainable    the trainable parameter subtree (what the optimiser updates)
    frozen       the other parameters (never differentiated, no optimiser state)
    batch_stats  BatchNorm running statistics
    buffers      other non-trained collections, e.g. mBART's ``final_logits_bias``: {collection: tree}
    opt_state    optax state of ``trainable`` only
    rng          the stage's root key; step keys are ``fold_in(rng, step)``, so a resumed run draws
                 exactly the randomness of an uninterrupted one

Which parameters train is a table of ``(regex, trainable)`` rules (:mod:`hfa_jax.train.freeze`);
the mask it yields splits the params with :func:`split_params`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

PyTree = Any

# The collections of a model's variables that the state keeps under its own names.
_OWN_COLLECTIONS = ("params", "batch_stats")


def split_params(params: PyTree, mask: PyTree) -> tuple[dict, dict]:
    """Splits a nested-dict params tree by a same-structure bool mask.

    Returns ``(trainable, frozen)``: two nested dicts holding only the respective leaves (either
    may be ``{}``). :func:`merge_params` inverts it.
    """
    flat = traverse_util.flatten_dict(params)
    flat_mask = traverse_util.flatten_dict(mask)
    tr = {k: v for k, v in flat.items() if flat_mask[k]}
    fr = {k: v for k, v in flat.items() if not flat_mask[k]}
    return traverse_util.unflatten_dict(tr), traverse_util.unflatten_dict(fr)


def merge_params(trainable: dict, frozen: dict) -> dict:
    """Inverse of :func:`split_params`."""
    flat = dict(traverse_util.flatten_dict(frozen))
    flat.update(traverse_util.flatten_dict(trainable))
    return traverse_util.unflatten_dict(flat)


def make_state(variables: Mapping[str, PyTree], rng: jax.Array, *, mask: PyTree,
               tx: optax.GradientTransformation) -> dict:
    """Model variables (all collections) -> a fresh train state at step 0.

    Only the parameters ``mask`` marks trainable get optimiser state.
    """
    trainable, frozen = split_params(variables["params"], mask)
    return {"step": jnp.zeros((), jnp.int32), "trainable": trainable, "frozen": frozen,
            "batch_stats": variables.get("batch_stats", {}),
            "buffers": {k: v for k, v in variables.items() if k not in _OWN_COLLECTIONS},
            "opt_state": tx.init(trainable), "rng": rng}


def variables_from_state(state: Mapping[str, PyTree], trainable: PyTree | None = None) -> dict:
    """A train state -> the variables ``model.apply`` takes.

    Args:
      state: a train state (or any dict with its ``trainable``, ``frozen``, ``batch_stats`` and
        ``buffers`` entries, such as a restored checkpoint).
      trainable: replaces ``state["trainable"]``; the train step passes the subtree it
        differentiates.
    """
    params = merge_params(state["trainable"] if trainable is None else trainable, state["frozen"])
    variables = {"params": params, **(state.get("buffers") or {})}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    return variables


def grad_groups(trainable: Mapping[str, PyTree]) -> list[str]:
    """Top-level module names of the trainable params: the units of the non-finite report."""
    return sorted(trainable.keys())
