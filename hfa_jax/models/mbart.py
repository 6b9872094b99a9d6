"""mBART (Liu et al. 2020, mbart-large-cc25) in Flax linen, with LoRA, an ``inputs_embeds`` path for
visual features and an explicit key/value cache for decoding.

Architecture (transformers' ``modeling_mbart.py`` is the reference; docs/models_and_weights.md):

- Pre-LN encoder and decoder layers (``x + Attn(LN(x))``, ``x + FFN(LN(x))``), exact-erf GELU,
  LayerNorm eps 1e-5 (PyTorch default), final ``layer_norm`` after the last layer of each stack.
- Token path: ``shared[ids] * sqrt(d)`` (``scale_embedding``); the ``inputs_embeds`` path (visual
  features) is NOT scaled -- transformers applies ``embed_scale`` inside the token embedding only.
  Both paths then add learned positions (row ``position + 2``: the fairseq offset kept by HF)
  and apply ``layernorm_embedding``.
- Output projection tied to ``shared`` plus ``final_logits_bias`` (a buffer in HF: it lives in the
  ``buffers`` collection here, so it is never counted or trained as a parameter).
- LoRA (:class:`hfa_jax.models.lora.LoRADense`) on the projections named in
  ``MBartConfig.lora_targets`` (default: q and v of encoder self-attention, decoder self-attention
  and decoder cross-attention; docs/models_and_weights.md, r16 alpha32 dropout 0.1).

Parameter tree of :class:`MBart` (names mirror the HF module names so the importer and the freezing
regexes read naturally; '/'-joined)::

    params/shared/embedding                                   [V, D]
    params/encoder/embed_positions/embedding                  [P + 2, D]
    params/encoder/layernorm_embedding/{scale,bias}
    params/encoder/layers_{i}/self_attn/{q_proj,k_proj,v_proj,out_proj}/{kernel,bias[,lora_a,lora_b]}
    params/encoder/layers_{i}/{self_attn_layer_norm,final_layer_norm}/{scale,bias}
    params/encoder/layers_{i}/{fc1,fc2}/{kernel,bias}
    params/encoder/layer_norm/{scale,bias}
    params/decoder/...   (same, plus layers_{i}/encoder_attn/... and layers_{i}/encoder_attn_layer_norm)
    buffers/final_logits_bias                                  [V]

A standalone :class:`MBartEncoder` (the frozen text encoder / the LoRA video encoder of
pretraining) owns its token embedding as ``params/embed_tokens/embedding``; everything else has
the same names as under ``params/encoder``. :func:`encoder_variables` converts imported
:class:`MBart` variables to that layout.

Decoding cache (explicit pure pytree, see :meth:`MBart.init_cache`), head-major::

    {"index": int32 [],                     # number of decoder positions already written
     "self":  {"layers_{i}": {"k": [N, H, T_max, Dh], "v": [N, H, T_max, Dh]}},
     "cross": {"layers_{i}": {"k": [G, H, S, Dh],     "v": [G, H, S, Dh]}}}

with ``N = G * beams`` decoder rows (batch-major): a beam search keeps the encoder's
cross-attention keys/values once per clip (``G`` clips), not once per beam.

Logical axis names (:mod:`hfa_jax.models.axes`): projections ``(embed, heads)`` / ``(heads, embed)``,
``fc1`` ``(embed, mlp)``, ``fc2`` ``(mlp, embed)``, token embeddings ``(vocab, embed)``, positions
``(None, embed)``, norms ``(norm,)``; layer inputs ``(batch, length, embed)``, teacher-forced
logits ``(batch, length, vocab)``.

This file is ~760 lines, over the project's ~600: it is the one model, in the order of
transformers' ``modeling_mbart.py`` (config, attention, the two layer kinds, the two stacks, the
LM head and the decoding cache), and each part would import the others if split.

Pretrained weights: :func:`hfa_jax.weights.mbart.from_hf` ``(folder, vocab_map)`` ->
``(MBart(cfg), variables)`` (and ``encoder_from_hf``, ``save_imported``, ``load_imported``). The
importer imports this module, never the other way round.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hfa_jax.errors import ConfigError
from hfa_jax.models import attention as attention_lib
from hfa_jax.models import axes
from hfa_jax.models.activations import gelu
from hfa_jax.models import dropout as dropout_lib
from hfa_jax.models.dropout import Dropout
from hfa_jax.models.lora import LoRADense

Array = jax.Array

__all__ = [
    "MBartConfig",
    "MBartAttention",
    "MBartEncoderLayer",
    "MBartDecoderLayer",
    "MBartEncoder",
    "MBartDecoder",
    "MBart",
    "DEFAULT_LORA_TARGETS",
    "POSITION_OFFSET",
    "reorder_cache",
    "encoder_variables",
]

# fairseq/HF learned positions start at row 2 (rows 0/1 were reserved for padding in fairseq).
POSITION_OFFSET = 2

# Paper: LoRA on q and v of encoder self-attention, decoder self-attention and cross-attention.
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "encoder.self_attn.q_proj",
    "encoder.self_attn.v_proj",
    "decoder.self_attn.q_proj",
    "decoder.self_attn.v_proj",
    "decoder.encoder_attn.q_proj",
    "decoder.encoder_attn.v_proj",
)

_PROJ_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclasses.dataclass(frozen=True)
class MBartConfig:
    """mBART hyper-parameters (defaults: mbart-large-cc25 with the paper's translation LoRA).

    Field names follow transformers' ``MBartConfig`` so a ``config.json`` maps one to one.
    ``lora_rank=0`` disables LoRA (the frozen text encoder). ``dtype`` is the compute dtype
    ("float32" or "bfloat16"); parameters are always float32.
    ``attention``: "xla" (plain masked softmax, float32 logits), "cudnn" (fused cuDNN kernel; GPU
    with bf16/fp16 only, falls back to "xla" elsewhere), "auto" (cuDNN where it applies) or
    "pallas" (no mBART kernel: "xla"); set from ``model.attention`` (:mod:`hfa_jax.models.attention`).
    """

    vocab_size: int = 250027
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    decoder_ffn_dim: int = 4096
    max_position_embeddings: int = 1024
    scale_embedding: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation_function: str = "gelu"
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = 2
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    dtype: str = "float32"
    attention: str = "xla"
    remat: bool = False

    def __post_init__(self):
        if self.d_model % self.encoder_attention_heads or self.d_model % self.decoder_attention_heads:
            raise ConfigError(
                f"MBartConfig: d_model {self.d_model} is not divisible by the attention heads "
                f"({self.encoder_attention_heads}/{self.decoder_attention_heads}); fix the model config"
            )
        if self.activation_function not in _ACTIVATIONS:
            raise ConfigError(
                f"MBartConfig.activation_function {self.activation_function!r} is not supported; "
                f"use one of {sorted(_ACTIVATIONS)}"
            )
        if self.attention not in attention_lib.CHOICES:
            raise ConfigError(
                f"MBartConfig.attention {self.attention!r} unknown; use one of {attention_lib.CHOICES}"
            )
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"MBartConfig.dtype {self.dtype!r} unknown; use float32 or bfloat16")
        for t in self.lora_targets:
            parts = t.split(".")
            ok = (
                len(parts) == 3
                and parts[0] in ("encoder", "decoder")
                and parts[1] in ("self_attn", "encoder_attn", "mlp")
                and parts[2] in _PROJ_NAMES
            )
            if not ok:
                raise ConfigError(
                    f"MBartConfig.lora_targets entry {t!r} is not '<encoder|decoder>.<self_attn|"
                    f"encoder_attn|mlp>.<{'|'.join(_PROJ_NAMES)}>'"
                )
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    def lora_rank_for(self, stack: str, block: str, proj: str) -> int:
        """LoRA rank of one projection (0 = plain dense)."""
        return self.lora_rank if f"{stack}.{block}.{proj}" in self.lora_targets else 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MBartConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"MBartConfig: unknown fields {unknown}; valid fields are {sorted(names)}")
        d = dict(d)
        if "lora_targets" in d:
            d["lora_targets"] = tuple(d["lora_targets"])
        return cls(**d)


_ACTIVATIONS = {
    "gelu": gelu,  # HF "gelu" = exact erf GELU, computed as torch does (models/activations.py)
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def _dense_init(cfg: MBartConfig):
    return nn.initializers.normal(stddev=cfg.init_std)


def _layer_norm(cfg: MBartConfig, name: str | None = None) -> nn.LayerNorm:
    # PyTorch LayerNorm eps 1e-5 (flax's default 1e-6 would break parity); statistics in float32.
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=jnp.float32, name=name,
                        **axes.norm_inits())


def _attend(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None,
    *,
    impl: str,
    dropout_rate: float,
    deterministic: bool,
    dropout_rng: Array | None,
    kv_heads_first: bool = False,
) -> Array:
    """Scaled dot-product attention. q: [B, T, H, Dh], k/v: [B, S, H, Dh] (or [B, H, S, Dh]
    with ``kv_heads_first``: the decoding caches), mask: bool broadcastable to [B, H, T, S]
    (True = attend). Returns [B, T, H, Dh] in q's dtype."""
    if kv_heads_first:
        # Cached decoding: deterministic, one or a few query positions; plain XLA attention
        # reads the head-major cache without transposing it.
        if dropout_rate > 0.0 and not deterministic:
            raise ValueError("attention over a decoding cache is deterministic (no dropout)")
        return attention_lib.dot_product_attention(q, k, v, mask=mask, kv_heads_first=True)
    if dropout_rate > 0.0 and not deterministic:
        # Dropout on the attention probabilities (HF ``attention_dropout``): explicit softmax.
        scale = 1.0 / np.sqrt(q.shape[-1])
        logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) * scale
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        probs = dropout_lib.dropout(dropout_rng, dropout_rate, probs).astype(v.dtype)
        return jnp.einsum("bnts,bsnh->btnh", probs, v)
    return attention_lib.masked_attention(q, k, v, mask, choice=impl)


class MBartAttention(nn.Module):
    """Multi-head attention with q/k/v/out projections (each optionally LoRA).

    ``stack``/``block`` name this attention for the LoRA target lookup
    (e.g. "decoder", "encoder_attn").
    """

    cfg: MBartConfig
    num_heads: int
    stack: str
    block: str

    def setup(self):
        cfg = self.cfg
        d = cfg.d_model

        def proj(name: str) -> LoRADense:
            names = (axes.HEADS, axes.EMBED) if name == "out_proj" else (axes.EMBED, axes.HEADS)
            return LoRADense(
                kernel_axes=names,
                features=d,
                rank=cfg.lora_rank_for(self.stack, self.block, name),
                alpha=cfg.lora_alpha,
                dropout=cfg.lora_dropout,
                use_bias=True,
                kernel_init=_dense_init(cfg),
                dtype=cfg.compute_dtype,
                param_dtype=jnp.float32,
            )

        self.q_proj = proj("q_proj")
        self.k_proj = proj("k_proj")
        self.v_proj = proj("v_proj")
        self.out_proj = proj("out_proj")

    def _split(self, x: Array) -> Array:
        return x.reshape(*x.shape[:-1], self.num_heads, self.cfg.d_model // self.num_heads)

    def query(self, x: Array, deterministic: bool = True) -> Array:
        """x: [B, T, D] -> q: [B, T, H, Dh]."""
        return self._split(self.q_proj(x, deterministic=deterministic))

    def key_value(self, x: Array, deterministic: bool = True) -> tuple[Array, Array]:
        """x: [B, S, D] -> (k, v): [B, S, H, Dh] each."""
        return (
            self._split(self.k_proj(x, deterministic=deterministic)),
            self._split(self.v_proj(x, deterministic=deterministic)),
        )

    def attend(
        self, q: Array, k: Array, v: Array, mask: Array | None, deterministic: bool = True,
        kv_heads_first: bool = False,
    ) -> Array:
        """q: [B, T, H, Dh], k/v: [B, S, H, Dh] (``kv_heads_first``: [B, H, S, Dh]),
        mask bool [B, 1|H, T, S] -> [B, T, D]."""
        rate = self.cfg.attention_dropout
        rng = self.make_rng("dropout") if (rate > 0.0 and not deterministic) else None
        out = _attend(
            q, k, v, mask, impl=self.cfg.attention, dropout_rate=rate,
            deterministic=deterministic, dropout_rng=rng, kv_heads_first=kv_heads_first,
        )
        out = out.reshape(*out.shape[:-2], self.cfg.d_model)
        return self.out_proj(out, deterministic=deterministic)

    def __call__(self, x: Array, kv_states: Array, mask: Array | None, deterministic: bool = True) -> Array:
        """x: [B, T, D] queries, kv_states: [B, S, D] -> [B, T, D]."""
        k, v = self.key_value(kv_states, deterministic)
        return self.attend(self.query(x, deterministic), k, v, mask, deterministic)

    def attend_beams(self, q: Array, k: Array, v: Array, mask: Array | None) -> Array:
        """Cross-attention of a beam search over keys/values kept once per clip (decoding).

        q: [N, Lq, H, Dh] with ``N = G * beams`` rows, batch-major (row ``g * beams + j``);
        k/v: [G, H, S, Dh] head-major; mask: bool [G, 1, 1, S]. Returns [N, Lq, D].

        The beams of a clip attend to the same keys, so the cache holds them once and not once
        per beam. The products run one beam at a time on CPU: XLA:CPU multiplies ``[1, Dh]``
        rows as matrix-vector products, and the ``beams`` rows of a clip as one small matrix
        product ran ~7x slower in isolation (bench/RESULTS.md); accelerators take the beams as
        the query rows of one product.
        """
        g, n, lq = k.shape[0], q.shape[0], q.shape[1]
        beams = n // g
        if beams * g != n:
            raise ValueError(f"attend_beams: {n} query rows do not split into {g} clips' beams")
        grouped = q.reshape(g, beams * lq, *q.shape[2:])
        if beams == 1 or jax.default_backend() != "cpu":
            out = attention_lib.dot_product_attention(grouped, k, v, mask=mask, kv_heads_first=True)
        else:
            per_beam = grouped.reshape(g, beams, lq, *q.shape[2:])
            out = jnp.stack([attention_lib.dot_product_attention(per_beam[:, j], k, v, mask=mask, kv_heads_first=True)
                             for j in range(beams)], axis=1)
        return self.out_proj(out.reshape(n, lq, self.cfg.d_model))


class MBartEncoderLayer(nn.Module):
    """Pre-LN encoder layer. x: [B, S, D], mask: [B, 1, 1, S] bool -> [B, S, D]."""

    cfg: MBartConfig

    def setup(self):
        cfg = self.cfg
        self.self_attn = MBartAttention(cfg, cfg.encoder_attention_heads, "encoder", "self_attn")
        self.self_attn_layer_norm = _layer_norm(cfg)
        self.fc1 = _make_fc(cfg, "encoder", "fc1", cfg.encoder_ffn_dim)
        self.fc2 = _make_fc(cfg, "encoder", "fc2", cfg.d_model)
        self.final_layer_norm = _layer_norm(cfg)
        self.drop = Dropout(cfg.dropout)
        self.act_drop = Dropout(cfg.activation_dropout)

    def __call__(self, x: Array, mask: Array, deterministic: bool = True) -> Array:
        h = self.self_attn_layer_norm(x)
        h = self.self_attn(h, h, mask, deterministic)
        x = x + self.drop(h, deterministic=deterministic)
        h = self.final_layer_norm(x)
        h = _ACTIVATIONS[self.cfg.activation_function](self.fc1(h, deterministic=deterministic))
        h = self.act_drop(h, deterministic=deterministic)
        h = self.fc2(h, deterministic=deterministic)
        return x + self.drop(h, deterministic=deterministic)


def _make_fc(cfg: MBartConfig, stack: str, name: str, features: int) -> LoRADense:
    return LoRADense(
        kernel_axes=(axes.EMBED, axes.MLP) if name == "fc1" else (axes.MLP, axes.EMBED),
        features=features,
        rank=cfg.lora_rank_for(stack, "mlp", name),
        alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout,
        use_bias=True,
        kernel_init=_dense_init(cfg),
        dtype=cfg.compute_dtype,
        param_dtype=jnp.float32,
    )


class MBartDecoderLayer(nn.Module):
    """Pre-LN decoder layer: causal self-attention, cross-attention, FFN.

    Full mode (``cache is None``): x [B, L, D], self_mask [B, 1, L, L], cross k/v from
    ``encoder_states`` [B, S, D]. Cache mode: x [B, Lq, D] at decoder positions
    ``index .. index + Lq - 1``; self k/v are written into the cache and attention reads it.
    """

    cfg: MBartConfig

    def setup(self):
        cfg = self.cfg
        heads = cfg.decoder_attention_heads
        self.self_attn = MBartAttention(cfg, heads, "decoder", "self_attn")
        self.self_attn_layer_norm = _layer_norm(cfg)
        self.encoder_attn = MBartAttention(cfg, heads, "decoder", "encoder_attn")
        self.encoder_attn_layer_norm = _layer_norm(cfg)
        self.fc1 = _make_fc(cfg, "decoder", "fc1", cfg.decoder_ffn_dim)
        self.fc2 = _make_fc(cfg, "decoder", "fc2", cfg.d_model)
        self.final_layer_norm = _layer_norm(cfg)
        self.drop = Dropout(cfg.dropout)
        self.act_drop = Dropout(cfg.activation_dropout)

    def cross_key_value(self, encoder_states: Array) -> dict[str, Array]:
        """encoder_states [B, S, D] -> {"k", "v"}: [B, H, S, Dh], head-major like the self cache
        (decoding is deterministic)."""
        k, v = self.encoder_attn.key_value(encoder_states, True)
        return {"k": _heads_first(k), "v": _heads_first(v)}

    def __call__(
        self,
        x: Array,
        self_mask: Array,
        encoder_states: Array | None,
        cross_mask: Array,
        deterministic: bool = True,
        self_cache: dict[str, Array] | None = None,
        cross_cache: dict[str, Array] | None = None,
        index: Array | None = None,
    ) -> tuple[Array, dict[str, Array] | None]:
        h = self.self_attn_layer_norm(x)
        q = self.self_attn.query(h, deterministic)
        k, v = self.self_attn.key_value(h, deterministic)
        new_cache = None
        cached = self_cache is not None
        if cached:
            # Write this step's keys/values at positions index.. of the head-major cache
            # [B, H, T, Dh] and attend over the whole (static-length) cache; self_mask hides the
            # unwritten/future slots.
            zero = jnp.zeros((), jnp.int32)
            at = (zero, zero, index, zero)
            k = jax.lax.dynamic_update_slice(self_cache["k"], _heads_first(k).astype(self_cache["k"].dtype), at)
            v = jax.lax.dynamic_update_slice(self_cache["v"], _heads_first(v).astype(self_cache["v"].dtype), at)
            new_cache = {"k": k, "v": v}
        h = self.self_attn.attend(q, k, v, self_mask, deterministic, kv_heads_first=cached)
        x = x + self.drop(h, deterministic=deterministic)

        h = self.encoder_attn_layer_norm(x)
        q = self.encoder_attn.query(h, deterministic)
        if cross_cache is not None:  # keys/values once per clip, queries once per beam
            h = self.encoder_attn.attend_beams(q, cross_cache["k"], cross_cache["v"], cross_mask)
        else:
            ck, cv = self.encoder_attn.key_value(encoder_states, deterministic)
            h = self.encoder_attn.attend(q, ck, cv, cross_mask, deterministic)
        x = x + self.drop(h, deterministic=deterministic)

        h = self.final_layer_norm(x)
        h = _ACTIVATIONS[self.cfg.activation_function](self.fc1(h, deterministic=deterministic))
        h = self.act_drop(h, deterministic=deterministic)
        h = self.fc2(h, deterministic=deterministic)
        return x + self.drop(h, deterministic=deterministic), new_cache


def _heads_first(x: Array) -> Array:
    """[B, S, H, Dh] -> [B, H, S, Dh]: the decoding caches' layout, the one the attention matmuls
    read directly (stored [B, S, H, Dh], XLA would transpose the whole cache at every step)."""
    return jnp.swapaxes(x, 1, 2)


def _embed(cfg: MBartConfig, num: int, name: str | None = None, rows: str | None = None) -> nn.Embed:
    """Token (``rows="vocab"``) or position (``rows=None``) embedding [num, d_model]."""
    return nn.Embed(
        num_embeddings=num,
        features=cfg.d_model,
        embedding_init=axes.param(nn.initializers.normal(stddev=cfg.init_std), (rows, axes.EMBED)),
        dtype=cfg.compute_dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def _layer_cls(cls, cfg: MBartConfig):
    # Rematerialise each layer in training when asked (activations of 24 d=1024 layers add up);
    # argument 3 (encoder) / 5 (decoder) is the static ``deterministic`` flag.
    if not cfg.remat:
        return cls
    static = (3,) if cls is MBartEncoderLayer else (5,)
    return nn.remat(cls, static_argnums=static)


class MBartEncoder(nn.Module):
    """mBART encoder stack.

    ``shared_embedding``: the token embedding of the enclosing :class:`MBart`; when None (the
    standalone encoder of pretraining) the encoder owns ``embed_tokens``.
    """

    cfg: MBartConfig
    shared_embedding: nn.Module | None = None

    def setup(self):
        cfg = self.cfg
        if self.shared_embedding is None:
            self.embed_tokens = _embed(cfg, cfg.vocab_size, rows=axes.VOCAB)
        self.embed_positions = _embed(cfg, cfg.max_position_embeddings + POSITION_OFFSET)
        self.layernorm_embedding = _layer_norm(cfg)
        cls = _layer_cls(MBartEncoderLayer, cfg)
        self.layers = [cls(cfg) for _ in range(cfg.encoder_layers)]
        self.layer_norm = _layer_norm(cfg)
        self.drop = Dropout(cfg.dropout)

    def _tokens(self) -> nn.Module:
        return self.shared_embedding if self.shared_embedding is not None else self.embed_tokens

    def __call__(
        self,
        input_ids: Array | None,
        attention_mask: Array | None,
        *,
        inputs_embeds: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """Encode tokens or precomputed embeddings.

        input_ids: [B, S] int (ignored when ``inputs_embeds`` is given);
        inputs_embeds: [B, S, D] float (visual features: no sqrt(d) scaling, docs/models_and_weights.md);
        attention_mask: [B, S] bool (True = valid; None = all valid).
        Returns the final-layer-norm states [B, S, D] in the compute dtype.
        """
        cfg = self.cfg
        dtype = cfg.compute_dtype
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("MBartEncoder: pass input_ids or inputs_embeds")
            x = self._tokens()(input_ids)
            if cfg.scale_embedding:
                x = x * jnp.asarray(np.sqrt(cfg.d_model), x.dtype)
        else:
            x = inputs_embeds.astype(dtype)
            if self.is_initializing():
                # Materialise the token embedding even when init only sees visual features: it is
                # part of the model (the paper's parameter counts include it) and receives imported weights.
                self._tokens()(jnp.zeros((1, 1), jnp.int32))
        b, s = x.shape[:2]
        if s > cfg.max_position_embeddings:
            raise ValueError(f"MBartEncoder: sequence length {s} exceeds max_position_embeddings {cfg.max_position_embeddings}")
        pos = self.embed_positions(jnp.arange(s) + POSITION_OFFSET)
        x = self.layernorm_embedding(x + pos[None])
        x = self.drop(x, deterministic=deterministic)
        if attention_mask is None:
            attention_mask = jnp.ones((b, s), bool)
        mask = attention_mask.astype(bool)[:, None, None, :]
        for layer in self.layers:
            x = layer(axes.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED)), mask, deterministic)
        return self.layer_norm(x)


class MBartDecoder(nn.Module):
    """mBART decoder stack (always uses the enclosing model's shared token embedding)."""

    cfg: MBartConfig
    shared_embedding: nn.Module

    def setup(self):
        cfg = self.cfg
        self.embed_positions = _embed(cfg, cfg.max_position_embeddings + POSITION_OFFSET)
        self.layernorm_embedding = _layer_norm(cfg)
        cls = _layer_cls(MBartDecoderLayer, cfg)
        self.layers = [cls(cfg) for _ in range(cfg.decoder_layers)]
        self.layer_norm = _layer_norm(cfg)
        self.drop = Dropout(cfg.dropout)

    def cross_cache(self, encoder_states: Array) -> dict[str, dict[str, Array]]:
        """Per-layer cross-attention keys/values of the encoder states [G, S, D] (one row per clip)."""
        return {f"layers_{i}": layer.cross_key_value(encoder_states) for i, layer in enumerate(self.layers)}

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None,
        encoder_states: Array | None,
        encoder_mask: Array | None,
        *,
        deterministic: bool = True,
        cache: dict | None = None,
    ) -> tuple[Array, dict | None]:
        """input_ids: [B, L]; attention_mask: [B, L] bool or None; encoder_states: [B, S, D];
        encoder_mask: [B, S] bool. Returns (final-norm states [B, L, D], updated cache or None).

        With ``cache`` (from :meth:`MBart.init_cache`) the L tokens sit at positions
        ``cache["index"] ..``; ``attention_mask``/``encoder_states`` are then unused (keys come
        from the cache; decoder inputs are never padded while decoding), and ``encoder_mask``
        has the cross cache's rows (one per clip, ``[G, S]``).
        """
        cfg = self.cfg
        l = input_ids.shape[1]
        x = self.shared_embedding(input_ids)
        if cfg.scale_embedding:
            x = x * jnp.asarray(np.sqrt(cfg.d_model), x.dtype)
        start = jnp.zeros((), jnp.int32) if cache is None else cache["index"]
        positions = start + jnp.arange(l, dtype=jnp.int32)
        x = x + self.embed_positions(positions + POSITION_OFFSET)[None]
        x = self.layernorm_embedding(x)
        x = self.drop(x, deterministic=deterministic)

        if cache is None:
            causal = jnp.tril(jnp.ones((l, l), bool))[None, None]
            if attention_mask is not None:
                causal = causal & attention_mask.astype(bool)[:, None, None, :]
            self_mask = causal
        else:
            t_max = next(iter(cache["self"].values()))["k"].shape[2]
            self_mask = (jnp.arange(t_max)[None, :] <= positions[:, None])[None, None]  # [1,1,L,T]
        if encoder_mask is None:
            if cache is None:
                encoder_mask = jnp.ones(encoder_states.shape[:2], bool)
            else:
                encoder_mask = jnp.ones(next(iter(cache["cross"].values()))["k"].shape[::2], bool)  # [G, S]
        cross_mask = encoder_mask.astype(bool)[:, None, None, :]

        new_self = {}
        for i, layer in enumerate(self.layers):
            name = f"layers_{i}"
            if cache is None:  # teacher forcing; decoding steps keep the layout their cache has
                x = axes.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
            x, nc = layer(
                x, self_mask, encoder_states, cross_mask, deterministic,
                None if cache is None else cache["self"][name],
                None if cache is None else cache["cross"][name],
                None if cache is None else start,
            )
            new_self[name] = nc
        x = self.layer_norm(x)
        if cache is None:
            return x, None
        return x, {"index": start + l, "self": new_self, "cross": cache["cross"]}


class MBart(nn.Module):
    """mBART encoder-decoder with the tied LM head (``MBartForConditionalGeneration``).

    ``apply(variables, input_ids, attention_mask, decoder_input_ids)`` -> logits [B, L, V] float32.
    """

    cfg: MBartConfig

    def setup(self):
        cfg = self.cfg
        self.shared = _embed(cfg, cfg.vocab_size, rows=axes.VOCAB)
        self.encoder = MBartEncoder(cfg, shared_embedding=self.shared)
        self.decoder = MBartDecoder(cfg, shared_embedding=self.shared)
        # HF registers final_logits_bias as a buffer: not a parameter, never trained/counted.
        self.final_logits_bias = self.variable(
            "buffers", "final_logits_bias", lambda: jnp.zeros((cfg.vocab_size,), jnp.float32)
        )

    def encode(
        self,
        input_ids: Array | None,
        attention_mask: Array | None,
        *,
        inputs_embeds: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """input_ids: [B, S] (or inputs_embeds [B, S, D], unscaled), attention_mask: [B, S] bool
        -> encoder states [B, S, D]."""
        return self.encoder(input_ids, attention_mask, inputs_embeds=inputs_embeds, deterministic=deterministic)

    def lm_head(self, h: Array) -> Array:
        """h: [B, L, D] -> logits [B, L, V] float32 (tied embedding + final_logits_bias)."""
        emb = self.shared.embedding.astype(h.dtype)
        logits = jnp.einsum("bld,vd->blv", h, emb, preferred_element_type=jnp.float32)
        return logits + self.final_logits_bias.value.astype(jnp.float32)

    def decode_full(
        self,
        decoder_input_ids: Array,
        encoder_states: Array,
        encoder_mask: Array | None,
        decoder_attention_mask: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> Array:
        """Teacher-forced decoder: decoder_input_ids [B, L], encoder_states [B, S, D] -> logits [B, L, V]."""
        h, _ = self.decoder(
            decoder_input_ids, decoder_attention_mask, encoder_states, encoder_mask, deterministic=deterministic
        )
        return axes.constrain(self.lm_head(h), (axes.BATCH, axes.LENGTH, axes.VOCAB))

    def __call__(
        self,
        input_ids: Array | None,
        attention_mask: Array | None,
        decoder_input_ids: Array,
        decoder_attention_mask: Array | None = None,
        *,
        inputs_embeds: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """input_ids: [B, S] (or inputs_embeds [B, S, D]), attention_mask: [B, S] bool,
        decoder_input_ids: [B, L], decoder_attention_mask: [B, L] bool -> logits [B, L, V] f32."""
        states = self.encode(input_ids, attention_mask, inputs_embeds=inputs_embeds, deterministic=deterministic)
        return self.decode_full(
            decoder_input_ids, states, attention_mask, decoder_attention_mask, deterministic=deterministic
        )

    def init_cache(self, encoder_states: Array, max_length: int, beams: int = 1) -> dict:
        """Decoding cache for encoder states [G, S, D], ``beams`` decoder rows per clip and at
        most ``max_length`` decoder positions (both static). Cross-attention keys/values are
        computed here, once per clip.

        Layout: ``{"index": int32 scalar, "self": {layer: {"k", "v": [G * beams, H, max_length, Dh]}},
        "cross": {layer: {"k", "v": [G, H, S, Dh]}}}`` (head-major, see ``_heads_first``); decoder
        row ``g * beams + j`` is beam ``j`` of clip ``g``.
        """
        cfg = self.cfg
        n = encoder_states.shape[0] * int(beams)
        heads = cfg.decoder_attention_heads
        shape = (n, heads, max_length, cfg.d_model // heads)
        dtype = cfg.compute_dtype
        self_cache = {
            f"layers_{i}": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
            for i in range(cfg.decoder_layers)
        }
        return {
            "index": jnp.zeros((), jnp.int32),
            "self": self_cache,
            "cross": self.decoder.cross_cache(encoder_states),
        }

    def decode(self, decoder_input_ids: Array, cache: dict, encoder_mask: Array | None) -> tuple[Array, dict]:
        """One (or a few) cached decoding steps.

        decoder_input_ids: [N, Lq] tokens at positions ``cache["index"] ..``;
        encoder_mask: [G, S] bool, one row per clip (the cross cache's rows).
        Returns (logits [N, Lq, V] float32, new cache).
        """
        h, cache = self.decoder(decoder_input_ids, None, None, encoder_mask, deterministic=True, cache=cache)
        return self.lm_head(h), cache


def grow_cache(cache: dict, length: int) -> dict:
    """The same cache with room for ``length`` decoder positions (zero slots appended to the
    self-attention keys/values; the mask in :meth:`MBartDecoder.__call__` hides them until
    written). See :func:`hfa_jax.models.decode.cache_schedule` for why caches grow."""

    def pad(x: Array) -> Array:
        extra = length - x.shape[2]
        if extra < 0:
            raise ValueError(f"grow_cache: cache holds {x.shape[2]} positions, cannot shrink to {length}")
        return jnp.pad(x, ((0, 0), (0, 0), (0, extra), (0, 0)))

    return {"index": cache["index"], "self": jax.tree.map(pad, cache["self"]), "cross": cache["cross"]}


def reorder_cache(cache: dict, indices: Array) -> dict:
    """Gather the self-attention cache rows [N, ...] by ``indices`` [N] (beam reordering).

    Cross-attention entries are left alone: they are kept once per clip, and beams are only ever
    reordered within one clip.
    """
    return {
        "index": cache["index"],
        # Beam search builds in-range row indices: a plain gather, no out-of-range fill/select
        # pass over the whole cache (that pass cost as much as the gather itself on CPU).
        "self": jax.tree.map(lambda x: x.at[indices].get(mode="promise_in_bounds"), cache["self"]),
        "cross": cache["cross"],
    }


def encoder_variables(variables: Mapping[str, Any]) -> dict:
    """Map :class:`MBart` variables to a standalone :class:`MBartEncoder`'s
    (``shared`` -> ``embed_tokens``; the decoder and ``final_logits_bias`` are dropped)."""
    p = variables["params"]
    return {"params": {"embed_tokens": p["shared"], **p["encoder"]}}
