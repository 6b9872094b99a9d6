"""BeyondGloss pretraining objectives (docs/beyondgloss.md), added on top of HFA's pretraining loss.

Reference: elsobhano/BeyondGloss ``slt_framework/models/Pretrain_Model.py``
(``training_step``: ``total = clip + landa_desc * clip_desc + landa_hamer * hamer``;
``masked_l2_loss``) and ``slt_framework/models/clip_models.py`` (``SLRCLIP.forward``: the
description logits). Best weights in the authors' README: ``landa_desc = 0.5``,
``landa_hamer = 0.3`` (the script defaults of 1.0 are not what the paper used).

* Description alignment: exactly the video–sentence alignment loss of HFA
  (:func:`hfa_jax.train.losses.alignment_loss`: symmetric KL to ``softmax(10 I)`` rows), between
  the pooled description projection of the video and the frozen-encoder vector of the
  description. The reference scales these logits with the *same* ``logit_scale`` as the
  sentence alignment (``SLRCLIP.forward`` computes ``logit_scale_desc = self.logit_scale.exp()``;
  its own ``logit_scale_desc`` parameter is never used), so the model's single ``logit_scale``
  is passed here.
* Hand-pose distillation: ``sum_{b,t valid} ||pred - target||^2 / (n_valid * D)`` — the
  reference ``masked_l2_loss``, i.e. the MSE over the valid frames' entries. Frames whose
  target is all zeros (HaMeR found no hand) are still valid: the reference's mask is the
  sequence mask, not a hand-found mask.

All functions are pure and jit-able and reduce over the global batch.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from hfa_jax.train.losses import alignment_loss

__all__ = [
    "LAMBDA_DESC",
    "LAMBDA_HAND",
    "description_loss",
    "hand_pose_loss",
    "add_beyondgloss_terms",
]

LAMBDA_DESC = 0.5  # BeyondGloss README / paper best setting
LAMBDA_HAND = 0.3


def description_loss(
    video_desc_vec: jax.Array,
    desc_vec: jax.Array,
    logit_scale: jax.Array,
    *,
    target_scale: float = 10.0,
    example_mask: jax.Array | None = None,
) -> jax.Array:
    """Video–description alignment: the same loss as the video–sentence alignment.

    Args:
      video_desc_vec: ``[B, D]`` L2-normalised pooled description projection of the video.
      desc_vec: ``[B, D]`` L2-normalised description vectors (frozen text encoder / precomputed).
      logit_scale: scalar exp(s) (shared with the sentence alignment, as the reference).
      target_scale: the 10 in ``softmax(10 I)``.
      example_mask: optional ``[B]`` bool (filler rows excluded).

    Returns:
      scalar float32.
    """
    return alignment_loss(video_desc_vec, desc_vec, logit_scale, target_scale=target_scale,
                          example_mask=example_mask)


def hand_pose_loss(
    pred: jax.Array,
    target: jax.Array,
    frame_mask: jax.Array,
    *,
    example_mask: jax.Array | None = None,
) -> jax.Array:
    """Masked MSE of the hand-pose student (reference ``masked_l2_loss``).

    Args:
      pred: ``[B, T, D]`` student predictions.
      target: ``[B, T, D]`` targets (HaMeR MANO rotations, or SynthSign-derived ones).
      frame_mask: ``[B, T]`` bool, True = real frame.
      example_mask: optional ``[B]`` bool; False rows are left out.

    Returns:
      ``sum(mask * ||pred - target||^2) / (max(sum(mask), 1) * D)``, scalar float32 (the
      reference divides by ``mask.sum() * D`` with no guard; an all-padding batch gives 0 here).
    """
    d = pred.shape[-1]
    m = frame_mask.astype(jnp.float32)
    if example_mask is not None:
        m = m * example_mask.astype(jnp.float32)[:, None]
    sq = jnp.sum(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
    return jnp.sum(sq * m) / (jnp.maximum(jnp.sum(m), 1.0) * d)


def add_beyondgloss_terms(
    total: jax.Array,
    terms: Mapping[str, jax.Array],
    outputs: Mapping[str, Any],
    batch: Mapping[str, Any],
    *,
    description: bool,
    hand_pose: bool,
    lambda_desc: float = LAMBDA_DESC,
    lambda_hand: float = LAMBDA_HAND,
    target_scale: float = 10.0,
    example_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Adds the switched-on BeyondGloss terms to a pretraining loss.

    ``total + lambda_desc * desc_loss + lambda_hand * hand_loss`` (only the enabled ones);
    the returned dict is ``terms`` plus ``desc_loss`` / ``hand_loss`` for the enabled terms
    (so the logged terms show which objectives are on), with ``loss`` set to the new total.

    Args:
      total: scalar, e.g. from :func:`hfa_jax.train.losses.pretrain_loss`.
      terms: its dict of logged terms.
      outputs: the pretraining model's outputs; needs ``video_desc_vec [B, D]``, ``desc_vec
        [B, D]`` and ``logit_scale`` when ``description``, and ``hand_pred [B, T, 288]`` when
        ``hand_pose``.
      batch: needs ``frame_mask [B, T]`` and ``hand_pose [B, >=T, 288]`` (sliced to T here)
        when ``hand_pose``.
      description, hand_pose: which terms to add.
      lambda_desc, lambda_hand: weights (reference 0.5 and 0.3).
      example_mask: optional ``[B]`` bool (evaluation filler rows).
    """
    out = dict(terms)
    if description:
        ld = description_loss(outputs["video_desc_vec"], outputs["desc_vec"], outputs["logit_scale"],
                              target_scale=target_scale, example_mask=example_mask)
        total = total + lambda_desc * ld
        out["desc_loss"] = ld
    if hand_pose:
        pred = outputs["hand_pred"]
        t = pred.shape[1]
        target = batch["hand_pose"][:, :t]
        lh = hand_pose_loss(pred, target, batch["frame_mask"], example_mask=example_mask)
        total = total + lambda_hand * lh
        out["hand_loss"] = lh
    out["loss"] = total
    return total, out
