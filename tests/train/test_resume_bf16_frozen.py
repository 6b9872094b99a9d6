"""Resuming a bf16 stage whose checkpoint stored its frozen weights in the other precision
(``train.bf16_frozen`` changed between the runs, or a checkpoint written before it existed): the
restored state is bit for bit the state a run with the new setting from the start holds, and the
resumed run's losses and final state equal the uninterrupted run's. Real mismatches between a
checkpoint and the planned state are one line naming the leaf."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from hfa_jax.errors import CheckpointError
from hfa_jax.train import checkpoint as ckpt_lib
from hfa_jax.train import loop
from tests.test_aot import tiny
from tests.train.test_bf16_frozen import initial_variables, plan_of
from tests.train.test_loop import _final_params, _losses, paths, tiny_config  # noqa: F401 (fixture)


def _bits(x) -> tuple:
    x = np.asarray(jax.device_get(x))
    return x.dtype, x.shape, x.tobytes()


def _assert_same(a, b) -> None:
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (p, x), (_, y) in zip(fa, fb):
        assert _bits(x) == _bits(y), jax.tree_util.keystr(p)


@pytest.fixture(scope="module")
def states():
    """(plan storing bf16, plan storing float32, state in each) of one tiny bf16 pretraining
    model, from the same initial variables; the trainable part moved off its init."""
    c = tiny("pretrain")
    c.model.dtype = "bfloat16"
    low_plan = plan_of(c)[-1]
    c.train.bf16_frozen = False
    full_plan = plan_of(c)[-1]
    variables = initial_variables(low_plan)
    out = []
    for plan in (low_plan, full_plan):
        s = jax.device_put(plan.make_state(variables, low_plan.root), plan.state_shardings)
        s["trainable"] = jax.tree.map(lambda x: x + 0.25, s["trainable"])
        s["step"] = jnp.asarray(7, jnp.int32)
        out.append(s)
    assert low_plan.bf16_frozen is not None and full_plan.bf16_frozen is None
    return low_plan, full_plan, out[0], out[1]


def _frozen_dtypes(state) -> set:
    return {x.dtype for x in jax.tree.leaves(state["frozen"])}


def test_a_float32_frozen_checkpoint_resumes_into_bf16_storage_bit_for_bit(states, tmp_path):
    low_plan, _, low, full = states
    assert _frozen_dtypes(full) == {jnp.dtype(jnp.float32)}
    ck = ckpt_lib.Checkpointer(str(tmp_path), use_async=False)
    ck.save(7, full, {"step": 7})
    restored, meta = ck.restore(low_plan.abstract_sharded_state(), fresh=low)
    assert meta["step"] == 7 and jnp.dtype(jnp.bfloat16) in _frozen_dtypes(restored)
    _assert_same(restored, low)  # rounded as make_state rounds a fresh run's weights


def test_a_bf16_frozen_checkpoint_resumes_into_float32_storage_with_the_full_precision_weights(states, tmp_path):
    _, full_plan, low, full = states
    ck = ckpt_lib.Checkpointer(str(tmp_path), use_async=False)
    ck.save(7, low, {"step": 7})
    restored, _ = ck.restore(full_plan.abstract_sharded_state(), fresh=full)
    _assert_same(restored, full)
    # without the fresh state: the exact upcast, which loses the float32 weights' low bits
    upcast, _ = ck.restore(full_plan.abstract_sharded_state())
    flat_up = traverse_util.flatten_dict(jax.device_get(upcast["frozen"]), sep="/")
    flat_low = traverse_util.flatten_dict(jax.device_get(low["frozen"]), sep="/")
    flat_full = traverse_util.flatten_dict(jax.device_get(full["frozen"]), sep="/")
    lowered = [k for k, v in flat_low.items() if v.dtype == jnp.bfloat16]
    assert lowered
    for k in lowered:
        assert flat_up[k].dtype == np.float32 and np.array_equal(flat_up[k], flat_low[k].astype(np.float32)), k
    assert any(not np.array_equal(flat_up[k], flat_full[k]) for k in lowered)


def test_a_frozen_weight_that_differs_from_the_fresh_one_is_the_checkpoints(states, tmp_path):
    _, full_plan, low, full = states
    name = ("frame_encoder", "patch_embed", "kernel")
    changed = jax.tree.map(lambda x: x, low)
    changed["frozen"]["frame_encoder"]["patch_embed"]["kernel"] = (
        low["frozen"]["frame_encoder"]["patch_embed"]["kernel"] + jnp.asarray(0.5, jnp.bfloat16))
    ck = ckpt_lib.Checkpointer(str(tmp_path), use_async=False)
    ck.save(7, changed, {})
    restored, _ = ck.restore(full_plan.abstract_sharded_state(), fresh=full)
    want = np.asarray(changed["frozen"]["frame_encoder"]["patch_embed"]["kernel"]).astype(np.float32)
    got = restored["frozen"]["frame_encoder"]["patch_embed"]["kernel"]
    assert _bits(got) == _bits(want)
    other = traverse_util.flatten_dict(restored["frozen"])
    for k, v in traverse_util.flatten_dict(full["frozen"]).items():
        if k != name:
            assert _bits(other[k]) == _bits(v), k


def _small(tmp_path, state) -> ckpt_lib.Checkpointer:
    ck = ckpt_lib.Checkpointer(str(tmp_path), use_async=False)
    ck.save(3, state, {})
    return ck


@pytest.mark.parametrize("change, words", [
    (lambda t: t["frozen"].update(w=jax.ShapeDtypeStruct((4, 4), jnp.float32)), "frozen/w has shape (4, 3)"),
    (lambda t: t["frozen"].pop("w"), "holds frozen/w"),
    (lambda t: t["trainable"].update(u=jax.ShapeDtypeStruct((2,), jnp.float32)), "has no trainable/u"),
    (lambda t: t.update(step=jax.ShapeDtypeStruct((), jnp.float32)), "step is int32 there but float32"),
    (lambda t: t["trainable"].update(v=jax.ShapeDtypeStruct((2,), jnp.bfloat16)),
     "trainable/v is float32 there but bfloat16"),
    (lambda t: t["frozen"].update(w=jax.ShapeDtypeStruct((4, 3), jnp.float16)),
     "frozen/w is float32 there but float16"),
])
def test_a_checkpoint_that_does_not_match_the_planned_state_is_one_line(tmp_path, change, words):
    state = {"step": jnp.zeros((), jnp.int32), "trainable": {"v": jnp.ones(2)}, "frozen": {"w": jnp.ones((4, 3))}}
    ck = _small(tmp_path, state)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    change(target)
    with pytest.raises(CheckpointError) as e:
        ck.restore(target)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and str(tmp_path) in msg, msg


@pytest.mark.slow  # two bf16 pretraining train-step compiles and four short runs: about a minute on 2 CPU cores
@pytest.mark.parametrize("written, resumed", [(False, True), (True, False)])
def test_a_resume_with_the_other_bf16_frozen_setting_continues_the_uninterrupted_run(
        paths, tmp_path, written, resumed):  # noqa: F811 (the imported fixture)
    def config(bf16_frozen):
        c = tiny_config(paths, steps=5)
        c.model.dtype = "bfloat16"
        c.train.bf16_frozen = bf16_frozen
        return c

    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    loop.run(config(resumed), full)
    c = config(written)
    c.train.debug_crash_after_step = 3  # the last checkpoint is step 2, written with the other setting
    with pytest.raises(loop.DebugCrash):
        loop.run(c, cut)
    assert ckpt_lib.Checkpointer(cut).latest_step() == 2
    loop.run(config(resumed), cut)

    la, lb = _losses(full), _losses(cut)
    assert sorted(la) == sorted(lb) == [1, 2, 3, 4, 5]
    assert all(la[s] == lb[s] for s in la), (la, lb)  # to the last digit of the float32 loss
    _, sa, ma = _final_params(full)
    _, sb, mb = _final_params(cut)
    assert ma["step"] == mb["step"] == 5
    _assert_same(sa, sb)  # every leaf, dtype and bits: frozen weights in the resumed run's precision
