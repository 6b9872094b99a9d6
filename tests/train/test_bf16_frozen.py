"""Frozen weights stored in bfloat16 where the stage's programs only read them through a bf16 cast
(hfa_jax.train.state.bf16_read_only): the steps compute exactly what they computed with float32
frozen weights, and a float32 model stores nothing in bf16."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from hfa_jax.train import initial_weights
from hfa_jax.train import mesh as mesh_lib
from hfa_jax.train import schema
from hfa_jax.train import state as state_lib
from hfa_jax.train import steps
from hfa_jax.train import tasks as tasks_lib
from hfa_jax.train import trainer
from tests.test_aot import tiny


def plan_of(c):
    """(task, model, mesh, rules, plan) of a config, as the trainer builds them."""
    settings = schema.resolve(c)
    task = tasks_lib.make(settings)
    mesh = mesh_lib.make_mesh(data=settings.mesh.data, fsdp=settings.mesh.fsdp)
    rules = mesh_lib.logical_rules(settings.mesh.rules)
    model = trainer.build_model(task, trainer.model_config(settings))
    plan = trainer.plan_state(task, model, mesh, rules, total_steps=10, steps_per_epoch=10)
    return task, model, mesh, rules, plan


def initial_variables(plan) -> dict:
    variables = jax.jit(plan.init_variables)(plan.root)
    return jax.tree.map(lambda x: getattr(x, "value", x), variables, is_leaf=lambda x: hasattr(x, "value"))


def random_batch(shapes, vocab: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in shapes.items():
        if s.dtype == jnp.uint8:
            out[k] = rng.integers(0, 256, s.shape, dtype=np.uint8)
        elif s.dtype == jnp.bool_:
            out[k] = np.ones(s.shape, bool)
        elif jnp.issubdtype(s.dtype, jnp.integer):
            out[k] = rng.integers(3, vocab, s.shape).astype(np.int32)
        else:
            out[k] = (rng.random(s.shape) < 0.3).astype(np.float32)
    return out


def test_only_leaves_read_solely_through_a_bf16_cast_are_marked():
    def fn(w, x):
        a = x @ w["cast"].astype(jnp.bfloat16)                       # cast: yes
        b = x @ jnp.transpose(w["moved"][:, :4]).astype(jnp.bfloat16)  # moved, then cast: yes
        c = (x.astype(jnp.float32) @ w["f32"]).astype(jnp.bfloat16)    # read in float32: no
        d = x @ w["both"].astype(jnp.bfloat16) + w["both"][0].astype(jnp.float16).astype(jnp.bfloat16)  # no
        e = x @ jax.jit(lambda v: v.astype(jnp.bfloat16))(w["in_call"])  # through a call: yes
        f = jax.lax.scan(lambda h, _: (h @ w["in_loop"].astype(jnp.bfloat16), None), x, None,
                         length=2)[0]                                  # a loop constant, cast: yes
        g = jax.lax.scan(lambda h, _: (h * 2, None), w["carried"], None, length=2)[0][:2].astype(jnp.bfloat16)
        return a + b + c + d + e + f + g  # g: a loop carry, whatever its later cast: no

    w = {k: jax.ShapeDtypeStruct((4, 4), jnp.float32)
         for k in ("cast", "moved", "f32", "both", "in_call", "in_loop", "carried", "unused")}
    x = jax.ShapeDtypeStruct((2, 4), jnp.bfloat16)
    mask = state_lib.bf16_read_only([fn], w, x)
    assert mask == {"cast": True, "moved": True, "f32": False, "both": False, "in_call": True, "in_loop": True,
                    "carried": False, "unused": False}
    # a second program reading "cast" in float32 vetoes it
    mask = state_lib.bf16_read_only([fn, lambda w, x: w["cast"].sum()], w, x)
    assert mask["cast"] is False and mask["moved"] is True


def _bf16_states():
    """(task, model, plan, state with float32 frozen weights, the same with bf16 storage)."""
    c = tiny("pretrain")
    c.model.dtype = "bfloat16"
    task, model, _, _, plan = plan_of(c)
    variables = initial_variables(plan)
    full = state_lib.make_state(variables, plan.root, mask=plan.mask, tx=plan.tx)
    low = plan.make_state(variables, plan.root)
    return task, model, plan, full, low


def test_a_bf16_pretraining_evaluation_is_identical_with_frozen_weights_stored_in_bf16():
    task, model, plan, full, low = _bf16_states()
    flat = traverse_util.flatten_dict(plan.bf16_frozen, sep="/")
    assert flat["frame_encoder/patch_embed/kernel"] and flat["frame_encoder/block_0/mlp/fc1/kernel"]
    assert flat["frame_encoder/block_0/attn/qkv/kernel"]  # sliced into q, k, v, then cast
    # read only by the sentence vectors' program (the steps read the cached vectors)
    assert flat["text_encoder/layers_0/fc1/kernel"] and flat["text_encoder/embed_tokens/embedding"]
    # LayerNorm parameters and the interpolated position embedding are read in float32
    assert not flat["frame_encoder/block_0/norm1/scale"] and not flat["frame_encoder/pos_embed"]
    assert not flat["text_encoder/layer_norm/scale"]
    assert plan.abstract_state["frozen"]["text_encoder"]["layers_0"]["fc1"]["kernel"].dtype == jnp.bfloat16
    assert full["frozen"]["frame_encoder"]["block_0"]["mlp"]["fc1"]["kernel"].dtype == jnp.float32
    assert low["frozen"]["frame_encoder"]["block_0"]["mlp"]["fc1"]["kernel"].dtype == jnp.bfloat16

    shapes = steps.batch_shapes(task, batch_size=2, num_frames=8, frame_size=36, kind="eval", num_pseudo_glosses=20)
    batch = random_batch(shapes, vocab=64)
    evaluate = jax.jit(functools.partial(steps.eval_step, model=model, task=task))
    (p_full, o_full), (p_low, o_low) = evaluate(full, batch), evaluate(low, batch)
    for k in p_full:
        assert np.asarray(p_full[k]).tobytes() == np.asarray(p_low[k]).tobytes(), k
    for k in o_full:
        assert np.asarray(o_full[k]).tobytes() == np.asarray(o_low[k]).tobytes(), k


@pytest.mark.slow  # two bf16 train-step compiles: about a minute on 2 CPU cores
def test_a_bf16_pretraining_step_is_identical_with_frozen_weights_stored_in_bf16():
    task, model, plan, full, low = _bf16_states()
    shapes = steps.batch_shapes(task, batch_size=2, num_frames=8, frame_size=36, kind="train", num_pseudo_glosses=20)
    batch = random_batch(shapes, vocab=64)
    train = jax.jit(functools.partial(steps.train_step, model=model, task=task, tx=plan.tx, schedule=plan.schedule))
    (s_full, m_full, f_full), (s_low, m_low, f_low) = train(full, batch), train(low, batch)
    for k in m_full:
        assert np.asarray(m_full[k]).tobytes() == np.asarray(m_low[k]).tobytes(), k
    for a, b in zip(jax.tree.leaves(s_full["trainable"]), jax.tree.leaves(s_low["trainable"])):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert np.all(f_full) and np.all(f_low)


def test_a_float32_model_or_the_switch_off_stores_every_frozen_weight_in_float32():
    c = tiny("pretrain")  # float32 compute, as the demo
    assert plan_of(c)[-1].bf16_frozen is None
    c.model.dtype = "bfloat16"
    c.train.bf16_frozen = False
    plan = plan_of(c)[-1]
    assert plan.bf16_frozen is None
    assert {x.dtype for x in jax.tree.leaves(plan.abstract_state["frozen"])} == {jnp.dtype(jnp.float32)}


def test_only_the_pretrained_backbones_own_weights_qualify():
    # a frozen LoRA adapter or temporal weight (fine-tuning stage 1) is trained again in stage 2:
    # it must reach stage 2 in float32
    assert initial_weights.is_backbone("frame_encoder/block_3/mlp/fc1/kernel")
    assert initial_weights.is_backbone("mbart/decoder/layers_0/fc1/kernel")
    assert not initial_weights.is_backbone("frame_encoder/block_9/attn/qkv/lora_a")
    assert not initial_weights.is_backbone("temporal/block_0/mlp/fc1/kernel")
    assert not initial_weights.is_backbone("mapper/dense/kernel")


def test_a_later_stage_keeps_the_float32_import_of_a_weight_a_checkpoint_holds_in_bf16():
    full = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    target = {"w": full.copy(), "v": np.zeros((3, 4), np.float32)}
    ckpt = {"w": full.astype(jnp.bfloat16), "v": full.astype(jnp.bfloat16)}
    assert initial_weights._put(target, ckpt, "", "", "checkpoint") == 2
    assert target["w"].dtype == np.float32 and np.array_equal(target["w"], full)  # the import, kept
    np.testing.assert_array_equal(target["v"], full.astype(jnp.bfloat16).astype(np.float32))  # no import: upcast
