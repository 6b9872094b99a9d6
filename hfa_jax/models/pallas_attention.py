"""A Pallas TPU kernel for the ViT's attention: short sequences, all heads of a frame in one
program, in the token-major layout the projections produce.

``frame_attention(q, k, v, num_heads=6)`` with ``q [F, Nq, D]``, ``k, v [F, Nk, D]`` (``D`` =
heads x head width, heads side by side as the fused ``qkv`` projection lays them out) returns
``softmax(q_h k_h^T / sqrt(head_dim)) v_h`` per head, ``[F, Nq, D]``. It computes what
``jax.nn.dot_product_attention(..., implementation="xla")`` computes on ``[F, N, heads, hd]``,
without what XLA does around it for the ViT's shapes (257 tokens, 6 heads of 64): the
float32 score tensor ``[F, 6, 257, 257]`` written to HBM and read back by the softmax and the
second matmul, and the head-major transposes of q, k, v and the output.

Design (compare jax/experimental/pallas/ops/tpu/flash_attention.py, which tiles long
sequences in query and key blocks with an online softmax over ``[B, heads, T, hd]``):

- The grid runs over blocks of frames only. A block holds whole frames, every token and every
  head (block shape ``(frames, N, D)``, whose last two dims are the array's, so no (8, 128)
  tiling constraint applies and 257 is not padded in HBM). Heads are static lane slices of the
  block, so no transpose is needed anywhere.
- A frame's scores ``[Nq, Nk]`` for one head live only in VMEM/vregs: one softmax pass, no
  online rescaling, as the whole key axis is in the block.
- The backward kernel recomputes the scores and the softmax from q and k (no residual but the
  inputs), takes ``delta = rowsum(P * dP)`` (equal to ``rowsum(dO * O)``) in-kernel, and writes
  dq, dk, dv in the same layout.
- Padded tokens: keys from ``kv_len`` on are masked (their probabilities are 0, so their dk/dv
  are 0). Padded frames: a frame count that is not a multiple of the block is a partial last
  block; its extra rows are never written back. Frames are independent, so padding frames (of
  any content) never touch real ones.
- ``pl.CostEstimate`` carries the matmul and softmax FLOPs, the exponentials and the HBM bytes
  (inputs read once, outputs written once), so XLA's cost analysis (``hfa_jax.aot``) counts the
  kernel's work instead of treating it as free.

``interpret=None`` compiles the kernel (Mosaic) for TPU and runs Pallas' interpreter on any
other platform (``jax.lax.platform_dependent``: chosen when the program is lowered, so compiling
for a TPU topology on a CPU host gets the real kernel). The interpreter is the reference the
tests check the kernel against on a CPU; it is not a fast path.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

Array = jax.Array

__all__ = ["frame_attention", "frames_per_block", "cost_estimate"]

# VMEM given to the pipelined blocks (each input and output block is double-buffered). The
# score temporaries of one head come on top: ~0.3 MiB at 257 tokens.
_BLOCK_BUDGET = 12 * 2**20
_VMEM_LIMIT = 32 * 2**20
_MAX_FRAMES_PER_BLOCK = 8
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


def frames_per_block(nq: int, nk: int, width: int, itemsize: int, backward: bool) -> int:
    """Frames per program: as many as fit the VMEM budget (double-buffered blocks of q, k, v and
    the output; the backward adds dO in and dq, dk, dv out), at most 8."""
    rows = (3 * nq + 4 * nk) if backward else (2 * nq + 2 * nk)
    per_frame = 2 * rows * width * itemsize
    return int(max(1, min(_MAX_FRAMES_PER_BLOCK, _BLOCK_BUDGET // per_frame)))


def cost_estimate(frames: int, nq: int, nk: int, width: int, num_heads: int, itemsize: int,
                  backward: bool) -> pl.CostEstimate:
    """The kernel's work for XLA's cost model.

    Forward per frame and head: two matmuls (2·Nq·Nk·hd FLOPs each) and a softmax (max,
    subtract, exp, sum, divide: 5 FLOPs a score, one exponential). Backward: the scores
    recomputed and four matmuls (dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q), the softmax
    again and dS = P (dP - delta) (3 more FLOPs a score). HBM bytes: each input read once and
    each output written once (the whole key axis is in the block, so nothing is re-read)."""
    hd = width // num_heads
    scores = frames * num_heads * nq * nk
    matmuls = 5 if backward else 2
    flops = matmuls * 2 * scores * hd + (8 if backward else 5) * scores
    rows = (3 * nq + 4 * nk) if backward else (2 * nq + 2 * nk)
    return pl.CostEstimate(flops=int(flops), transcendentals=int(scores),
                           bytes_accessed=int(frames * rows * width * itemsize))


def _scores(q: Array, k: Array, scale: float, kv_len: int | None) -> Array:
    """[Nq, Nk] float32 scaled logits, keys from ``kv_len`` on at the most negative float."""
    s = jax.lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * jnp.float32(scale)
    if kv_len is not None:
        col = jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
        s = jnp.where(col < kv_len, s, jnp.finfo(jnp.float32).min)
    return s


def _softmax(s: Array) -> Array:
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, *, num_heads: int, scale: float, kv_len: int | None):
    hd = q_ref.shape[-1] // num_heads

    def frame(f, carry):
        for h in range(num_heads):  # static lane slices: heads side by side in the last dim
            cols = pl.ds(h * hd, hd)
            q, k, v = q_ref[f, :, cols], k_ref[f, :, cols], v_ref[f, :, cols]
            p = _softmax(_scores(q, k, scale, kv_len)).astype(v.dtype)
            o = jnp.dot(p, v, preferred_element_type=jnp.float32)
            o_ref[f, :, cols] = o.astype(o_ref.dtype)
        return carry

    jax.lax.fori_loop(0, q_ref.shape[0], frame, 0)


def _bwd_kernel(q_ref, k_ref, v_ref, do_ref, dq_ref, dk_ref, dv_ref, *, num_heads: int, scale: float,
                kv_len: int | None):
    hd = q_ref.shape[-1] // num_heads

    def frame(f, carry):
        for h in range(num_heads):
            cols = pl.ds(h * hd, hd)
            q, k, v, do = q_ref[f, :, cols], k_ref[f, :, cols], v_ref[f, :, cols], do_ref[f, :, cols]
            p = _softmax(_scores(q, k, scale, kv_len))  # [Nq, Nk] float32
            dp = jax.lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
            delta = jnp.sum(p * dp, axis=-1, keepdims=True)  # = rowsum(dO * O)
            ds = (p * (dp - delta) * jnp.float32(scale)).astype(q.dtype)
            dv = jax.lax.dot_general(p.astype(do.dtype), do, _TN, preferred_element_type=jnp.float32)
            dq = jnp.dot(ds, k, preferred_element_type=jnp.float32)
            dk = jax.lax.dot_general(ds, q, _TN, preferred_element_type=jnp.float32)
            dq_ref[f, :, cols] = dq.astype(dq_ref.dtype)
            dk_ref[f, :, cols] = dk.astype(dk_ref.dtype)
            dv_ref[f, :, cols] = dv.astype(dv_ref.dtype)
        return carry

    jax.lax.fori_loop(0, q_ref.shape[0], frame, 0)


def _call(kernel, ins: tuple[Array, ...], outs: tuple[jax.ShapeDtypeStruct, ...], bf: int,
          cost: pl.CostEstimate, interpret: bool | None, name: str) -> tuple[Array, ...]:
    frames = ins[0].shape[0]
    spec = lambda a: pl.BlockSpec((bf, *a.shape[1:]), lambda i: (i, 0, 0))  # noqa: E731

    def run(*args, interpret):
        return pl.pallas_call(
            kernel,
            grid=(pl.cdiv(frames, bf),),
            in_specs=[spec(a) for a in args],
            out_specs=[spec(o) for o in outs],
            out_shape=list(outs),
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",),
                                                 vmem_limit_bytes=_VMEM_LIMIT),
            cost_estimate=cost,
            interpret=interpret,
            name=name,
        )(*args)

    if interpret is None:
        return tuple(jax.lax.platform_dependent(
            *ins, tpu=functools.partial(run, interpret=False), default=functools.partial(run, interpret=True)))
    return tuple(run(*ins, interpret=interpret))


def _check(q: Array, k: Array, v: Array, num_heads: int) -> None:
    if q.ndim != 3 or k.shape != v.shape or k.ndim != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"frame_attention: q [F, Nq, D] and k, v [F, Nk, D] expected, got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    if q.shape[-1] % num_heads:
        raise ValueError(f"frame_attention: width {q.shape[-1]} is not divisible by {num_heads} heads")


def _forward(q, k, v, num_heads, kv_len, interpret):
    f, nq, d = q.shape
    nk = k.shape[1]
    item = jnp.dtype(q.dtype).itemsize
    kernel = functools.partial(_fwd_kernel, num_heads=num_heads, scale=1.0 / math.sqrt(d // num_heads),
                               kv_len=kv_len)
    (o,) = _call(kernel, (q, k, v), (jax.ShapeDtypeStruct(q.shape, q.dtype),),
                 frames_per_block(nq, nk, d, item, backward=False),
                 cost_estimate(f, nq, nk, d, num_heads, item, backward=False), interpret, "vit_attention_fwd")
    return o


def _normalise_kv_len(kv_len: int | None, nk: int) -> int | None:
    if kv_len is None or kv_len >= nk:
        return None
    if kv_len < 1:
        raise ValueError(f"frame_attention: kv_len must be at least 1, got {kv_len}")
    return int(kv_len)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _attention(q, k, v, num_heads, kv_len, interpret):
    return _forward(q, k, v, num_heads, kv_len, interpret)


def _attention_fwd(q, k, v, num_heads, kv_len, interpret):
    return _forward(q, k, v, num_heads, kv_len, interpret), (q, k, v)


def _attention_bwd(num_heads, kv_len, interpret, res, do):
    q, k, v = res
    f, nq, d = q.shape
    nk = k.shape[1]
    item = jnp.dtype(q.dtype).itemsize
    kernel = functools.partial(_bwd_kernel, num_heads=num_heads, scale=1.0 / math.sqrt(d // num_heads),
                               kv_len=kv_len)
    outs = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (q, k, v))
    dq, dk, dv = _call(kernel, (q, k, v, do.astype(q.dtype)), outs,
                       frames_per_block(nq, nk, d, item, backward=True),
                       cost_estimate(f, nq, nk, d, num_heads, item, backward=True), interpret, "vit_attention_bwd")
    return dq, dk, dv


_attention.defvjp(_attention_fwd, _attention_bwd)


def frame_attention(q: Array, k: Array, v: Array, *, num_heads: int, kv_len: int | None = None,
                    interpret: bool | None = None) -> Array:
    """Multi-head softmax attention per frame in the token-major layout (module docstring).

    q: [F, Nq, D], k, v: [F, Nk, D], all one dtype; ``num_heads`` divides D. ``kv_len``: keys
    from that index on are padding (masked); None = all valid. Returns [F, Nq, D] in q's dtype,
    differentiable in q, k and v (a Pallas backward kernel). ``interpret``: None = the compiled
    kernel on TPU and the interpreter elsewhere; True/False force one.
    """
    _check(q, k, v, num_heads)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"frame_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    return _attention(q, k, v, int(num_heads), _normalise_kv_len(kv_len, k.shape[1]), interpret)


def reference(q: Array, k: Array, v: Array, *, num_heads: int, kv_len: int | None = None) -> Array:
    """The same attention through ``jax.nn.dot_product_attention(implementation="xla")`` (the
    model's XLA path), for tests and comparisons."""
    f, nq, d = q.shape
    hd = d // num_heads
    lengths = None if kv_len is None else jnp.full((f,), kv_len, jnp.int32)
    split = lambda a: a.reshape(*a.shape[:2], num_heads, hd)  # noqa: E731
    out = jax.nn.dot_product_attention(split(q), split(k), split(v), key_value_seq_lengths=lengths,
                                       implementation="xla")
    return out.reshape(f, nq, d)

