"""hfa_jax.models.activations.gelu against PyTorch's exact GELU (the reference models' activation)."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from hfa_jax.models.activations import gelu


def test_gelu_matches_torch_values_and_gradients():
    x = np.concatenate([np.linspace(-12, 12, 4001), np.random.default_rng(0).standard_normal(10000) * 3])
    x = x.astype(np.float32)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = torch.nn.functional.gelu(xt)
    yt.sum().backward()
    y = np.asarray(gelu(jnp.asarray(x)))
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=1e-6, rtol=1e-6)
    g = np.asarray(jax.grad(lambda v: jnp.sum(gelu(v)))(jnp.asarray(x)))
    np.testing.assert_allclose(g, xt.grad.numpy(), atol=2e-6, rtol=1e-5)
    # and jax's own exact (erfc) form, to float32 rounding
    np.testing.assert_allclose(y, np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=False)), atol=1e-6)


def test_gelu_low_precision_is_evaluated_in_float32():
    x = jnp.asarray(np.random.default_rng(1).standard_normal(4096) * 4, jnp.bfloat16)
    y = gelu(x)
    assert y.dtype == jnp.bfloat16
    exact = np.asarray(gelu(x.astype(jnp.float32)))
    # one rounding of the float32 result: within bf16's half-ulp (2^-9 relative)
    np.testing.assert_allclose(np.asarray(y, np.float32), exact, rtol=2**-8, atol=1e-30)
    assert gelu(x.astype(jnp.float16)).dtype == jnp.float16
