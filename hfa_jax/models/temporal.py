"""The HFA temporal encoder (docs/models_and_weights.md): a post-LN local-attention transformer with RoPE.

``x [B, T, 512]`` (frame features after Linear+BN) + sinusoidal position embedding
-> 2 blocks -> average-pool downsampling (k3 s2 p1) -> 2 blocks -> Linear(512 -> 1024)
-> ``y [B, T', 1024]`` with ``T' = ceil(T / 2)`` and the downsampled mask.

Block (post-LN, the reference's MetaFormer ``layer_norm_type="post"``):
``x = LN(x + DropPath(LayerScale(Dropout(MHA(x)))))``; ``x = LN(x + DropPath(FFN(x)))``.
LayerScale (init 1e-5) is on the attention branch only (this is what the paper's parameter
count implies). Attention is local (|t - s| <= 3 over valid keys, always itself), with RoPE
(base 10000, interleaved pairs) on q and k per head; see :mod:`hfa_jax.models.attention`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from hfa_jax.models import axes
from hfa_jax.models.activations import gelu
from hfa_jax.models import attention as attention_lib
from hfa_jax.models.attention import apply_rope, local_attention
from hfa_jax.models.dropout import Dropout

Array = jax.Array

__all__ = [
    "TemporalConfig",
    "TemporalEncoder",
    "TemporalBlock",
    "sinusoidal_embedding",
    "downsample",
    "downsample_mask",
]


@dataclasses.dataclass(frozen=True)
class TemporalConfig:
    """Temporal encoder hyper-parameters (paper values by default)."""

    width: int = 512
    num_heads: int = 8
    mlp_dim: int = 2048
    blocks_before: int = 2  # blocks before the downsampler
    blocks_after: int = 2
    out_dim: int = 1024
    window: int = 3  # |t - s| <= window
    rope_base: float = 10000.0
    dropout: float = 0.1
    drop_path_rate: float = 0.1  # linearly 0 .. rate over all blocks: 0, 1/30, 2/30, 0.1
    layerscale_init: float = 1e-5
    ln_eps: float = 1e-5  # torch nn.LayerNorm default, as in the reference
    attention: str = "xla"  # "xla" | "cudnn" | "pallas" | "auto": set from model.attention (models/attention.py)
    dtype: str | None = None  # compute dtype ("float32", "bfloat16"; None = float32); params float32
    remat: bool = False
    # Switches for the authors' code (elsobhano/MLLM psp-dino, models/clip_models.py, ``Transformer``;
    # docs/coming_from_pytorch.md): their ``Downsampler`` pools the padded positions' block outputs
    # into the last valid output (False), their ``FeedForward`` has no dropout after linear2 (False),
    # their padded frames enter as zeros (dino_adaptor_model.py ``Model.pad`` after the BatchNorm: True).
    zero_padding_before_pool: bool = True
    ffn_output_dropout: bool = True
    zero_padded_inputs: bool = False

    def __post_init__(self):
        attention_lib.check_choice(self.attention, "TemporalConfig.attention")

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype) if self.dtype else None

    @property
    def num_blocks(self) -> int:
        return self.blocks_before + self.blocks_after

    def drop_path_rates(self) -> list[float]:
        n = self.num_blocks
        return [self.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


def sinusoidal_embedding(length: int, dim: int) -> np.ndarray:
    """[length, dim] float32: sin at even, cos at odd channels, base 10000 (the reference's
    ``PositionalEncoding``; a constant, not a parameter)."""
    pos = np.arange(length, dtype=np.float64)[:, None]
    div = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-np.log(10000.0) / dim))
    pe = np.zeros((length, dim), np.float64)
    pe[:, 0::2] = np.sin(pos * div)
    pe[:, 1::2] = np.cos(pos * div)
    return pe.astype(np.float32)


def downsample_mask(mask: Array) -> Array:
    """mask [B, T] bool -> [B, ceil(T/2)] bool: output j covers inputs 2j-1, 2j, 2j+1 and is
    valid if any of them is; position 0 is always valid (docs/models_and_weights.md)."""
    b, t = mask.shape
    tp = (t - 1) // 2 + 1
    m = jnp.pad(mask, ((0, 0), (1, 2 * tp + 1 - t - 1)))  # index i of m = input i-1
    win = m[:, 0 : 2 * tp : 2] | m[:, 1 : 2 * tp + 1 : 2] | m[:, 2 : 2 * tp + 2 : 2]
    return win.at[:, 0].set(True)


def downsample(x: Array, mask: Array, zero_padding: bool = True) -> tuple[Array, Array]:
    """Average pool, kernel 3, stride 2, padding 1, zero padding counted in the divisor
    (PyTorch ``AvgPool1d(3, 2, 1)`` with ``count_include_pad=True``).

    x: [B, T, D], mask: [B, T] bool -> ([B, ceil(T/2), D], [B, ceil(T/2)] bool). Padded frames
    are zeroed first, so a valid output never depends on what the padding contained
    (``zero_padding=False``: pooled as they are, as the authors' ``Downsampler``).
    """
    b, t, d = x.shape
    tp = (t - 1) // 2 + 1
    if zero_padding:
        x = jnp.where(mask[..., None], x, 0).astype(x.dtype)
    xp = jnp.pad(x, ((0, 0), (1, 2 * tp + 1 - t - 1), (0, 0)))
    y = (xp[:, 0 : 2 * tp : 2] + xp[:, 1 : 2 * tp + 1 : 2] + xp[:, 2 : 2 * tp + 2 : 2]) / 3.0
    return y.astype(x.dtype), downsample_mask(mask)


class TemporalBlock(nn.Module):
    """One post-LN block. x: [B, T, D], mask: [B, T] bool -> [B, T, D]."""

    cfg: TemporalConfig
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool = True) -> Array:
        cfg = self.cfg
        b, t, d = x.shape
        nh = cfg.num_heads
        hd = d // nh
        dense = lambda feats, std, name, names: nn.Dense(  # noqa: E731
            feats,
            kernel_init=axes.param(nn.initializers.normal(std), names),
            bias_init=axes.param(nn.initializers.zeros, names[1:]),
            dtype=cfg.compute_dtype,
            name=name,
        )
        x = axes.constrain(x, (axes.BATCH, axes.FRAMES, axes.EMBED))
        qkv = dense(3 * d, 0.02, "qkv", (axes.EMBED, axes.HEADS))(x).reshape(b, t, 3, nh, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        pos = jnp.arange(t)
        q = apply_rope(q, pos, cfg.rope_base)
        k = apply_rope(k, pos, cfg.rope_base)
        h = local_attention(q, k, v, mask, window=cfg.window, choice=cfg.attention).reshape(b, t, d)
        # GPT-2-style scaled init of the output projection: 0.02 / sqrt(2 * num_blocks).
        h = dense(d, 0.02 / np.sqrt(2 * cfg.num_blocks), "out", (axes.HEADS, axes.EMBED))(h)
        h = Dropout(cfg.dropout)(h, deterministic=deterministic)
        gamma = self.param("layer_scale", axes.param(nn.initializers.constant(cfg.layerscale_init), (axes.NORM,)), (d,))
        h = h * gamma.astype(h.dtype)
        h = Dropout(self.drop_path, broadcast_dims=(1, 2), name="drop_path1")(
            h, deterministic=deterministic
        )
        x = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=cfg.compute_dtype, name="norm1", **axes.norm_inits())(x + h)

        h = dense(cfg.mlp_dim, 0.02, "fc1", (axes.EMBED, axes.MLP))(x)
        h = gelu(h)
        h = Dropout(cfg.dropout)(h, deterministic=deterministic)
        h = dense(d, 0.02, "fc2", (axes.MLP, axes.EMBED))(h)
        if cfg.ffn_output_dropout:
            h = Dropout(cfg.dropout)(h, deterministic=deterministic)
        h = Dropout(self.drop_path, broadcast_dims=(1, 2), name="drop_path2")(
            h, deterministic=deterministic
        )
        return nn.LayerNorm(epsilon=cfg.ln_eps, dtype=cfg.compute_dtype, name="norm2", **axes.norm_inits())(x + h)


class TemporalEncoder(nn.Module):
    """x: [B, T, 512] float, mask: [B, T] bool ->
    (y [B, ceil(T/2), 1024], mask' [B, ceil(T/2)] bool)."""

    cfg: TemporalConfig

    @nn.compact
    def __call__(
        self, x: Array, mask: Array, deterministic: bool = True, return_hidden: bool = False
    ) -> tuple[Array, Array] | tuple[Array, Array, Array]:
        """``return_hidden=True`` also returns the 512-d features before ``out_proj``
        ``[B, T', width]`` (BeyondGloss's description head reads them)."""
        cfg = self.cfg
        mask = mask.astype(bool)
        t = x.shape[1]
        if cfg.zero_padded_inputs:
            x = jnp.where(mask[..., None], x, 0).astype(x.dtype)
        x = x + jnp.asarray(sinusoidal_embedding(t, x.shape[-1]), x.dtype)[None]
        if cfg.compute_dtype is not None:
            x = x.astype(cfg.compute_dtype)
        block_cls = (
            nn.remat(TemporalBlock, static_argnums=(3,)) if cfg.remat else TemporalBlock
        )
        rates = cfg.drop_path_rates()
        for i in range(cfg.num_blocks):
            if i == cfg.blocks_before:
                x, mask = downsample(x, mask, cfg.zero_padding_before_pool)
            x = block_cls(cfg, drop_path=rates[i], name=f"block_{i}")(x, mask, deterministic)
        y = nn.Dense(  # width 512 -> mBART's 1024: the output dimension carries the name
            cfg.out_dim,
            kernel_init=axes.param(nn.initializers.normal(0.02), (None, axes.EMBED)),
            bias_init=axes.param(nn.initializers.zeros, (axes.EMBED,)),
            dtype=cfg.compute_dtype,
            name="out_proj",
        )(x)
        return (y, mask, x) if return_hidden else (y, mask)
