"""Frame packing: the host index (capacity levels, groups, filler), gather/scatter, and the HFA
models giving the unpacked values, BatchNorm statistics and gradients when the frame encoder
runs on the packed valid frames only."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfa_jax.errors import ConfigError
from hfa_jax.models import packing
from hfa_jax.models.hfa import HFAPretrain, HFATranslate
from tests.models.test_hfa import IMG, _cfg, _nonzero_lora


def test_capacity_levels():
    assert [packing.capacity(v, 64, 4) for v in (0, 1, 16, 17, 48, 49, 64)] == [16, 16, 16, 32, 48, 64, 64]
    assert packing.capacity(10, 10, 3) == 10  # steps of ceil(10/3) = 4, capped at the group size
    assert packing.capacity(5, 10, 1) == 10
    with pytest.raises(ConfigError, match="levels"):
        packing.capacity(3, 10, 0)


def test_pack_index_groups_and_filler():
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    idx = packing.pack_index(mask, groups=2, levels=4)  # 8 slots per group, steps of 2
    # group 0: rows 0-1 -> positions 0,1 | 4,5,6 (5 valid -> capacity 6); group 1: row 2 -> 0
    np.testing.assert_array_equal(idx, [[0, 1, 4, 5, 6, 8], [0, 8, 8, 8, 8, 8]])
    assert idx.dtype == np.int32
    one = packing.pack_index(mask, groups=1, levels=4)  # 16 slots, steps of 4, 6 valid -> 8
    np.testing.assert_array_equal(one, [[0, 1, 4, 5, 6, 8, 16, 16]])
    assert packing.pack_index(mask, groups=1, levels=4, min_capacity=12).shape == (1, 12)
    assert packing.leaves_out_frames(one, mask) and not packing.leaves_out_frames(np.zeros((1, 16)), mask)
    with pytest.raises(ConfigError, match="do not split into 3"):
        packing.pack_index(mask, groups=3, levels=4)


def test_gather_scatter_round_trip():
    rng = np.random.default_rng(0)
    mask = rng.random((4, 6)) < 0.6
    frames = jnp.asarray(rng.standard_normal((4, 6, 3, 2)), jnp.float32)
    for groups in (1, 2, 4):
        idx = packing.pack_index(mask, groups, levels=3)
        packed = packing.gather_frames(frames, jnp.asarray(idx))
        assert packed.shape == (groups * idx.shape[1], 3, 2)
        back = packing.scatter_frames(packed, jnp.asarray(idx), 4, 6)
        want = np.where(mask[..., None, None], np.asarray(frames), 0.0)
        np.testing.assert_array_equal(np.asarray(back), want)
        filler = (idx == mask.size // groups).reshape(-1)
        assert np.all(np.asarray(packed)[filler] == 0)  # filler slots read a zero frame


def _batch(b=4, t=6, seed=0):
    rng = np.random.default_rng(seed)
    pixels = jnp.asarray(rng.standard_normal((b, t, IMG, IMG, 3)), jnp.float32)
    lengths = [6, 2, 4, 1][:b]
    fmask = jnp.asarray(np.arange(t)[None, :] < np.asarray(lengths)[:, None])
    ids = jnp.asarray(rng.integers(4, 40, (b, 4)), jnp.int32)
    return pixels, fmask, ids, jnp.ones((b, 4), bool)


@pytest.mark.parametrize("groups", [1, 2])
def test_pretrain_packed_equals_unpacked(groups):
    # dropout draws in the ViT depend on its frame count: compare with the ViT's LoRA dropout off
    # (the other modules see the same shapes either way, so their dropout masks agree)
    cfg = _cfg()
    cfg = dataclasses.replace(cfg, vit=dataclasses.replace(cfg.vit, lora_dropout=0.0))
    model = HFAPretrain(cfg)
    pixels, fmask, ids, tmask = _batch()
    v = jax.jit(model.init)({"params": jax.random.key(0), "dropout": jax.random.key(1)}, pixels, fmask, ids, tmask)
    v = {**v, "params": _nonzero_lora(v["params"])}
    idx = jnp.asarray(packing.pack_index(np.asarray(fmask), groups, levels=4))
    assert idx.size < fmask.size  # the test must actually drop frames

    def loss(params, frame_index):
        out, upd = model.apply({**v, "params": params}, pixels, fmask, ids, tmask, deterministic=False,
                               frame_index=frame_index, mutable=["batch_stats"],
                               rngs={"dropout": jax.random.key(2)})
        m = out["temporal_mask"][..., None]
        value = jnp.sum(out["pg_sim"] * m) + jnp.sum(out["video_vec"] * out["text_vec"])
        return value, (out, upd)

    (l0, (o0, u0)), g0 = jax.jit(jax.value_and_grad(lambda p: loss(p, None), has_aux=True))(v["params"])
    (l1, (o1, u1)), g1 = jax.jit(jax.value_and_grad(lambda p: loss(p, idx), has_aux=True))(v["params"])
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    m = np.asarray(o0["temporal_mask"])
    np.testing.assert_allclose(np.asarray(o1["pg_sim"])[m], np.asarray(o0["pg_sim"])[m], rtol=1e-4, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), u1, u0)
    flat0, flat1 = jax.tree_util.tree_leaves_with_path(g0), jax.tree.leaves(g1)
    for (path, a), b in zip(flat0, flat1):
        np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-6, err_msg=jax.tree_util.keystr(path))
    fe = g1["frame_encoder"]
    assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(fe))  # LoRA grads do flow


def test_translate_packed_equals_unpacked():
    cfg = _cfg()
    model = HFATranslate(cfg)
    pixels, fmask, ids, tmask = _batch(seed=1)
    v = jax.jit(model.init)(jax.random.key(0), pixels, fmask, ids, tmask)
    v = {**v, "params": _nonzero_lora(v["params"]),
         "batch_stats": {"frame_bn": {"mean": jnp.full((32,), 0.1), "var": jnp.full((32,), 2.0)}}}
    idx = jnp.asarray(packing.pack_index(np.asarray(fmask), 2, levels=2))
    full = jax.jit(model.apply)(v, pixels, fmask, ids, tmask)
    packed = jax.jit(lambda v, i: model.apply(v, pixels, fmask, ids, tmask, frame_index=i))(v, idx)
    np.testing.assert_allclose(np.asarray(packed), np.asarray(full), rtol=1e-4, atol=1e-5)
