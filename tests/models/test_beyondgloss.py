"""BeyondGloss heads (hfa_jax/models/hand.py) against a PyTorch re-statement of the reference
``FeatureExtracter`` hand path and description projection (elsobhano/BeyondGloss
slt_framework/models/clip_models.py), and against direct NumPy computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hfa_jax.errors import ConfigError
from hfa_jax.models import beyondgloss as hand


def _torch_linear(p) -> torch.nn.Linear:
    k = np.asarray(p["kernel"])
    lin = torch.nn.Linear(k.shape[0], k.shape[1])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(k.T.copy()))
        lin.bias.copy_(torch.from_numpy(np.asarray(p["bias"]).copy()))
    return lin


class _RefHandPath(torch.nn.Module):
    """The reference's hand path as written in FeatureExtracter.forward (eval mode)."""

    def __init__(self, params):
        super().__init__()
        self.hamer_mapper_1 = _torch_linear(params["student"]["proj"])
        self.hamer_mapper_2 = _torch_linear(params["feedback"]["up"])
        self.drop = torch.nn.Dropout(0.1)
        self.down = torch.nn.Sequential(_torch_linear(params["feedback"]["fuse"]), torch.nn.GELU())

    def forward(self, src):
        pred = torch.nn.GELU()(self.hamer_mapper_1(src))
        fb = self.drop(self.hamer_mapper_2(pred))
        return self.down(torch.cat([src, fb], dim=-1)), pred


def test_hand_branch_matches_reference_and_param_counts():
    b, t, d = 2, 5, 512
    x = np.random.default_rng(0).standard_normal((b, t, d)).astype(np.float32)
    mod = hand.HandPoseBranch()
    variables = mod.init(jax.random.key(0), jnp.asarray(x))
    p = variables["params"]
    # docs/beyondgloss.md shapes at paper width: Linear 512->288, Linear 288->512, Linear 1024->512.
    assert p["student"]["proj"]["kernel"].shape == (512, 288)
    assert p["feedback"]["up"]["kernel"].shape == (288, 512)
    assert p["feedback"]["fuse"]["kernel"].shape == (1024, 512)
    n = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(p))
    assert n == (512 * 288 + 288) + (288 * 512 + 512) + (1024 * 512 + 512)
    # PyTorch nn.Linear default init bound 1/sqrt(fan_in).
    assert np.abs(np.asarray(p["feedback"]["fuse"]["kernel"])).max() <= 1 / np.sqrt(1024)

    x_new, pred = mod.apply(variables, jnp.asarray(x), deterministic=True)
    assert x_new.shape == (b, t, d) and pred.shape == (b, t, 288)
    ref = _RefHandPath(p).eval()
    with torch.no_grad():
        rx, rp = ref(torch.from_numpy(x))
    np.testing.assert_allclose(np.asarray(pred), rp.numpy(), atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(x_new), rx.numpy(), atol=2e-5, rtol=1e-4)


def test_feedback_dropout_and_gradient_path():
    x = jax.random.normal(jax.random.key(1), (2, 4, 16))
    mod = hand.HandPoseBranch(hand_dim=6, dropout=0.5)
    v = mod.init(jax.random.key(0), x)
    det, pred_det = mod.apply(v, x, deterministic=True)
    tr, pred_tr = mod.apply(v, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    # Dropout acts on the feedback only: the prediction (the distillation output) is unchanged.
    np.testing.assert_allclose(np.asarray(pred_tr), np.asarray(pred_det), rtol=1e-6)
    assert not np.allclose(np.asarray(tr), np.asarray(det))
    # The fed-back features depend on the student: the temporal path trains the student too.
    def f(params):
        out, _ = mod.apply({"params": params}, x, deterministic=True)
        return jnp.sum(out ** 2)

    g = jax.grad(f)(v["params"])
    assert float(jnp.abs(g["student"]["proj"]["kernel"]).max()) > 0


def test_student_is_exact_gelu_of_linear_numpy():
    import math

    x = np.random.default_rng(2).standard_normal((3, 7, 8)).astype(np.float32)
    mod = hand.HandPoseStudent(hand_dim=5)
    v = mod.init(jax.random.key(0), jnp.asarray(x))
    k, bb = np.asarray(v["params"]["proj"]["kernel"], np.float64), np.asarray(v["params"]["proj"]["bias"], np.float64)
    z = x.astype(np.float64) @ k + bb
    want = 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    np.testing.assert_allclose(np.asarray(mod.apply(v, jnp.asarray(x))), want, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_description_projector_pooling_numpy(masked):
    import math

    rng = np.random.default_rng(3)
    h = rng.standard_normal((3, 6, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], bool)
    mod = hand.DescriptionProjector(features=12, masked=masked)
    v = mod.init(jax.random.key(0), jnp.asarray(h), jnp.asarray(mask))
    got = np.asarray(mod.apply(v, jnp.asarray(h), jnp.asarray(mask)))
    k, bb = np.asarray(v["params"]["proj"]["kernel"], np.float64), np.asarray(v["params"]["proj"]["bias"], np.float64)
    z = h.astype(np.float64) @ k + bb
    z = 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    if masked:
        pooled = (z * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    else:  # reference: img_to_desc.mean(dim=1), padding included
        pooled = z.mean(1)
    want = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (3, 12)
    if not masked:  # padding content changes the reference's plain mean
        h2 = h.copy()
        h2[1, 4] += 5.0
        got2 = np.asarray(mod.apply(v, jnp.asarray(h2), jnp.asarray(mask)))
        assert not np.allclose(got2[1], got[1])


def test_description_projector_paper_shape():
    mod = hand.DescriptionProjector()
    shapes = jax.eval_shape(lambda: mod.init(jax.random.key(0), jnp.zeros((1, 3, 512)), jnp.ones((1, 3), bool)))
    assert shapes["params"]["proj"]["kernel"].shape == (512, 1024)


def test_config_from_config():
    c = hand.BeyondGlossConfig.from_config({"description": True, "hand_pose": False})
    assert c.description and not c.hand_pose and c.enabled and c.hand_dim == 288
    assert not hand.BeyondGlossConfig.from_config(None).enabled
    with pytest.raises(ConfigError, match="model.beyondgloss"):
        hand.BeyondGlossConfig.from_config({"hand_poses": True})
    with pytest.raises(ConfigError):
        hand.BeyondGlossConfig.from_config({"feedback_dropout": 1.5})
