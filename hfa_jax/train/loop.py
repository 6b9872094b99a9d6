"""The training loop: :func:`run` trains one stage (pretraining, fine-tuning stage 1 or stage 2) in a
workdir, resuming if the workdir already holds checkpoints.

It reads as phases (big_vision's ``train.py``)::

    setup     hfa_jax.train.trainer: config check, mesh, data, shapes -> shardings, steps
    init      jit-compiled init with out_shardings, then imported / previous-stage weights
    resume    latest checkpoint: state, best metric
    loader    the training loader from the resumed step: each process reads its rows of every
              global batch
    compile   the donated train step, compiled per batch shape (memory analysis logged)
    loop      progress bar, non-finite stop, periodic evaluation + checkpoints, SIGTERM save
    final     final checkpoint; fine-tuning: the best checkpoint on dev/test (beam search, files)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from hfa_jax.data import pipeline
from hfa_jax.errors import UserError
from hfa_jax.train import checkpoint as ckpt_lib
from hfa_jax.train import distributed
from hfa_jax.train import evaluation
from hfa_jax.train import logs
from hfa_jax.train import steps as steps_lib
from hfa_jax.train.trainer import Trainer, build_trainer, every, example_fn, init_state

PyTree = Any
log = logging.getLogger("hfa_jax.train")


class NonFiniteError(UserError):
    """Training produced NaN/Inf; the message names the step and the first bad quantity."""


class Preempted(SystemExit):
    """Raised after a SIGTERM-triggered checkpoint (exit status 143, like a killed process)."""

    def __init__(self, step: int):
        super().__init__(143)
        self.step = step


class DebugCrash(RuntimeError):
    """Raised by the ``config.train.debug_crash_after_step`` test hook (simulates a kill)."""


def train_loader(tr: Trainer, start_batch: int = 0):
    """The training loader: shuffled, repeated; each process reads its ``batch_size /
    process_count`` rows of every global batch, starting at global batch ``start_batch``."""
    d = tr.settings.data
    per_host = tr.settings.train.batch_size // jax.process_count()
    return pipeline.make_loader(
        tr.data.sources[d.train_split], batch_size=per_host, seed=d.seed, shuffle=True,
        num_epochs=None, frame_selection=d.frame_selection, max_frames=d.max_frames,
        buckets=d.buckets, drop_remainder=True, worker_count=d.worker_count, read_threads=d.read_threads,
        example_fn=example_fn(tr.task, tr.data.fields[d.train_split]),
        length_grouping=d.length_grouping, start_batch=start_batch)


class CompiledPrograms:
    """A step function compiled once per batch shape (one per bucket and frame-packing level
    met), under the mesh and its logical-axis rules. With ``log_memory`` each program's memory
    analysis is logged; on several processes, all wait for each other after a compile."""

    def __init__(self, tr: Trainer, fn: Callable, *, name: str, log_memory: bool = False, **jit_kwargs):
        self._tr, self._name, self._log = tr, name, log_memory
        self._jit = jax.jit(fn, **jit_kwargs)
        self._compiled: dict[tuple, Any] = {}

    def __call__(self, state, dev_batch):
        key = tuple((k, v.shape) for k, v in sorted(dev_batch.items()))
        if key not in self._compiled:
            t0 = time.time()
            with self._tr.mesh, nn.logical_axis_rules(self._tr.rules):
                c = self._jit.lower(state, dev_batch).compile()
            self._compiled[key] = c
            if self._log:
                shapes = {k: dev_batch[k].shape for k in ("frames", "frame_index") if k in dev_batch}
                logs.log_memory(c, time.time() - t0, shapes)
            distributed.barrier(f"compiled {self._name}")
        return self._compiled[key](state, dev_batch)


def compile_steps(tr: Trainer) -> tuple[Callable, Callable, Callable | None]:
    """The stage's train (donated state), eval and generate programs."""
    train = CompiledPrograms(tr, tr.steps.train, name="train", log_memory=True,
                             in_shardings=(tr.state_shardings, None),
                             out_shardings=(tr.state_shardings, None, None), donate_argnums=(0,))
    evaluate = CompiledPrograms(tr, tr.steps.eval, name="eval")
    generate = CompiledPrograms(tr, tr.steps.generate, name="generate") if tr.steps.generate is not None else None
    return train, evaluate, generate


def _check_finite(tr: Trainer, step_no: int, finite, metrics: Mapping[str, Any]) -> None:
    """Raises :class:`NonFiniteError` naming the first non-finite loss part or gradient."""
    finite = np.asarray(jax.device_get(finite))
    if not finite.all():
        names = sorted(k for k in metrics if k not in ("grad_norm", "lr")) + tr.finite_names
        bad = next(n for n, ok in zip(names, finite) if not ok)
        last = tr.ckpt.latest_step()
        raise NonFiniteError(
            f"non-finite {bad} at step {step_no} (stage {tr.stage}); the state was not updated "
            f"and the last good checkpoint is step {last} in {tr.workdir}/checkpoints: lower "
            "config.train.lr or check the data, then rerun to resume from it")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains ``config.train.stage`` in ``workdir`` (resuming if possible); returns a summary with
    the final evaluation metrics."""
    t_start = time.time()
    tr = build_trainer(config, workdir)                                   # setup
    state = init_state(tr)                                                # init
    state, best_value = _resume(tr, state)                                # resume
    # Step s reads global batch s: the position in the data is the step, whatever the number of
    # processes that wrote the checkpoint or read it now.
    it = iter(train_loader(tr, start_batch=int(jax.device_get(state["step"]))))  # loader
    step_fn, eval_jit, gen_jit = compile_steps(tr)                        # compile
    state, step, best_value, final = _train(tr, state, it, step_fn, eval_jit, gen_jit, best_value)  # loop
    summary = {"stage": tr.stage, "steps": step, "best_value": best_value,          # final
               "best_metric": tr.task.best_metric, "final": final}
    if tr.task.generates and tr.settings.eval.final_on_best:
        summary["results"] = evaluation.final_evaluation(tr, gen_jit)
    logs.write_loss_curves(tr.writer.path, workdir, tr.stage)
    summary["seconds"] = time.time() - t_start
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=logs.json_default)
    tr.writer.close()
    tr.ckpt.close()
    return summary


def _resume(tr: Trainer, state) -> tuple[PyTree, float | None]:
    """Restores the latest checkpoint (state and best metric so far) if there is one."""
    best_value = None
    start = tr.ckpt.latest_step()
    if start is not None:
        state, meta = tr.ckpt.restore(tr.plan.abstract_sharded_state(), start, fresh=state)
        best_value = meta.get("best_value")
        log.info("resumed from step %d (best %s so far: %s)", start, tr.task.best_metric, best_value)
    return state, best_value


def _train(tr: Trainer, state, it, step_fn: Callable, eval_jit: Callable, gen_jit: Callable | None,
           best_value: float | None) -> tuple[PyTree, int, float | None, dict | None]:
    """The step loop, then the final evaluation and checkpoint. Returns (state, step, best value,
    final evaluation scalars). Long because it is the one place that orders logging, evaluation,
    checkpointing and preemption within a step; each piece is a call."""
    t, stage, best_metric = tr.settings.train, tr.stage, tr.task.best_metric
    step = int(jax.device_get(state["step"]))
    # The frame encoder runs on the valid frames only, packed to one of data.pack_frames capacity
    # levels per bucket (one compiled step per bucket and level met).
    pack_levels = tr.settings.data.pack_frames
    num_micro = t.microbatches  # K > 1: one packing per micro-batch
    log_every = t.log_every_steps
    ckpt_every = every(None, t.checkpoint_every_steps, tr.steps_per_epoch)
    eval_every = every(tr.settings.eval.every_epochs, tr.settings.eval.every_steps, tr.steps_per_epoch)
    crash_after = t.debug_crash_after_step
    hold_after = t.debug_hold_after_step

    def meta_now(s):
        return {"step": int(s), "stage": stage, "global_batches_read": int(s), "best_value": best_value,
                "best_metric": best_metric}

    def do_eval(s):
        nonlocal best_value
        value, scalars = evaluation.periodic_eval(tr, state, s, eval_jit, gen_jit)
        if value is not None and tr.ckpt.is_better(value, best_value):
            best_value = value
            tr.ckpt.save_best(s, state, meta_now(s))
            log.info("step %d: new best %s = %.4f", s, best_metric, value)
        return scalars

    pbar = tqdm(total=tr.total_steps, initial=step, desc=stage, dynamic_ncols=True,
                disable=jax.process_index() != 0 or not t.progress_bar)
    window_t, window_n, window_slots, window_vit = time.time(), 0, 0, 0
    pending = None  # (step number, finiteness flags, metrics) of the last step not yet checked
    record = (open(os.path.join(tr.workdir, f"batches.p{jax.process_index()}.jsonl"), "a")
              if t.debug_record_batches else None)
    with ckpt_lib.PreemptionFlag() as preempt:
        try:
            while step < tr.total_steps:
                batch = next(it)
                if record is not None:  # test hook: which rows this process read at this step
                    record.write(json.dumps({"step": step + 1, "index": batch["index"].tolist()}) + "\n")
                    record.flush()
                dev = steps_lib.to_device(batch, tr.mesh, [k for k in batch if k != "index"],
                                          pack_levels=pack_levels, num_microbatches=num_micro)
                slots = int(dev["frame_mask"].size)  # global shapes: no transfer
                window_slots += slots
                window_vit += int(dev["frame_index"].size) if "frame_index" in dev else slots
                state, metrics, finite = step_fn(state, dev)
                # The previous step's finiteness flags are read only now, with this step already
                # queued: the device never waits for the host between steps (on an H100 the
                # per-step read left it idle ~9 ms of a 66 ms step), and the host prepares the
                # next batch while the device works. A bad step leaves the state untouched
                # (train_step), so learning of it one step later loses nothing.
                if pending is not None:
                    _check_finite(tr, *pending)
                pending = (step + 1, finite, metrics)
                step += 1
                window_n += 1
                if ((step % log_every == 0 or step == tr.total_steps) or preempt.requested or step == crash_after
                        or (eval_every and step % eval_every == 0) or (ckpt_every and step % ckpt_every == 0)):
                    _check_finite(tr, *pending)  # before anything reads, evaluates or saves this state
                    pending = None
                if step % log_every == 0 or step == tr.total_steps:
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    dt = time.time() - window_t
                    m["examples_per_sec"] = window_n * t.batch_size / max(dt, 1e-9)
                    # frames the ViT encoded / padded frame slots (< 1 with data.pack_frames)
                    m["vit_frame_fraction"] = window_vit / max(window_slots, 1)
                    window_t, window_n, window_slots, window_vit = time.time(), 0, 0, 0
                    tr.writer.write(step, "train", m)
                    pbar.set_postfix(loss=f"{m['loss']:.4f}", ex_s=f"{m['examples_per_sec']:.1f}",
                                     lr=f"{m['lr']:.2e}")
                pbar.update(1)
                if eval_every and (step % eval_every == 0) and step < tr.total_steps:
                    do_eval(step)
                if (ckpt_every and step % ckpt_every == 0) or preempt.requested:
                    tr.ckpt.save(step, state, meta_now(step))
                if preempt.requested:
                    tr.ckpt.wait()
                    log.info("SIGTERM: saved checkpoint at step %d, exiting", step)
                    raise Preempted(step)
                if step == crash_after:
                    tr.ckpt.wait()
                    raise DebugCrash(f"debug crash after step {step}")
                if step == hold_after:  # test hook: a run killed mid-way at a known step
                    tr.ckpt.wait()
                    log.info("debug hold after step %d: waiting to be killed", step)
                    while True:
                        time.sleep(60)
            final = do_eval(step) if tr.settings.eval.at_end else None
            tr.ckpt.save(step, state, meta_now(step))
            if tr.ckpt.best.latest_step() is None:  # never evaluated: the last state is the kept one
                tr.ckpt.save_best(step, state, meta_now(step))
            tr.ckpt.wait()
        finally:
            pbar.close()
            if record is not None:
                record.close()
            with contextlib.suppress(Exception):
                tr.ckpt.wait()
    return state, step, best_value, final
