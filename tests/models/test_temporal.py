"""Temporal encoder against naive NumPy definitions (docs/models_and_weights.md): local attention (every
implementation), RoPE, the downsampler and its mask rule, a full forward pass, padding invariance."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hfa_jax.models.attention import apply_rope, local_attention
from hfa_jax.models.temporal import TemporalConfig, TemporalEncoder, downsample, downsample_mask

RNG = np.random.default_rng(0)


def _mask(lengths, t):
    return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


def naive_local_attention(q, k, v, mask, w):
    """Loops: query t attends s iff (|t-s| <= w and mask[s]) or s == t."""
    b, t, n, h = q.shape
    out = np.zeros_like(q, dtype=np.float64)
    for bi in range(b):
        for ti in range(t):
            keys = [s for s in range(t) if (abs(ti - s) <= w and mask[bi, s]) or s == ti]
            for ni in range(n):
                logits = np.array([q[bi, ti, ni] @ k[bi, s, ni] for s in keys]) / math.sqrt(h)
                p = np.exp(logits - logits.max())
                p /= p.sum()
                out[bi, ti, ni] = sum(pi * v[bi, s, ni] for pi, s in zip(p, keys))
    return out


@pytest.mark.parametrize("impl", ["xla", "cudnn", "pallas", "auto"])
def test_local_attention_implementations(impl):
    # on this CPU every choice runs XLA's path ("cudnn" warns and falls back, "pallas" has no
    # kernel for the band); each must give the band's values
    b, t, n, h = 3, 13, 2, 8
    q, k, v = (RNG.standard_normal((b, t, n, h)).astype(np.float32) for _ in range(3))
    mask = _mask([13, 6, 1], t)
    mask[0, 4] = False  # a hole inside a sequence
    ref = naive_local_attention(q, k, v, mask, 3)
    fn = jax.jit(lambda *a: local_attention(*a, window=3, choice=impl))
    out = np.asarray(fn(q, k, v, mask))
    assert np.abs(out - ref).max() < 1e-5


def test_rope_matches_naive_rotation():
    b, t, n, h = 2, 7, 3, 8
    x = RNG.standard_normal((b, t, n, h)).astype(np.float32)
    out = np.asarray(apply_rope(jnp.asarray(x), jnp.arange(t), 10000.0))
    ref = np.zeros_like(x)
    for p in range(t):
        for i in range(h // 2):
            theta = p * 10000.0 ** (-2 * i / h)
            rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
            ref[:, p, :, 2 * i : 2 * i + 2] = x[:, p, :, 2 * i : 2 * i + 2] @ rot.T
    assert np.abs(out - ref).max() < 1e-5
    # relative: <R_m q, R_n k> depends on m - n only
    q, k = RNG.standard_normal((2, h)).astype(np.float32)
    def dot(m, nn):
        rq = apply_rope(jnp.asarray(q)[None, None, None], jnp.array([m]))
        rk = apply_rope(jnp.asarray(k)[None, None, None], jnp.array([nn]))
        return float(jnp.sum(rq * rk))
    assert abs(dot(5, 2) - dot(13, 10)) < 1e-4


def test_downsample_mask_rule_and_pool():
    for t in range(1, 10):
        for _ in range(6):
            m = RNG.random((1, t)) < 0.5
            got = np.asarray(downsample_mask(jnp.asarray(m)))[0]
            tp = (t + 2 - 3) // 2 + 1  # PyTorch pooling output length
            want = [j == 0 or any(0 <= i < t and m[0, i] for i in (2 * j - 1, 2 * j, 2 * j + 1)) for j in range(tp)]
            assert got.tolist() == want, (t, m)
    x = RNG.standard_normal((2, 9, 4)).astype(np.float32)
    m = _mask([9, 5], 9)
    y, ym = downsample(jnp.asarray(x), jnp.asarray(m))
    xz = torch.from_numpy(np.where(m[..., None], x, 0)).permute(0, 2, 1)
    ref = torch.nn.AvgPool1d(3, 2, 1, count_include_pad=True)(xz).permute(0, 2, 1).numpy()
    assert np.abs(np.asarray(y) - ref).max() < 1e-6
    assert np.asarray(ym).tolist() == [[True] * 5, [True, True, True, False, False]]


def _ln(x, p, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _rope_np(x):
    t, h = x.shape[1], x.shape[-1]
    out = x.copy()
    for p in range(t):
        for i in range(h // 2):
            th = p * 10000.0 ** (-2 * i / h)
            a, b = x[:, p, :, 2 * i], x[:, p, :, 2 * i + 1]
            out[:, p, :, 2 * i] = a * math.cos(th) - b * math.sin(th)
            out[:, p, :, 2 * i + 1] = a * math.sin(th) + b * math.cos(th)
    return out


def naive_encoder(params, x, mask, cfg):
    """The design of docs/models_and_weights.md written out: sinusoid, post-LN blocks, pool k3 s2 p1, Linear."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    b, t, d = x.shape
    pe = np.zeros((t, d))
    for pos in range(t):
        for i in range(0, d, 2):
            pe[pos, i] = math.sin(pos / 10000 ** (i / d))
            pe[pos, i + 1] = math.cos(pos / 10000 ** (i / d))
    x = x.astype(np.float64) + pe
    nh, hd = cfg.num_heads, d // cfg.num_heads
    for i in range(cfg.num_blocks):
        if i == cfg.blocks_before:
            xp = np.pad(np.where(mask[..., None], x, 0), ((0, 0), (1, 1), (0, 0)))
            tp = (x.shape[1] - 1) // 2 + 1
            x = np.stack([(xp[:, 2 * j] + xp[:, 2 * j + 1] + xp[:, 2 * j + 2]) / 3 for j in range(tp)], 1)
            mp = np.pad(mask, ((0, 0), (1, 1)))
            mask = np.stack([mp[:, 2 * j] | mp[:, 2 * j + 1] | mp[:, 2 * j + 2] for j in range(tp)], 1)
            mask[:, 0] = True
        bp = p[f"block_{i}"]
        tt = x.shape[1]
        qkv = (x @ bp["qkv"]["kernel"] + bp["qkv"]["bias"]).reshape(b, tt, 3, nh, hd)
        q, k, v = _rope_np(qkv[:, :, 0]), _rope_np(qkv[:, :, 1]), qkv[:, :, 2]
        h = naive_local_attention(q, k, v, mask, cfg.window).reshape(b, tt, d)
        h = (h @ bp["out"]["kernel"] + bp["out"]["bias"]) * bp["layer_scale"]
        x = _ln(x + h, bp["norm1"])
        h = _gelu(x @ bp["fc1"]["kernel"] + bp["fc1"]["bias"]) @ bp["fc2"]["kernel"] + bp["fc2"]["bias"]
        x = _ln(x + h, bp["norm2"])
    return x @ p["out_proj"]["kernel"] + p["out_proj"]["bias"], mask


def _tiny(**kw):
    return TemporalConfig(**{**dict(width=16, num_heads=2, mlp_dim=32, out_dim=24), **kw})


def test_encoder_matches_naive_definition_and_padding_invariance():
    cfg = _tiny()
    b, t = 2, 11
    x = RNG.standard_normal((b, t, 16)).astype(np.float32)
    mask = _mask([11, 6], t)
    model = TemporalEncoder(cfg)
    params = jax.jit(model.init)(jax.random.key(0), x, mask)["params"]
    # non-trivial LayerScale (its init 1e-5 would hide the attention branch)
    params = {**params, **{f"block_{i}": {**params[f"block_{i}"], "layer_scale": jnp.full((16,), 0.7)} for i in range(4)}}
    outs = {}
    for impl in ("xla", "cudnn", "auto"):
        m = TemporalEncoder(_tiny(attention=impl))
        outs[impl] = jax.jit(lambda p, a, mk: m.apply({"params": p}, a, mk))(params, x, mask)
    ref, ref_mask = naive_encoder(params, x, mask, cfg)
    for impl, (y, ym) in outs.items():
        assert y.shape == (b, 6, 24)
        assert np.asarray(ym).tolist() == ref_mask.tolist()
        assert np.abs(np.asarray(y) - ref).max() < 1e-4, impl
    # padded frames' content cannot reach valid outputs
    x2 = x.copy()
    x2[1, 6:] = 100 * RNG.standard_normal((5, 16))
    m = TemporalEncoder(cfg)
    y1, ym = outs["xla"]
    y2, _ = jax.jit(lambda p, a, mk: m.apply({"params": p}, a, mk))(params, x2, mask)
    valid = np.asarray(ym)
    assert np.abs(np.asarray(y1)[valid] - np.asarray(y2)[valid]).max() < 1e-5


def test_paper_shapes_inits_and_training_mode():
    cfg = TemporalConfig()
    assert cfg.drop_path_rates() == pytest.approx([0, 1 / 30, 2 / 30, 0.1])
    shapes = jax.eval_shape(lambda: TemporalEncoder(cfg).init(jax.random.key(0), jnp.zeros((1, 8, 512)), jnp.ones((1, 8), bool)))
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))
    assert n == 12_611_584 + 525_312  # docs/models_and_weights.md: 4 blocks + Linear 512->1024
    # inits (small model, same rules)
    c = _tiny(width=64, num_heads=2, mlp_dim=128, out_dim=64, blocks_before=1, blocks_after=1)
    p = jax.jit(TemporalEncoder(c).init)(jax.random.key(1), jnp.zeros((1, 8, 64)), jnp.ones((1, 8), bool))["params"]
    blk = p["block_0"]
    assert np.allclose(blk["layer_scale"], 1e-5)
    assert abs(float(jnp.std(blk["qkv"]["kernel"])) - 0.02) < 2e-3
    assert abs(float(jnp.std(blk["out"]["kernel"])) - 0.02 / math.sqrt(2 * c.num_blocks)) < 1e-3
    assert set(blk) == {"qkv", "out", "layer_scale", "norm1", "fc1", "fc2", "norm2"}  # LayerScale on attention only
    # training mode: dropout/drop-path active, gradients finite, remat gives the same values
    x = jnp.asarray(RNG.standard_normal((2, 8, 64)), jnp.float32)
    mk = jnp.asarray(_mask([8, 3], 8))
    def loss(params, remat):
        y, _ = TemporalEncoder(dataclasses.replace(c, remat=remat)).apply(
            {"params": params}, x, mk, False, rngs={"dropout": jax.random.key(3)})
        return jnp.sum(y**2)
    g1 = jax.jit(jax.grad(loss), static_argnums=1)(p, False)
    g2 = jax.jit(jax.grad(loss), static_argnums=1)(p, True)
    assert all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(g1))
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2))) < 1e-4
