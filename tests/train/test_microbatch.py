"""Micro-batched gradients (train.microbatches): K sequential micro-batches give the loss, each
loss part and the gradient of the one-batch step, including the contrastive terms (cached
embeddings); a per-micro-batch contrastive loss does not.

Tolerance: float32, every loss value within 1e-5 relative, every gradient leaf within 1e-5 of
the leaf's largest entry plus 1e-7 of the largest gradient entry overall (summation order
differs); with training-mode BatchNorm that floor is 1e-6 (gradients that are zero in exact
arithmetic, see the test).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import model_config
from hfa_jax.errors import ConfigError
from hfa_jax.models.hfa import HFAConfig, build_model
from hfa_jax.models.packing import pack_index, pack_index_per_microbatch
from hfa_jax.train import beyondgloss_losses, losses, microbatch, schema, steps, tasks

B, T, IMG = 4, 4, 28
V = 6  # pseudo-gloss classes (+ the blank row 0)
VOCAB = 24
RTOL = 1e-5


def _config(stage: str):
    c = schema.base()
    mc = model_config("tiny")
    mc.num_pseudo_glosses = V
    mc.proto_dim = 8
    mc.mbart.vocab_size = VOCAB
    mc.mbart.decoder_start_token_id = 3
    mc.vit.depth, mc.vit.lora_blocks = 1, (0,)
    mc.temporal.blocks_before = mc.temporal.blocks_after = 1
    mc.mbart.encoder_layers = mc.mbart.decoder_layers = 1
    # No dropout: the one-batch and micro-batched steps then see the same function.
    mc.vit.lora_dropout = mc.temporal.dropout = mc.temporal.drop_path_rate = mc.pg_dropout = 0.0
    mc.mbart.dropout = mc.mbart.lora_dropout = 0.0
    if stage == "pretrain":
        mc.beyondgloss.update(dict(description=True, description_vectors=True, hand_pose=True, feedback_dropout=0.0))
    c.model = mc
    c.train.stage = stage
    return c


def _batch(stage: str, seed: int = 0, rows: int = B) -> dict:
    rng = np.random.default_rng(seed)
    lengths = [T, 2, 3, 1, 4, 2, 3, 4][:rows]
    fmask = np.arange(T)[None] < np.asarray(lengths)[:, None]
    b = {"pixels": rng.standard_normal((rows, T, IMG, IMG, 3)).astype(np.float32), "frame_mask": fmask}
    if stage == "pretrain":
        ids = rng.integers(3, VOCAB, (rows, 5))
        b.update(text_ids=ids, text_mask=np.arange(5)[None] < rng.integers(2, 6, (rows, 1)),
                 desc_vec=rng.standard_normal((rows, 32)).astype(np.float32),  # precomputed, d_model wide
                 pg_targets=(rng.random((rows, V + 1)) < 0.4).astype(np.float32),
                 hand_pose=rng.standard_normal((rows, T, 288)).astype(np.float32))
    else:
        # target lengths differ across rows, so micro-batches hold different token counts
        ids = rng.integers(3, VOCAB, (rows, 6))
        tmask = np.arange(6)[None] < np.asarray([6, 2, 4, 1, 5, 3, 6, 2][:rows])[:, None]
        b.update(decoder_input_ids=ids, labels=np.roll(ids, -1, 1), target_mask=tmask)
    return {k: jnp.asarray(v) for k, v in b.items()}


# Exactness does not need optimised code: compiling at XLA's lowest level roughly halves the
# compile time of these programs on a 2-core CPU.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _run(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=_FAST_COMPILE)(*args)


def _setup(stage: str):
    """Model, random variables (from the init's shapes: no init program to compile) and batch."""
    config = _config(stage)
    model = build_model(HFAConfig.from_config(config.model), "pretrain" if stage == "pretrain" else "translate")
    batch = _batch(stage)
    args = (batch["pixels"], batch["frame_mask"],
            *((batch["text_ids"], batch["text_mask"]) if stage == "pretrain"
              else (batch["decoder_input_ids"], batch["target_mask"])))
    kw = dict(desc_vec=batch["desc_vec"]) if stage == "pretrain" else {}
    shapes = jax.eval_shape(lambda r: model.init({"params": r, "dropout": r}, *args, **kw), jax.random.key(0))
    leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
    values = []
    for i, (path, x) in enumerate(leaves):
        name = jax.tree_util.keystr(path)
        noise = 0.1 * jax.random.normal(jax.random.key(i), x.shape, x.dtype)
        if "batch_stats" in name:  # running statistics: mean ~0.1, var ~2
            values.append(jnp.full(x.shape, 2.0 if "var" in name else 0.1, x.dtype))
        elif name.endswith("['scale']"):  # LayerNorm / BatchNorm scales near 1
            values.append(1.0 + noise)
        elif "logit_scale" in name:
            values.append(jnp.full(x.shape, 2.0, x.dtype))
        else:  # LoRA B included: adapters then have gradients to compare
            values.append(noise)
    variables = jax.tree_util.tree_unflatten(tree, values)
    return config, model, variables, variables["params"], batch


def _apply(model, task, variables, train):
    def apply(params, mb, index):
        rng = jax.random.fold_in(jax.random.key(1), index)
        return steps.forward(model, task, {**variables, "params": params}, mb, mb["pixels"], train=train, rng=rng)
    return apply


def _written_out_loss(config, out, batch):
    """The stage's loss written out from the papers' formulas (hfa_jax.train.losses and
    beyondgloss_losses), independently of the task's list of terms."""
    t, mask = config.train, batch.get("example_mask")
    if config.train.stage != "pretrain":
        loss = losses.translation_loss(out, batch["labels"], batch["target_mask"], label_smoothing=t.label_smoothing)
        return loss, {"loss": loss}
    total, parts = losses.pretrain_loss(out, batch["pg_targets"], pg_weight=t.pg_weight, pg_mode=t.pg_loss,
                                        example_mask=mask)
    bg = config.model.beyondgloss
    return beyondgloss_losses.add_beyondgloss_terms(
        total, parts, out, batch, description=bg.description, hand_pose=bg.hand_pose, lambda_desc=t.lambda_desc,
        lambda_hand=t.lambda_hand, example_mask=mask)


def _reference(config, model, variables, params, batch, train):
    """The one-batch loss of the papers' formulas on the train step's forward pass
    (steps.forward); the aux also holds the model outputs."""
    task = tasks.make(schema.resolve(config))

    def loss_of(p):
        out, new_bs = _apply(model, task, variables, train)(p, batch, 0)
        loss, parts = _written_out_loss(config, out, batch)
        return loss, (parts, new_bs, out)
    (loss, (parts, new_bs, out)), grads = _run(jax.value_and_grad(loss_of, has_aux=True), params)
    return ((loss, (parts, new_bs)), grads), out


def _assert_objective_is_written_out_loss(config, out, batch):
    """On the same model outputs, the task's list of terms sums to the written-out loss to the
    bit (the terms are added in the papers' order): the train step's K = 1 loss is unchanged."""
    total, parts = microbatch.full_batch_loss(tasks.make(schema.resolve(config)).objective(), out, batch)
    ref_total, ref_parts = _written_out_loss(config, out, batch)
    assert set(parts) == set(ref_parts)
    assert float(total) == float(ref_total)
    for name in ref_parts:
        assert float(parts[name]) == float(ref_parts[name]), name


def _microbatched(config, model, variables, params, batch, k, train):
    """The task's objective (tasks.Task.objective) through microbatch.value_and_grad: what the
    train step runs, for K = 1 as for K > 1."""
    task = tasks.make(schema.resolve(config))
    return _run(lambda p, b: microbatch.value_and_grad(_apply(model, task, variables, train), task.objective(), p, b, k),
                params, batch)


def _max_grad_error(ga, gb, floor=1e-7) -> float:
    """Largest |a - b| / (RTOL * max|b_leaf| + floor * max|b|) over the leaves: <= 1 passes."""
    top = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(gb))
    worst = 0.0
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        tol = RTOL * float(jnp.max(jnp.abs(b))) + floor * top
        worst = max(worst, float(jnp.max(jnp.abs(a - b))) / tol)
    return worst


def _assert_same(got, want, grad_floor=1e-7):
    (loss, (parts, _)), grads = got
    (loss_r, (parts_r, _)), grads_r = want
    assert set(parts) == set(parts_r)
    for name in parts_r:
        np.testing.assert_allclose(parts[name], parts_r[name], rtol=RTOL, err_msg=name)
    np.testing.assert_allclose(loss, loss_r, rtol=RTOL)
    assert jax.tree.structure(grads) == jax.tree.structure(grads_r)
    assert _max_grad_error(grads, grads_r, grad_floor) <= 1.0


@pytest.fixture(scope="module")
def pretrain():
    return _setup("pretrain")


def test_pretraining_loss_parts_and_gradients_equal_one_batch(pretrain):
    """K = 4 (one example per micro-batch), BatchNorm in evaluation mode, all four terms on, one
    filler row (example_mask). The naive alternative, each micro-batch its own contrastive batch,
    is far off: the comparison can fail."""
    config, model, variables, params, batch = pretrain
    batch = {**batch, "example_mask": jnp.asarray([True, True, True, False])}
    want, out = _reference(config, model, variables, params, batch, train=False)
    _assert_objective_is_written_out_loss(config, out, batch)
    _assert_same(_microbatched(config, model, variables, params, batch, 4, train=False), want)
    (_, (parts, _)), grads = want
    assert set(parts) == {"loss", "pg_loss", "align_loss", "desc_loss", "hand_loss"}
    # the gradient reaches every part of the model the terms train, shared scalar included
    for name in ("logit_scale", "prototypes", "video_encoder", "desc_proj", "hand_pose", "frame_encoder"):
        assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(grads[name])) > 1e-6, name

    # naive: the alignment loss of each half (rows k::2), averaged, and its embedding gradient
    def align(v, t, mask):
        return losses.alignment_loss(v, t, out["logit_scale"], example_mask=mask)
    v, t, m = out["video_vec"], out["text_vec"], batch["example_mask"]
    naive = sum(align(v[i::2], t[i::2], m[i::2]) for i in range(2)) / 2
    assert abs(float(naive) - float(parts["align_loss"])) > 100 * RTOL * float(parts["align_loss"])
    g_naive = jax.grad(lambda v: sum(align(v[i::2], t[i::2], m[i::2]) for i in range(2)) / 2)(v)
    g_global = jax.grad(lambda v: align(v, t, m))(v)
    assert float(jnp.max(jnp.abs(g_naive - g_global))) > 100 * RTOL * float(jnp.max(jnp.abs(g_global)))


def test_frame_packing_per_microbatch_equals_the_unpacked_one_batch_step(pretrain):
    """K = 2 with frame packing (data.pack_frames): each micro-batch's ViT sees only its valid
    frames (rows 0, 2: 7 of 8 slots; rows 1, 3: 3 of 8; one capacity of 7 for both), and loss
    and gradient equal the one-batch step on the unpacked batch."""
    config, model, variables, params, batch = pretrain
    index = pack_index_per_microbatch(np.asarray(batch["frame_mask"]), 2, groups=1, levels=B * T // 2)
    assert index.shape == (1, 2, 7)  # 14 frames through the ViT instead of 16
    want, _ = _reference(config, model, variables, params, batch, train=False)
    packed = {**batch, "frame_index": jnp.asarray(index)}
    _assert_same(_microbatched(config, model, variables, params, packed, 2, train=False), want)


def test_training_mode_batchnorm_with_equal_microbatch_statistics(pretrain):
    """K = 2, BatchNorm in training mode: when each micro-batch is a copy of the same examples its
    statistics are the whole batch's, so loss and gradient still equal the one-batch step; the
    running mean advances by one momentum step."""
    config, model, variables, params, _ = pretrain
    base = _batch("pretrain", seed=3, rows=2)
    batch = {k: jnp.repeat(v, 2, axis=0) for k, v in base.items()}  # rows k::2 are `base`
    want, _ = _reference(config, model, variables, params, batch, train=True)
    got = _microbatched(config, model, variables, params, batch, 2, train=True)
    # Batch-statistics normalisation makes the gradient of what feeds frame_bn through a constant
    # shift (frame_proj's bias, the ViT's final-norm bias) zero: both sides are rounding noise
    # (~4e-7 here), hence an absolute floor of 1e-6 of the largest gradient entry.
    _assert_same(got, want, grad_floor=1e-6)
    mean = got[0][1][1]["frame_bn"]["mean"]
    np.testing.assert_allclose(mean, want[0][1][1]["frame_bn"]["mean"], rtol=RTOL, atol=1e-7)
    assert not np.allclose(mean, variables["batch_stats"]["frame_bn"]["mean"])


def test_translation_loss_and_gradients_equal_one_batch():
    """K = 4: the micro-batches hold 6, 2, 4 and 1 target tokens, so a plain mean of their
    means would be wrong; the token-count weighting gives the one-batch mean."""
    config, model, variables, params, batch = _setup("finetune2")
    counts = [int(batch["target_mask"][i::4].sum()) for i in range(4)]
    assert len(set(counts)) > 1
    want, out = _reference(config, model, variables, params, batch, train=False)
    _assert_objective_is_written_out_loss(config, out, batch)
    _assert_same(_microbatched(config, model, variables, params, batch, 4, train=False), want)


def test_split_and_merge_rows():
    batch = {"x": jnp.arange(8.0).reshape(8, 1), "frame_index": jnp.zeros((2, 4, 3), jnp.int32)}
    parts = microbatch.split_batch(batch, 4)
    assert parts["x"][1, :, 0].tolist() == [1.0, 5.0]  # micro-batch 1: rows 1, 5
    assert parts["frame_index"].shape == (4, 2, 3)
    np.testing.assert_array_equal(microbatch.merge_rows(parts["x"]), batch["x"])
    with pytest.raises(ValueError, match=r"frame_index .* must be \[G, 2, P\]"):
        microbatch.split_batch({"x": batch["x"], "frame_index": jnp.zeros((2, 3), jnp.int32)}, 2)


def test_pack_index_per_microbatch():
    mask = np.arange(5)[None] < np.asarray([5, 1, 2, 5, 3, 1, 4, 2])[:, None]
    index = microbatch.pack_index_per_microbatch(mask, 2, groups=2, levels=5)
    assert index.shape[:2] == (2, 2)
    for k in range(2):  # each micro-batch's rows k::2, one capacity for all
        own = pack_index(mask[k::2], 2, 5, min_capacity=index.shape[2])
        np.testing.assert_array_equal(index[:, k], own)


def test_check_microbatches():
    microbatch.check_microbatches(16, 4, 2)
    with pytest.raises(ConfigError, match=r"train.batch_size=12 is not divisible by train.microbatches x data "
                                          r"shards = 4 x 2"):
        microbatch.check_microbatches(12, 4, 2)
    with pytest.raises(ConfigError, match="microbatches=0 must be >= 1"):
        microbatch.check_microbatches(16, 0, 1)
