"""The LoRA MLP kernel (hfa_jax.models.pallas_lora_mlp), run by Pallas' interpreter on this CPU
against XLA: values and gradients (input and adapters) in float32 and bfloat16, with and without
the adapters' dropout (the in-kernel masks against keep_mask's), a partial last tile, and the
ViT's MLP with and without it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfa_jax.models import dropout as dropout_lib
from hfa_jax.models import pallas_lora_mlp as plm
from hfa_jax.models.vit import ViT, ViTConfig, _MLP
from tests.models.conftest import run_on_cpu_devices

RNG = np.random.default_rng(0)
CFG = ViTConfig(width=24, depth=3, num_heads=3, mlp_dim=40, pos_grid=2, patch_size=4, lora_blocks=(1, 2),
                lora_rank=2, lora_dropout=0.0)


def _params(cfg, x):
    params = _MLP(cfg, lora=True).init(jax.random.key(1), x)["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))  # lora_b starts at 0: make every weight non-zero
    return jax.tree.unflatten(tree, [a + 0.2 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


def _value_and_grads(fn, x, params, ct):
    lora = {k: {n: params[k][n] for n in ("lora_a", "lora_b")} for k in ("fc1", "fc2")}

    def f(x, lora):
        p = {k: {**params[k], **lora[k]} for k in ("fc1", "fc2")}
        return fn(x, p)

    y, vjp = jax.vjp(f, x, lora)
    return y, vjp(ct)


@pytest.mark.parametrize("dtype, rate", [("float32", 0.0), ("float32", 0.25), ("bfloat16", 0.25)])
def test_kernel_matches_xla(monkeypatch, dtype, rate):
    monkeypatch.setattr(plm, "TILE_ROWS", 22)  # 3 frames of 11 tokens in blocks of 2: the last is partial
    dt = jnp.dtype(dtype)
    x = jnp.asarray(RNG.standard_normal((3, 11, 24)), dt)
    params = _params(CFG, x)
    ct = jnp.asarray(RNG.standard_normal(x.shape), dt)
    words = jax.random.bits(jax.random.key(7), (4,), jnp.uint32) if rate else None
    kw = dict(scale=2.0, rate=rate, words=words)
    y, (dx, dl) = _value_and_grads(lambda x, p: plm.lora_mlp(x, p, **kw, interpret=True), x, params, ct)
    r, (rx, rl) = _value_and_grads(lambda x, p: plm.reference(x, p, **kw), x, params, ct)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == "float32" else dict(atol=0.15, rtol=0.05)
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(r, np.float32), **tol)
    np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(rx, np.float32), **tol)
    for path, g in jax.tree_util.tree_leaves_with_path(dl):
        ref = np.asarray(_at(rl, path), np.float32)
        scale = np.abs(ref).max()
        np.testing.assert_allclose(np.asarray(g, np.float32) / scale, ref / scale,
                                   atol=1e-5 if dtype == "float32" else 0.03, err_msg=jax.tree_util.keystr(path))


def _at(tree, path):
    for k in path:
        tree = tree[k.key]
    return tree


def test_in_kernel_masks_are_keep_masks():
    # the kernel draws each element's decision from its flattened (row, column) and the layer's two
    # key words (dropout.hashed_keep): that is keep_mask's mask of the [frames, tokens, features]
    # input the XLA path drops
    key = jax.random.key(3)
    words = jax.random.bits(key, (2,), jnp.uint32)
    rows = (5 * 7, 24)
    row = jax.lax.broadcasted_iota(jnp.uint32, rows, 0)
    col = jax.lax.broadcasted_iota(jnp.uint32, rows, 1)
    in_kernel = dropout_lib.hashed_keep(row, col, words[0], words[1], 0.75)
    mask = dropout_lib.keep_mask(key, 0.75, (5, 7, 24))
    np.testing.assert_array_equal(np.asarray(in_kernel), np.asarray(mask).reshape(rows))
    assert 0.6 < float(np.asarray(in_kernel).mean()) < 0.9


def test_vit_with_fused_lora_mlp_matches_without():
    cfg = dataclasses.replace(CFG, attention="pallas", fused_frozen_blocks=False)
    pixels = jnp.asarray(RNG.standard_normal((2, 8, 8, 3)), jnp.float32)
    params = ViT(cfg).init(jax.random.key(0), pixels)["params"]
    params = jax.tree.map(lambda a: a + 0.05, params)  # non-zero lora_b
    # the LoRA blocks' MLP kernel and elementwise adapters vs both off (XLA ops around the
    # attention kernel)
    fused = ViT(dataclasses.replace(cfg, fused_lora_mlp=True, fused_lora_adapters=True))
    plain = ViT(dataclasses.replace(cfg, fused_lora_mlp=False, fused_lora_adapters=False))
    jaxpr = lambda m: str(jax.make_jaxpr(lambda p: m.apply({"params": p}, pixels, True, True))(params))  # noqa: E731
    assert "vit_lora_mlp" in jaxpr(fused) and "vit_lora_mlp" not in jaxpr(plain)

    def loss(model, p):
        return jnp.sum(model.apply({"params": p}, pixels, True, True) ** 2)

    (l1, g1), (l2, g2) = (jax.value_and_grad(lambda p: loss(m, p))(params) for m in (fused, plain))
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
    for name in ("block_1", "block_2"):
        for mod, layer in (("mlp", "fc1"), ("mlp", "fc2"), ("attn", "qkv"), ("attn", "proj")):
            for w in ("lora_a", "lora_b"):
                np.testing.assert_allclose(np.asarray(g1[name][mod][layer][w]), np.asarray(g2[name][mod][layer][w]),
                                           atol=1e-5, rtol=1e-4, err_msg=f"{name}/{layer}/{w}")
    assert np.asarray(g1["block_1"]["mlp"]["fc1"]["lora_b"]).any()


def test_a_table_that_trains_the_mlp_base_weights_is_refused():
    from hfa_jax.train import freeze

    params = {"frame_encoder": {"block_2": {"mlp": {"fc1": {"kernel": 0, "bias": 0, "lora_a": 0}}}},
              "temporal": {"block_0": {"mlp": {"fc1": {"kernel": 0}}}}}
    paper = [(r"^frame_encoder/.*lora_", True), (r"^frame_encoder/", False), (r"^temporal/", True)]
    assert freeze.trained_vit_mlp_weights(freeze.trainable_mask(params, paper)) == []
    everything = [(r".*", True)]
    assert freeze.trained_vit_mlp_weights(freeze.trainable_mask(params, everything)) == [
        "frame_encoder/block_2/mlp/fc1/bias", "frame_encoder/block_2/mlp/fc1/kernel"]


def test_the_trainer_refuses_the_fused_mlp_with_such_a_table():
    import types

    from hfa_jax.errors import ConfigError
    from hfa_jax.train import freeze, trainer

    params = {"frame_encoder": {"block_2": {"mlp": {"fc2": {"bias": 0, "lora_a": 0}}}}}
    mask = freeze.trainable_mask(params, [(r".*", True)])
    model = types.SimpleNamespace(cfg=types.SimpleNamespace(vit=dataclasses.replace(CFG, attention="pallas")))
    with pytest.raises(ConfigError, match="fused_lora_mlp=False"):
        trainer._check_fused_kernels(model, mask)
    off = types.SimpleNamespace(cfg=types.SimpleNamespace(vit=dataclasses.replace(CFG, attention="pallas",
                                                                                  fused_lora_mlp=False)))
    trainer._check_fused_kernels(off, mask)  # no kernel, no conflict
    xla = types.SimpleNamespace(cfg=types.SimpleNamespace(vit=CFG))
    trainer._check_fused_kernels(xla, mask)


_SHARDED = r"""
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from hfa_jax.models import pallas_lora_mlp as plm, pallas_vit_block as pvb
from hfa_jax.models.vit import Block, ViTConfig, _MLP
plm.TILE_ROWS = 11  # 2 frames of 11 tokens per device, one frame a block
cfg = ViTConfig(width=24, depth=3, num_heads=3, mlp_dim=40, pos_grid=2, patch_size=4, lora_blocks=(2,), lora_rank=2)
mesh = Mesh(np.array(jax.devices()), ("data",))
r = np.random.default_rng(0)
x = jnp.asarray(r.standard_normal((8, 11, 24)), jnp.float32)
p = jax.tree.map(lambda a: a + 0.2, _MLP(cfg, lora=True).init(jax.random.key(1), x)["params"])
words = jax.random.bits(jax.random.key(7), (4,), jnp.uint32)
kw = dict(scale=2.0, rate=0.25, words=words)
loss = lambda f: lambda x, p: jnp.sum(jnp.sin(f(x, p)))
adapters = lambda g: [g[k][n] for k in ("fc1", "fc2") for n in ("lora_a", "lora_b")]
bp = Block(cfg).init(jax.random.key(2), x, True, None, 11)["params"]
with mesh, nn.logical_axis_rules([("batch", "data")]):
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    fn = jax.jit(jax.value_and_grad(loss(lambda x, p: plm.lora_mlp(x, p, **kw)), argnums=(0, 1)))
    assert "shard_map" in str(jax.make_jaxpr(fn)(xs, p))
    out, (dx, dp) = fn(xs, p)
    block = jax.jit(lambda x: pvb.frozen_block(x, bp, num_heads=3, eps=1e-6, kv_len=9))(xs)
# the masks index global rows, so the sharded kernel equals the unsharded reference, dropout included
ref, (rx, rp) = jax.value_and_grad(loss(lambda x, p: plm.reference(x, p, **kw)), argnums=(0, 1))(x, p)
np.testing.assert_allclose(out, ref, rtol=1e-5)
np.testing.assert_allclose(dx, rx, atol=3e-4, rtol=1e-4)  # float32 sums in another order
for g, gr in zip(adapters(dp), adapters(rp)):
    np.testing.assert_allclose(g, gr, atol=1e-4, rtol=1e-4)
np.testing.assert_allclose(block, Block(cfg).apply({"params": bp}, x, True, None, 9), atol=2e-5)
print("ok")
"""


def test_kernels_run_per_device_under_a_mesh():
    # 4 CPU devices, the interpreter: frames split over the mesh through shard_map; dropout masks
    # and gradient sums over all devices' rows equal the unsharded computation's
    run_on_cpu_devices(_SHARDED)
