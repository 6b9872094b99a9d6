"""The fused frozen-block kernel (hfa_jax.models.pallas_vit_block), run by Pallas' interpreter on
this CPU against the ViT's own block (the XLA path): values in float32 and bfloat16, padded
tokens, a partial last block of frames, and the whole ViT with and without it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfa_jax.models import pallas_vit_block as pvb
from hfa_jax.models.vit import Block, ViT, ViTConfig

RNG = np.random.default_rng(0)
CFG = ViTConfig(width=24, depth=3, num_heads=3, mlp_dim=48, pos_grid=2, patch_size=4, lora_blocks=(2,), lora_rank=2,
                lora_dropout=0.0, layerscale_init=0.5)


def _block_params(cfg, x):
    params = Block(cfg).init(jax.random.key(1), x, True, None, x.shape[1])["params"]
    # non-trivial LayerNorm affine and biases (the init leaves them 1 / 0)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    return jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


@pytest.mark.parametrize("dtype, kv_len, atol", [("float32", None, 2e-5), ("float32", 9, 2e-5),
                                                 ("bfloat16", None, 0.05)])
def test_kernel_matches_the_block(monkeypatch, dtype, kv_len, atol):
    # 5 frames in blocks of 2: the last block is partial; kv_len < 11: padded keys masked
    monkeypatch.setattr(pvb, "_MAX_FRAMES_PER_BLOCK", 2)
    cfg = dataclasses.replace(CFG, dtype=dtype)
    x = jnp.asarray(RNG.standard_normal((5, 11, 24)), cfg.compute_dtype)
    params = _block_params(cfg, x)
    ref = Block(cfg).apply({"params": params}, x, True, None, kv_len or 11)
    out = pvb.frozen_block(x, params, num_heads=3, eps=cfg.ln_eps, kv_len=kv_len, interpret=True)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    err = np.abs(np.asarray(out, np.float32) - np.asarray(ref, np.float32))
    # bf16: the kernel rounds each matmul's output once, after its bias; XLA rounds before adding
    # it, and the residual stream is bf16 (|x| ~ 3 here, one bf16 ulp = 0.016)
    assert err.max() <= atol, err.max()
    if dtype == "bfloat16":
        # against the float32 block, the kernel is on average as close as XLA's bf16 path (both round
        # the output to bf16, so their largest errors are alike)
        exact = Block(dataclasses.replace(cfg, dtype=None)).apply({"params": params}, x.astype(jnp.float32), True,
                                                                  None, 11)
        off = lambda a: float(jnp.abs(a.astype(jnp.float32) - exact).mean())  # noqa: E731
        assert off(out) <= 1.05 * off(ref), (off(out), off(ref))
    if kv_len is not None:  # padded keys cannot reach the real tokens' values
        x2 = x.at[:, kv_len:].set(50.0)
        out2 = pvb.frozen_block(x2, params, num_heads=3, eps=cfg.ln_eps, kv_len=kv_len, interpret=True)
        np.testing.assert_array_equal(np.asarray(out2)[:, :kv_len], np.asarray(out)[:, :kv_len])


def test_the_kernel_carries_no_gradient():
    x = jnp.asarray(RNG.standard_normal((2, 11, 24)), jnp.float32)
    params = _block_params(CFG, x)
    g = jax.grad(lambda x, p: pvb.frozen_block(x, p, num_heads=3, eps=1e-6, interpret=True).sum(), argnums=(0, 1))(
        x, params)
    assert not any(np.asarray(a).any() for a in jax.tree.leaves(g))


def test_cost_estimate_counts_the_blocks_matmuls():
    c = pvb.cost_estimate(frames=600, n=257, width=384, mlp=1536, num_heads=6, itemsize=2, weight_bytes=3_500_000)
    dense = 600 * 2 * 257 * 384 * (4 * 384 + 2 * 1536)
    assert dense < c.flops < 1.2 * dense
    assert c.bytes_accessed == 2 * 600 * 257 * 384 * 2 + 3_500_000


def test_vit_with_fused_frozen_blocks_matches_without():
    # attention "pallas" (interpreted here) in both; blocks 0-1 frozen, 2 LoRA
    cfg = dataclasses.replace(CFG, attention="pallas")
    pixels = jnp.asarray(RNG.standard_normal((3, 8, 8, 3)), jnp.float32)
    params = ViT(cfg).init(jax.random.key(0), pixels)["params"]
    fused, plain = ViT(cfg), ViT(dataclasses.replace(cfg, fused_frozen_blocks=False))

    def loss(model, p):
        return jnp.sum(model.apply({"params": p}, pixels, True, True) ** 2)

    (l1, g1), (l2, g2) = (jax.value_and_grad(lambda p: loss(m, p))(params) for m in (fused, plain))
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)
    # the frozen blocks get no gradient either way; the LoRA block's adapters do
    assert not np.asarray(g1["block_0"]["mlp"]["fc1"]["kernel"]).any()
    assert np.asarray(g1["block_2"]["attn"]["qkv"]["lora_b"]).any()
