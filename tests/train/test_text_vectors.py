"""The frozen text encoder's sentence vectors computed once per sentence (hfa_jax.train.text_vectors):
a pretraining step fed the cached vectors computes exactly what it computed with the text encoder
inside the step."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from hfa_jax.train import schema
from hfa_jax.train import state as state_lib
from hfa_jax.train import steps
from hfa_jax.train import tasks as tasks_lib
from hfa_jax.train import text_vectors
from tests.test_aot import tiny
from tests.train.test_bf16_frozen import initial_variables, plan_of, random_batch


def _cached():
    """(task with cached vectors, the same task without, model, plan, state, batch, the vectors
    of the batch's rows)."""
    c = tiny("pretrain")
    task, model, mesh, rules, plan = plan_of(c)
    assert task.caches_text_vectors
    state = plan.make_state(initial_variables(plan), plan.root)

    shapes = steps.batch_shapes(task, batch_size=4, num_frames=8, frame_size=36, kind="train", num_pseudo_glosses=20)
    assert shapes["text_vec"].shape == (4, 16)  # the steps expect the cached vectors
    batch = random_batch({k: v for k, v in shapes.items() if k != "text_vec"}, vocab=64)
    batch["text_ids"][2] = batch["text_ids"][0]  # a sentence twice
    batch["text_mask"][3, 5:] = False            # and a shorter one
    # the split: the batch's 4 rows (3 distinct sentences) and the first one again
    fields = {"train": {"text_ids": np.concatenate([batch["text_ids"], batch["text_ids"][:1]]),
                        "text_mask": np.concatenate([batch["text_mask"], batch["text_mask"][:1]])}}
    params = state_lib.merge_params(state["trainable"], state["frozen"])
    assert text_vectors.add_text_vectors(task, model, params, fields, mesh=mesh, rules=rules) == 3
    vecs = fields["train"]["text_vec"]
    assert vecs.shape == (5, 16) and vecs.dtype == np.float32
    np.testing.assert_array_equal(vecs[0], vecs[2])
    np.testing.assert_array_equal(vecs[0], vecs[4])
    assert not np.array_equal(vecs[0], vecs[1]) and not np.array_equal(vecs[0], vecs[3])

    # the step with the encoder inside it: the same task without the cache
    c.train.cache_text_vectors = False
    in_step = tasks_lib.make(schema.resolve(c))
    assert not in_step.caches_text_vectors and "text_vec" not in steps.batch_shapes(
        in_step, batch_size=4, num_frames=8, frame_size=36, kind="train", num_pseudo_glosses=20)
    return task, in_step, model, plan, state, batch, vecs[:4]


def test_the_cached_sentence_vectors_give_the_in_step_evaluation_bit_for_bit():
    task, in_step, model, _, state, batch, vecs = _cached()
    batch = {**batch, "example_mask": np.ones((4,), bool)}

    def evaluate(t, b):
        return jax.jit(functools.partial(steps.eval_step, model=model, task=t))(state, b)

    (p_step, o_step), (p_cache, o_cache) = evaluate(in_step, batch), evaluate(task, {**batch, "text_vec": vecs})
    assert set(p_step) == set(p_cache) and set(o_step) == set(o_cache)
    for k in p_step:
        assert np.asarray(p_step[k]).tobytes() == np.asarray(p_cache[k]).tobytes(), k
    for k in o_step:
        assert np.asarray(o_step[k]).tobytes() == np.asarray(o_cache[k]).tobytes(), k


@pytest.mark.slow  # two train-step compiles: about a minute on 2 CPU cores
def test_the_cached_sentence_vectors_give_the_in_step_update_bit_for_bit():
    task, in_step, model, plan, state, batch, vecs = _cached()

    def train(t, b):
        return jax.jit(functools.partial(steps.train_step, model=model, task=t, tx=plan.tx,
                                         schedule=plan.schedule))(state, b)

    (s_step, m_step, _), (s_cache, m_cache, _) = train(in_step, batch), train(task, {**batch, "text_vec": vecs})
    assert set(m_step) == set(m_cache)
    for k in m_step:
        assert np.asarray(m_step[k]).tobytes() == np.asarray(m_cache[k]).tobytes(), k
    for a, b in zip(jax.tree.leaves(s_step["trainable"]), jax.tree.leaves(s_cache["trainable"])):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_a_text_encoder_with_dropout_or_one_that_trains_is_not_cached():
    def caches(c) -> bool:
        return tasks_lib.make(schema.resolve(c)).caches_text_vectors

    c = tiny("pretrain")
    c.model.text_encoder_dropout = True
    assert not caches(c)
    c = tiny("pretrain")
    c.train.trainable = ((r"^text_encoder/layers_0/fc2/", True),) + tuple(c.train.trainable)
    assert not caches(c)
    c = tiny("pretrain")
    c.train.cache_text_vectors = False
    assert not caches(c)
    assert not caches(tiny("finetune2"))
    assert caches(tiny("pretrain"))
