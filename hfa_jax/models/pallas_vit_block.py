"""A Pallas TPU kernel for one frozen ViT block, forward only: ``x -> x + ls1 * attn(LN1 x)``,
then ``+ ls2 * MLP(LN2 x)``, for whole frames, with every intermediate kept on chip.

Why: blocks 0-8 of the paper's ViT are frozen and run under ``stop_gradient``, so they need no
backward pass and keep nothing for one. Run by XLA (even with the attention kernel of
:mod:`hfa_jax.models.pallas_attention`), each block still writes and reads back every
intermediate through HBM: q, k and v, the attention output, the residual, and the MLP's
``[frames, 257, 1536]`` hidden layer. At paper widths on one v5e chip (600 frames) that is
~2.3 GB per block; the block itself needs only its input read and its output written (~0.24 GB)
plus its 3.5 MB of bf16 weights. This kernel runs the whole block per frame in VMEM.

Layout and numerics:

- The grid runs over blocks of frames; a program loads ``frames_per_block`` whole frames
  ``[bf, N, D]`` and all weights (the same block index for every program, so they are fetched
  once). Frames are processed one at a time inside the program; q/k/v and the attention output
  live in VMEM scratch, heads as static lane slices as in the attention kernel.
- LayerNorm statistics, the softmax and GELU are computed in float32; the matmuls take the
  compute dtype (bf16 on TPU) and accumulate in float32. Each matmul's output is rounded to the
  compute dtype once, after its bias is added (XLA's path adds the bias to the already rounded
  product). So the values match the XLA path to the compute dtype's rounding, not bit for bit;
  ``tests/models/test_pallas_vit_block.py`` states the tolerance.
- ``kv_len``: keys from that index on are masked, as in the attention kernel.
- No VJP: the kernel runs only where the block is frozen and its input carries no gradient (the
  ViT stops the gradient after the last frozen block, :class:`hfa_jax.models.vit.ViT`); its
  inputs are wrapped in ``stop_gradient`` so differentiation never reaches it.

``pl.CostEstimate`` carries the block's FLOPs (the five matmuls, the softmax, LayerNorms and
GELU), its transcendentals and its HBM bytes (input, output and weights once), so ``hfa_jax.aot``
counts its work. ``interpret=None`` compiles for TPU and runs Pallas' interpreter elsewhere
(:mod:`hfa_jax.models.pallas_attention`).
"""

from __future__ import annotations

import functools
import math
from typing import Mapping

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from hfa_jax.models.activations import gelu

Array = jax.Array

__all__ = ["frozen_block", "frames_per_block", "cost_estimate", "WEIGHT_NAMES"]

_VMEM_LIMIT = 32 * 2**20
_BLOCK_BUDGET = 8 * 2**20
_MAX_FRAMES_PER_BLOCK = 4
_NT = (((1,), (1,)), ((), ()))  # a @ b.T

# The block's parameters, in the kernel's argument order (flax paths under the block).
WEIGHT_NAMES = ("norm1/scale", "norm1/bias", "attn/qkv/kernel", "attn/qkv/bias", "attn/proj/kernel",
                "attn/proj/bias", "ls1", "norm2/scale", "norm2/bias", "mlp/fc1/kernel", "mlp/fc1/bias",
                "mlp/fc2/kernel", "mlp/fc2/bias", "ls2")


def frames_per_block(n: int, width: int, itemsize: int) -> int:
    """Frames per program: the double-buffered input and output blocks within the budget, at
    most 4 (the weights, ~3.5 MB in bf16 at ViT-S widths, and one frame's intermediates come on
    top)."""
    per_frame = 2 * 2 * n * width * itemsize
    return int(max(1, min(_MAX_FRAMES_PER_BLOCK, _BLOCK_BUDGET // per_frame)))


def cost_estimate(frames: int, n: int, width: int, mlp: int, num_heads: int, itemsize: int,
                  weight_bytes: int) -> pl.CostEstimate:
    """The block's work for XLA's cost model: per frame the qkv, output and two MLP matmuls
    (``2·N·D·(3D + D + 2M)``), attention (``4·N²·D`` and 5 FLOPs a score for the softmax),
    two LayerNorms (~8 FLOPs an element), GELU (~8 an element of the hidden layer) and the
    residuals; one exponential a score and one ``erf`` a hidden element. Bytes: the input read
    and the output written once, and the weights once."""
    dense = 2 * n * width * (3 * width + width + 2 * mlp)
    attention = 4 * n * n * width + 5 * num_heads * n * n
    elementwise = 2 * 8 * n * width + 8 * n * mlp + 6 * n * width
    return pl.CostEstimate(flops=int(frames * (dense + attention + elementwise)),
                           transcendentals=int(frames * (num_heads * n * n + n * mlp)),
                           bytes_accessed=int(2 * frames * n * width * itemsize + weight_bytes))


def _layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    """float32 LayerNorm over the last dim (flax's: mean, then the mean of squared deviations)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(var + eps) * scale + bias


def _kernel(x_ref, ln1_s, ln1_b, wqkv, bqkv, wproj, bproj, ls1, ln2_s, ln2_b, w1, b1, w2, b2, ls2,
            o_ref, qkv_scr, attn_scr, *, num_heads: int, eps: float, kv_len: int | None):
    d = x_ref.shape[2]
    hd = d // num_heads
    dt = x_ref.dtype
    scale = 1.0 / math.sqrt(hd)
    f32 = jnp.float32

    def vec(ref):  # a [1, K] parameter row as float32
        return ref[...].astype(f32)

    def frame(f, carry):
        x = x_ref[f].astype(f32)                                      # [N, D]
        h = _layer_norm(x, vec(ln1_s), vec(ln1_b), eps).astype(dt)
        qkv = jnp.dot(h, wqkv[...], preferred_element_type=f32) + vec(bqkv)
        qkv_scr[...] = qkv.astype(dt)                                 # [N, 3D]: q | k | v
        for i in range(num_heads):  # static lane slices, heads side by side
            q = qkv_scr[:, pl.ds(i * hd, hd)]
            k = qkv_scr[:, pl.ds(d + i * hd, hd)]
            v = qkv_scr[:, pl.ds(2 * d + i * hd, hd)]
            s = jax.lax.dot_general(q, k, _NT, preferred_element_type=f32) * f32(scale)
            if kv_len is not None:
                col = jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
                s = jnp.where(col < kv_len, s, jnp.finfo(f32).min)
            e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
            p = (e / jnp.sum(e, axis=-1, keepdims=True)).astype(dt)
            attn_scr[:, pl.ds(i * hd, hd)] = jnp.dot(p, v, preferred_element_type=f32).astype(dt)
        a = (jnp.dot(attn_scr[...], wproj[...], preferred_element_type=f32) + vec(bproj)).astype(dt)
        x1 = (x + a.astype(f32) * vec(ls1)).astype(dt)                 # the residual in the compute dtype
        h = _layer_norm(x1.astype(f32), vec(ln2_s), vec(ln2_b), eps).astype(dt)
        hidden = gelu(jnp.dot(h, w1[...], preferred_element_type=f32) + vec(b1)).astype(dt)
        m = (jnp.dot(hidden, w2[...], preferred_element_type=f32) + vec(b2)).astype(dt)
        o_ref[f] = (x1.astype(f32) + m.astype(f32) * vec(ls2)).astype(o_ref.dtype)
        return carry

    jax.lax.fori_loop(0, x_ref.shape[0], frame, 0)


def _run(x: Array, weights: tuple[Array, ...], num_heads: int, eps: float, kv_len: int | None,
         interpret: bool | None) -> Array:
    f, n, d = x.shape
    mlp = weights[WEIGHT_NAMES.index("mlp/fc1/kernel")].shape[1]
    item = jnp.dtype(x.dtype).itemsize
    bf = frames_per_block(n, d, item)
    weight_bytes = sum(int(w.size) * jnp.dtype(w.dtype).itemsize for w in weights)
    kernel = functools.partial(_kernel, num_heads=num_heads, eps=eps, kv_len=kv_len)
    frame_spec = pl.BlockSpec((bf, n, d), lambda i: (i, 0, 0))
    whole = lambda w: pl.BlockSpec(w.shape, lambda i: (0,) * w.ndim)  # noqa: E731  fetched once

    def run(x, *weights, interpret):
        return pl.pallas_call(
            kernel,
            grid=(pl.cdiv(f, bf),),
            in_specs=[frame_spec] + [whole(w) for w in weights],
            out_specs=frame_spec,
            out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
            scratch_shapes=[pltpu.VMEM((n, 3 * d), x.dtype), pltpu.VMEM((n, d), x.dtype)],
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",), vmem_limit_bytes=_VMEM_LIMIT),
            cost_estimate=cost_estimate(f, n, d, mlp, num_heads, item, weight_bytes),
            interpret=interpret,
            name="vit_frozen_block",
        )(x, *weights)

    if interpret is None:
        return jax.lax.platform_dependent(x, *weights, tpu=functools.partial(run, interpret=False),
                                          default=functools.partial(run, interpret=True))
    return run(x, *weights, interpret=interpret)


def kernel_weights(params: Mapping, dtype) -> tuple[Array, ...]:
    """The block's flax parameters (``{"norm1": {"scale", "bias"}, "attn": {"qkv": ...}, ...}``)
    as the kernel's arguments: matmul kernels in ``dtype``, vectors as float32 ``[1, K]`` rows."""
    out = []
    for name in WEIGHT_NAMES:
        node = params
        for part in name.split("/"):
            node = node[part]
        a = jnp.asarray(node)
        out.append(a.astype(dtype) if a.ndim == 2 else a.astype(jnp.float32).reshape(1, -1))
    return tuple(out)


def frozen_block(x: Array, params: Mapping, *, num_heads: int, eps: float, kv_len: int | None = None,
                 interpret: bool | None = None) -> Array:
    """One frozen pre-LN ViT block with LayerScale (DINOv2's), forward only.

    x: [F, N, D] in the compute dtype; ``params``: the block's flax parameters (no LoRA).
    ``kv_len``: keys from that index on are padding. Returns [F, N, D] in x's dtype, with no
    gradient (module docstring). ``interpret``: None = compiled on TPU, the interpreter
    elsewhere."""
    if x.ndim != 3 or x.shape[-1] % num_heads:
        raise ValueError(f"frozen_block: x [F, N, D] with D divisible by {num_heads} heads expected, got {x.shape}")
    n = x.shape[1]
    kv = None if kv_len is None or kv_len >= n else int(kv_len)
    weights = jax.lax.stop_gradient(kernel_weights(params, x.dtype))
    return _run(jax.lax.stop_gradient(x), weights, int(num_heads), float(eps), kv, interpret)
