"""Small HFA heads (docs/models_and_weights.md): the masked BatchNorm of the frame projection, the pseudo-gloss
prototype head of pretraining, and the translation mapper.

Linear layers here use PyTorch's ``nn.Linear`` default init (U(±1/sqrt(fan_in)) for weight and
bias), as the reference modules are plain ``nn.Linear`` without custom init.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from hfa_jax.models import axes
from hfa_jax.models.activations import gelu
from hfa_jax.models.dropout import Dropout

Array = jax.Array

__all__ = ["torch_linear_init", "torch_dense", "MaskedBatchNorm", "PseudoGlossHead", "Mapper", "cosine_similarity"]


def torch_linear_init(fan_in: int) -> Callable:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch ``nn.Linear`` weight and bias default)."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(features: int, fan_in: int, dtype: Any = None, name: str | None = None,
                kernel_axes: tuple[str | None, str | None] = (axes.EMBED, axes.EMBED)) -> nn.Dense:
    """``nn.Dense`` initialised like PyTorch's ``nn.Linear(fan_in, features)``; ``kernel_axes``:
    the logical names ``(in, out)`` of its kernel (the bias takes ``out``)."""
    init = torch_linear_init(fan_in)
    ax_in, ax_out = kernel_axes
    if ax_in == ax_out:  # a name may occur once per array: a width -> width map shards its output
        ax_in = None
    return nn.Dense(features, kernel_init=axes.param(init, (ax_in, ax_out)), bias_init=axes.param(init, (ax_out,)),
                    dtype=dtype, name=name)


class MaskedBatchNorm(nn.Module):
    """BatchNorm1d over the valid frames only (docs/models_and_weights.md: padding is excluded from the statistics).

    x: [B, T, C], mask: [B, T] bool -> [B, T, C]. Parameters ``scale``/``bias`` [C]; running
    ``mean``/``var`` [C] in the ``batch_stats`` collection, updated as PyTorch does
    (``momentum`` = 0.1 weight of the new batch; the running variance uses the unbiased batch
    variance, the normalisation the biased one). Statistics are float32; under ``jit`` with a
    sharded batch the sums are global, i.e. synchronised BN across devices.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, mask: Array, use_running_average: bool = True) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", axes.param(nn.initializers.ones, (axes.NORM,)), (c,))
        bias = self.param("bias", axes.param(nn.initializers.zeros, (axes.NORM,)), (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        xf = x.astype(jnp.float32)
        if use_running_average or self.is_initializing():
            mean, var = ra_mean.value, ra_var.value
        else:
            m = mask.astype(jnp.float32)[..., None]
            n = jnp.maximum(m.sum(), 1.0)
            mean = (xf * m).sum((0, 1)) / n
            var = (jnp.square(xf - mean) * m).sum((0, 1)) / n
            if not self.is_mutable_collection("batch_stats"):
                raise ValueError("MaskedBatchNorm in training mode: apply with mutable=['batch_stats']")
            unbiased = var * n / jnp.maximum(n - 1.0, 1.0)
            ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
            ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * unbiased
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype or x.dtype)


def cosine_similarity(x: Array, protos: Array, eps: float = 1e-12) -> Array:
    """x: [B, T, E], protos: [K, E] -> [B, T, K] cosine similarities (float32).

    Vectors are normalised as ``v / max(||v||, eps)`` (``F.normalize``), so the zero prototype
    row has similarity exactly 0 with everything."""
    xf = x.astype(jnp.float32)
    pf = protos.astype(jnp.float32)

    def safe_norm(v: Array) -> Array:
        # sqrt(max(|v|^2, eps^2)) == max(|v|, eps), but its gradient at a zero vector is 0
        # rather than NaN (a trainable prototype may be all zeros, e.g. an OOV fastText row).
        return jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), eps * eps))

    xn = xf / safe_norm(xf)
    pn = pf / safe_norm(pf)
    return jnp.einsum("bte,ke->btk", xn, pn, precision=jax.lax.Precision.HIGHEST)


class PseudoGlossHead(nn.Module):
    """Pseudo-gloss prototype head (pretraining only; docs/models_and_weights.md, Sign2GPT-style).

    Call: ``y [B, T', 1024]``, ``mask [B, T'] bool``, ``protos [V+1, 300]`` (row 0 = the fixed
    zero "blank" prototype, supplied by the caller) ->
    ``(p [B, V+1], S [B, T', V+1])`` where ``S`` = cosine(Linear(Dropout(y)), protos),
    ``p = sum_t softmax_k(S / tau_c) * masked_softmax_t(S / tau_t)``.

    ``learnable_tau``: the paper's learnable temperatures (params ``tau_class``/``tau_time``,
    stored as log values); default: fixed 0.1 as in the reference code.
    """

    proto_dim: int = 300
    dropout: float = 0.2
    tau_class: float = 0.1
    tau_time: float = 0.1
    learnable_tau: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, y: Array, mask: Array, protos: Array, deterministic: bool = True) -> tuple[Array, Array]:
        h = Dropout(self.dropout)(y, deterministic=deterministic)
        h = torch_dense(self.proto_dim, y.shape[-1], self.dtype, name="proj", kernel_axes=(axes.EMBED, None))(h)
        sim = cosine_similarity(h, protos)  # [B, T', V+1]
        if self.learnable_tau:
            tc = jnp.exp(self.param("tau_class", nn.initializers.constant(np.log(self.tau_class)), ()))
            tt = jnp.exp(self.param("tau_time", nn.initializers.constant(np.log(self.tau_time)), ()))
        else:
            tc, tt = self.tau_class, self.tau_time
        class_p = jax.nn.softmax(sim / tc, axis=-1)
        time_logits = jnp.where(mask[..., None], sim / tt, jnp.finfo(jnp.float32).min)
        time_p = jax.nn.softmax(time_logits, axis=1)  # mask[:, 0] is always True: no empty rows
        return (class_p * time_p).sum(axis=1), sim


class Mapper(nn.Module):
    """Translation mapper (docs/models_and_weights.md): Linear(1024 -> 1024), LayerNorm, GELU. x: [B, T, D] -> [B, T, D]."""

    features: int = 1024
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = torch_dense(self.features, x.shape[-1], self.dtype, name="linear")(x)
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm", **axes.norm_inits())(x)
        return gelu(x)
