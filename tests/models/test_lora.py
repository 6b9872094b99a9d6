"""LoRADense against its definition and nn.Dense; merge_lora parity."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfa_jax.models.lora import LoRADense, decoding_layout, merge_lora


def _x(shape=(3, 5, 16), seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_rank0_is_dense_with_same_names():
    x = _x()
    v = LoRADense(8).init(jax.random.key(0), x)
    assert set(v["params"]) == {"kernel", "bias"}
    ref = nn.Dense(8).apply(v, x)  # nn.Dense reads the very same tree
    np.testing.assert_allclose(LoRADense(8).apply(v, x), ref, atol=1e-6)


def test_init_and_forward_match_definition():
    x = _x()
    m = LoRADense(24, rank=4, alpha=8.0, dropout=0.1)
    v = m.init(jax.random.key(1), x)
    p = v["params"]
    assert p["lora_a"].shape == (16, 4) and p["lora_b"].shape == (4, 24)
    assert np.all(np.asarray(p["lora_b"]) == 0)
    big = LoRADense(512, rank=64).init(jax.random.key(2), jnp.zeros((1, 512)))["params"]["lora_a"]
    assert abs(float(jnp.std(big)) - 0.02) < 1e-3 and abs(float(jnp.mean(big))) < 1e-3
    # untrained adapter: identical to the base layer
    base = np.asarray(x) @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
    np.testing.assert_allclose(m.apply(v, x), base, atol=1e-5)
    # trained adapter: x W + b + (x A B) * alpha / r
    b = np.random.default_rng(3).standard_normal((4, 24)).astype(np.float32)
    v2 = {"params": {**p, "lora_b": jnp.asarray(b)}}
    ref = base + (np.asarray(x) @ np.asarray(p["lora_a"]) @ b) * (8.0 / 4)
    np.testing.assert_allclose(m.apply(v2, x), ref, atol=1e-5)


def test_dropout_only_on_lora_branch():
    x = _x()
    m = LoRADense(24, rank=4, alpha=4.0, dropout=1.0)
    p = m.init(jax.random.key(1), x)["params"]
    p = {**p, "lora_b": jnp.ones((4, 24))}
    base = np.asarray(x) @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
    # dropout 1.0 kills the whole LoRA input, never the base path
    y = m.apply({"params": p}, x, deterministic=False, rngs={"dropout": jax.random.key(5)})
    np.testing.assert_allclose(y, base, atol=1e-5)
    y_det = m.apply({"params": p}, x, deterministic=True)
    assert np.abs(np.asarray(y_det) - base).max() > 1e-2


@pytest.mark.parametrize("shape", [(7, 16), (3, 5, 16), (2, 3, 4, 16)])
def test_gradients_match_definition_for_any_leading_dims(shape):
    """The batched up-projection (``_lora_up``) is the same function as x A B, gradients included."""
    x = _x(shape, seed=2)
    m = LoRADense(24, rank=4, alpha=8.0)
    p = m.init(jax.random.key(1), x)["params"]
    p = {**p, "lora_b": jnp.asarray(np.random.default_rng(4).standard_normal((4, 24)), jnp.float32)}

    def ours(q, y):
        return jnp.sum(jnp.sin(m.apply({"params": q}, y)))

    def definition(q, y):
        out = y @ q["kernel"] + q["bias"] + (y @ q["lora_a"] @ q["lora_b"]) * 2.0
        return jnp.sum(jnp.sin(out))

    g, gx = jax.grad(ours, argnums=(0, 1))(p, x)
    r, rx = jax.grad(definition, argnums=(0, 1))(p, x)
    for k in p:
        np.testing.assert_allclose(np.asarray(g[k]), np.asarray(r[k]), atol=1e-4, rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(rx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rank", [0, 4])
def test_splits_are_slices_of_the_full_output(rank):
    """``splits=3`` (the ViT's q/k/v) returns the three column blocks of the unsplit output,
    with the same dropout mask on the adapter input and the same gradients."""
    x = _x((2, 5, 16), seed=3)
    m = LoRADense(24, rank=rank, alpha=8.0, dropout=0.5)
    p = m.init(jax.random.key(1), x)["params"]
    if rank:
        p = {**p, "lora_b": jnp.asarray(np.random.default_rng(4).standard_normal((rank, 24)), jnp.float32)}
    rngs = {"dropout": jax.random.key(7)}
    w = jnp.asarray(np.random.default_rng(5).standard_normal((2, 5, 24)), jnp.float32)

    def full(q, y):
        return jnp.sum(jnp.sin(m.apply({"params": q}, y, deterministic=False, rngs=rngs)) * w)

    def split(q, y):
        parts = m.apply({"params": q}, y, deterministic=False, rngs=rngs, splits=3)
        assert len(parts) == 3 and all(t.shape == (2, 5, 8) for t in parts)
        return jnp.sum(jnp.sin(jnp.concatenate(parts, -1)) * w)

    np.testing.assert_allclose(split(p, x), full(p, x), rtol=1e-6)
    g, gx = jax.grad(split, argnums=(0, 1))(p, x)
    r, rx = jax.grad(full, argnums=(0, 1))(p, x)
    for k in p:
        np.testing.assert_allclose(np.asarray(g[k]), np.asarray(r[k]), atol=1e-5, rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(rx), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="do not split into 5"):
        m.apply({"params": p}, x, splits=5)


class _Two(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = LoRADense(32, rank=4, alpha=4.0, name="a")(x)
        return LoRADense(8, rank=16, alpha=32.0, name="b")(jax.nn.gelu(h))


def test_merge_matches_unmerged():
    x = _x()
    m = _Two()
    v = m.init(jax.random.key(0), x)
    rng = np.random.default_rng(1)
    v = jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.asarray(rng.standard_normal(a.shape) * 0.1, jnp.float32)
        if "lora_b" in jax.tree_util.keystr(path) else a, v)
    rules = [(r"^a/", 1.0), (r"^b/", 2.0)]
    merged = merge_lora(v, rules)
    flat = jax.tree_util.keystr(merged)
    assert "lora_a" not in flat and "lora_b" not in flat
    y, ym = m.apply(v, x), m.apply(merged, x)  # the same module runs the merged weights
    err = float(jnp.abs(y - ym).max())
    assert err < 1e-5, err
    assert float(jnp.abs(y - m.apply(merge_lora(v, 1.0), x)).max()) > 1e-3  # wrong scale differs
    with pytest.raises(ValueError, match="no scale rule"):
        merge_lora(v, [(r"^a/", 1.0)])


def test_decoding_layout_same_values_adapters_untouched():
    x = _x()
    m = _Two()
    v = m.init(jax.random.key(0), x)
    plain = {"params": {"a": merge_lora(v, 1.0)["params"]["a"], "b": v["params"]["b"]}}
    t = decoding_layout(plain)
    # The merged layer is stored transposed; the one with an adapter keeps its kernel.
    assert set(t["params"]["a"]) == {"kernel_t", "bias"}
    np.testing.assert_array_equal(t["params"]["a"]["kernel_t"], np.asarray(plain["params"]["a"]["kernel"]).T)
    assert "kernel" in t["params"]["b"] and "lora_a" in t["params"]["b"]
    np.testing.assert_allclose(m.apply(t, x), m.apply(plain, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 0.05)])
def test_the_elementwise_adapter_equals_the_matmul_form(dtype, tol):
    # adapter_elementwise: the rank-r up-projection as multiply-adds (fused by XLA into the base
    # matmul); values and gradients as the matmul form, to the compute dtype's rounding
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 12)), jnp.float32)
    layer = LoRADense(9, rank=3, alpha=6.0, dtype=dtype)
    params = layer.init(jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda a: a + 0.3, params)  # lora_b starts at zero
    fast = LoRADense(9, rank=3, alpha=6.0, dtype=dtype, adapter_elementwise=True)

    def run(m):
        return jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(m.apply({"params": p}, x).astype(jnp.float32))),
                                  argnums=(0, 1))(params, x)

    (v1, (gp1, gx1)), (v2, (gp2, gx2)) = run(layer), run(fast)
    np.testing.assert_allclose(float(v2), float(v1), rtol=tol)
    np.testing.assert_allclose(np.asarray(gx2), np.asarray(gx1), atol=tol, rtol=tol)
    for a, b in zip(jax.tree.leaves(gp2), jax.tree.leaves(gp1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol * 10, rtol=tol)
    # the option really changes the computation: no matmul for lora_b (base and down remain)
    dots = lambda m: str(jax.make_jaxpr(lambda p: m.apply({"params": p}, x))(params)).count("dot_general")  # noqa: E731
    assert (dots(layer), dots(fast)) == (3, 2)
