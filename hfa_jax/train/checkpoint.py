"""Checkpoints with orbax: atomic, asynchronous, keep-N latest plus the best one.

Layout under ``<workdir>/``::

    checkpoints/<step>/state   train state pytree: step, params (all, merged), batch_stats,
                                opt_state (trainable params only), rng
    checkpoints/<step>/meta    JSON: data-iterator state, best metric so far, stage, ...
    best/<step>/{state,meta}   the checkpoint with the best validation metric (pretraining: lowest
                               validation loss; fine-tuning: highest dev BLEU-4)

A restore checks the checkpoint's leaves, shapes and dtypes against the planned state first (one
line naming the first difference). Frozen weights may differ in precision only (float32 against
bfloat16, ``train.bf16_frozen``): the resumed state is then the one a run with this run's setting
from the start holds (:meth:`Checkpointer.restore`).

Orbax writes each step into a temporary folder and renames it when complete, so a run killed at
any moment leaves only whole checkpoints. Saves are asynchronous (training continues while the
arrays are written); :meth:`Checkpointer.wait` blocks until they are on disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hfa_jax.errors import CheckpointError
from hfa_jax.train.freeze import path_str  # 'frozen/frame_encoder/.../kernel' for a key path

PyTree = Any


def _manager(directory: str, keep: int, use_async: bool, name: str) -> ocp.CheckpointManager:
    # On several processes orbax names its barriers after the step: the latest and the best
    # managers saving the same step at once (the last step, never evaluated) would meet at one
    # barrier name ("... is already ongoing") and abort the run. A prefix per manager keeps them apart.
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=use_async,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name))
    return ocp.CheckpointManager(os.path.abspath(directory), options=opts,
                                 item_names=("state", "meta"))


class Checkpointer:
    """Keep-N latest checkpoints plus the best one, for one training stage's workdir."""

    def __init__(self, workdir: str, *, keep: int = 2, use_async: bool = True,
                 best_mode: str = "min"):
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        self.workdir = workdir
        self.best_mode = best_mode
        self.latest = _manager(os.path.join(workdir, "checkpoints"), keep, use_async, "latest")
        self.best = _manager(os.path.join(workdir, "best"), 1, use_async, "best")

    # -- saving ------------------------------------------------------------------------------
    def save(self, step: int, state: PyTree, meta: dict, *, force: bool = True) -> None:
        """Saves ``state`` and ``meta`` (JSON-serialisable) as checkpoint ``step``."""
        if step in self.latest.all_steps():
            return
        self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)), force=force)

    def is_better(self, value: float, best_so_far: float | None) -> bool:
        if best_so_far is None or not np.isfinite(best_so_far):
            return bool(np.isfinite(value))
        return value < best_so_far if self.best_mode == "min" else value > best_so_far

    def save_best(self, step: int, state: PyTree, meta: dict) -> None:
        """Saves into ``best/`` (keeps one); the caller decides with :meth:`is_better`."""
        if step in self.best.all_steps():
            return
        self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()

    # -- restoring ---------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, abstract_state: PyTree, step: int | None = None, *, best: bool = False,
                fresh: PyTree | None = None) -> tuple[PyTree, dict]:
        """Restores onto ``abstract_state`` (``jax.ShapeDtypeStruct`` leaves with shardings).

        The checkpoint must hold exactly the leaves of ``abstract_state``, with the same shapes
        and dtypes, except that a frozen weight may have been written in float32 and be planned
        in bfloat16 or the reverse (``train.bf16_frozen`` changed between the runs, or the
        checkpoint predates it); anything else is a :class:`CheckpointError` naming the first
        differing leaf. A float32 weight restored into bfloat16 is rounded to nearest even on the
        host (orbax's restore-time cast, the rounding of ``astype``): the value a run storing it
        in bfloat16 from the start holds. A bfloat16 weight restored into float32 takes, where
        ``fresh`` (the stage's freshly initialised state, same structure) rounds to it, the fresh
        float32 value: frozen weights never change, so that is the value a run storing them in
        float32 from the start holds; elsewhere the exact upcast.
        """
        mngr = self.best if best else self.latest
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint under {mngr.directory}; train this stage first")
        stored = _stored_arrays(mngr, step)
        widened = _check_matches(stored, abstract_state, f"checkpoint {mngr.directory}/{step}")
        out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                         meta=ocp.args.JsonRestore()))
        state = out["state"]
        if fresh is not None and widened:
            state = _prefer_fresh(state, fresh, widened)
        return state, dict(out["meta"])


def _stored_arrays(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any] | None:
    """The checkpoint's own record of its state arrays (name -> metadata with shape and dtype),
    or None where none can be read (then orbax's restore alone checks)."""
    path = os.path.join(os.fspath(mngr.directory), str(step), "state")
    ckptr = ocp.PyTreeCheckpointer()  # reads files only: no barrier between processes
    try:
        with _quiet_missing_item_metadata():
            tree = ckptr.metadata(path).item_metadata.tree
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    finally:
        ckptr.close()
    return {path_str(p): m for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]
            if hasattr(m, "shape") and hasattr(m, "dtype")}


_FROZEN_PRECISIONS = frozenset({np.dtype(np.float32), np.dtype(jnp.bfloat16)})


def _check_matches(stored: dict[str, Any] | None, abstract_state: PyTree, where: str) -> list[str]:
    """Raises one line for the first leaf the checkpoint and the planned state disagree on;
    returns the names of the frozen leaves stored in bfloat16 and planned in float32."""
    if stored is None:
        return []
    planned = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    hint = ("the model, the trainable table or the optimiser changed since it was written: "
            "train in a fresh workdir (config.train.init_from starts a stage from another's weights)")
    missing = sorted(set(planned) - set(stored))
    if missing:
        raise CheckpointError(f"{where} has no {missing[0]} ({len(missing)} leaves missing); {hint}")
    extra = sorted(set(stored) - set(planned))
    if extra:
        raise CheckpointError(f"{where} holds {extra[0]}, which this run's state has not "
                              f"({len(extra)} such leaves); {hint}")
    widened = []
    for name, x in planned.items():
        m = stored[name]
        if tuple(m.shape) != tuple(x.shape):
            raise CheckpointError(f"{where}: {name} has shape {tuple(m.shape)} there but {tuple(x.shape)} "
                                  f"in this run's state; {hint}")
        have, want = np.dtype(m.dtype), np.dtype(x.dtype)
        if have == want:
            continue
        if not (name.startswith("frozen/") and {have, want} <= _FROZEN_PRECISIONS):
            raise CheckpointError(f"{where}: {name} is {have} there but {want} in this run's state; {hint}")
        if want == np.float32:
            widened.append(name)
    return widened


def _prefer_fresh(state: PyTree, fresh: PyTree, names: list[str]) -> PyTree:
    """``state`` with each named leaf (restored from bfloat16 into float32) replaced, element by
    element, by ``fresh``'s value where that rounds to the restored one. One jitted program for
    all of them, writing into the restored leaves' buffers (donated) with their shardings."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    fresh_flat = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(fresh)[0]}
    wanted = set(names)
    pos = [i for i, (p, _) in enumerate(flat) if path_str(p) in wanted
           and path_str(p) in fresh_flat and fresh_flat[path_str(p)].dtype == flat[i][1].dtype
           and fresh_flat[path_str(p)].shape == flat[i][1].shape]
    if not pos:
        return state

    def pick(restored, new):
        return [jnp.where(n.astype(jnp.bfloat16).astype(r.dtype) == r, n, r) for r, n in zip(restored, new)]

    restored = [flat[i][1] for i in pos]
    picked = jax.jit(pick, out_shardings=[x.sharding for x in restored], donate_argnums=0)(
        restored, [fresh_flat[path_str(flat[i][0])] for i in pos])
    leaves = [x for _, x in flat]
    for i, x in zip(pos, picked):
        leaves[i] = x
    return jax.tree_util.tree_unflatten(treedef, leaves)


class _DropMissingItemMetadata(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Metadata file does not exist")


@contextlib.contextmanager
def _quiet_missing_item_metadata():
    """Reading one item (``<step>/state``) of a CheckpointManager step with a plain checkpointer
    makes orbax warn that the item has no ``_CHECKPOINT_METADATA`` of its own: the step folder
    holds it, and the arrays' metadata is read all the same. The warning only alarmed users."""
    f = _DropMissingItemMetadata()
    logger = logging.getLogger("absl")
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


def load_state_arrays(workdir: str, *, best: bool = True, step: int | None = None) -> tuple[dict, dict]:
    """Reads a stage's saved train state as host NumPy arrays (no target structure needed).

    Used to initialise the next stage (``config.train.init_from``) and by ``translate``. Returns
    ``(state, meta)``; ``state["params"]`` / ``state["batch_stats"]`` are nested dicts.
    """
    sub = os.path.join(workdir, "best" if best else "checkpoints")
    if not os.path.isdir(sub):
        raise CheckpointError(f"no checkpoint folder {sub}; run that training stage first "
                              f"(or point config.train.init_from at its workdir)")
    steps = sorted(int(n) for n in os.listdir(sub) if n.isdigit()
                   and os.path.exists(os.path.join(sub, n, "_CHECKPOINT_METADATA")))
    if step is None:
        if not steps:
            raise CheckpointError(f"{sub} holds no complete checkpoint; run that training stage first")
        step = steps[-1]
    path = os.path.join(os.path.abspath(sub), str(step))
    ckptr = ocp.PyTreeCheckpointer()
    with _quiet_missing_item_metadata():
        meta_tree = ckptr.metadata(os.path.join(path, "state")).item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta_tree)
        state = ckptr.restore(os.path.join(path, "state"), args=ocp.args.PyTreeRestore(restore_args=restore_args))
    with open(os.path.join(path, "meta", "metadata")) as f:
        meta = json.load(f)
    return state, meta


class PreemptionFlag:
    """SIGTERM handler that only sets a flag; the training loop saves and exits at the next step
    boundary (never in the middle of writing a checkpoint)."""

    def __init__(self):
        self._event = threading.Event()
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._event.set())
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    @property
    def requested(self) -> bool:
        return self._event.is_set()
