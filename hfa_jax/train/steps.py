"""The step functions of a training stage, as plain module functions (flax ``examples/wmt`` style).

Each takes the train state (:mod:`hfa_jax.train.state`) and a device batch; the stage's model,
task (:mod:`hfa_jax.train.tasks`, which carries the run's settings) and optimiser are keyword
arguments, bound with ``functools.partial`` before ``jax.jit``::

    step = functools.partial(steps.train_step, model=model, task=task, tx=tx, schedule=schedule)
    new_state, metrics, finite = jax.jit(step, donate_argnums=0)(state, batch)

The trainer, the ahead-of-time compiler (:mod:`hfa_jax.aot`), the benchmarks and the tests all
call these same functions.

Batches (see :mod:`hfa_jax.data.pipeline`): ``frames [B, T, H, W, 3] uint8``, ``frame_mask [B, T]
bool``, and the task's fields (:meth:`hfa_jax.train.tasks.Task.label_shapes`); optionally
``example_mask [B] bool`` (filler rows of an evaluation batch) and ``frame_index`` (frame packing).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfa_jax.data import augment as augment_lib
from hfa_jax.data.sharding import agree_on_time_length, packed_frame_index, to_global
from hfa_jax.models.packing import leaves_out_frames
from hfa_jax.train import microbatch as microbatch_lib
from hfa_jax.train.mesh import BATCH_AXES
from hfa_jax.train.settings import DataSettings
from hfa_jax.train.state import grad_groups, variables_from_state
from hfa_jax.train.tasks import Task

PyTree = Any
Batch = Mapping[str, jax.Array]


# ---------------------------------------------------------------------------------------------
# Pieces of a step

def padding_chunk(data: DataSettings) -> int:
    """Frames per warp chunk when skipping padding (``data.augment.padding_chunk``; -1: 8 on a
    single CPU device, where the device is the data loader's own cores; off on accelerators,
    where one big kernel beats a sequential loop, and on meshes, where a loop over the sharded
    batch axis would gather it)."""
    chunk = data.augment.padding_chunk
    if chunk < 0:
        single_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
        return augment_lib.CPU_PADDING_CHUNK if single_cpu else 0
    return chunk


def augment_frames(data: DataSettings, rng, frames: jax.Array, *, train: bool,
                   frame_mask: jax.Array | None = None) -> jax.Array:
    """uint8 ``frames [B, T, H, W, 3]`` -> normalised ``pixels [B, T, crop, crop, 3]`` (random
    crop/rotate/scale/translate when ``train``, centre crop otherwise). ``data.augment.method``
    picks how the warp is computed ("auto": gathers on a CPU, interpolation matmuls elsewhere;
    docs/data.md)."""
    a = data.augment
    return augment_lib.augment(rng, frames, train=train, crop_size=data.crop_size, p=a.p,
                               max_rotate_deg=a.max_rotate_deg, max_scale=a.max_scale,
                               max_translate_px=a.max_translate_px, frame_mask=frame_mask,
                               padding_chunk=padding_chunk(data),
                               method=augment_lib.resolve_method(a.method))


def forward(model: nn.Module, task: Task, variables: Mapping[str, PyTree], batch: Batch, pixels: jax.Array,
            *, train: bool, rng: jax.Array | None = None) -> tuple[Any, PyTree]:
    """Runs the task's model on normalised ``pixels [B, T, H, W, 3]``.

    Returns ``(outputs, new_batch_stats)``: pretraining -> the ``HFAPretrain`` dict; translation ->
    logits ``[B, L, V]``. In training, BatchNorm uses batch statistics and updates them.
    """
    rngs = {"dropout": rng} if train else {}
    kw = dict(deterministic=not train, **task.model_kwargs(batch))
    args = task.model_inputs(batch, pixels)
    if "frame_index" in batch:  # frame packing (data.pack_frames): the ViT sees valid frames only
        kw["frame_index"] = batch["frame_index"]
    if train:
        out, upd = model.apply(variables, *args, rngs=rngs, mutable=["batch_stats"], **kw)
        return out, upd.get("batch_stats", variables.get("batch_stats", {}))
    return model.apply(variables, *args, **kw), variables.get("batch_stats", {})


# ---------------------------------------------------------------------------------------------
# The steps

def train_step(state: dict, batch: Batch, *, model: nn.Module, task: Task, tx: optax.GradientTransformation,
               schedule) -> tuple[dict, dict, jax.Array]:
    """One optimiser update: augmentation of the uint8 frames, then :func:`update_step`.

    Returns ``(new_state, metrics, finite)``: ``metrics`` holds the loss parts, ``grad_norm`` and
    ``lr``; ``finite [n] bool`` flags each loss part and each trainable module's gradient (in the
    order of :func:`finite_names`). A step with any non-finite flag leaves the state untouched,
    so the trainer may read the flags late (it stops the run when one is False).
    """
    rng = jax.random.fold_in(state["rng"], state["step"])
    r_aug, r_drop = jax.random.split(rng)
    pixels = augment_frames(task.settings.data, r_aug, batch["frames"], train=True, frame_mask=batch["frame_mask"])
    return update_step(state, batch, pixels, model=model, task=task, tx=tx, schedule=schedule, rng=r_drop)


def update_step(state: dict, batch: Batch, pixels: jax.Array, *, model: nn.Module, task: Task,
                tx: optax.GradientTransformation, schedule, rng: jax.Array) -> tuple[dict, dict, jax.Array]:
    """The update of :func:`train_step` on normalised ``pixels [B, T, H, W, 3]``: forward pass
    with dropout (``rng``), the task's objective over ``train.microbatches`` micro-batches
    (:func:`hfa_jax.train.microbatch.value_and_grad`; 1 = the whole batch), gradients of the
    trainable subtree, the optimiser step and the non-finite guard. The benchmarks time this
    part against the PyTorch reference."""
    t = task.settings.train
    step = state["step"]
    num_micro = t.microbatches

    def apply_fn(trainable, micro, index):
        # One micro-batch draws its dropout masks from its index; the whole batch (K = 1) from
        # the step's key itself.
        r = rng if num_micro == 1 else jax.random.fold_in(rng, index)
        return forward(model, task, variables_from_state(state, trainable), micro, micro["pixels"], train=True, rng=r)

    (loss, (parts, new_bs)), grads = microbatch_lib.value_and_grad(
        apply_fn, task.objective(), state["trainable"], {**batch, "pixels": pixels}, num_micro)
    if t.debug_nan_at_step >= 0:  # test hook: poison the loss at one step (the guard then stops the run)
        loss = loss * jnp.where(step == t.debug_nan_at_step, jnp.nan, 1.0)
        parts = {**parts, "loss": loss}
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


def eval_step(state: dict, batch: Batch, *, model: nn.Module, task: Task) -> tuple[dict, dict]:
    """Loss parts of a batch without dropout or augmentation, and the model outputs the task
    plots (:attr:`~hfa_jax.train.tasks.Task.eval_outputs`: pretraining's pseudo-gloss similarity
    map and temporal mask)."""
    pixels = augment_frames(task.settings.data, None, batch["frames"], train=False)
    out, _ = forward(model, task, variables_from_state(state), batch, pixels, train=False)
    _, parts = microbatch_lib.full_batch_loss(task.objective(), out, batch)
    return parts, {k: out[k] for k in task.eval_outputs}


def generate_step(state: dict, batch: Batch, *, model: nn.Module, task: Task) -> jax.Array:
    """Beam search (``config.eval``): token ids ``[B, max_new_tokens + 1]`` of the best beams.
    With ``frame_index`` in the batch (frame packing) the ViT encodes the valid frames only."""
    e = task.settings.eval
    pixels = augment_frames(task.settings.data, None, batch["frames"], train=False)
    out = model.generate(variables_from_state(state), pixels, batch["frame_mask"],
                         frame_index=batch.get("frame_index"), num_beams=e.num_beams,
                         max_new_tokens=e.max_new_tokens, length_penalty=e.length_penalty)
    return out.sequences


# ---------------------------------------------------------------------------------------------
# Batch layout

def batch_shapes(task: Task, *, batch_size: int, num_frames: int, frame_size: int, kind: str = "train",
                 num_pseudo_glosses: int = 0) -> dict[str, jax.ShapeDtypeStruct]:
    """The global device batch of the task's ``kind`` of step ("train", "eval" or "generate"), as
    shapes: what the loaders yield for clips of ``num_frames`` stored frames of ``frame_size``
    pixels (used to compile the steps from shapes alone, :mod:`hfa_jax.aot`)."""
    b, t = batch_size, num_frames
    out = {"frames": jax.ShapeDtypeStruct((b, t, frame_size, frame_size, 3), jnp.uint8),
           "frame_mask": jax.ShapeDtypeStruct((b, t), jnp.dtype(bool))}
    if kind == "generate":
        return out
    out.update(task.label_shapes(b, num_pseudo_glosses))
    if kind == "eval":
        out["example_mask"] = jax.ShapeDtypeStruct((b,), jnp.dtype(bool))
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
