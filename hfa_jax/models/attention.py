"""Attention for the whole model: one choice, ``model.attention``, and the functions every
attention site calls.

The choice (:data:`CHOICES`) is one vocabulary for the ViT, the temporal encoder's local window
and mBART:

- ``"xla"``: the scores materialised by XLA (``jax.nn.dot_product_attention(implementation="xla")``
  or :func:`dot_product_attention`); every backend. The CPU path.
- ``"cudnn"``: cuDNN's fused attention (a GPU and bf16/fp16 compute). Where it cannot run, a
  warning (once) and the XLA path.
- ``"pallas"``: the ViT's Pallas TPU kernel (:mod:`hfa_jax.models.pallas_attention`: all heads
  of a frame in one program, scores kept on chip, in the ``[frames, tokens, width]`` layout).
  Compiled for TPU, Pallas' interpreter elsewhere (slow; for tests). The temporal encoder and
  mBART have no kernel of their own and take the XLA path.
- ``"auto"``: cuDNN on a GPU where it applies (bf16/fp16, head width a multiple of 8 up to 128),
  the Pallas kernel for the ViT on TPU, XLA elsewhere; where JAX refuses cuDNN at trace time,
  XLA. On a CPU ``"auto"`` is exactly ``"xla"``. Decided by ``jax.default_backend()`` when the
  model is traced: compiling for a TPU topology on a CPU host (``hfa_jax.aot``) needs an
  explicit ``"pallas"`` to see the kernel.

Sites: :func:`frame_attention` (the ViT: ``[frames, tokens, width]``, padded keys by count),
:func:`local_attention` (the temporal encoder: ``|t - s| <= window`` over valid keys, always
itself) and :func:`masked_attention` (mBART: a boolean mask).

Layout of the head-split functions: ``q, k, v: [B, T, N, H]`` (batch, time, heads, head dim),
masks are bool with True = attend/valid. Softmax is computed in float32 whatever the compute
dtype.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from hfa_jax.errors import ConfigError

Array = jax.Array
Choice = Literal["xla", "cudnn", "pallas", "auto"]

__all__ = [
    "CHOICES",
    "check_choice",
    "upgrade_legacy_keys",
    "resolve",
    "frame_attention",
    "frame_tokens",
    "local_attention",
    "masked_attention",
    "dot_product_attention",
    "apply_rope",
    "local_attention_mask",
    "cudnn_applicable",
    "cudnn_attention",
]

CHOICES = ("xla", "cudnn", "pallas", "auto")
_log = logging.getLogger(__name__)


def check_choice(choice: str, where: str) -> str:
    """``choice`` if it is one of :data:`CHOICES`, else ConfigError naming ``where`` (the config key)."""
    if choice not in CHOICES:
        raise ConfigError(f"{where} must be one of {', '.join(CHOICES)}; got {choice!r}")
    return choice


# Per-model attention keys: each model had its own vocabulary in earlier versions, and saved
# configs still carry them (a workdir's config.json; an exported model's, which also repeats
# model.attention in every model).
LEGACY_KEYS = (("vit", "attention"), ("temporal", "attention"), ("temporal", "chunk_size"),
                ("mbart", "attention"), ("mbart", "attention_impl"))


def upgrade_legacy_keys(model: dict) -> dict:
    """A ``config.model`` dict without per-model attention keys (a copy). A key that repeats
    ``model.attention`` is dropped silently (an exported model's config); any other is logged
    once as deprecated. ``model.vit.attention`` becomes ``model.attention`` where that is unset
    and the value is in the shared vocabulary (it was the only one of them that chose a fused
    kernel); the temporal encoder's "chunked"/"naive" and ``chunk_size`` are gone (its XLA path
    gives the same values)."""
    out = dict(model)
    top = out.get("attention")
    for sub, key in LEGACY_KEYS:
        values = out.get(sub)
        if not isinstance(values, dict) or key not in values:
            continue
        values = out[sub] = dict(values)
        old = values.pop(key)
        if top is not None and key == "attention" and old == top:
            continue
        if (sub, key) == ("vit", "attention") and top is None and old in CHOICES:
            out["attention"] = top = old
            _warn_once(f"config key model.vit.attention is deprecated: read as model.attention={old!r}")
        else:
            _warn_once(f"config key model.{sub}.{key} is deprecated and ignored: model.attention "
                       f"({', '.join(CHOICES)}) chooses attention for the whole model")
    return out


def resolve(choice: str, dtype, head_dim: int, *, has_kernel: bool = False) -> str:
    """The implementation a site runs for ``choice``: "xla", "cudnn" or "pallas".

    ``has_kernel``: the site has a Pallas kernel (the ViT). "pallas" without one is "xla";
    "auto" is cuDNN where :func:`cudnn_fits` (a GPU, bf16/fp16, a head width cuDNN takes), the
    kernel on TPU, else "xla". An explicit "cudnn" is returned as is (the site warns and falls
    back where it cannot run)."""
    if choice == "pallas":
        return "pallas" if has_kernel else "xla"
    if choice == "auto":
        if has_kernel and jax.default_backend() == "tpu":
            return "pallas"
        return "cudnn" if cudnn_fits(dtype, head_dim) else "xla"
    return choice


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


@functools.lru_cache(maxsize=None)
def _warn_once(msg: str) -> None:
    _log.warning(msg)


def cudnn_applicable(dtype) -> bool:
    """Whether cuDNN's fused attention can run here at all: a GPU and bf16/fp16 compute."""
    return jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)


def cudnn_fits(dtype, head_dim: int) -> bool:
    """:func:`cudnn_applicable` and a head width JAX's cuDNN attention takes (a multiple of 8, at
    most 128): where "auto" tries cuDNN. With XLA's path an H100 fine-tuning step spends ~25 %
    of its device time padding, transposing and soft-maxing the materialised ViT scores
    (bench/RESULTS.md)."""
    return cudnn_applicable(dtype) and head_dim % 8 == 0 and head_dim <= 128


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


# --------------------------------------------------------------------------- the ViT
def frame_tokens(n: int, choice: str, dtype, head_dim: int) -> int:
    """Token count the ViT's blocks run at for ``n`` tokens. cuDNN's kernel (as JAX calls it for
    training) takes only even sequence lengths, and 1 + 256 tokens is odd: where cuDNN is used
    the token axis is padded to a multiple of 8 once at the input (also the GEMMs' alignment) and
    the padded keys are masked by count, instead of padding q/k/v in every layer. The Pallas
    kernel and XLA run at ``n``."""
    return -(-n // 8) * 8 if resolve(choice, dtype, head_dim, has_kernel=True) == "cudnn" else n


def frame_attention(q: Array, k: Array, v: Array, *, num_heads: int, choice: str,
                    valid_tokens: int | None = None) -> Array:
    """The ViT's self-attention, per frame: ``q [B, Nq, D]``, ``k, v [B, N, D]`` (heads side by
    side in D, as the fused qkv projection gives them) -> ``[B, Nq, D]`` in q's dtype.

    ``valid_tokens``: keys from that index on are padding (masked). ``Nq < N`` (the CLS-only
    last block) attends from the first Nq tokens. ``choice``: :data:`CHOICES`; "pallas" runs
    :func:`hfa_jax.models.pallas_attention.frame_attention` on the layout as it is, the others
    split the heads for ``jax.nn.dot_product_attention``."""
    b, nq, d = q.shape
    n = k.shape[1]
    hd = d // num_heads
    impl = resolve(choice, q.dtype, hd, has_kernel=True)
    if impl == "pallas":
        from hfa_jax.models import pallas_attention  # Pallas is imported only where it is used

        kernel = functools.partial(pallas_attention.frame_attention, num_heads=num_heads, kv_len=valid_tokens)
        return per_frame_shards(kernel, (q, k, v))
    if nq % 2:
        impl = "xla"  # an odd query count (the CLS-only last block): cuDNN refuses it, and it is tiny
    q, k, v = (a.reshape(b, a.shape[1], num_heads, hd) for a in (q, k, v))
    lengths = None if valid_tokens is None or valid_tokens == n else jnp.full((b,), valid_tokens, jnp.int32)
    h = None
    if impl == "cudnn" and choice == "auto":  # "auto" runs everywhere: XLA where JAX refuses cuDNN
        h = cudnn_attention(q, k, v, key_value_seq_lengths=lengths, who="ViT", fallback="xla")
        impl = "xla"
    if h is None:  # an explicit "cudnn" is not second-guessed: JAX's error if it cannot run
        h = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation=impl)
    return h.reshape(b, nq, d)


def _context_mesh():
    """The device mesh the model is traced under (``jax.set_mesh`` or the ``with mesh:`` the
    trainer uses), or None for none / one device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        from jax._src import mesh as mesh_lib  # the `with mesh:` context has no public getter

        mesh = mesh_lib.thread_resources.env.physical_mesh
    return None if mesh is None or mesh.empty or mesh.size == 1 else mesh


def per_frame_shards(kernel, frames: tuple, replicated: tuple = ()) -> Array:
    """``kernel(*frames, *replicated)`` on each device's frames. XLA cannot partition a Mosaic
    kernel, so under a mesh the call goes through ``shard_map``: the ``frames`` arrays split on
    their first axis as the ``batch`` logical axis resolves (the frames the packing keeps on each
    data shard), other axes whole; ``replicated`` (pytrees, e.g. a block's weights) whole on
    every device."""
    mesh = _context_mesh()
    if mesh is None:
        return kernel(*frames, *replicated)
    import flax.linen as nn  # the logical axis rules are flax's

    from hfa_jax.models import axes

    spec = nn.logical_to_mesh_axes((axes.BATCH,)) if nn.get_logical_axis_rules() else None
    spec = jax.sharding.PartitionSpec(*(spec or (None,)))
    whole = jax.tree.map(lambda _: jax.sharding.PartitionSpec(), replicated)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(*(spec for _ in frames), *whole), out_specs=spec,
                         check_vma=False)(*frames, *replicated)

# --------------------------------------------------------------------------- the temporal encoder
def local_attention(
    q: Array,
    k: Array,
    v: Array,
    key_mask: Array,
    *,
    window: int = 3,
    choice: str = "xla",
) -> Array:
    """Local self-attention: query t sees keys s with |t - s| <= window that are valid, and
    always itself (docs/models_and_weights.md, the reference's xformers ``local_mask`` attention
    with ``| eye``).

    q, k, v: [B, T, N, H]; key_mask: [B, T] bool (True = valid frame). Returns [B, T, N, H].
    XLA: ``jax.nn.dot_product_attention`` with ``local_window_size`` bounding the band and a mask
    for key validity and the always-self rule. cuDNN only takes causal-style sliding windows
    (right extent 0), so the symmetric band goes to its kernel as a dense boolean mask.
    "pallas" has no kernel here (the band is a few keys wide): XLA.
    """
    impl = resolve(choice, q.dtype, q.shape[-1])
    if impl == "cudnn":  # "auto" resolves to it only where it applies: no warning then
        out = cudnn_attention(q, k, v, mask=local_attention_mask(key_mask, window), who="temporal encoder",
                              fallback="xla", warn_not_applicable=choice == "cudnn")
        if out is not None:
            return out
    t = key_mask.shape[1]
    eye = jnp.eye(t, dtype=bool)
    mask = (key_mask[:, None, :] | eye[None])[:, None]  # [B, 1, T, T]
    out = jax.nn.dot_product_attention(
        q, k, v, mask=mask, local_window_size=(window, window), implementation="xla"
    )
    return out.astype(q.dtype)


# --------------------------------------------------------------------------- mBART
def masked_attention(q: Array, k: Array, v: Array, mask: Array | None, *, choice: str, who: str = "mBART") -> Array:
    """Softmax attention with a boolean mask (mBART's self- and cross-attention): q [B, T, N, H],
    k/v [B, S, N, H], mask broadcastable to [B, N, T, S] (True = attend) -> [B, T, N, H] in q's
    dtype. cuDNN where ``choice`` resolves to it and it runs, else :func:`dot_product_attention`
    (float32 logits; the XLA path). "pallas" has no kernel here: XLA."""
    impl = resolve(choice, q.dtype, q.shape[-1])
    if impl == "cudnn":
        out = cudnn_attention(q, k, v, mask=mask, who=who, fallback="xla", warn_not_applicable=choice == "cudnn")
        if out is not None:
            return out
    return dot_product_attention(q, k, v, mask=mask)
