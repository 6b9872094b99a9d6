"""hfa_jax.models.dropout: flax.linen.Dropout's semantics, with masks from a counter-based hash.
The mask must keep the right fraction and carry no structure a network could pick up."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfa_jax.models.dropout import Dropout, dropout, keep_mask


def _sigmas(observed: float, p: float, n: int) -> float:
    return abs(observed - p) / np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("keep_prob", [0.9, 0.5, 0.1])
def test_keep_rate_and_determinism(keep_prob):
    key = jax.random.key(3)
    m = np.asarray(keep_mask(key, keep_prob, (64, 100, 160)))  # 1,024,000 draws
    assert m.dtype == bool and m.shape == (64, 100, 160)
    assert _sigmas(m.mean(), keep_prob, m.size) < 5
    # every row and every column keeps about the right fraction (no stripes)
    rows, cols = m.reshape(-1, 160).mean(1), m.reshape(-1, 160).mean(0)
    assert np.abs(rows - keep_prob).max() < 6 * np.sqrt(keep_prob * (1 - keep_prob) / 160)
    assert np.abs(cols - keep_prob).max() < 6 * np.sqrt(keep_prob * (1 - keep_prob) / 6400)
    # a pure function of the key (a resumed run draws the same masks); raw keys work too
    np.testing.assert_array_equal(np.asarray(keep_mask(key, keep_prob, (64, 100, 160))), m)
    raw = np.asarray(keep_mask(jax.random.PRNGKey(3), keep_prob, (64, 100, 160)))
    assert raw.shape == m.shape and _sigmas(raw.mean(), keep_prob, m.size) < 5


def test_no_correlation_between_neighbours_keys_or_layers():
    p = 0.5
    key = jax.random.key(0)
    m = np.asarray(keep_mask(key, p, (512, 1024)), np.float64)
    z = (m - p) / np.sqrt(p * (1 - p))
    bound = 5 / np.sqrt(m.size)  # 5 sigma of a correlation estimate over this many pairs
    for lag in (1, 2, 7, 64):
        assert abs(np.mean(z[:, lag:] * z[:, :-lag])) < bound * 1.1, f"column lag {lag}"
        assert abs(np.mean(z[lag:] * z[:-lag])) < bound * 1.1, f"row lag {lag}"
    # the same positions under another key (next step, next layer) are independent
    for other in (jax.random.key(1), jax.random.fold_in(key, 1), jax.random.split(key)[0]):
        o = (np.asarray(keep_mask(other, p, (512, 1024)), np.float64) - p) / np.sqrt(p * (1 - p))
        assert abs(np.mean(z * o)) < bound
    # joint frequencies of 8 consecutive bits along a row are uniform (chi-square, 255 dof)
    words = (m[:, :1024].reshape(-1, 8) * (1 << np.arange(8))).sum(1).astype(int)
    counts = np.bincount(words, minlength=256)
    expected = words.size / 256
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 255 + 6 * np.sqrt(2 * 255)


def test_functional_dropout_matches_flax_semantics():
    x = jax.random.normal(jax.random.key(1), (4, 8, 32))
    key = jax.random.key(2)
    y = dropout(key, 0.25, x)
    kept = np.asarray(keep_mask(key, 0.75, x.shape))
    np.testing.assert_allclose(np.asarray(y), np.where(kept, np.asarray(x) / 0.75, 0.0), rtol=1e-6)
    assert dropout(key, 0.0, x) is x
    np.testing.assert_array_equal(np.asarray(dropout(key, 1.0, x)), 0.0)
    # broadcast dims share one mask value: drop-path drops whole examples
    d = np.asarray(dropout(key, 0.5, jnp.ones((64, 3, 5)), broadcast_dims=(1, 2)))
    per_example = d.reshape(64, -1)
    assert set(np.unique(per_example)) <= {0.0, 2.0}
    assert (per_example.min(1) == per_example.max(1)).all() and 0 < (per_example[:, 0] > 0).sum() < 64
    # gradient: mask / keep_prob; bf16 stays bf16
    g = jax.grad(lambda v: jnp.sum(dropout(key, 0.25, v)))(x)
    np.testing.assert_allclose(np.asarray(g), kept / 0.75, rtol=1e-6)
    assert dropout(key, 0.1, x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_module_interface_like_flax_dropout():
    class Two(nn.Module):
        @nn.compact
        def __call__(self, x, deterministic):
            return Dropout(0.5)(x, deterministic), Dropout(0.5)(x, deterministic=deterministic)

    x = jnp.ones((16, 64))
    a, b = Two().apply({}, x, False, rngs={"dropout": jax.random.key(0)})
    assert float(jnp.mean(a == b)) < 0.75  # each call draws its own key (make_rng)
    a2, _ = Two().apply({}, x, False, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
    c, _ = Two().apply({}, x, True)
    assert c is not None and bool(jnp.all(c == x))  # deterministic: identity, no rng needed
    with pytest.raises(ValueError, match="rows and columns"):
        keep_mask(jax.random.key(0), 0.5, (2**32, 1))
