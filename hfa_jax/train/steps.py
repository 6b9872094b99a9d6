"""The step functions of a training stage, as plain module functions (flax ``examples/wmt`` style).

Each takes the train state (:mod:`hfa_jax.train.state`) and a device batch; the stage's model,
config and optimiser are keyword arguments, bound with ``functools.partial`` before ``jax.jit``::

    step = functools.partial(steps.train_step, model=model, config=config, tx=tx, schedule=schedule)
    new_state, metrics, finite = jax.jit(step, donate_argnums=0)(state, batch)

The trainer, the ahead-of-time compiler (:mod:`hfa_jax.aot`), the benchmarks and the tests all
call these same functions.

Batches (see :mod:`hfa_jax.data.pipeline`): ``frames [B, T, H, W, 3] uint8``, ``frame_mask [B, T]
bool``, and per stage ``text_ids/text_mask/pg_targets`` (pretraining, plus the BeyondGloss
fields) or ``decoder_input_ids/labels/target_mask`` (fine-tuning); optionally ``example_mask
[B] bool`` (filler rows of an evaluation batch) and ``frame_index`` (frame packing).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfa_jax.data import augment as augment_lib
from hfa_jax.data.beyondgloss_io import HAND_POSE_DIM
from hfa_jax.data.sharding import agree_on_time_length, packed_frame_index, to_global
from hfa_jax.models.beyondgloss import BeyondGlossConfig
from hfa_jax.models.packing import leaves_out_frames
from hfa_jax.train import beyondgloss_losses as bg_losses
from hfa_jax.train import losses as losses_lib
from hfa_jax.train import microbatch as microbatch_lib
from hfa_jax.train.mesh import BATCH_AXES
from hfa_jax.train.state import grad_groups, variables_from_state

PyTree = Any
Batch = Mapping[str, jax.Array]


# ---------------------------------------------------------------------------------------------
# Pieces of a step

def padding_chunk(config) -> int:
    """Frames per warp chunk when skipping padding (``data.augment.padding_chunk``; -1: 8 on a
    single CPU device, where the device is the data loader's own cores; off on accelerators,
    where one big kernel beats a sequential loop, and on meshes, where a loop over the sharded
    batch axis would gather it)."""
    chunk = int(config.data.augment.get("padding_chunk", -1))
    if chunk < 0:
        single_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
        return augment_lib.CPU_PADDING_CHUNK if single_cpu else 0
    return chunk


def augment_frames(config, rng, frames: jax.Array, *, train: bool, frame_mask: jax.Array | None = None
                   ) -> jax.Array:
    """uint8 ``frames [B, T, H, W, 3]`` -> normalised ``pixels [B, T, crop, crop, 3]`` (random
    crop/rotate/scale/translate when ``train``, centre crop otherwise)."""
    a = config.data.augment
    return augment_lib.augment(rng, frames, train=train, crop_size=int(config.data.crop_size), p=float(a.p),
                               max_rotate_deg=float(a.max_rotate_deg), max_scale=float(a.max_scale),
                               max_translate_px=int(a.max_translate_px), frame_mask=frame_mask,
                               padding_chunk=padding_chunk(config))


def model_inputs(stage: str, batch: Batch, pixels: jax.Array) -> tuple[jax.Array, ...]:
    """The positional inputs of the stage's model: pixels, frame mask and the text side
    (pretraining: the sentence for the frozen text encoder; fine-tuning: the decoder inputs)."""
    if stage == "pretrain":
        return (pixels, batch["frame_mask"], batch["text_ids"], batch["text_mask"])
    return (pixels, batch["frame_mask"], batch["decoder_input_ids"], batch["target_mask"])


def forward(model: nn.Module, stage: str, variables: Mapping[str, PyTree], batch: Batch, pixels: jax.Array,
            *, train: bool, rng: jax.Array | None = None) -> tuple[Any, PyTree]:
    """Runs the stage's model on normalised ``pixels [B, T, H, W, 3]``.

    Returns ``(outputs, new_batch_stats)``: pretrain -> the ``HFAPretrain`` dict; fine-tuning ->
    logits ``[B, L, V]``. In training, BatchNorm uses batch statistics and updates them.
    """
    rngs = {"dropout": rng} if train else {}
    kw = dict(deterministic=not train)
    args = model_inputs(stage, batch, pixels)
    if stage == "pretrain":
        kw.update({k: batch[k] for k in ("desc_ids", "desc_mask", "desc_vec") if k in batch})
    if "frame_index" in batch:  # frame packing (data.pack_frames): the ViT sees valid frames only
        kw["frame_index"] = batch["frame_index"]
    if train:
        out, upd = model.apply(variables, *args, rngs=rngs, mutable=["batch_stats"], **kw)
        return out, upd.get("batch_stats", variables.get("batch_stats", {}))
    return model.apply(variables, *args, **kw), variables.get("batch_stats", {})


def stage_loss(config, stage: str, outputs: Any, batch: Batch) -> tuple[jax.Array, dict]:
    """The stage's total loss and its named parts (pretraining: pseudo-gloss + video-text
    alignment, plus the BeyondGloss terms that are on; fine-tuning: label-smoothed CE)."""
    tcfg = config.train
    if stage == "pretrain":
        total, parts = losses_lib.pretrain_loss(outputs, batch["pg_targets"], pg_weight=float(tcfg.pg_weight),
                                                pg_mode=tcfg.pg_loss, example_mask=batch.get("example_mask"))
        bg = BeyondGlossConfig.from_config(config.model.get("beyondgloss", None))
        return bg_losses.add_beyondgloss_terms(
            total, parts, outputs, batch, description=bg.description, hand_pose=bg.hand_pose,
            lambda_desc=float(tcfg.lambda_desc), lambda_hand=float(tcfg.lambda_hand),
            example_mask=batch.get("example_mask"))
    loss = losses_lib.translation_loss(outputs, batch["labels"], batch["target_mask"],
                                       label_smoothing=float(tcfg.label_smoothing))
    return loss, {"loss": loss}


# ---------------------------------------------------------------------------------------------
# The steps

def train_step(state: dict, batch: Batch, *, model: nn.Module, config, tx: optax.GradientTransformation,
               schedule) -> tuple[dict, dict, jax.Array]:
    """One optimiser update: augmentation of the uint8 frames, then :func:`update_step`.

    Returns ``(new_state, metrics, finite)``: ``metrics`` holds the loss parts, ``grad_norm`` and
    ``lr``; ``finite [n] bool`` flags each loss part and each trainable module's gradient (in the
    order of :func:`finite_names`). A step with any non-finite flag leaves the state untouched,
    so the trainer may read the flags late (it stops the run when one is False).
    """
    rng = jax.random.fold_in(state["rng"], state["step"])
    r_aug, r_drop = jax.random.split(rng)
    pixels = augment_frames(config, r_aug, batch["frames"], train=True, frame_mask=batch["frame_mask"])
    return update_step(state, batch, pixels, model=model, config=config, tx=tx, schedule=schedule, rng=r_drop)


def update_step(state: dict, batch: Batch, pixels: jax.Array, *, model: nn.Module, config,
                tx: optax.GradientTransformation, schedule, rng: jax.Array) -> tuple[dict, dict, jax.Array]:
    """The update of :func:`train_step` on normalised ``pixels [B, T, H, W, 3]``: forward pass
    with dropout (``rng``), the stage's loss, gradients of the trainable subtree, the optimiser
    step and the non-finite guard. The benchmarks time this part against the PyTorch reference."""
    stage = config.train.stage
    nan_step = int(config.train.get("debug_nan_at_step", -1))
    step = state["step"]

    def loss_of(trainable, batch, pixels):
        # Only the trainable subtree is differentiated; frozen params are closed over.
        out, new_bs = forward(model, stage, variables_from_state(state, trainable), batch, pixels,
                              train=True, rng=rng)
        loss, parts = stage_loss(config, stage, out, batch)
        if nan_step >= 0:  # test hook: poison the loss at one step
            loss = loss * jnp.where(step == nan_step, jnp.nan, 1.0)
            parts = {**parts, "loss": loss}
        return loss, (parts, new_bs)

    num_micro = int(config.train.get("microbatches", 1) or 1)
    if num_micro > 1:  # the global batch in K sequential parts, exact gradients (train/microbatch.py)
        def apply_fn(trainable, micro, index):
            return forward(model, stage, variables_from_state(state, trainable), micro, micro["pixels"],
                           train=True, rng=jax.random.fold_in(rng, index))

        (loss, (parts, new_bs)), grads = microbatch_lib.value_and_grad(
            apply_fn, microbatch_lib.stage_terms(config, stage), state["trainable"], {**batch, "pixels": pixels},
            num_micro)
    else:
        (loss, (parts, new_bs)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            state["trainable"], batch, pixels)
    updates, new_opt = tx.update(grads, state["opt_state"], state["trainable"])
    new_tr = optax.apply_updates(state["trainable"], updates)
    names = sorted(parts)
    finite = jnp.stack([jnp.isfinite(parts[k]) for k in names]
                       + [jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads[m])]))
                          for m in grad_groups(grads)])
    ok = jnp.all(finite)

    def keep(new, old):  # a bad step leaves the state untouched; the trainer then stops
        return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)

    new_state = {**state, "step": step + ok.astype(jnp.int32), "trainable": keep(new_tr, state["trainable"]),
                 "batch_stats": keep(new_bs, state["batch_stats"]),
                 "opt_state": keep(new_opt, state["opt_state"])}
    metrics = {**{k: parts[k] for k in names}, "grad_norm": optax.global_norm(grads),
               "lr": schedule.lr(step)}
    return new_state, metrics, finite


def finite_names(loss_part_names: Sequence[str], trainable: Mapping[str, PyTree]) -> list[str]:
    """Names of the flags :func:`train_step` returns, for the trainer's one-line report."""
    return sorted(loss_part_names) + [f"gradient of {g}" for g in grad_groups(trainable)]


def eval_step(state: dict, batch: Batch, *, model: nn.Module, config) -> tuple[dict, dict]:
    """Loss parts of a batch without dropout or augmentation. Pretraining also returns the
    pseudo-gloss similarity map and the temporal mask (for the alignment plot)."""
    stage = config.train.stage
    pixels = augment_frames(config, None, batch["frames"], train=False)
    out, _ = forward(model, stage, variables_from_state(state), batch, pixels, train=False)
    _, parts = stage_loss(config, stage, out, batch)
    extra = {}
    if stage == "pretrain":
        extra = {"pg_sim": out["pg_sim"], "temporal_mask": out["temporal_mask"]}
    return parts, extra


def generate_step(state: dict, batch: Batch, *, model: nn.Module, config) -> jax.Array:
    """Beam search (``config.eval``): token ids ``[B, max_new_tokens + 1]`` of the best beams.
    With ``frame_index`` in the batch (frame packing) the ViT encodes the valid frames only."""
    pixels = augment_frames(config, None, batch["frames"], train=False)
    out = model.generate(variables_from_state(state), pixels, batch["frame_mask"],
                         frame_index=batch.get("frame_index"), num_beams=int(config.eval.num_beams),
                         max_new_tokens=int(config.eval.max_new_tokens),
                         length_penalty=float(config.eval.length_penalty))
    return out.sequences


# ---------------------------------------------------------------------------------------------
# Batch layout

def batch_shapes(config, *, batch_size: int, num_frames: int, frame_size: int, kind: str = "train",
                 num_pseudo_glosses: int = 0) -> dict[str, jax.ShapeDtypeStruct]:
    """The global device batch of the stage's ``kind`` of step ("train", "eval" or "generate"), as
    shapes: what the loaders yield for clips of ``num_frames`` stored frames of ``frame_size``
    pixels (used to compile the steps from shapes alone, :mod:`hfa_jax.aot`)."""
    b, t, L = batch_size, num_frames, int(config.data.max_text_len)

    def sds(shape, dtype):
        return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))

    out = {"frames": sds((b, t, frame_size, frame_size, 3), jnp.uint8), "frame_mask": sds((b, t), bool)}
    if kind == "generate":
        return out
    if config.train.stage == "pretrain":
        out.update(text_ids=sds((b, L), jnp.int32), text_mask=sds((b, L), bool),
                   pg_targets=sds((b, num_pseudo_glosses + 1), jnp.float32))  # column 0: the blank
        bg = BeyondGlossConfig.from_config(config.model.get("beyondgloss", None))
        if bg.description and bg.description_vectors:
            out["desc_vec"] = sds((b, bg.desc_dim), jnp.float32)
        elif bg.description:
            n = int(config.data.max_description_len)
            out.update(desc_ids=sds((b, n), jnp.int32), desc_mask=sds((b, n), bool))
        if bg.hand_pose:
            length = max(int(x) for x in config.data.buckets)
            out["hand_pose"] = sds((b, length, HAND_POSE_DIM), jnp.float32)
    else:
        out.update(labels=sds((b, L), jnp.int32), decoder_input_ids=sds((b, L), jnp.int32),
                   target_mask=sds((b, L), bool))
    if kind == "eval":
        out["example_mask"] = sds((b,), bool)
    return out


# ---------------------------------------------------------------------------------------------
# Host -> device

def to_device(batch: Mapping[str, np.ndarray], mesh, keys: Sequence[str], pack_levels: int = 0,
              num_microbatches: int = 1) -> dict:
    """Host batch (this process's rows) -> global arrays on the mesh; with ``pack_levels`` > 0
    also the packed-frame index (``frame_index``, one group per data shard, see
    :mod:`hfa_jax.models.packing`; ``[G, K, P]`` when the step runs ``num_microbatches`` K > 1)."""
    host = agree_on_time_length({k: batch[k] for k in keys})
    if pack_levels > 0:
        index = packed_frame_index(host["frame_mask"], mesh, pack_levels, BATCH_AXES,
                                   num_microbatches=num_microbatches)
        if leaves_out_frames(index, host["frame_mask"]):
            host["frame_index"] = index
    return to_global(host, mesh, BATCH_AXES)
