"""Logical axis names of the models' parameters and large activations (maxtext style).

The models name each dimension of their weight matrices and of their large activations; the
run config maps the names onto the device mesh (``config.mesh.rules``, resolved by
:mod:`hfa_jax.train.mesh`), so the same model code runs data-parallel on one host or FSDP on a
pod. Names::

    parameters                                   activations
    embed   a model width (ViT 384, temporal     batch   examples (or frames, in the frame encoder)
            512, mBART 1024)                     frames  the time axis of a clip
    mlp     a feed-forward hidden width          length  a token axis (ViT patches, text)
    heads   attention heads x head width         embed   a model width
            (q/k/v outputs, out-proj inputs)     vocab   logits over a vocabulary
    vocab   a token vocabulary / gloss classes
    lora    a LoRA rank
    norm    LayerNorm / BatchNorm / LayerScale vectors

A dimension named None is never sharded. Activations name the batch first, so with the default
rules their ``embed`` stays unsharded whenever ``batch`` took the ``fsdp`` axis.

Parameters carry their names only when logical axis rules are active (``nn.logical_axis_rules``,
as the trainer sets them): ``model.init`` then returns ``nn.LogicallyPartitioned`` boxes (unbox
with ``nn.meta.unbox``); outside such a context it returns plain arrays, as it always did, so
code that only wants the values needs no change. Activation constraints are no-ops without rules.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax

# Parameter dimension names.
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
VOCAB = "vocab"
LORA = "lora"
NORM = "norm"
# Activation dimension names (with EMBED and VOCAB).
BATCH = "batch"
FRAMES = "frames"
LENGTH = "length"

Names = Sequence["str | None"]


def param(init_fn: Callable, names: Names) -> Callable:
    """``init_fn`` whose parameter carries the logical axis ``names`` (one per dimension) when
    logical axis rules are active; ``init_fn`` itself otherwise (see the module docstring).
    Call it where the parameter is created (inside ``setup`` / ``__call__``), so the check
    sees the context of the ``init`` call."""
    if nn.get_logical_axis_rules():
        return nn.with_logical_partitioning(init_fn, tuple(names))
    return init_fn


def constrain(x: jax.Array, names: Names) -> jax.Array:
    """``x`` constrained to the mesh layout its logical axis ``names`` resolve to under the
    active rules (``nn.with_logical_constraint``); ``x`` unchanged without rules."""
    return nn.with_logical_constraint(x, tuple(names))


def norm_inits() -> dict[str, Callable]:
    """``scale_init`` / ``bias_init`` keywords for ``nn.LayerNorm`` (flax's ones / zeros) with the
    ``norm`` name."""
    return {"scale_init": param(nn.initializers.ones, (NORM,)),
            "bias_init": param(nn.initializers.zeros, (NORM,))}
