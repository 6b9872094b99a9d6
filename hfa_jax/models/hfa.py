"""The composed HFA models (docs/models_and_weights.md): pretraining (pseudo-gloss + video-text alignment) and
translation.

Shared visual trunk (``pixels [B, T, H, W, 3]`` normalised float32, ``frame_mask [B, T]`` bool)::

    frame_encoder (DINOv2 ViT, LoRA on blocks 9-11) -> final-norm CLS [B, T, 384]
    -> frame_proj Linear(384 -> 512) -> frame_bn (BatchNorm over valid frames only)
    -> temporal (post-LN local RoPE transformer, /2 downsampling) -> y [B, T', 1024], mask' [B, T']

:class:`HFAPretrain` adds the pseudo-gloss head (on ``y`` with the ``prototypes``), prepends
``cls_token`` to ``y`` and runs the LoRA mBART ``video_encoder`` on it (``inputs_embeds``: no
sqrt(d) scaling), pools it to ``video_vec``; the frozen ``text_encoder`` pools the target tokens
to ``text_vec``. :class:`HFATranslate` maps ``y`` with the ``mapper`` into ``mbart``'s encoder
and decodes.

Top-level parameter names (the freezing regexes in ``configs/common.py`` rely on them):
``frame_encoder``, ``frame_proj``, ``frame_bn``, ``temporal``, ``pg_head``, ``prototypes``
(``[V, 300]``: the fixed zero row 0 is not a parameter, it is prepended in the forward pass),
``cls_token``, ``logit_scale``, ``video_encoder``, ``text_encoder``, ``mapper``, ``mbart``.
BatchNorm running statistics live in ``batch_stats/frame_bn``; mBART's ``final_logits_bias``
in ``buffers``. ``deterministic=False`` means training: dropout on (needs the ``dropout``
rng) and batch statistics used and updated (apply with ``mutable=["batch_stats"]``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from hfa_jax.errors import CheckpointError, ConfigError
from hfa_jax.models import attention as attention_lib
from hfa_jax.models import axes
from hfa_jax.models.beyondgloss import BeyondGlossConfig, DescriptionFeedback, DescriptionProjector, HandPoseBranch
from hfa_jax.models.heads import MaskedBatchNorm, Mapper, PseudoGlossHead, torch_dense
from hfa_jax.models.lora import lora_scale
from hfa_jax.models import decode as decode_lib
from hfa_jax.models import packing
from hfa_jax.models.mbart import MBart, MBartConfig, MBartEncoder
from hfa_jax.models.temporal import TemporalConfig, TemporalEncoder
from hfa_jax.models.vit import ViT, ViTConfig

Array = jax.Array

__all__ = [
    "HFAConfig",
    "HFAPretrain",
    "HFATranslate",
    "lora_scale_rules",
    "build_model",
    "init_shapes",
    "graft",
]


@dataclasses.dataclass(frozen=True)
class HFAConfig:
    """Everything that shapes the HFA models. Build from a config tree with :meth:`from_config`."""

    vit: ViTConfig = ViTConfig()
    temporal: TemporalConfig = TemporalConfig()
    mbart: MBartConfig = MBartConfig(vocab_size=2172)
    frame_dim: int = 512
    num_pseudo_glosses: int = 2322  # V: prototype rows 1..V (row 0 is the fixed zero vector)
    proto_dim: int = 300
    pg_dropout: float = 0.2
    tau_class: float = 0.1
    tau_time: float = 0.1
    learnable_tau: bool = False
    masked_mean: bool = False  # reference: video/text means include padding positions
    logit_scale_init: float = float(np.log(1 / 0.07))
    bn_momentum: float = 0.1  # PyTorch convention (weight of the new batch)
    bn_eps: float = 1e-5
    # frame_bn normalises with its running statistics in training too (a frozen BatchNorm): then
    # no statistics of a (micro-)batch enter the step, so train.microbatches=K gives exactly the
    # one-batch step (train/microbatch.py). Default: batch statistics, as the paper.
    frozen_bn: bool = False
    dtype: str = "float32"  # compute dtype for every submodule; params stay float32
    remat: bool = False
    attention: str = "xla"  # xla | cudnn | pallas | auto, for every submodule (models/attention.py)
    beyondgloss: BeyondGlossConfig = BeyondGlossConfig()  # docs/beyondgloss.md heads (off by default)
    # The authors' frozen text encoder (clip_models.py TextCLIP) runs in train mode: mBART's dropout
    # is on while pretraining (True). Default: a fully frozen encoder without dropout.
    text_encoder_dropout: bool = False

    def __post_init__(self):
        if self.temporal.width != self.frame_dim:
            raise ConfigError(f"model.temporal.width ({self.temporal.width}) must equal model.frame_dim ({self.frame_dim})")
        if self.beyondgloss.desc_feedback:  # mBART reads concat[temporal output, feedback]
            if 2 * self.temporal.out_dim != self.mbart.d_model:
                raise ConfigError(f"model.beyondgloss.desc_feedback: model.temporal.out_dim ({self.temporal.out_dim}) "
                                  f"must be half of model.mbart.d_model ({self.mbart.d_model})")
        elif self.temporal.out_dim != self.mbart.d_model:
            raise ConfigError(
                f"model.temporal.out_dim ({self.temporal.out_dim}) must equal model.mbart.d_model ({self.mbart.d_model})"
            )

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> "HFAConfig":
        """From a (ConfigDict / dict) model config as made by ``configs.common.model_config``.

        ``dtype``, ``remat`` and ``attention`` at the top level are pushed into every submodule
        config. Unknown fields raise ConfigError naming them (the per-model attention keys of
        earlier versions are read with a deprecation warning).
        """
        c = attention_lib.upgrade_legacy_keys(dict(c.to_dict() if hasattr(c, "to_dict") else c))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(c) - known)
        if unknown:
            raise ConfigError(f"model config: unknown field(s) {unknown}; valid: {sorted(known)}")
        dtype = c.get("dtype", "float32")
        remat = bool(c.get("remat", False))
        attention = attention_lib.check_choice(c.get("attention", "xla"), "model.attention")

        def sub(kind, fields_cls, values, **forced):
            values = dict(values or {})
            names = {f.name for f in dataclasses.fields(fields_cls)}
            bad = sorted(set(values) - names)
            if bad:
                raise ConfigError(f"model config: unknown field(s) model.{kind}.{bad}; valid: {sorted(names)}")
            values.update(forced)
            for k, v in list(values.items()):
                if isinstance(v, list):
                    values[k] = tuple(v)
            return fields_cls(**values)

        out = dict(c)
        shared = dict(dtype=dtype, remat=remat, attention=attention)
        out["vit"] = sub("vit", ViTConfig, c.get("vit"), **shared)
        out["temporal"] = sub("temporal", TemporalConfig, c.get("temporal"), **shared)
        out["mbart"] = sub("mbart", MBartConfig, c.get("mbart"), **shared)
        out["beyondgloss"] = BeyondGlossConfig.from_config(c.get("beyondgloss"))
        return cls(**out)

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def text_encoder_cfg(self) -> MBartConfig:
        """The frozen text encoder: same mBART encoder shape, no LoRA, no dropout (unless
        ``text_encoder_dropout``)."""
        if self.text_encoder_dropout:
            return dataclasses.replace(self.mbart, lora_rank=0)
        return dataclasses.replace(self.mbart, lora_rank=0, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def lora_scale_rules(cfg: HFAConfig) -> list[tuple[str, float]]:
    """``(regex, alpha / r)`` rules for :func:`hfa_jax.models.lora.merge_lora` on HFA params."""
    return [
        (r"^frame_encoder/", lora_scale(cfg.vit.lora_rank, cfg.vit.lora_alpha)),
        (r"^(mbart|video_encoder|text_encoder)/", lora_scale(cfg.mbart.lora_rank, cfg.mbart.lora_alpha)),
    ]


class _VisualTrunk(nn.Module):
    """Frames -> temporal features; inherited by both models so the parameter names are top level."""

    cfg: HFAConfig

    def _visual_setup(self):
        cfg = self.cfg
        self.frame_encoder = ViT(cfg.vit)
        self.frame_proj = torch_dense(cfg.frame_dim, cfg.vit.width, cfg.compute_dtype)
        self.frame_bn = MaskedBatchNorm(momentum=cfg.bn_momentum, epsilon=cfg.bn_eps, dtype=cfg.compute_dtype)
        bg = cfg.beyondgloss
        tcfg = cfg.temporal
        if bg.hand_pose and tcfg.zero_padded_inputs:  # zeroed before the hand branch (encode_frames_aux)
            tcfg = dataclasses.replace(tcfg, zero_padded_inputs=False)
        self.temporal = TemporalEncoder(tcfg)
        if bg.hand_pose:  # docs/beyondgloss.md: student + feedback between frame_bn and temporal
            self.hand_pose = HandPoseBranch(bg.hand_dim, bg.feedback_dropout, dtype=cfg.compute_dtype)
        if bg.desc_feedback:  # the authors' mapper_1/mapper_2 after the temporal encoder
            self.desc_feedback = DescriptionFeedback(bg.desc_width(cfg.mbart.d_model), bg.feedback_dropout,
                                                     dtype=cfg.compute_dtype)

    def encode_frames_aux(self, pixels: Array, frame_mask: Array, deterministic: bool = True,
                          return_hidden: bool = False, frame_index: Array | None = None,
                          ) -> tuple[Array, Array, dict[str, Array]]:
        """:meth:`encode_frames` plus ``aux``: ``hand_pred [B, T, 288]`` (with the hand-pose
        branch), ``temporal_hidden [B, T', 512]`` (with ``return_hidden``) and
        ``desc_features [B, T', 1024]`` (with ``beyondgloss.desc_feedback``).

        ``frame_index [G, P]`` (:func:`hfa_jax.models.packing.pack_index` of ``frame_mask``): run
        the frame encoder on the ``G * P`` packed valid frames only; padded frames get zero
        features, which the masked BatchNorm and the temporal encoder ignore."""
        b, t = pixels.shape[:2]
        if frame_index is None:
            cls = self.frame_encoder(pixels.reshape(b * t, *pixels.shape[2:]), deterministic, cls_only=True)
            x = cls[:, 0].reshape(b, t, -1)  # final-norm CLS per frame
        else:
            cls = self.frame_encoder(packing.gather_frames(pixels, frame_index), deterministic, cls_only=True)
            x = packing.scatter_frames(cls[:, 0], frame_index, b, t)
        x = axes.constrain(self.frame_proj(x), (axes.BATCH, axes.FRAMES, axes.EMBED))
        x = self.frame_bn(x, frame_mask, use_running_average=deterministic or self.cfg.frozen_bn)
        aux: dict[str, Array] = {}
        bg = self.cfg.beyondgloss
        if bg.hand_pose:
            if self.cfg.temporal.zero_padded_inputs:  # the authors pad with zeros before hamer_mapper_1
                x = jnp.where(frame_mask.astype(bool)[..., None], x, 0).astype(x.dtype)
            x, aux["hand_pred"] = self.hand_pose(x, deterministic)
        outs = self.temporal(x, frame_mask.astype(bool), deterministic, return_hidden=return_hidden)
        if return_hidden:
            aux["temporal_hidden"] = outs[2]
        y = outs[0]
        if bg.desc_feedback:
            y, aux["desc_features"] = self.desc_feedback(y, deterministic)
        return y, outs[1], aux

    def encode_frames(self, pixels: Array, frame_mask: Array, deterministic: bool = True,
                      frame_index: Array | None = None) -> tuple[Array, Array]:
        """pixels: [B, T, H, W, 3] f32, frame_mask: [B, T] bool ->
        (y [B, T', 1024], temporal_mask [B, T'] bool), T' = ceil(T / 2). ``frame_index``: see
        :meth:`encode_frames_aux`."""
        y, tmask, _ = self.encode_frames_aux(pixels, frame_mask, deterministic, frame_index=frame_index)
        return y, tmask


def _mean(x: Array, mask: Array, masked: bool) -> Array:
    """x: [B, S, D], mask: [B, S] -> [B, D] float32 (plain mean over all S, or masked mean)."""
    xf = x.astype(jnp.float32)
    if not masked:
        return xf.mean(axis=1)
    m = mask.astype(jnp.float32)[..., None]
    return (xf * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


def _l2n(x: Array) -> Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class HFAPretrain(_VisualTrunk):
    """Pretraining model.

    ``apply(vars, pixels [B,T,H,W,3], frame_mask [B,T] bool, text_ids [B,L] int32,
    text_mask [B,L] bool, deterministic=True)`` -> dict with
    ``pg_scores [B, V+1]`` (per-class score p), ``pg_sim [B, T', V+1]`` (cosine similarities),
    ``video_vec [B, 1024]``, ``text_vec [B, 1024]`` (L2-normalised, float32),
    ``logit_scale []`` (= exp(s)), ``temporal_mask [B, T']`` bool. The BeyondGloss switches
    (:class:`~hfa_jax.models.beyondgloss.BeyondGlossConfig`) add ``hand_pred``,
    ``video_desc_vec``, ``desc_vec``, and remove ``pg_*`` (``pseudo_gloss_head=False``) or
    ``text_vec`` (``text_encoder=False``).

    ``text_vec [B, D]`` (optional input): the text encoder's sentence vectors computed beforehand
    with :meth:`encode_text` (deterministic); the text encoder then does not run, and the output
    ``text_vec`` is that input (float32, without gradient).
    """

    def setup(self):
        cfg = self.cfg
        bg = cfg.beyondgloss
        self._visual_setup()
        if bg.pseudo_gloss_head:
            self.pg_head = PseudoGlossHead(
                proto_dim=cfg.proto_dim,
                dropout=cfg.pg_dropout,
                tau_class=cfg.tau_class,
                tau_time=cfg.tau_time,
                learnable_tau=cfg.learnable_tau,
                dtype=cfg.compute_dtype,
            )
            # Trainable prototypes 1..V (fastText vectors in practice); row 0 is prepended as zeros.
            self.prototypes = self.param(
                "prototypes", axes.param(nn.initializers.normal(1.0), (axes.VOCAB, None)),
                (cfg.num_pseudo_glosses, cfg.proto_dim)
            )
        d = cfg.mbart.d_model
        if bg.cls_token:
            self.cls_token = self.param("cls_token", axes.param(nn.initializers.normal(0.02),
                                                                (None, None, axes.EMBED)), (1, 1, d))
        self.logit_scale = self.param("logit_scale", axes.param(nn.initializers.constant(cfg.logit_scale_init), ()),
                                      ())
        self.video_encoder = MBartEncoder(cfg.mbart)
        if bg.text_encoder:
            self.text_encoder = MBartEncoder(cfg.text_encoder_cfg)
        if bg.description_head:
            # docs/beyondgloss.md: GELU(Linear 512->1024) of the temporal features
            self.desc_proj = DescriptionProjector(features=cfg.beyondgloss.desc_width(d), masked=cfg.masked_mean,
                                                  dtype=cfg.compute_dtype)

    def __call__(
        self,
        pixels: Array,
        frame_mask: Array,
        text_ids: Array,
        text_mask: Array,
        deterministic: bool = True,
        desc_ids: Array | None = None,
        desc_mask: Array | None = None,
        desc_vec: Array | None = None,
        frame_index: Array | None = None,
        text_vec: Array | None = None,
    ) -> dict[str, Array]:
        cfg = self.cfg
        bg = cfg.beyondgloss
        y, tmask, aux = self.encode_frames_aux(pixels, frame_mask, deterministic, return_hidden=bg.description_head,
                                               frame_index=frame_index)
        out: dict[str, Array] = {}
        if bg.pseudo_gloss_head:
            protos = jnp.concatenate([jnp.zeros((1, cfg.proto_dim), self.prototypes.dtype), self.prototypes], 0)
            out["pg_scores"], out["pg_sim"] = self.pg_head(y, tmask, protos, deterministic)

        b = y.shape[0]
        if bg.cls_token:
            cls = jnp.broadcast_to(self.cls_token.astype(y.dtype), (b, 1, y.shape[-1]))
            vin = jnp.concatenate([cls, y], axis=1)
            vmask = jnp.concatenate([jnp.ones((b, 1), bool), tmask], axis=1)
        else:
            vin, vmask = y, tmask
        if self.is_initializing():
            # The video encoder only sees inputs_embeds, but it is a full mBART encoder (its token
            # embedding is part of the checkpoint and of the paper's parameter count): create it.
            _ = self.video_encoder(text_ids[:, :1], None, deterministic=True)
        vstates = self.video_encoder(None, vmask, inputs_embeds=vin, deterministic=deterministic)
        video_vec = _l2n(_mean(vstates, vmask, cfg.masked_mean))

        out.update(video_vec=video_vec, logit_scale=jnp.exp(self.logit_scale), temporal_mask=tmask)
        if bg.text_encoder and text_vec is not None and not self.is_initializing():
            # Precomputed by encode_text (once per sentence, hfa_jax.train.text_vectors).
            out["text_vec"] = jax.lax.stop_gradient(text_vec.astype(jnp.float32))
        elif bg.text_encoder:
            # Fully frozen text encoder: no gradient, no dropout unless text_encoder_dropout.
            out["text_vec"] = self.encode_text(text_ids, text_mask,
                                               deterministic=deterministic or not cfg.text_encoder_dropout)
        if bg.hand_pose:
            out["hand_pred"] = aux["hand_pred"]
        if bg.description:
            if bg.description_from == "video_encoder":  # Desc_Clip: the video encoder's mean
                out["video_desc_vec"] = video_vec
            elif bg.desc_feedback:  # the authors' ImageCLIP: mean of GELU(mapper_1(h)) over all T'
                out["video_desc_vec"] = _l2n(_mean(aux["desc_features"], tmask, cfg.masked_mean))
            else:
                out["video_desc_vec"] = self.desc_proj(aux["temporal_hidden"], tmask)
            if desc_vec is not None:  # precomputed (the authors' offline mBART-large-50 vectors)
                out["desc_vec"] = _l2n(desc_vec.astype(jnp.float32))
            elif desc_ids is not None and bg.text_encoder:  # encoded by the same fully frozen text encoder
                dstates = self.text_encoder(desc_ids, desc_mask, deterministic=True)
                out["desc_vec"] = jax.lax.stop_gradient(_l2n(_mean(dstates, desc_mask, cfg.masked_mean)))
            elif not self.is_initializing():
                raise ConfigError("model.beyondgloss.description is on but the batch has no desc_ids/desc_vec; "
                                  "the dataset needs a `description` (or `description_vec`) feature")
        return out

    def encode_text(self, text_ids: Array, text_mask: Array, deterministic: bool = True) -> Array:
        """The frozen text encoder's sentence vectors: ``text_ids [B, L]``, ``text_mask [B, L]`` ->
        ``text_vec [B, D]`` float32, L2-normalised, without gradient. Deterministic (the default)
        it depends on the sentence alone, so a trainer may compute it once per sentence and pass
        it to ``__call__`` as ``text_vec``; ``__call__`` computes it with this same method."""
        tstates = self.text_encoder(text_ids, text_mask, deterministic=deterministic)
        return jax.lax.stop_gradient(_l2n(_mean(tstates, text_mask, self.cfg.masked_mean)))


class HFATranslate(_VisualTrunk):
    """Translation model.

    ``apply(vars, pixels [B,T,H,W,3], frame_mask [B,T] bool, decoder_input_ids [B,L] int32,
    decoder_mask [B,L] bool | None, deterministic=True)`` -> logits [B, L, V] float32.
    ``apply(vars, pixels, frame_mask, method=HFATranslate.encode)`` -> (states [B,T',1024], mask [B,T']).
    Beam search: :meth:`generate`.
    """

    def setup(self):
        cfg = self.cfg
        self._visual_setup()
        if cfg.beyondgloss.mapper:
            self.mapper = Mapper(cfg.mbart.d_model, dtype=cfg.compute_dtype)
        self.mbart = MBart(cfg.mbart)

    def encode(self, pixels: Array, frame_mask: Array, deterministic: bool = True,
               frame_index: Array | None = None) -> tuple[Array, Array]:
        """pixels, frame_mask -> (mBART encoder states [B, T', D], encoder mask [B, T'] bool).
        ``frame_index``: packed valid frames, see :meth:`encode_frames_aux`."""
        y, tmask = self.encode_frames(pixels, frame_mask, deterministic, frame_index=frame_index)
        h = self.mapper(y) if self.cfg.beyondgloss.mapper else y  # the authors' sign_proj: False
        states = self.mbart.encode(None, tmask, inputs_embeds=h, deterministic=deterministic)
        return states, tmask

    def __call__(
        self,
        pixels: Array,
        frame_mask: Array,
        decoder_input_ids: Array,
        decoder_mask: Array | None = None,
        deterministic: bool = True,
        frame_index: Array | None = None,
    ) -> Array:
        states, tmask = self.encode(pixels, frame_mask, deterministic, frame_index=frame_index)
        return self.mbart.decode_full(decoder_input_ids, states, tmask, decoder_mask, deterministic=deterministic)

    @nn.nowrap
    def generate(
        self,
        variables: Any,
        pixels: Array,
        frame_mask: Array,
        *,
        num_beams: int = 4,
        max_new_tokens: int = 150,
        length_penalty: float = 1.0,
        early_stopping: Any = False,
        decoder_start_token_id: int | None = None,
        forced_bos_token_id: int | None = None,
        forced_eos_token_id: int | None = -1,
        cache_lengths: tuple[int, ...] | None = None,
        frame_index: Array | None = None,
    ):
        """Beam-search translation (call on the unbound module: ``model.generate(vars, ...)``;
        jit it with the keywords static). Returns :class:`hfa_jax.models.decode.BeamSearchOutput`
        (``sequences [B, 1 + max_new_tokens]`` starting with the start token).

        ``decoder_start_token_id`` defaults to ``cfg.mbart.decoder_start_token_id`` (de_DE);
        ``forced_eos_token_id=-1`` means the mBART config's value, None disables it;
        ``cache_lengths``: the decoding cache's growth (:func:`hfa_jax.models.decode.generate`);
        ``frame_index``: packed valid frames, see :meth:`encode_frames_aux`.
        """
        mcfg = self.cfg.mbart
        start = mcfg.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id
        if start is None:
            raise ConfigError("HFATranslate.generate: set model.mbart.decoder_start_token_id (the de_DE id)")
        feos = mcfg.forced_eos_token_id if forced_eos_token_id == -1 else forced_eos_token_id
        fbos = mcfg.forced_bos_token_id if forced_bos_token_id is None else forced_bos_token_id
        states, mask = self.apply(variables, pixels, frame_mask, frame_index=frame_index, method=HFATranslate.encode)
        init_fn, dec_fn = decode_lib.mbart_step_fns(
            self, variables, method_owner=lambda m: m.mbart, mbart_path=("mbart",)
        )
        return decode_lib.generate(
            init_fn, dec_fn, states, mask, num_beams=num_beams, max_new_tokens=max_new_tokens,
            decoder_start_token_id=start, eos_token_id=mcfg.eos_token_id, pad_token_id=mcfg.pad_token_id,
            length_penalty=length_penalty, early_stopping=early_stopping,
            forced_bos_token_id=fbos, forced_eos_token_id=feos, cache_lengths=cache_lengths,
        )


# --------------------------------------------------------------------------- helpers
def build_model(cfg: HFAConfig, kind: str) -> nn.Module:
    """kind: "pretrain" -> HFAPretrain, "translate" -> HFATranslate."""
    if kind == "pretrain":
        return HFAPretrain(cfg)
    if kind == "translate":
        return HFATranslate(cfg)
    raise ConfigError(f"unknown model kind {kind!r}; use 'pretrain' or 'translate'")


def sample_inputs(kind: str, batch: int = 1, frames: int = 2, image: int = 224, text_len: int = 4) -> tuple:
    """Dummy inputs for init / eval_shape (shapes only matter)."""
    pixels = jnp.zeros((batch, frames, image, image, 3), jnp.float32)
    fmask = jnp.ones((batch, frames), bool)
    ids = jnp.zeros((batch, text_len), jnp.int32)
    tmask = jnp.ones((batch, text_len), bool)
    return (pixels, fmask, ids, tmask)


def init_shapes(cfg: HFAConfig, kind: str, image: int = 224) -> dict:
    """``jax.eval_shape`` of ``model.init``: the variables tree as ShapeDtypeStructs (no FLOPs)."""
    model = build_model(cfg, kind)
    args = sample_inputs(kind, image=image)
    return jax.eval_shape(lambda r: model.init({"params": r, "dropout": r}, *args), jax.random.key(0))


def graft(variables: Mapping[str, Any], subtree: Mapping[str, Any], at: str, collection: str = "params") -> dict:
    """Replace ``variables[collection][at]`` by ``subtree`` (e.g. imported ViT / mBART params),
    checking that every leaf exists with the same shape. Leaves of the target missing from
    ``subtree`` (e.g. fresh LoRA adapters) are kept. Returns a new variables dict."""
    target = variables[collection][at]
    flat_t = dict(jax.tree_util.tree_flatten_with_path(target)[0])
    flat_s = dict(jax.tree_util.tree_flatten_with_path(subtree)[0])
    for path, leaf in flat_s.items():
        name = f"{collection}/{at}/" + "/".join(str(getattr(k, "key", k)) for k in path)
        if path not in flat_t:
            raise CheckpointError(f"graft: {name} does not exist in the model")
        if tuple(np.shape(leaf)) != tuple(np.shape(flat_t[path])):
            raise CheckpointError(f"graft: {name} has shape {np.shape(leaf)}, model expects {np.shape(flat_t[path])}")
    merged = jax.tree_util.tree_map_with_path(lambda p, x: flat_s.get(p, x), target)
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in variables.items()}
    out[collection][at] = merged
    return out
