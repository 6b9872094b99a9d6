"""Attention math shared by the models: one softmax-attention function, RoPE, and the local
(windowed) attention of the temporal encoder with its three implementations.

Layout everywhere: ``q, k, v: [B, T, N, H]`` (batch, time, heads, head dim), masks are bool with
True = attend/valid. Softmax is computed in float32 whatever the compute dtype.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Implementation = Literal["xla", "chunked", "cudnn", "naive"]

__all__ = [
    "dot_product_attention",
    "apply_rope",
    "local_attention",
    "local_attention_mask",
    "IMPLEMENTATIONS",
    "cudnn_applicable",
    "cudnn_attention",
]

IMPLEMENTATIONS = ("xla", "chunked", "cudnn", "naive")
_log = logging.getLogger(__name__)


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None = None,
    bias: Array | None = None,
    *,
    kv_heads_first: bool = False,
) -> Array:
    """Plain scaled dot-product attention.

    q: [B, T, N, H], k/v: [B, S, N, H] (or [B, N, S, H] with ``kv_heads_first``), mask: bool
    broadcastable to [B, N, T, S] (True = attend), bias: float broadcastable to [B, N, T, S].
    Returns [B, T, N, H] in q's dtype. Rows whose keys are all masked yield the mean of v rather
    than NaN (finite min fill, the PyTorch/transformers convention).

    ``kv_heads_first`` is for keys/values that stay in memory across calls (decoding caches):
    the batched matmuls want (B, N) leading, so in the default layout XLA transposes k and v on
    every call, which for a one-token decoding step costs more than the attention itself.
    """
    kv = "bnsh" if kv_heads_first else "bsnh"
    scale = 1.0 / np.sqrt(q.shape[-1])
    logits = jnp.einsum(f"btnh,{kv}->bnts", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum(f"bnts,{kv}->btnh", probs, v)


def apply_rope(x: Array, positions: Array, base: float = 10000.0) -> Array:
    """Rotary position embedding with interleaved pairs (x[2i], x[2i+1]) (RoFormer / the HFA
    reference's rotary layout), angle ``pos * base**(-2i/H)``.

    x: [B, T, N, H] (H even), positions: [B, T] or [T] int/float. Computed in float32.
    """
    h = x.shape[-1]
    inv_freq = base ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)  # [H/2]
    pos = jnp.asarray(positions, jnp.float32)
    if pos.ndim == 1:
        pos = pos[None]
    ang = pos[:, :, None, None] * inv_freq  # [B, T, 1, H/2]
    sin, cos = jnp.sin(ang), jnp.cos(ang)
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], h // 2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def local_attention_mask(key_mask: Array, window: int) -> Array:
    """The temporal encoder's attention pattern as a dense mask.

    key_mask: [B, T] bool -> [B, 1, T, T] bool: query t attends key s iff |t - s| <= window and
    s is valid, or s == t (every query always sees itself, as in the reference's
    ``mask | eye``, so padded queries stay finite).
    """
    t = key_mask.shape[1]
    idx = jnp.arange(t)
    diff = idx[:, None] - idx[None, :]
    band = jnp.abs(diff) <= window
    eye = diff == 0
    return ((band[None] & key_mask[:, None, :]) | eye[None])[:, None]


def _naive(q, k, v, key_mask, window):
    return dot_product_attention(q, k, v, mask=local_attention_mask(key_mask, window))


def _xla(q, k, v, key_mask, window):
    # local_window_size bounds the band; the mask adds key validity and the always-self rule.
    t = key_mask.shape[1]
    eye = jnp.eye(t, dtype=bool)
    mask = (key_mask[:, None, :] | eye[None])[:, None]  # [B, 1, T, T]
    out = jax.nn.dot_product_attention(
        q, k, v, mask=mask, local_window_size=(window, window), implementation="xla"
    )
    return out.astype(q.dtype)


def _chunked(q, k, v, key_mask, window, chunk_size):
    """Block-wise band attention: each block of C queries sees C + 2w keys, so the logits are
    [B, N, T/C, C, C+2w]: O(T·(C+2w)) memory instead of O(T²)."""
    b, t, n, h = q.shape
    c = int(min(chunk_size, max(t, 1)))
    nb = -(-t // c)
    tp = nb * c
    w = window
    qp = jnp.pad(q, ((0, 0), (0, tp - t), (0, 0), (0, 0)))
    pad_kv = ((0, 0), (w, tp - t + w), (0, 0), (0, 0))
    kp, vp = jnp.pad(k, pad_kv), jnp.pad(v, pad_kv)
    mp = jnp.pad(key_mask, ((0, 0), (w, tp - t + w)))  # padding keys are invalid
    span = c + 2 * w
    gather = (np.arange(nb)[:, None] * c + np.arange(span)[None, :])  # [nb, span] into padded keys
    kb, vb, mb = kp[:, gather], vp[:, gather], mp[:, gather]  # [B, nb, span, N, H], [B, nb, span]
    qb = qp.reshape(b, nb, c, n, h)
    logits = jnp.einsum("bcqnh,bcknh->bcnqk", qb, kb, preferred_element_type=jnp.float32)
    logits = logits / np.sqrt(h)
    qpos = np.arange(nb)[:, None] * c + np.arange(c)[None, :]  # [nb, C]
    kpos = gather - w  # [nb, span] real key positions
    diff = qpos[:, :, None] - kpos[:, None, :]  # [nb, C, span]
    band = jnp.asarray(np.abs(diff) <= w)
    eye = jnp.asarray(diff == 0)
    allowed = (band[None] & mb[:, :, None, :]) | eye[None]  # [B, nb, C, span]
    logits = jnp.where(allowed[:, :, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bcnqk,bcknh->bcqnh", probs, vb).reshape(b, tp, n, h)
    return out[:, :t]


@functools.lru_cache(maxsize=None)
def _warn_once(msg: str) -> None:
    _log.warning(msg)


def cudnn_applicable(dtype) -> bool:
    """Whether cuDNN's fused attention can run here at all: a GPU and bf16/fp16 compute."""
    return jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)


def cudnn_attention(q: Array, k: Array, v: Array, *, who: str, fallback: str, warn_not_applicable: bool = True,
                    **kwargs) -> Array | None:
    """``jax.nn.dot_product_attention(..., implementation="cudnn", **kwargs)`` in q's dtype, or
    None where it cannot run: not :func:`cudnn_applicable` (warned once unless
    ``warn_not_applicable`` is False), or refused by JAX at trace time for this GPU, cuDNN
    version or shape (always warned once, naming ``who`` and the ``fallback`` the caller takes)."""
    if not cudnn_applicable(q.dtype):
        if warn_not_applicable:
            _warn_once(f"{who}: cuDNN attention needs a GPU and bf16/fp16 compute; using {fallback!r}")
        return None
    try:
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **kwargs).astype(q.dtype)
    except Exception as e:  # noqa: BLE001 - cuDNN rejects at trace time with various types
        _warn_once(f"{who}: cuDNN attention unavailable ({type(e).__name__}: {e}); using {fallback!r}")
        return None


def _cudnn(q, k, v, key_mask, window, chunk_size):
    """cuDNN's fused attention only accepts causal-style sliding windows (right extent 0), so
    the symmetric |t-s| <= w band cannot be expressed as ``local_window_size``. On GPU we pass
    the band as a dense boolean mask to the cuDNN kernel (bf16/fp16 only); anywhere cuDNN is not
    available (CPU, TPU, fp32, unsupported shapes) we fall back to the chunked implementation,
    which gives identical results."""
    out = cudnn_attention(q, k, v, mask=local_attention_mask(key_mask, window), who="temporal encoder",
                          fallback="chunked")
    return out if out is not None else _chunked(q, k, v, key_mask, window, chunk_size)


def local_attention(
    q: Array,
    k: Array,
    v: Array,
    key_mask: Array,
    *,
    window: int = 3,
    implementation: Implementation = "xla",
    chunk_size: int = 64,
) -> Array:
    """Local self-attention: query t sees keys s with |t - s| <= window that are valid, and
    always itself (docs/models_and_weights.md, the reference's xformers ``local_mask`` attention with ``| eye``).

    q, k, v: [B, T, N, H]; key_mask: [B, T] bool (True = valid frame). Returns [B, T, N, H].
    implementation: "xla" (``jax.nn.dot_product_attention`` with ``local_window_size``; O(T²)
    logits), "chunked" (block-wise band, O(T·(C+2w)) memory), "cudnn" (see ``_cudnn``: falls back
    to "chunked" where cuDNN cannot run), "naive" (dense masked softmax; the test reference).
    """
    if implementation == "xla":
        return _xla(q, k, v, key_mask, window)
    if implementation == "chunked":
        return _chunked(q, k, v, key_mask, window, chunk_size)
    if implementation == "cudnn":
        return _cudnn(q, k, v, key_mask, window, chunk_size)
    if implementation == "naive":
        return _naive(q, k, v, key_mask, window)
    raise ValueError(f"unknown attention implementation {implementation!r}; use one of {IMPLEMENTATIONS}")
