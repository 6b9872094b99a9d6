"""Optimiser against PyTorch: OneCycleLR (lr and β1 cycle), clip_grad_norm_, AdamW."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from hfa_jax.train import state as state_lib
from hfa_jax.train import optim


@pytest.mark.parametrize("total,pct", [(40, 0.05), (100, 0.3), (7, 0.05)])
def test_one_cycle_matches_torch_lr_and_momentum(total, pct):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=total, pct_start=pct,
                                              anneal_strategy="cos")
    lrs, moms = [], []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sch.step()
    s = optim.OneCycle(max_lr=3e-4, total_steps=total, pct_start=pct)
    steps = np.arange(total)
    np.testing.assert_allclose(np.asarray(jax.vmap(s.lr)(steps)), lrs, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.vmap(s.beta1)(steps)), moms, rtol=1e-6)
    if pct * total >= 1:  # otherwise torch starts directly in the annealing phase
        assert lrs[0] == pytest.approx(3e-4 / 25)
    assert lrs[-1] == pytest.approx(3e-4 / 25 / 1e4, rel=1e-3)


def test_clip_adamw_one_cycle_trajectory_matches_torch():
    r = np.random.default_rng(0)
    w0 = r.normal(size=(5, 3)).astype(np.float32)
    b0 = r.normal(size=(3,)).astype(np.float32)
    x = r.normal(size=(8, 5)).astype(np.float32)
    y = r.normal(size=(8, 3)).astype(np.float32)
    total = 30

    tw, tb = torch.nn.Parameter(torch.from_numpy(w0.copy())), torch.nn.Parameter(torch.from_numpy(b0.copy()))
    opt = torch.optim.AdamW([tw, tb], lr=0.05, weight_decay=0.01)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=total, pct_start=0.2,
                                              anneal_strategy="cos")
    tx_, ty = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(total):
        opt.zero_grad()
        loss = (((tx_ @ tw + tb) - ty) ** 2).sum() * 3.0  # large grads so the clip is active
        loss.backward()
        torch.nn.utils.clip_grad_norm_([tw, tb], 1.0)
        opt.step()
        sch.step()

    tx, _ = optim.make_optimizer(peak_lr=0.05, total_steps=total, pct_start=0.2, weight_decay=0.01)
    params = {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}
    state = tx.init(params)

    def lossf(p):
        return (((x @ p["w"] + p["b"]) - y) ** 2).sum() * 3.0

    @jax.jit
    def step(p, s):
        g = jax.grad(lossf)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(total):
        params, state = step(params, state)
    np.testing.assert_allclose(np.asarray(params["w"]), tw.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(params["b"]), tb.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert float(optim.current_lr(state)) == pytest.approx(0.05 / 25 / 1e4, rel=1e-3)


def test_split_merge_params_and_frozen_have_no_state():
    params = {"a": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}, "b": {"kernel": jnp.ones(3)}}
    mask = {"a": {"kernel": True, "bias": False}, "b": {"kernel": False}}
    tr, fr = state_lib.split_params(params, mask)
    assert set(tr) == {"a"} and set(tr["a"]) == {"kernel"}
    assert set(fr) == {"a", "b"} and set(fr["a"]) == {"bias"}
    merged = state_lib.merge_params(tr, fr)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    tx, _ = optim.make_optimizer(peak_lr=1e-3, total_steps=10)
    n_state = sum(x.size for x in jax.tree.leaves(tx.init(tr)) if x.ndim > 0)
    assert n_state == 2 * 4  # mu and nu of the one trainable kernel only
