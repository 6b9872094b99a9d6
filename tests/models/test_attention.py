"""The attention dispatcher (``model.attention``) and the ViT's Pallas kernel, the kernel run by
Pallas' interpreter on this CPU against XLA's path: values and gradients, padded tokens and
padded frames."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfa_jax.errors import ConfigError
from hfa_jax.models import attention as attention_lib
from hfa_jax.models import pallas_attention as pa
from hfa_jax.models.hfa import HFAConfig
from hfa_jax.models.vit import ViT, ViTConfig
from tests.models.conftest import run_on_cpu_devices

RNG = np.random.default_rng(0)


def _qkv(f, nq, nk, d, dtype=jnp.float32):
    q = jnp.asarray(RNG.standard_normal((f, nq, d)), dtype)
    k, v = (jnp.asarray(RNG.standard_normal((f, nk, d)), dtype) for _ in range(2))
    return q, k, v


def _both(q, k, v, heads, kv_len, ct):
    """(output, grads) of the kernel (interpreted) and of the XLA reference."""
    def run(fn):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, num_heads=heads, kv_len=kv_len), q, k, v)
        return out, vjp(ct)

    kernel = lambda *a, **kw: pa.frame_attention(*a, **kw, interpret=True)  # noqa: E731
    return run(kernel), run(pa.reference)


@pytest.mark.parametrize("nq, kv_len", [(11, None), (11, 7), (1, 9)])
def test_kernel_matches_xla_values_and_gradients(monkeypatch, nq, kv_len):
    # 5 frames in blocks of 2: the last block is partial (padded frames); kv_len < 11: padded
    # keys; nq = 1: the CLS-only last block (queries from the first token only)
    monkeypatch.setattr(pa, "_MAX_FRAMES_PER_BLOCK", 2)
    q, k, v = _qkv(5, 11, 11, 12)
    q = q[:, :nq]
    ct = jnp.asarray(RNG.standard_normal(q.shape), jnp.float32)
    (out, grads), (ref, ref_grads) = _both(q, k, v, 3, kv_len, ct)
    assert out.shape == ref.shape == (5, nq, 12)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-6, rtol=1e-5)
    for name, g, r in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=5e-6, rtol=1e-5, err_msg=f"d{name}")
    if kv_len is not None:  # padded keys get no gradient, and their (finite) content cannot reach the output
        assert not np.asarray(grads[1])[:, kv_len:].any() and not np.asarray(grads[2])[:, kv_len:].any()
        k2 = k.at[:, kv_len:].set(1e4)
        out2 = pa.frame_attention(q, k2, v.at[:, kv_len:].set(-1e4), num_heads=3, kv_len=kv_len, interpret=True)
        np.testing.assert_array_equal(np.asarray(out2), np.asarray(out))


def test_padding_frames_never_touch_real_ones(monkeypatch):
    # frames 3 and 4 are padding, here non-finite; they share a block with real frame 2
    monkeypatch.setattr(pa, "_MAX_FRAMES_PER_BLOCK", 3)
    q, k, v = _qkv(5, 6, 6, 8)
    bad = lambda a: a.at[3:].set(jnp.inf)  # noqa: E731
    out = pa.frame_attention(bad(q), bad(k), bad(v), num_heads=2, interpret=True)
    ref = pa.reference(q[:3], k[:3], v[:3], num_heads=2)
    np.testing.assert_allclose(np.asarray(out[:3]), np.asarray(ref), atol=2e-6, rtol=1e-5)


def test_kernel_bf16_close_to_xla():
    q, k, v = _qkv(3, 9, 9, 16, jnp.bfloat16)
    ct = jnp.asarray(RNG.standard_normal(q.shape), jnp.bfloat16)
    (out, grads), (ref, ref_grads) = _both(q, k, v, 2, 8, ct)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=2e-2, rtol=2e-2)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), atol=6e-2, rtol=5e-2)


def test_cost_estimate_counts_what_xla_counts_for_the_same_attention():
    # forward: XLA's own count of the materialised path on this CPU (matmuls + softmax) is the
    # yardstick; the backward's five matmuls are 2.5x the forward's two
    f, n, d, heads = 4, 17, 32, 2
    q, k, v = _qkv(f, n, n, d)
    xla = jax.jit(lambda q, k, v: pa.reference(q, k, v, num_heads=heads)).lower(q, k, v).compile()
    cost = xla.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    est = pa.cost_estimate(f, n, n, d, heads, 4, backward=False)
    assert abs(est.flops - cost["flops"]) / cost["flops"] < 0.1
    assert est.transcendentals == f * heads * n * n
    assert est.bytes_accessed == 4 * f * n * d * 4  # q, k, v read once, the output written once
    bwd = pa.cost_estimate(f, n, n, d, heads, 4, backward=True)
    matmul = 2 * f * heads * n * n * (d // heads)
    assert bwd.flops - 8 * f * heads * n * n == 5 * matmul and bwd.bytes_accessed == 7 * f * n * d * 4


def test_vit_with_pallas_matches_xla(monkeypatch):
    """The ViT through ``model.attention="pallas"`` (the interpreter here) against "xla": output
    and LoRA gradients, with padded tokens (the token axis run at 7 + 3, the padding masked) and
    the CLS-only last block."""
    cfg = ViTConfig(width=16, depth=2, num_heads=2, mlp_dim=32, pos_grid=4, lora_blocks=(1,), lora_rank=2,
                    lora_alpha=2.0)
    x = jnp.asarray(RNG.standard_normal((3, 28, 42, 3)), jnp.float32)  # 3 frames, 1 + 6 tokens
    p = jax.jit(ViT(cfg).init)(jax.random.key(0), x)["params"]
    p = jax.tree_util.tree_map_with_path(lambda path, a: a + 0.1 if "lora_b" in jax.tree_util.keystr(path) else a, p)
    monkeypatch.setattr(attention_lib, "frame_tokens", lambda n, *a: n + 3)

    def run(choice):
        m = ViT(dataclasses.replace(cfg, attention=choice))
        f = lambda q: m.apply({"params": q}, x, cls_only=True)  # noqa: E731
        return jax.jit(f)(p), jax.jit(jax.grad(lambda q: jnp.sum(jnp.sin(f(q)))))(p)

    (y, g), (y_ref, g_ref) = run("pallas"), run("xla")
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), atol=1e-5, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_ref), jax.tree.leaves(g)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_model_attention_reaches_every_site_and_old_keys_are_read(caplog):
    from configs.common import model_config

    c = model_config("paper")
    assert c.attention == "auto"
    cfg = HFAConfig.from_config(c)
    assert cfg.vit.attention == cfg.temporal.attention == cfg.mbart.attention == "auto"
    c.attention = "pallas"
    cfg = HFAConfig.from_config(c)
    assert cfg.vit.attention == cfg.temporal.attention == cfg.mbart.attention == "pallas"
    c.attention = "flash"
    with pytest.raises(ConfigError, match="model.attention must be one of xla, cudnn, pallas, auto"):
        HFAConfig.from_config(c)
    # a config.json of an earlier version: per-model keys, no model.attention
    old = model_config("tiny").to_dict()
    del old["attention"]
    old["vit"]["attention"] = "cudnn"
    old["temporal"].update(attention="chunked", chunk_size=16)
    old["mbart"]["attention_impl"] = "xla"
    attention_lib._warn_once.cache_clear()  # each deprecation is logged once per process
    with caplog.at_level(logging.WARNING, logger=attention_lib.__name__):
        cfg = HFAConfig.from_config(old)
    assert cfg.vit.attention == cfg.temporal.attention == cfg.mbart.attention == "cudnn"
    for key in ("temporal.attention", "temporal.chunk_size", "mbart.attention_impl"):
        assert f"config key model.{key} is deprecated and ignored" in caplog.text
    assert "model.vit.attention is deprecated: read as model.attention='cudnn'" in caplog.text
    assert old["temporal"]["chunk_size"] == 16  # the caller's dict is not changed
    # an exported model's config (dataclasses.asdict of HFAConfig) repeats model.attention in
    # every model: read back silently, unchanged
    exported = dataclasses.asdict(HFAConfig.from_config(model_config("paper")))
    caplog.clear()
    attention_lib._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger=attention_lib.__name__):
        assert HFAConfig.from_config(exported) == HFAConfig.from_config(model_config("paper"))
    assert "deprecated" not in caplog.text


@pytest.mark.parametrize("choice", ["cudnn", "pallas", "auto"])
def test_sites_without_a_kernel_run_xla_on_this_cpu(choice):
    # mBART's masked attention and the temporal band: every choice is the XLA path, bit for bit
    b, t, s, n, h = 2, 5, 7, 2, 8
    q = jnp.asarray(RNG.standard_normal((b, t, n, h)), jnp.float32)
    k, v = (jnp.asarray(RNG.standard_normal((b, s, n, h)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(RNG.random((b, 1, t, s)) > 0.3).at[..., 0].set(True)
    ref = attention_lib.masked_attention(q, k, v, mask, choice="xla")
    np.testing.assert_array_equal(np.asarray(attention_lib.masked_attention(q, k, v, mask, choice=choice)),
                                  np.asarray(ref))
    km = jnp.asarray([[True] * 7, [True] * 4 + [False] * 3])
    ref = attention_lib.local_attention(k, k, v, km, window=2, choice="xla")
    np.testing.assert_array_equal(np.asarray(attention_lib.local_attention(k, k, v, km, window=2, choice=choice)),
                                  np.asarray(ref))


# --------------------------------------------------------------------------- the ViT's remat policy
def test_vit_remat_policies_keep_values_and_gradients():
    from hfa_jax.models.vit import REMAT_POLICIES

    cfg = ViTConfig(width=16, depth=2, num_heads=2, mlp_dim=32, pos_grid=4, lora_blocks=(1,), lora_rank=2,
                    lora_alpha=2.0)
    x = jnp.asarray(RNG.standard_normal((2, 28, 28, 3)), jnp.float32)
    p = jax.jit(ViT(cfg).init)(jax.random.key(0), x)["params"]

    def grads(policy):
        m = ViT(dataclasses.replace(cfg, remat_policy=policy))
        return jax.jit(jax.grad(lambda q: jnp.sum(jnp.sin(m.apply({"params": q}, x, cls_only=True)))))(p)

    ref = grads("none")
    for policy in REMAT_POLICIES:
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(grads(policy))):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-5, err_msg=policy)
    with pytest.raises(ConfigError, match="model.vit.remat_policy must be one of none, full, dots, dots_no_batch"):
        ViTConfig(remat_policy="some")


_SHARDED = r"""
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from hfa_jax.models import attention as A, pallas_attention as pa
mesh = Mesh(np.array(jax.devices()), ("data",))
r = np.random.default_rng(0)
q, k, v = (jnp.asarray(r.standard_normal((8, 6, 8)), jnp.float32) for _ in range(3))
loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))
kernel = lambda q, k, v: A.frame_attention(q, k, v, num_heads=2, choice="pallas", valid_tokens=5)
ref = lambda q, k, v: pa.reference(q, k, v, num_heads=2, kv_len=5)
with mesh, nn.logical_axis_rules([("batch", "data")]):
    sh = NamedSharding(mesh, P("data"))
    q, k, v = (jax.device_put(a, sh) for a in (q, k, v))
    fn = jax.jit(jax.value_and_grad(loss(kernel), argnums=(0, 1, 2)))
    assert "shard_map" in str(jax.make_jaxpr(fn)(q, k, v))
    out, grads = fn(q, k, v)
out_ref, grads_ref = jax.value_and_grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
np.testing.assert_allclose(out, out_ref, rtol=1e-5)
for g, gr in zip(grads, grads_ref):
    np.testing.assert_allclose(g, gr, atol=1e-5, rtol=1e-5)
print("ok")
"""


def test_kernel_runs_per_device_under_a_mesh():
    # XLA cannot partition a Mosaic kernel: under the trainer's mesh the frames go through
    # shard_map, split as the ``batch`` logical axis (4 CPU devices here, the interpreter)
    run_on_cpu_devices(_SHARDED)
