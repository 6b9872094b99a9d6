"""Dropout whose mask costs a few integer operations per element.

``flax.linen.Dropout`` draws its mask with ``jax.random.bernoulli``: one threefry-2x32 block
(20 rounds) per element. A fine-tuning step draws ~11 million mask elements on the CPU
benchmark shapes (the LoRA inputs of the last ViT blocks, the temporal encoder, mBART), and
threefry costs ~11 ns per element on this project's 2-core CPU: ~13 % of the step. PyTorch's
``F.dropout`` is no cheaper there (~8 ns per element), so this is work we can drop rather than
match. On an H100 the ViT's LoRA dropout masks took 3.6 ms of a 66 ms step (bench/RESULTS.md).

Here the per-element bits come from a counter-based hash instead: the key gives two 32-bit
words once per call (one threefry block), and each element's 32 bits are MurmurHash3's
``fmix32`` finaliser applied to its (row, column) position mixed with those words. ``fmix32``
is a bijection on 32-bit words with full avalanche, so distinct positions get distinct,
decorrelated bits; the statistics a dropout mask needs (keep rate, no correlation between
neighbours, between keys or between layers) are checked in ``tests/models/test_dropout.py``.
Not a general-purpose random number generator: use ``jax.random`` for anything but masks.

Same semantics and interface as ``flax.linen.Dropout`` (rate, ``broadcast_dims``,
``deterministic``, ``rng_collection``; kept inputs scaled by ``1 / (1 - rate)``), and still
a pure function of the key: a resumed run draws the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["Dropout", "dropout", "keep_mask", "hashed_keep"]

_GOLDEN = np.uint32(0x9E3779B9)  # 2^32 / golden ratio: spreads consecutive rows
_COL = np.uint32(0x85EBCA77)  # an odd multiplier for the column index (xxHash's PRIME32_2)


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection with full avalanche (uint32 -> uint32)."""
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def keep_mask(key: jax.Array, keep_prob: float, shape: Sequence[int]) -> jax.Array:
    """Boolean mask of ``shape``, each element True with probability ``keep_prob`` (to 2^-32),
    a pure function of ``key`` (typed or raw PRNG key)."""
    shape = tuple(int(d) for d in shape)
    cols = shape[-1] if shape else 1
    rows = math.prod(shape[:-1])
    if rows >= 2**32 or cols >= 2**32:
        raise ValueError(f"dropout mask of shape {shape}: rows and columns must each be < 2^32")
    words = jax.random.bits(key, (2,), jnp.uint32)
    row = lax.broadcasted_iota(jnp.uint32, (rows, cols), 0)
    col = lax.broadcasted_iota(jnp.uint32, (rows, cols), 1)
    return hashed_keep(row, col, words[0], words[1], keep_prob).reshape(shape)


def hashed_keep(row: jax.Array, col: jax.Array, word0: jax.Array, word1: jax.Array, keep_prob: float) -> jax.Array:
    """The keep decision of element (``row``, ``col``) (uint32 arrays) of a mask drawn with the
    key words ``word0``, ``word1``: :func:`keep_mask`'s rule, also what the Pallas kernels that
    draw masks in-kernel compute (:mod:`hfa_jax.models.pallas_lora_mlp`)."""
    h = _fmix32((row * _GOLDEN) ^ word0)  # one value per row, decorrelated from the next row's
    h = _fmix32(_fmix32(h + col * _COL) ^ word1)
    return h < np.uint32(min(round(keep_prob * 2**32), 2**32 - 1))


def dropout(key: jax.Array, rate: float, x: jax.Array, broadcast_dims: Sequence[int] = ()) -> jax.Array:
    """Zeroes each element of ``x`` with probability ``rate`` and scales the rest by
    ``1 / (1 - rate)``; ``broadcast_dims`` share one mask value (e.g. drop-path over (1, 2))."""
    if rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)  # no 0/0 in the gradient
    keep_prob = 1.0 - rate
    mask_shape = [1 if i in broadcast_dims else d for i, d in enumerate(x.shape)]
    mask = jnp.broadcast_to(keep_mask(key, keep_prob, mask_shape), x.shape)
    return lax.select(mask, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))


class Dropout(nn.Module):
    """``flax.linen.Dropout`` with :func:`keep_mask`'s cheap mask (module docstring)."""

    rate: float
    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: bool | None = None, rng: jax.Array | None = None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        return dropout(rng, self.rate, inputs, self.broadcast_dims)
