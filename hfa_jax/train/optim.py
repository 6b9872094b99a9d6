"""The optimiser of docs/training.md: global-norm clip 1.0 -> AdamW (explicit weight decay) driven by a
one-cycle cosine schedule with PyTorch ``OneCycleLR`` semantics, including the β1 cycle.

The reference (elsobhano/MLLM ``Pretrain_Model.configure_optimizers``) uses
``torch.optim.AdamW(weight_decay=0.01)`` + ``OneCycleLR(max_lr, total_steps, pct_start=0.05,
anneal_strategy='cos')`` with PyTorch defaults ``div_factor=25``, ``final_div_factor=1e4``,
``cycle_momentum=True``, ``base_momentum=0.85``, ``max_momentum=0.95`` (β1 goes 0.95 -> 0.85 during
warm-up and back to 0.95), and Lightning's ``clip_gradients(1.0, "norm")``.

Freezing: parameters are partitioned into a trainable and a frozen subtree
(:func:`hfa_jax.train.state.split_params`); the optimiser is built on the trainable subtree only, so frozen
parameters carry no optimiser state and are never differentiated.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


@dataclasses.dataclass(frozen=True)
class OneCycle:
    """PyTorch ``OneCycleLR`` (two phases, cosine annealing) as pure functions of the step.

    Step ``k`` (0-based) is the value used by the k-th optimiser update, as in PyTorch where the
    scheduler is constructed (step 0) before the first ``optimizer.step()``.
    """

    max_lr: float
    total_steps: int
    pct_start: float = 0.05
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    base_momentum: float = 0.85
    max_momentum: float = 0.95

    @property
    def _phase1_end(self) -> float:
        # torch: float(pct_start * total_steps) - 1
        return float(self.pct_start * self.total_steps) - 1.0

    @staticmethod
    def _cos(start, end, pct):
        return end + (start - end) / 2.0 * (jnp.cos(math.pi * pct) + 1.0)

    def _anneal(self, step, p1_start, p1_end, p2_start, p2_end):
        step = jnp.asarray(step, jnp.float32)
        e1 = self._phase1_end
        e2 = float(self.total_steps - 1)
        # Phase 1 covers step <= e1; with e1 <= 0 the division would be by <= 0: torch then
        # produces inf/nan only if step 0 falls in phase 1 with e1 == 0. Guard the denominator.
        pct1 = step / max(e1, 1e-12)
        pct2 = (step - e1) / max(e2 - e1, 1e-12)
        v1 = self._cos(p1_start, p1_end, pct1)
        v2 = self._cos(p2_start, p2_end, jnp.minimum(pct2, 1.0))
        return jnp.where(step <= e1, v1, v2)

    def lr(self, step) -> jax.Array:
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        return self._anneal(step, initial, self.max_lr, self.max_lr, final)

    def beta1(self, step) -> jax.Array:
        return self._anneal(step, self.max_momentum, self.base_momentum, self.base_momentum,
                            self.max_momentum)


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: scale by ``min(1, max_norm / (norm + 1e-6))``."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        norm = optax.global_norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(*, peak_lr: float, total_steps: int, pct_start: float = 0.05,
                   weight_decay: float = 0.01, clip_norm: float | None = 1.0,
                   b2: float = 0.999, eps: float = 1e-8, div_factor: float = 25.0,
                   final_div_factor: float = 1e4, cycle_momentum: bool = True,
                   base_momentum: float = 0.85, max_momentum: float = 0.95
                   ) -> tuple[optax.GradientTransformation, OneCycle]:
    """clip (torch semantics) -> AdamW with one-cycle lr and β1 (``inject_hyperparams``).

    optax's AdamW equals ``torch.optim.AdamW``: decoupled decay ``p *= 1 - lr*wd``, bias correction
    ``1 - b1**t`` with the *current* β1 (as torch does when OneCycleLR changes it), eps added to
    ``sqrt(v_hat)``.
    """
    sched = OneCycle(max_lr=peak_lr, total_steps=max(int(total_steps), 1), pct_start=pct_start,
                     div_factor=div_factor, final_div_factor=final_div_factor,
                     base_momentum=base_momentum, max_momentum=max_momentum)
    b1 = sched.beta1 if cycle_momentum else max_momentum
    adamw = optax.inject_hyperparams(optax.adamw)(
        learning_rate=sched.lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    parts = []
    if clip_norm is not None:
        parts.append(clip_by_global_norm_torch(clip_norm))
    parts.append(adamw)
    return optax.chain(*parts), sched


def current_lr(opt_state) -> jax.Array:
    """The learning rate used by the last update (from the ``inject_hyperparams`` state)."""
    def is_inject(x):
        return hasattr(x, "hyperparams") and isinstance(getattr(x, "hyperparams"), dict)

    for s in jax.tree.leaves(opt_state, is_leaf=is_inject):
        if is_inject(s):
            return s.hyperparams["learning_rate"]
    raise ValueError("no InjectHyperparamsState in the optimiser state")
