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

Frozen parameters that the stage's programs read only through a cast to bfloat16 (a bf16-compute
model's matmul weights) are stored in bfloat16 (:func:`bf16_read_only`, ``make_state``'s
``bf16_frozen``): the programs then see exactly the values they saw before, and the step no
longer reads an f32 copy and writes a bf16 one of every such weight.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
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
               tx: optax.GradientTransformation, bf16_frozen: PyTree | None = None) -> dict:
    """Model variables (all collections) -> a fresh train state at step 0.

    Only the parameters ``mask`` marks trainable get optimiser state. ``bf16_frozen`` (a bool
    tree over the frozen params, :func:`bf16_read_only`): those frozen leaves are stored in
    bfloat16.
    """
    trainable, frozen = split_params(variables["params"], mask)
    if bf16_frozen is not None:
        frozen = cast_frozen(frozen, bf16_frozen)
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


# ---------------------------------------------------------------------------------------------
# Frozen weights in bfloat16

# Call-like primitives whose operands map one to one onto the invars of the jaxpr in the param
# named here (pjit, remat, custom derivatives, closed calls).
_CALL_JAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


# Primitives that only move values (the data operand: operand 0 of the second group), so a cast
# after them equals the cast before them.
_MOVES = frozenset({"slice", "reshape", "squeeze", "expand_dims", "transpose", "broadcast_in_dim", "rev",
                    "copy", "copy_p", "dynamic_slice", "gather"})
_MOVES_OPERAND0 = frozenset({"dynamic_slice", "gather"})


def _open(j):
    return getattr(j, "jaxpr", j)


def _uses(jaxpr, var, dtype) -> set[str]:
    """How ``jaxpr`` uses ``var``: a set of ``"cast"`` (converted to ``dtype``) and ``"other"``
    (anything else); empty when unused. Being returned by ``jaxpr`` is no use (a train step
    returns its frozen weights unchanged). Follows the variable through value-moving primitives (slices, reshapes, transposes, broadcasts, gathers), into
    call-like sub-jaxprs and into the loop-invariant operands of ``scan`` / ``while`` and the
    operands of ``cond``; any other use counts as ``"other"`` (conservative)."""
    kinds: set[str] = set()
    for eqn in jaxpr.eqns:
        for i, v in enumerate(eqn.invars):
            if v is not var:
                continue
            name, params = eqn.primitive.name, eqn.params
            if name in _MOVES and (i == 0 or name not in _MOVES_OPERAND0):
                # Moving values commutes with the elementwise cast: follow the moved copy.
                for out in eqn.outvars:
                    kinds |= _uses(jaxpr, out, dtype)
            elif name == "convert_element_type":
                kinds.add("cast" if jnp.dtype(params["new_dtype"]) == dtype else "other")
            elif name == "scan":
                body = _open(params["jaxpr"])
                kinds |= _inner(body, body.invars[i], dtype) if i < params["num_consts"] else {"other"}
            elif name == "while":
                nc, nb = params["cond_nconsts"], params["body_nconsts"]
                if i < nc:
                    sub = _open(params["cond_jaxpr"])
                    kinds |= _inner(sub, sub.invars[i], dtype)
                elif i < nc + nb:
                    sub = _open(params["body_jaxpr"])
                    kinds |= _inner(sub, sub.invars[i - nc], dtype)
                else:
                    kinds.add("other")  # a loop carry changes from one iteration to the next
            elif name == "cond":
                if i == 0:
                    kinds.add("other")
                for branch in params["branches"]:
                    sub = _open(branch)
                    kinds |= _inner(sub, sub.invars[i - 1], dtype)
            else:
                sub = next((params[k] for k in _CALL_JAXPR_PARAMS if k in params), None)
                sub = _open(sub) if sub is not None else None
                if sub is not None and len(sub.invars) == len(eqn.invars):
                    inner = sub.invars[i]
                    kinds |= _uses(sub, inner, dtype)
                    # returned unchanged by the call: follow the caller's copy
                    for j, o in enumerate(sub.outvars):
                        if o is inner and j < len(eqn.outvars):
                            kinds |= _uses(jaxpr, eqn.outvars[j], dtype)
                else:
                    kinds.add("other")
    return kinds


def _inner(jaxpr, var, dtype) -> set[str]:
    """:func:`_uses` in a loop or branch body, where being returned counts as a use."""
    kinds = _uses(jaxpr, var, dtype)
    return kinds | ({"other"} if any(v is var for v in jaxpr.outvars) else set())


def bf16_read_only(fns: Sequence[Callable[..., Any]], frozen: PyTree, *args: Any) -> PyTree:
    """Which frozen leaves every one of ``fns`` reads only through a cast to bfloat16.

    Each ``fn(frozen, *args)`` is traced (``jax.make_jaxpr``; ``frozen`` and ``args`` may be
    ``ShapeDtypeStruct`` trees) and every use of every float32 leaf of ``frozen`` is followed.
    A leaf is marked True when at least one function reads it and every read, in every
    function, is a ``convert_element_type`` to bfloat16: storing it as ``bfloat16(leaf)`` then
    changes no value any of these programs computes (the cast of a bf16 value to bf16 is the
    identity). Leaves read in float32 anywhere, carried through a loop, or never read stay
    False; being returned unchanged (the train step's new state) is no read."""
    leaves, treedef = jax.tree.flatten(frozen)
    ok = [jnp.dtype(x.dtype) == jnp.float32 for x in leaves]
    used = [False] * len(leaves)
    bf16 = jnp.dtype(jnp.bfloat16)
    for fn in fns:
        closed = jax.make_jaxpr(fn)(frozen, *args)
        invars = closed.jaxpr.invars[:len(leaves)]
        for k, var in enumerate(invars):
            if not ok[k]:
                continue
            kinds = _uses(closed.jaxpr, var, bf16)
            used[k] = used[k] or bool(kinds)
            ok[k] = "other" not in kinds
    return jax.tree.unflatten(treedef, [o and u for o, u in zip(ok, used)])


def cast_frozen(frozen: PyTree, bf16_mask: PyTree) -> PyTree:
    """``frozen`` with the leaves ``bf16_mask`` marks cast to bfloat16 (the others unchanged).
    ``bf16_mask`` may cover a superset of ``frozen``'s leaves' paths (nested dicts)."""
    flat = traverse_util.flatten_dict(frozen) if frozen else {}
    flat_mask = traverse_util.flatten_dict(bf16_mask) if bf16_mask else {}
    out = {k: (jnp.asarray(v, jnp.bfloat16) if isinstance(v, jax.Array) else _np_bf16(v))
           if flat_mask.get(k, False) else v for k, v in flat.items()}
    return traverse_util.unflatten_dict(out) if out else {}


def _np_bf16(x):
    """A host (NumPy) or abstract leaf cast to bfloat16, staying on the host / abstract."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, jnp.bfloat16, sharding=getattr(x, "sharding", None))
    return np.asarray(x).astype(jnp.bfloat16)
