"""Losses against direct PyTorch / NumPy computations of the reference definitions
(elsobhano/MLLM ``models/utils.py``: ``PG_Loss``, ``KLLoss``; ``Finetune_Model``: CrossEntropyLoss)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hfa_jax.train import losses


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("mode", ["bce_with_logits_on_probs", "bce"])
def test_pseudo_gloss_loss_matches_torch(mode):
    r = _rng(1)
    b, c = 3, 7
    p = r.uniform(0, 1, (b, c)).astype(np.float32)
    p[0, 0], p[1, 1] = 0.0, 1.0  # exercise the clamp
    y = (r.uniform(0, 1, (b, c)) < 0.3).astype(np.float32)
    tp = torch.clamp(torch.from_numpy(p), 1e-8, 1 - 1e-8)
    if mode == "bce_with_logits_on_probs":
        ref = torch.nn.BCEWithLogitsLoss(reduction="none")(tp, torch.from_numpy(y)).mean()
    else:
        ref = torch.nn.BCELoss()(tp, torch.from_numpy(y))
    got = losses.pseudo_gloss_loss(p, y, mode=mode)
    np.testing.assert_allclose(np.asarray(got), ref.item(), rtol=1e-6, atol=1e-6)


def test_pseudo_gloss_modes_differ_and_unknown_mode_raises():
    p = np.full((2, 3), 0.5, np.float32)
    y = np.eye(2, 3, dtype=np.float32)
    assert abs(float(losses.pseudo_gloss_loss(p, y)) - float(losses.pseudo_gloss_loss(p, y, mode="bce"))) > 1e-3
    with pytest.raises(ValueError, match="unknown mode"):
        losses.pseudo_gloss_loss(p, y, mode="focal")


def _torch_kl_loss(prediction, label):
    # Reference KLLoss: KLDivLoss(size_average=True, reduce=True) == reduction "mean", times B.
    batch_size = prediction.shape[0]
    probs1 = F.log_softmax(prediction, 1)
    probs2 = F.softmax(label * 10, 1)
    return torch.nn.KLDivLoss(reduction="mean")(probs1, probs2) * batch_size


def test_alignment_loss_matches_reference_kl():
    r = _rng(2)
    b, d = 5, 16
    v = r.normal(size=(b, d)).astype(np.float32)
    t = r.normal(size=(b, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    scale = np.float32(1 / 0.07)
    lpv = torch.from_numpy(scale * v @ t.T)
    gt = torch.eye(b)
    ref = (_torch_kl_loss(lpv, gt) + _torch_kl_loss(lpv.t(), gt)) / 2.0
    got = losses.alignment_loss(v, t, scale)
    np.testing.assert_allclose(np.asarray(got), ref.item(), rtol=1e-5)


def test_translation_loss_matches_torch_cross_entropy_with_smoothing_and_ignore():
    r = _rng(3)
    b, l, vocab, pad = 3, 6, 11, 1
    logits = r.normal(size=(b, l, vocab)).astype(np.float32) * 3
    labels = r.integers(2, vocab, size=(b, l))
    labels[0, 4:] = pad
    labels[2, 2:] = pad
    mask = labels != pad
    crit = torch.nn.CrossEntropyLoss(ignore_index=pad, label_smoothing=0.2)
    ref = crit(torch.from_numpy(logits).reshape(-1, vocab), torch.from_numpy(labels).reshape(-1))
    got = losses.translation_loss(logits, labels, mask, label_smoothing=0.2)
    np.testing.assert_allclose(np.asarray(got), ref.item(), rtol=1e-6)
    # no smoothing: plain NLL, checked with NumPy
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(losses.translation_loss(logits, labels, mask, label_smoothing=0.0)),
                               nll[mask].mean(), rtol=1e-5)


def test_pretrain_loss_combines_with_lambda():
    r = _rng(4)
    b, d, c = 4, 8, 5
    v = r.normal(size=(b, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    out = {"video_vec": v, "text_vec": v[::-1].copy(), "logit_scale": np.float32(14.0),
           "pg_scores": r.uniform(size=(b, c)).astype(np.float32)}
    y = (r.uniform(size=(b, c)) < 0.5).astype(np.float32)
    total, parts = losses.pretrain_loss(out, y, pg_weight=0.5)
    np.testing.assert_allclose(float(total), float(parts["align_loss"]) + 0.5 * float(parts["pg_loss"]), rtol=1e-6)


def test_example_mask_equals_loss_of_the_valid_subbatch():
    r = _rng(5)
    b, d, c = 5, 8, 6
    v = r.normal(size=(b, d)).astype(np.float32)
    t = r.normal(size=(b, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    p = r.uniform(size=(b, c)).astype(np.float32)
    y = (r.uniform(size=(b, c)) < 0.4).astype(np.float32)
    m = np.array([True, False, True, True, False])
    np.testing.assert_allclose(float(losses.alignment_loss(v, t, 10.0, example_mask=m)),
                               float(losses.alignment_loss(v[m], t[m], 10.0)), rtol=1e-5)
    np.testing.assert_allclose(float(losses.pseudo_gloss_loss(p, y, example_mask=m)),
                               float(losses.pseudo_gloss_loss(p[m], y[m])), rtol=1e-6)
