"""Training objectives of HFA (docs/models_and_weights.md), exactly as the reference code computes them.

Reference: elsobhano/MLLM (branch ``psp-dino``), ``models/utils.py`` (``KLLoss``, ``PG_Loss``),
``models/Pretrain_Model.py`` (how they are combined) and ``models/Finetune_Model.py`` (translation
cross-entropy). Every place where the reference departs from the paper is a named switch whose
default is the reference behaviour.

All functions are pure, jit-able and reduce over the *global* batch, so the value is the same
whether the batch lives on one device or is sharded over a mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# PG_Loss clamps the class scores to [1e-8, 1 - 1e-8] before the loss.
PG_CLAMP_EPS = 1e-8
PG_LOSS_MODES = ("bce_with_logits_on_probs", "bce")


def pseudo_gloss_loss(
    scores: jax.Array,
    targets: jax.Array,
    *,
    mode: str = "bce_with_logits_on_probs",
    eps: float = PG_CLAMP_EPS,
    example_mask: jax.Array | None = None,
) -> jax.Array:
    """Pseudo-gloss (multi-label) loss, mean over all ``B * (V+1)`` entries.

    Args:
      scores: ``[B, V+1]`` per-class scores p in [0, 1] (class-softmax x time-softmax summed over
        time; docs/models_and_weights.md).
      targets: ``[B, V+1]`` multi-hot lemma targets (0/1, any numeric dtype).
      mode: ``"bce_with_logits_on_probs"`` (faithful default): the reference's ``PG_Loss`` feeds
        the clamped *probabilities* into ``BCEWithLogitsLoss``, i.e. a sigmoid is applied on top of
        p. ``"bce"``: plain binary cross-entropy on the clamped p (what the paper describes).
      eps: clamp margin (reference: 1e-8; note 1 - 1e-8 rounds to 1 in float32, as in PyTorch).
      example_mask: optional ``[B]`` bool, False rows (batch filler) are left out of the mean.

    Returns:
      scalar float32 loss.
    """
    p = jnp.clip(scores.astype(jnp.float32), eps, 1.0 - eps)
    y = targets.astype(jnp.float32)
    if mode == "bce_with_logits_on_probs":
        # Numerically stable BCE-with-logits, as torch: max(x,0) - x*y + log(1 + exp(-|x|)).
        per = jnp.maximum(p, 0.0) - p * y + jnp.log1p(jnp.exp(-jnp.abs(p)))
    elif mode == "bce":
        # torch.nn.BCELoss clamps each log term at -100.
        log_p = jnp.maximum(jnp.log(p), -100.0)
        log_1mp = jnp.maximum(jnp.log1p(-p), -100.0)
        per = -(y * log_p + (1.0 - y) * log_1mp)
    else:
        raise ValueError(f"pseudo_gloss_loss: unknown mode {mode!r}; expected one of {PG_LOSS_MODES}")
    if example_mask is None:
        return jnp.mean(per)
    m = example_mask.astype(jnp.float32)[:, None]
    return jnp.sum(per * m) / jnp.maximum(jnp.sum(m) * per.shape[1], 1.0)


def _kl_to_soft_identity(logits: jax.Array, target_scale: float,
                         example_mask: jax.Array | None = None) -> jax.Array:
    """``KLDivLoss(log_softmax(logits, 1), softmax(target_scale * I, 1))`` with legacy
    ``size_average=True`` (mean over all B*B entries) times B, as the reference ``KLLoss``:
    i.e. the per-row KL summed and divided by B.

    With ``example_mask`` [B] the loss is that of the sub-batch of valid rows (filler rows and
    columns removed), computed without changing shapes."""
    b = logits.shape[0]
    logits = logits.astype(jnp.float32)
    eye = jnp.eye(b, dtype=jnp.float32)
    if example_mask is None:
        valid = jnp.ones((b,), bool)
    else:
        valid = example_mask.astype(bool)
    pair = valid[:, None] & valid[None, :]
    neg = jnp.float32(-1e30)
    target = jax.nn.softmax(jnp.where(pair, target_scale * eye, neg), axis=1)
    log_q = jax.nn.log_softmax(jnp.where(pair, logits, neg), axis=1)
    # target > 0 on valid pairs (softmax), exactly 0 elsewhere: xlogy-style guard.
    kl = jnp.where(pair, target * (jnp.log(jnp.where(pair, target, 1.0)) - log_q), 0.0)
    return jnp.sum(kl) / jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)


def alignment_logits(video_vec: jax.Array, text_vec: jax.Array, logit_scale: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
    """CLIP logits. ``video_vec, text_vec: [B, D]`` (L2-normalised), ``logit_scale`` = exp(s).

    Returns ``(logits_per_video [B, B], logits_per_text [B, B])`` (the transpose)."""
    lpv = logit_scale * (video_vec.astype(jnp.float32) @ text_vec.astype(jnp.float32).T)
    return lpv, lpv.T


def alignment_loss(
    video_vec: jax.Array,
    text_vec: jax.Array,
    logit_scale: jax.Array,
    *,
    target_scale: float = 10.0,
    example_mask: jax.Array | None = None,
) -> jax.Array:
    """Video–text alignment loss of the reference (``KLLoss`` on both directions, averaged).

    The target of each row is ``softmax(10 * I)`` — a near one-hot CLIP target — and the loss is
    ``(KL(video->text) + KL(text->video)) / 2`` (``Pretrain_Model.training_step``).

    Args:
      video_vec: ``[B, D]`` L2-normalised video vectors.
      text_vec: ``[B, D]`` L2-normalised text vectors.
      logit_scale: scalar, already exponentiated (exp(s)).
      target_scale: the 10 in ``softmax(10 * I)``.
      example_mask: optional ``[B]`` bool; the loss is then that of the valid rows only.
    """
    lpv, lpt = alignment_logits(video_vec, text_vec, logit_scale)
    return 0.5 * (_kl_to_soft_identity(lpv, target_scale, example_mask)
                  + _kl_to_soft_identity(lpt, target_scale, example_mask))


def translation_loss(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    label_smoothing: float = 0.2,
) -> jax.Array:
    """Token cross-entropy with label smoothing, padding ignored.

    Same value as ``torch.nn.CrossEntropyLoss(ignore_index=pad, label_smoothing=eps)`` on the
    flattened tokens: the target distribution is ``(1 - eps) * one_hot + eps / V`` over the full
    vocabulary, and the mean is over the non-ignored tokens of the whole batch.

    Args:
      logits: ``[B, L, V]`` decoder logits.
      labels: ``[B, L]`` int target ids.
      mask: ``[B, L]`` bool, True = real target token (``labels != pad``).
      label_smoothing: eps (reference 0.2).
    """
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_p, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    smooth = -jnp.mean(log_p, axis=-1)
    per_tok = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    m = mask.astype(jnp.float32)
    # torch divides by the number of non-ignored tokens (NaN when there are none; we guard with 1).
    return jnp.sum(per_tok * m) / jnp.maximum(jnp.sum(m), 1.0)


def pretrain_loss(outputs: dict, pg_targets: jax.Array, *, pg_weight: float = 1.0,
                  pg_mode: str = "bce_with_logits_on_probs", target_scale: float = 10.0,
                  example_mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total pretraining loss ``L_align + lambda * L_pgp`` (docs/models_and_weights.md, lambda = 1.0).

    Args:
      outputs: the dict returned by ``HFAPretrain``: ``pg_scores [B, V+1]``, ``video_vec [B, D]``,
        ``text_vec [B, D]``, ``logit_scale`` (scalar, exp(s)).
      pg_targets: ``[B, V+1]`` multi-hot.
      example_mask: optional ``[B]`` bool (evaluation batches padded with filler rows).

    Returns:
      ``(total, {"loss", "align_loss", "pg_loss"})``.
    """
    align = alignment_loss(outputs["video_vec"], outputs["text_vec"], outputs["logit_scale"],
                           target_scale=target_scale, example_mask=example_mask)
    pg = pseudo_gloss_loss(outputs["pg_scores"], pg_targets, mode=pg_mode, example_mask=example_mask)
    total = align + pg_weight * pg
    return total, {"loss": total, "align_loss": align, "pg_loss": pg}
