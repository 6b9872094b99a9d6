"""A Pallas TPU kernel for the MLP of a ViT LoRA block, forward and backward, with the
``[tokens, 1536]`` hidden layer kept on chip.

``lora_mlp(x, params, scale=..., rate=..., words=...)`` computes what
:class:`hfa_jax.models.vit._MLP` computes with LoRA adapters on ``fc1`` and ``fc2``::

    h = x @ W1 + b1 + scale * (drop1(x) @ A1) @ B1
    a = gelu(h)
    y = a @ W2 + b2 + scale * (drop2(a) @ A2) @ B2

Why: the paper's LoRA blocks (9-11) carry a gradient, and run by XLA their MLP writes the
hidden layer, its GELU and the adapters' separate passes to HBM in the forward pass and reads
them again in the backward pass: at paper widths on one v5e chip (600 frames of 257 tokens)
about 7 GB of a LoRA block's ~16 GB. Here a program takes a block of whole frames (~512 tokens,
in the ``[frames, tokens, 384]`` layout the rest of the ViT uses, so nothing is relaid out) and
runs one frame at a time: the forward kernel reads ``x`` and writes ``y``; the backward kernel
reads ``x`` and ``dy``, recomputes ``h`` (one more matmul, cheaper on a memory-bound chip than
storing and reloading ``[tokens, 1536]``), and writes ``dx`` and per-block partial sums of the
adapters' gradients.

Gradients: ``x`` and the adapters (``lora_a``, ``lora_b`` of both layers). The base weights
and biases are treated as frozen (no gradient; the paper's freezing table trains only the
adapters in the ViT). :func:`hfa_jax.train.freeze` callers must not use this kernel where a
table trains them: the trainer refuses that combination (``model.vit.fused_lora_mlp``).

Dropout (the adapters' input dropout) draws its masks in-kernel with the same counter-based hash
as :func:`hfa_jax.models.dropout.keep_mask`, over the flattened ``[tokens, features]`` rows:
given the same two 32-bit words per layer, the masks are bit-identical to ``keep_mask``'s
(the tests check it), and the backward kernel recomputes them instead of storing them.

Numerics: matmuls in the input dtype with float32 accumulation; ``h`` stays float32 through
GELU; each output is rounded once. XLA's path rounds each matmul output before adding the bias
and the adapter, so bf16 values agree to bf16 rounding, not bit for bit.
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from hfa_jax.models import dropout as dropout_lib

Array = jax.Array

__all__ = ["lora_mlp", "cost_estimate", "frames_per_block", "TILE_ROWS"]

TILE_ROWS = 512
_VMEM_LIMIT = 32 * 2**20
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))
_SQRT_HALF = float(np.sqrt(0.5))


def _keep(words_ref, layer: int, row0, shape: tuple[int, int], keep: float) -> Array:
    """:func:`hfa_jax.models.dropout.keep_mask`'s mask for rows ``row0 ..`` of a [rows, cols]
    input (the layer's two words at ``words_ref[2 * layer:]``)."""
    row = jax.lax.broadcasted_iota(jnp.uint32, shape, 0) + row0.astype(jnp.uint32)
    col = jax.lax.broadcasted_iota(jnp.uint32, shape, 1)
    return dropout_lib.hashed_keep(row, col, words_ref[2 * layer], words_ref[2 * layer + 1], keep)


def _dropped(x: Array, mask: Array | None, keep: float) -> Array:
    if mask is None:
        return x
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


def _gelu(h: Array) -> Array:
    return h * 0.5 * (1.0 + jax.lax.erf(h * _SQRT_HALF))


def _gelu_grad(h: Array) -> Array:
    return 0.5 * (1.0 + jax.lax.erf(h * _SQRT_HALF)) + h * jnp.exp(-0.5 * h * h) * _INV_SQRT_2PI


def _forward_tile(x, w1, b1, a1, bb1, w2, b2, a2, bb2, words_ref, row0, scale, keep, output=True):
    """The MLP of one frame's tokens; returns (y in f32, or None without ``output``; the values the
    backward pass needs). The backward pass recomputes everything but ``y``."""
    f32, dt = jnp.float32, x.dtype
    m1 = _keep(words_ref, 0, row0, x.shape, keep) if keep is not None else None
    xd = _dropped(x, m1, keep)
    down1 = jnp.dot(xd, a1, preferred_element_type=f32).astype(dt)
    h = (jnp.dot(x, w1, preferred_element_type=f32) + b1
         + jnp.dot(down1, bb1, preferred_element_type=f32) * scale)
    a = _gelu(h).astype(dt)
    m2 = _keep(words_ref, 1, row0, a.shape, keep) if keep is not None else None
    ad = _dropped(a, m2, keep)
    down2 = jnp.dot(ad, a2, preferred_element_type=f32).astype(dt)
    y = None
    if output:
        y = (jnp.dot(a, w2, preferred_element_type=f32) + b2
             + jnp.dot(down2, bb2, preferred_element_type=f32) * scale)
    return y, (xd, m1, down1, h, ad, m2, down2)


def _fwd_kernel(words_ref, x_ref, w1, b1, a1, bb1, w2, b2, a2, bb2, y_ref, *, scale, keep, frames, offset_ref):
    bf, n = x_ref.shape[0], x_ref.shape[1]
    weights = (w1[...], b1[...], a1[...], bb1[...], w2[...], b2[...], a2[...], bb2[...])
    first = pl.program_id(0) * bf  # read outside the loop (the interpreter substitutes it there)

    def frame(f, carry):
        row0 = offset_ref[0] + (first + f) * n  # the frame's first flattened row
        y, _ = _forward_tile(x_ref[f], *weights, words_ref, row0, scale, keep)
        y_ref[f] = y.astype(y_ref.dtype)
        return carry

    jax.lax.fori_loop(0, bf, frame, 0)


def _dense_backward(g, w, a, b, dropped_in, mask, down, scale, keep):
    """The backward pass of ``out = inp W + bias + s (drop(inp) A) B`` for one frame, given the
    output's gradient ``g [T, out]``, the dropped input ``dropped_in [T, in]`` and ``down =
    dropped_in A [T, r]`` from the forward pass. Returns (the input's gradient in float32 [T, in],
    dA [in, r], dB [r, out])."""
    f32, dt = jnp.float32, g.dtype
    gs = (g.astype(f32) * scale).astype(dt)
    db = jax.lax.dot_general(down, gs, _TN, preferred_element_type=f32)                      # [r, out]
    g_down = jax.lax.dot_general(gs, b, _NT, preferred_element_type=f32).astype(dt)           # [T, r]
    da = jax.lax.dot_general(dropped_in, g_down, _TN, preferred_element_type=f32)             # [in, r]
    g_dropped = jax.lax.dot_general(g_down, a, _NT, preferred_element_type=f32)               # [T, in]
    g_in = jax.lax.dot_general(g, w, _NT, preferred_element_type=f32) + _dropped(g_dropped, mask, keep)
    return g_in, da, db


def _bwd_kernel(words_ref, x_ref, dy_ref, w1, b1, a1, bb1, w2, b2, a2, bb2,
                dx_ref, da1_ref, db1_ref, da2_ref, db2_ref, *, scale, keep, frames, offset_ref):
    bf, n = x_ref.shape[0], x_ref.shape[1]
    w1v, a1v, bb1v, w2v, a2v, bb2v = w1[...], a1[...], bb1[...], w2[...], a2[...], bb2[...]
    b1v, b2v = b1[...], b2[...]
    first = pl.program_id(0) * bf  # read outside the loop (the interpreter substitutes it there)

    def frame(f, sums):
        index = first + f
        row0 = offset_ref[0] + index * n
        # frames past the end of the array (a partial last block) hold arbitrary values: zero
        # them so they add nothing (and no NaN) to the adapters' gradient sums
        valid = index < frames
        x = jnp.where(valid, x_ref[f], jnp.zeros_like(x_ref[f]))
        dy = jnp.where(valid, dy_ref[f], jnp.zeros_like(dy_ref[f]))
        _, (xd, m1, down1, h, ad, m2, down2) = _forward_tile(x, w1v, b1v, a1v, bb1v, w2v, b2v, a2v, bb2v,
                                                             words_ref, row0, scale, keep, output=False)
        # fc2: y = a W2 + b2 + s (drop2(a) A2) B2, then GELU, then fc1 the same way
        da, da2, db2 = _dense_backward(dy, w2v, a2v, bb2v, ad, m2, down2, scale, keep)
        dh = (da * _gelu_grad(h)).astype(x.dtype)
        dx, da1, db1 = _dense_backward(dh, w1v, a1v, bb1v, xd, m1, down1, scale, keep)
        dx_ref[f] = dx.astype(dx_ref.dtype)
        return tuple(s + g for s, g in zip(sums, (da1, db1, da2, db2)))

    zeros = tuple(jnp.zeros(r.shape[1:], jnp.float32) for r in (da1_ref, db1_ref, da2_ref, db2_ref))
    sums = jax.lax.fori_loop(0, bf, frame, zeros)
    for ref, value in zip((da1_ref, db1_ref, da2_ref, db2_ref), sums):
        ref[0] = value


def cost_estimate(rows: int, width: int, mlp: int, rank: int, itemsize: int, backward: bool) -> pl.CostEstimate:
    """FLOPs, transcendentals and HBM bytes of the forward or backward kernel over ``rows``
    tokens. Forward: the two base matmuls (``4·T·D·M``), the adapters (down and up, ``2·T·r·(D +
    M)`` per layer), GELU (~10 FLOPs an element). Backward: ``fc1`` and both down-projections
    recomputed (``2·T·D·M`` and ``2·T·r·(D + M)``), the base matmuls' input gradients
    (``4·T·D·M``), the adapters' three gradient products per layer (``6·T·r·(D + M)``) and
    GELU's derivative (~14 FLOPs an element). Bytes: x (and dy) read, y (dx) written once; the
    weights once."""
    base = 4 * rows * width * mlp
    adapters = 4 * rows * rank * (width + mlp)
    if not backward:
        flops = base + adapters + 10 * rows * mlp
    else:
        flops = base // 2 + 2 * rows * rank * (width + mlp) + base + 6 * rows * rank * (width + mlp) + 24 * rows * mlp
    weights = (2 * width * mlp + 2 * rank * (width + mlp)) * itemsize
    moved = (3 if backward else 2) * rows * width * itemsize + weights
    return pl.CostEstimate(flops=int(flops), transcendentals=int(rows * mlp * (2 if backward else 1)),
                           bytes_accessed=int(moved))


def frames_per_block(n: int) -> int:
    """Frames per program: whole frames of ~TILE_ROWS tokens together, at least one (a frame is
    processed at a time, so its float32 ``[N, M]`` intermediates, not the block, set the VMEM
    use)."""
    return int(max(1, TILE_ROWS // n))


def _calls(x: Array, weights: tuple[Array, ...], words: Array, offset: Array, *, scale: float,
           keep: float | None, interpret: bool | None, dy: Array | None = None):
    """The forward (``dy`` None) or backward pallas_call over frames ``x [F, N, D]``, in blocks of
    whole frames (the layout the model's other ops and kernels use: no relayout copies)."""
    frames, n, width = x.shape
    mlp = weights[0].shape[1]
    rank = weights[2].shape[1]
    item = jnp.dtype(x.dtype).itemsize
    bf = min(frames_per_block(n), frames)
    blocks = pl.cdiv(frames, bf)
    rows = frames * n
    frame_spec = pl.BlockSpec((bf, n, width), lambda i: (i, 0, 0))
    whole = lambda w: pl.BlockSpec(w.shape, lambda i: (0,) * w.ndim)  # noqa: E731  fetched once
    smem = pl.BlockSpec(memory_space=pltpu.SMEM)
    params = pltpu.CompilerParams(dimension_semantics=("parallel",), vmem_limit_bytes=_VMEM_LIMIT)
    backward = dy is not None

    def run(words, offset, x, *rest, interpret):
        kw = dict(scale=float(scale), keep=keep, frames=frames)
        if not backward:
            kernel = lambda words_ref, offset_ref, *refs: _fwd_kernel(words_ref, *refs, **kw, offset_ref=offset_ref)  # noqa: E731
            return pl.pallas_call(
                kernel, grid=(blocks,),
                in_specs=[smem, smem, frame_spec] + [whole(w) for w in rest],
                out_specs=frame_spec, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
                compiler_params=params, interpret=interpret, name="vit_lora_mlp_fwd",
                cost_estimate=cost_estimate(rows, width, mlp, rank, item, backward=False),
            )(words, offset, x, *rest)
        dy, ws = rest[0], rest[1:]
        kernel = lambda words_ref, offset_ref, *refs: _bwd_kernel(words_ref, *refs, **kw, offset_ref=offset_ref)  # noqa: E731
        partial = lambda shape: pl.BlockSpec((1, *shape), lambda i: (i, 0, 0))  # noqa: E731
        shapes = [(width, rank), (rank, mlp), (mlp, rank), (rank, width)]
        return pl.pallas_call(
            kernel, grid=(blocks,),
            in_specs=[smem, smem, frame_spec, frame_spec] + [whole(w) for w in ws],
            out_specs=[frame_spec] + [partial(s) for s in shapes],
            out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype)]
            + [jax.ShapeDtypeStruct((blocks, *s), jnp.float32) for s in shapes],
            compiler_params=params, interpret=interpret, name="vit_lora_mlp_bwd",
            cost_estimate=cost_estimate(rows, width, mlp, rank, item, backward=True),
        )(words, offset, x, dy, *ws)

    args = (words, offset, x) + ((dy,) if backward else ()) + tuple(weights)
    if interpret is None:
        return jax.lax.platform_dependent(*args, tpu=functools.partial(run, interpret=False),
                                          default=functools.partial(run, interpret=True))
    return run(*args, interpret=interpret)


def _per_device(fn, frames: tuple, replicated: tuple):
    """``fn`` on each device's frames under a mesh (hfa_jax.models.attention.per_frame_shards),
    with ``offset`` = this shard's first flattened row, so dropout masks index global rows."""
    from hfa_jax.models import attention as attention_lib

    mesh = attention_lib._context_mesh()
    if mesh is None:
        return fn(jnp.zeros((1,), jnp.int32), *frames, *replicated)
    import flax.linen as nn

    from hfa_jax.models import axes

    names = nn.logical_to_mesh_axes((axes.BATCH,))[0] if nn.get_logical_axis_rules() else None
    names = () if names is None else ((names,) if isinstance(names, str) else tuple(names))

    def local(*args):
        f_local, n = args[0].shape[0], args[0].shape[1]
        index = jax.lax.axis_index(names) if names else 0
        return fn(jnp.full((1,), index * f_local * n, jnp.int32), *args)

    return attention_lib.per_frame_shards(local, frames, replicated)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _mlp(x, a1, bb1, a2, bb2, frozen, scale, keep, interpret):
    return _mlp_fwd(x, a1, bb1, a2, bb2, frozen, scale, keep, interpret)[0]


def _weights(a1, bb1, a2, bb2, frozen, dtype):
    w1, b1, w2, b2, words = frozen
    cast = lambda w: w.astype(dtype)  # noqa: E731
    row = lambda b: b.astype(jnp.float32).reshape(1, -1)  # noqa: E731
    return (cast(w1), row(b1), cast(a1), cast(bb1), cast(w2), row(b2), cast(a2), cast(bb2)), words


def _mlp_fwd(x, a1, bb1, a2, bb2, frozen, scale, keep, interpret):
    weights, words = _weights(a1, bb1, a2, bb2, frozen, x.dtype)

    def fn(offset, x, words, *weights):
        return _calls(x, weights, words, offset, scale=scale, keep=keep, interpret=interpret)

    y = _per_device(fn, (x,), (words, *weights))
    return y, (x, a1, bb1, a2, bb2, frozen)


def _mlp_bwd(scale, keep, interpret, res, dy):
    x, a1, bb1, a2, bb2, frozen = res
    weights, words = _weights(a1, bb1, a2, bb2, frozen, x.dtype)

    def fn(offset, x, dy, words, *weights):
        return tuple(_calls(x, weights, words, offset, scale=scale, keep=keep, interpret=interpret,
                            dy=dy.astype(x.dtype)))

    dx, da1, db1, da2, db2 = _per_device(fn, (x, dy), (words, *weights))
    grads = [g.sum(0).astype(p.dtype) for g, p in zip((da1, db1, da2, db2), (a1, bb1, a2, bb2))]
    zero = lambda a: (np.zeros(a.shape, jax.dtypes.float0) if jnp.issubdtype(a.dtype, jnp.integer)  # noqa: E731
                      else jnp.zeros_like(a))
    return (dx, *grads, jax.tree.map(zero, frozen))


_mlp.defvjp(_mlp_fwd, _mlp_bwd)


def lora_mlp(x: Array, params: Mapping, *, scale: float, rate: float = 0.0, words: Array | None = None,
             interpret: bool | None = None) -> Array:
    """The LoRA MLP of a ViT block (module docstring) on ``x [F, N, D]``.

    ``params``: the MLP's flax parameters, ``{"fc1": {"kernel", "bias", "lora_a", "lora_b"},
    "fc2": {...}}``. ``scale``: the adapters' ``alpha / rank``. ``rate``: the adapters' input
    dropout; with ``words`` (uint32[4]: two per layer, as ``jax.random.bits(key, (2,))`` gives
    :func:`~hfa_jax.models.dropout.keep_mask`) it is applied, else not (deterministic).
    Differentiable in ``x`` and the adapters; the base weights get no gradient."""
    if x.ndim != 3:
        raise ValueError(f"lora_mlp: x [F, N, D] expected, got {x.shape}")
    fc1, fc2 = params["fc1"], params["fc2"]
    frozen = jax.lax.stop_gradient((fc1["kernel"], fc1["bias"], fc2["kernel"], fc2["bias"],
                                    jnp.zeros((4,), jnp.uint32) if words is None else words.astype(jnp.uint32)))
    keep = None if (words is None or rate == 0.0) else 1.0 - float(rate)
    if keep is not None and not 0.0 < keep < 1.0:
        raise ValueError(f"lora_mlp: dropout rate must be in [0, 1), got {rate}")
    return _mlp(x, fc1["lora_a"], fc1["lora_b"], fc2["lora_a"], fc2["lora_b"], frozen, float(scale), keep,
                interpret)


def reference(x: Array, params: Mapping, *, scale: float, rate: float = 0.0, words: Array | None = None) -> Array:
    """The same MLP in XLA ops (:func:`hfa_jax.models.dropout.keep_mask`'s masks from ``words``),
    for tests."""
    from hfa_jax.models.activations import gelu

    f, n, d = x.shape
    dt = x.dtype
    keep = None if (words is None or rate == 0.0) else 1.0 - float(rate)

    def layer(inp, p, i):
        rows = inp.reshape(-1, inp.shape[-1])
        if keep is not None:
            row = jax.lax.broadcasted_iota(jnp.uint32, rows.shape, 0)
            col = jax.lax.broadcasted_iota(jnp.uint32, rows.shape, 1)
            mask = dropout_lib.hashed_keep(row, col, words[2 * i], words[2 * i + 1], keep)
            rows_d = jnp.where(mask, rows / jnp.asarray(keep, dt), jnp.zeros_like(rows))
        else:
            rows_d = rows
        down = (rows_d @ p["lora_a"].astype(dt)).astype(dt)
        out = rows @ p["kernel"].astype(dt) + p["bias"].astype(dt) + (down @ p["lora_b"].astype(dt)) * jnp.asarray(scale, dt)
        return out.reshape(*inp.shape[:-1], -1)

    h = layer(x, jax.lax.stop_gradient(params["fc1"]) | {k: params["fc1"][k] for k in ("lora_a", "lora_b")}, 0)
    a = gelu(h)
    return layer(a, jax.lax.stop_gradient(params["fc2"]) | {k: params["fc2"][k] for k in ("lora_a", "lora_b")}, 1)

