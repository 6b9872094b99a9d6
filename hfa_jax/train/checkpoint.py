"""Checkpoints with orbax: atomic, asynchronous, keep-N latest plus the best one.

Layout under ``<workdir>/``::

    checkpoints/<step>/state   train state pytree: step, params (all, merged), batch_stats,
                                opt_state (trainable params only), rng
    checkpoints/<step>/meta    JSON: data-iterator state, best metric so far, stage, ...
    best/<step>/{state,meta}   the checkpoint with the best validation metric (pretraining: lowest
                               validation loss; fine-tuning: highest dev BLEU-4)

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
import numpy as np
import orbax.checkpoint as ocp

from hfa_jax.errors import CheckpointError

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

    def restore(self, abstract_state: PyTree, step: int | None = None, *, best: bool = False
                ) -> tuple[PyTree, dict]:
        """Restores onto ``abstract_state`` (``jax.ShapeDtypeStruct`` leaves with shardings)."""
        mngr = self.best if best else self.latest
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint under {mngr.directory}; train this stage first")
        out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                         meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])


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
