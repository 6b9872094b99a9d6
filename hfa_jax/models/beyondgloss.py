"""BeyondGloss hand-centric heads (docs/beyondgloss.md): hand-pose distillation with feedback, and the
hand-motion description projector.

Both are optional pretraining objectives layered on the HFA visual trunk (``hfa.py``); they are
switched on by ``config.model.beyondgloss.{hand_pose,description}`` (:class:`BeyondGlossConfig`).

Where they sit in the trunk (reference: elsobhano/BeyondGloss ``slt_framework/models/clip_models.py``,
``FeatureExtracter.forward``)::

    CLS [B,T,384] -> frame_proj -> frame_bn -> x [B,T,512]
        hand_pose:   pred = GELU(Linear 512->288)(x)                      (HandPoseStudent; "hamer_mapper_1")
                     fb   = Dropout 0.1(Linear 288->512)(pred)            (HandPoseFeedback; "hamer_mapper_2")
                     x    = GELU(Linear 1024->512)(concat[x, fb]))        ("mapper_1_downsample")
    -> temporal blocks -> h [B,T',512] -> Linear 512->1024 -> y [B,T',1024]
        description: d = GELU(Linear 512->1024)(h)  ("mapper_1"), pooled over time -> [B,1024]

Reference conventions matched here (all from ``clip_models.py``):

* The feedback consumes the *activated* student output (``hamer_1_activated``), which is also
  the prediction regressed onto the HaMeR targets; the dropout is applied after the 288->512
  linear; the concatenation order is ``[frame feature, feedback]``.
* The description projection takes the 512-d temporal features and is pooled with a plain mean
  over *all* T' positions, padding included (``img_to_desc.mean(dim=1)``, ``ImageCLIP.forward``),
  like HFA's video/text means; ``masked=True`` gives the masked mean instead (a switch; docs/models_and_weights.md).
* These linears are plain ``nn.Linear`` outside the temporal ``Transformer`` (whose
  ``_init_weights`` only touches its own submodules), so they use PyTorch's default init.
* The reference additionally feeds the description projection back into the video path
  (``mapper_2`` 1024->512, dropout, concatenated with the 512-d temporal output to form the
  1024-d mBART input, replacing HFA's Linear 512->1024). docs/beyondgloss.md leaves out that path;
  ``desc_feedback=True`` (:class:`DescriptionFeedback`) adds it, as the authors' checkpoints have
  it (docs/coming_from_pytorch.md)::

        h [B,T',512] = temporal output (out_proj 512->512, the authors' d_llm=512)
        d  = GELU(Linear 512->1024)(h)                 ("mapper_1"; the description features)
        y  = concat[h, Dropout 0.1(Linear 1024->512)(d)]  [B,T',1024]   ("mapper_2")
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from hfa_jax.errors import ConfigError
from hfa_jax.hand_pose import HAND_POSE_DIM
from hfa_jax.models.activations import gelu
from hfa_jax.models.dropout import Dropout
from hfa_jax.models import axes
from hfa_jax.models.heads import torch_dense

Array = jax.Array

# Where the description alignment's video vector comes from (BeyondGlossConfig.description_from).
DESCRIPTION_SOURCES = ("features", "video_encoder")

__all__ = [
    "BeyondGlossConfig",
    "HAND_POSE_DIM",
    "HandPoseStudent",
    "HandPoseFeedback",
    "HandPoseBranch",
    "DescriptionProjector",
    "DescriptionFeedback",
    "DESCRIPTION_SOURCES",
    "pool_time",
]



@dataclasses.dataclass(frozen=True)
class BeyondGlossConfig:
    """``config.model.beyondgloss``: which BeyondGloss heads the model has.

    Attributes:
      description: add the description projector (pretraining only; output ``video_desc_vec``).
      description_vectors: take the description vectors precomputed offline (dataset feature
        ``description_vec``, as the authors' mBART-large-50 vectors) instead of encoding the
        ``description`` text with the model's frozen text encoder (default).
      hand_pose: add the hand-pose student + feedback to the visual trunk (pretraining *and*
        translation models: the feedback changes the frame features the temporal encoder sees).
      hand_dim: target width per frame (HaMeR MANO rotations: 288).
      feedback_dropout: dropout after the hand_dim -> frame_dim feedback linear (reference 0.1).
      desc_dim: width of the description vectors; 0 = the text encoder's width (mBART d_model).
        Must equal the precomputed vectors' width when ``description_vectors``.

    The description projection is pooled like the video/text vectors (``HFAConfig.masked_mean``:
    False = the reference's mean over all positions, padding included).

    The authors' BeyondGloss code (elsobhano/BeyondGloss ``slt_framework/models/clip_models.py``)
    differs from docs/beyondgloss.md in the parts below; converted checkpoints set them
    (docs/coming_from_pytorch.md), every default is the HFA model:

      desc_feedback: ``FeatureExtracter.mapper_1``/``mapper_2``: the description features are
        ``GELU(Linear(h))`` of the temporal *output* ``h`` (``model.temporal.out_dim`` = half of
        mBART's width, their ``d_llm=512``), fed back through ``Linear`` + dropout
        (``feedback_dropout``) and concatenated with ``h`` into the mBART input (no
        ``desc_proj``; parameters ``desc_feedback/{mapper_1,mapper_2}``, in both models).
      pseudo_gloss_head: False = no pseudo-gloss head and prototypes (their ``ImageCLIP``).
      cls_token: False = the video encoder reads the temporal output without a CLS token.
      text_encoder: False = no text encoder and no ``text_vec`` (``Desc_Clip``, Pretrain_desc.py).
      description_from: ``"features"`` (the description head) or ``"video_encoder"``: the
        description alignment uses the video encoder's mean, ``video_vec`` (``Desc_Clip``).
      mapper: False = the trunk output enters mBART as is (their ``sign_proj: False``:
        ``gloss_free_model.sign_emb`` is ``nn.Identity``); translation model only.

    A pretraining model without the pseudo-gloss head or without the text encoder has no
    hfa_jax training loss yet (``hfa_jax.train.schema.validate`` refuses it); it converts,
    evaluates and initialises fine-tuning (``train.init_from``).
    """

    description: bool = False
    description_vectors: bool = False
    hand_pose: bool = False
    hand_dim: int = HAND_POSE_DIM
    feedback_dropout: float = 0.1
    desc_dim: int = 0
    desc_feedback: bool = False
    pseudo_gloss_head: bool = True
    cls_token: bool = True
    text_encoder: bool = True
    description_from: str = "features"
    mapper: bool = True

    @classmethod
    def from_config(cls, c: Mapping[str, Any] | None) -> "BeyondGlossConfig":
        """From a dict / ConfigDict (``config.model.beyondgloss``); unknown keys raise ConfigError."""
        if c is None:
            return cls()
        if isinstance(c, cls):
            return c
        c = dict(c.to_dict() if hasattr(c, "to_dict") else c)
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(c) - names)
        if bad:
            raise ConfigError(f"model config: unknown field(s) model.beyondgloss.{bad}; valid: {sorted(names)}")
        out = cls(**c)
        if out.hand_dim <= 0 or out.desc_dim < 0:
            raise ConfigError(f"model.beyondgloss: hand_dim ({out.hand_dim}) must be positive and desc_dim "
                              f"({out.desc_dim}) >= 0 (0 = the text encoder's width)")
        if out.description_vectors and not out.description:
            raise ConfigError("model.beyondgloss.description_vectors=True needs model.beyondgloss.description=True")
        if not 0.0 <= out.feedback_dropout < 1.0:
            raise ConfigError(f"model.beyondgloss.feedback_dropout={out.feedback_dropout} must be in [0, 1)")
        if out.description_from not in DESCRIPTION_SOURCES:
            raise ConfigError(f"model.beyondgloss.description_from={out.description_from!r} is not one of "
                              f"{DESCRIPTION_SOURCES}")
        if out.description_from == "video_encoder" and not out.description:
            raise ConfigError("model.beyondgloss.description_from='video_encoder' needs "
                              "model.beyondgloss.description=True")
        if not out.text_encoder and out.description and not out.description_vectors:
            raise ConfigError("model.beyondgloss.text_encoder=False needs description_vectors=True (no encoder "
                              "is left to encode the description text)")
        return out

    @property
    def enabled(self) -> bool:
        return self.description or self.hand_pose

    @property
    def description_head(self) -> bool:
        """Whether the description alignment reads its own head, ``desc_proj`` (docs/beyondgloss.md),
        rather than the authors' ``mapper_1`` features or the video encoder's mean."""
        return self.description and self.description_from == "features" and not self.desc_feedback

    def desc_width(self, text_width: int) -> int:
        """Width of the description vectors: ``desc_dim`` or, when 0, the text encoder's."""
        return self.desc_dim or text_width


def pool_time(x: Array, mask: Array, masked: bool) -> Array:
    """x: [B, S, D], mask: [B, S] bool -> [B, D] float32.

    ``masked=False``: plain mean over all S positions (padding included; the reference);
    ``masked=True``: mean over the valid positions (at least one is assumed; guarded by max(n, 1)).
    """
    xf = x.astype(jnp.float32)
    if not masked:
        return xf.mean(axis=1)
    m = mask.astype(jnp.float32)[..., None]
    return (xf * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


class HandPoseStudent(nn.Module):
    """Per-frame hand-pose regressor: ``x [B, T, D] -> pred [B, T, hand_dim] = GELU(Linear(x))``.

    Exact (erf) GELU, as ``torch.nn.GELU()``. Parameters: ``proj/{kernel [D, hand_dim], bias}``.
    """

    hand_dim: int = HAND_POSE_DIM
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = torch_dense(self.hand_dim, x.shape[-1], self.dtype, name="proj", kernel_axes=(axes.EMBED, None))(x)
        return gelu(h)


class HandPoseFeedback(nn.Module):
    """Feeds the hand-pose prediction back into the frame features (docs/beyondgloss.md).

    ``x [B, T, D]`` (frame features after Linear+BN), ``pred [B, T, hand_dim]`` ->
    ``GELU(Linear_{2D->D}(concat[x, Dropout(Linear_{hand_dim->D}(pred))]))`` ``[B, T, D]``.
    Parameters: ``up/{kernel [hand_dim, D], bias}``, ``fuse/{kernel [2D, D], bias}``.
    """

    dropout: float = 0.1
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, pred: Array, deterministic: bool = True) -> Array:
        d = x.shape[-1]
        fb = torch_dense(d, pred.shape[-1], self.dtype, name="up")(pred)
        fb = Dropout(self.dropout)(fb, deterministic=deterministic)
        h = jnp.concatenate([x.astype(fb.dtype), fb], axis=-1)
        h = torch_dense(d, 2 * d, self.dtype, name="fuse")(h)
        return gelu(h)


class HandPoseBranch(nn.Module):
    """Student + feedback, the unit ``hfa.py`` inserts between ``frame_bn`` and ``temporal``.

    ``x [B, T, D]`` -> ``(x' [B, T, D], pred [B, T, hand_dim])``; submodules ``student`` and
    ``feedback`` (parameter paths ``hand_pose/student/proj/...``, ``hand_pose/feedback/{up,fuse}/...``
    when the branch is named ``hand_pose``).
    """

    hand_dim: int = HAND_POSE_DIM
    dropout: float = 0.1
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> tuple[Array, Array]:
        pred = HandPoseStudent(self.hand_dim, self.dtype, name="student")(x)
        x_new = HandPoseFeedback(self.dropout, self.dtype, name="feedback")(x, pred, deterministic)
        return x_new, pred


class DescriptionProjector(nn.Module):
    """Video side of the description alignment (docs/beyondgloss.md).

    ``h [B, T', D_t]`` (512-d temporal features, *before* the temporal encoder's 512->1024
    output projection), ``mask [B, T'] bool`` -> ``video_desc_vec [B, features]`` float32,
    L2-normalised: ``normalize(pool(GELU(Linear_{D_t->features}(h))))`` with ``pool`` =
    :func:`pool_time` (``masked=False``: the reference's plain mean over all positions).
    Parameters: ``proj/{kernel [D_t, features], bias}``.
    """

    features: int = 1024
    masked: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, h: Array, mask: Array) -> Array:
        z = gelu(torch_dense(self.features, h.shape[-1], self.dtype, name="proj")(h))
        v = pool_time(z, mask, self.masked)
        return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


class DescriptionFeedback(nn.Module):
    """The authors' description path in the trunk (``FeatureExtracter.mapper_1`` / ``mapper_2``,
    elsobhano/BeyondGloss ``slt_framework/models/clip_models.py``).

    ``h [B, T', D]`` (temporal output) -> ``(y [B, T', 2 D], desc [B, T', features])`` with
    ``desc = GELU(mapper_1(h))`` (the description features, pooled by the pretraining model) and
    ``y = concat[h, Dropout(mapper_2(desc))]`` (the mBART input; order ``[h, feedback]`` as theirs).
    Parameters: ``mapper_1/{kernel [D, features], bias}``, ``mapper_2/{kernel [features, D], bias}``.
    """

    features: int = 1024
    dropout: float = 0.1
    dtype: Any = None

    @nn.compact
    def __call__(self, h: Array, deterministic: bool = True) -> tuple[Array, Array]:
        d = h.shape[-1]
        desc = gelu(torch_dense(self.features, d, self.dtype, name="mapper_1", kernel_axes=(None, axes.EMBED))(h))
        fb = torch_dense(d, self.features, self.dtype, name="mapper_2", kernel_axes=(axes.EMBED, None))(desc)
        fb = Dropout(self.dropout)(fb, deterministic=deterministic)
        return jnp.concatenate([h.astype(fb.dtype), fb], axis=-1), desc
