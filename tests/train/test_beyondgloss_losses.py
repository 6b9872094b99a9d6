"""BeyondGloss losses against direct NumPy computations of the reference formulas
(elsobhano/BeyondGloss slt_framework/models/Pretrain_Model.py: KLLoss on both directions,
masked_l2_loss; total = clip + 0.5 * desc + 0.3 * hamer)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from hfa_jax.train import beyondgloss_losses as bl


def _np_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _np_kl_loss(logits):
    """KLLoss of the reference: KLDivLoss(log_softmax(logits), softmax(10 I)), size_average -> mean
    over B*B entries, times B."""
    b = logits.shape[0]
    target = _np_softmax(10.0 * np.eye(b))
    logq = np.log(_np_softmax(logits))
    return float(np.sum(target * (np.log(target) - logq)) / b)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_desc_loss(v, d, scale):
    lpv = scale * v @ d.T
    return 0.5 * (_np_kl_loss(lpv) + _np_kl_loss(lpv.T))


def _np_hand_loss(pred, target, mask):
    sq = np.sum((pred - target) ** 2, axis=-1)
    return float(np.sum(sq * mask) / (mask.sum() * pred.shape[-1]))


def test_description_loss_numpy():
    rng = np.random.default_rng(0)
    v = _unit(rng.standard_normal((5, 16)))
    d = _unit(rng.standard_normal((5, 16)))
    got = float(bl.description_loss(jnp.asarray(v, jnp.float32), jnp.asarray(d, jnp.float32), jnp.float32(14.28)))
    assert got == pytest.approx(_np_desc_loss(v, d, 14.28), rel=1e-4)


def test_description_loss_example_mask_equals_sub_batch():
    rng = np.random.default_rng(1)
    v = _unit(rng.standard_normal((6, 8)))
    d = _unit(rng.standard_normal((6, 8)))
    keep = np.array([1, 1, 0, 1, 0, 1], bool)
    got = float(bl.description_loss(jnp.asarray(v, jnp.float32), jnp.asarray(d, jnp.float32), jnp.float32(5.0),
                                    example_mask=jnp.asarray(keep)))
    assert got == pytest.approx(_np_desc_loss(v[keep], d[keep], 5.0), rel=1e-4)


def test_hand_pose_loss_numpy():
    rng = np.random.default_rng(2)
    pred = rng.standard_normal((3, 7, 288))
    target = rng.standard_normal((3, 7, 288))
    target[0, 2] = 0.0  # "no hand found" rows are still supervised (reference mask = sequence mask)
    mask = np.zeros((3, 7), bool)
    mask[0, :7] = True
    mask[1, :3] = True
    mask[2, :1] = True
    got = float(bl.hand_pose_loss(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), jnp.asarray(mask)))
    assert got == pytest.approx(_np_hand_loss(pred, target, mask), rel=1e-5)
    # Padding content does not matter.
    pred2 = pred.copy()
    pred2[1, 5] += 100.0
    got2 = float(bl.hand_pose_loss(jnp.asarray(pred2, jnp.float32), jnp.asarray(target, jnp.float32), jnp.asarray(mask)))
    assert got2 == pytest.approx(got, rel=1e-6)
    # example_mask removes whole rows.
    em = np.array([True, False, True])
    got3 = float(bl.hand_pose_loss(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32),
                                   jnp.asarray(mask), example_mask=jnp.asarray(em)))
    assert got3 == pytest.approx(_np_hand_loss(pred, target, mask & em[:, None]), rel=1e-5)
    # All padding: 0, not NaN.
    z = bl.hand_pose_loss(jnp.ones((1, 2, 4)), jnp.zeros((1, 2, 4)), jnp.zeros((1, 2), bool))
    assert float(z) == 0.0


@pytest.mark.parametrize("desc,hand", [(False, False), (True, False), (False, True), (True, True)])
def test_add_terms_switches(desc, hand):
    rng = np.random.default_rng(3)
    b, t, tp = 4, 6, 3
    v = _unit(rng.standard_normal((b, 8)))
    d = _unit(rng.standard_normal((b, 8)))
    pred = rng.standard_normal((b, t, 288))
    target = np.zeros((b, 10, 288))  # stored at the largest bucket, sliced to T by the loss
    target[:, :t] = rng.standard_normal((b, t, 288))
    mask = np.ones((b, t), bool)
    mask[2, 4:] = False
    outputs = {"video_desc_vec": jnp.asarray(v, jnp.float32), "desc_vec": jnp.asarray(d, jnp.float32),
               "logit_scale": jnp.float32(10.0), "hand_pred": jnp.asarray(pred, jnp.float32),
               "temporal_mask": jnp.ones((b, tp), bool)}
    batch = {"frame_mask": jnp.asarray(mask), "hand_pose": jnp.asarray(target, jnp.float32)}
    base = {"loss": jnp.float32(1.5), "align_loss": jnp.float32(1.0), "pg_loss": jnp.float32(0.5)}
    total, terms = bl.add_beyondgloss_terms(jnp.float32(1.5), base, outputs, batch, description=desc, hand_pose=hand)
    want = 1.5
    assert set(terms) == {"loss", "align_loss", "pg_loss"} | ({"desc_loss"} if desc else set()) | (
        {"hand_loss"} if hand else set())
    if desc:
        ld = _np_desc_loss(v, d, 10.0)
        assert float(terms["desc_loss"]) == pytest.approx(ld, rel=1e-4)
        want += 0.5 * ld
    if hand:
        lh = _np_hand_loss(pred, target[:, :t], mask)
        assert float(terms["hand_loss"]) == pytest.approx(lh, rel=1e-5)
        want += 0.3 * lh
    assert float(total) == pytest.approx(want, rel=1e-5)
    assert float(terms["loss"]) == float(total)
    assert base["loss"] == 1.5  # input dict untouched


def test_default_weights():
    assert (bl.LAMBDA_DESC, bl.LAMBDA_HAND) == (0.5, 0.3)
