"""What a training run writes for people: the log file, ``metrics.jsonl`` + TensorBoard scalars,
the compiled step's memory, and the loss-curve plot.

Only process 0 writes files (every process logs to its own stderr).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
from tensorboardX import SummaryWriter

from hfa_jax.train import plots

log = logging.getLogger("hfa_jax.train")


def setup_logging(workdir: str) -> None:
    """Log to ``WORKDIR/train.log`` (only this run's workdir) and to stderr."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    for h in list(log.handlers):
        if isinstance(h, logging.FileHandler):
            log.removeHandler(h)
            h.close()
    fh = logging.FileHandler(os.path.join(workdir, "train.log"))
    fh.setFormatter(fmt)
    log.addHandler(fh)
    if not any(type(h) is logging.StreamHandler for h in log.handlers):
        sh = logging.StreamHandler()
        sh.setFormatter(fmt)
        log.addHandler(sh)
    log.setLevel(logging.INFO)
    log.propagate = False


def json_default(o: Any) -> Any:
    """``json.dump(default=...)`` for NumPy scalars and arrays."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def fmt(d: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(d.items()))


class MetricsWriter:
    """metrics.jsonl + TensorBoard (tensorboardX, no TensorFlow needed)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if enabled and jax.process_index() == 0:
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
        if jax.process_index() != 0:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"{split}/{k}", float(v), int(step))

    def text(self, step: int, tag: str, text: str) -> None:
        if self.tb is not None:
            self.tb.add_text(tag, text, int(step))

    def close(self):
        if self.tb is not None:
            self.tb.close()


def log_memory(compiled, seconds: float, shapes: dict) -> None:
    """One line: the compiled train step's argument / output / temporary memory per device."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        ma = None
    if ma is None:
        log.info("compiled train step for %s in %.1fs (no memory analysis on this backend)", shapes, seconds)
        return
    gib = 1 / 2 ** 30
    log.info("compiled train step for %s in %.1fs: arguments %.3f GiB, outputs %.3f GiB, temporaries "
             "%.3f GiB, generated code %.3f GiB (aliased %.3f GiB)", shapes, seconds,
             ma.argument_size_in_bytes * gib, ma.output_size_in_bytes * gib, ma.temp_size_in_bytes * gib,
             ma.generated_code_size_in_bytes * gib, ma.alias_size_in_bytes * gib)


def write_loss_curves(metrics_path: str, workdir: str, title: str) -> None:
    """``WORKDIR/loss_curves.png`` from ``metrics.jsonl`` (process 0; a failed plot is not an error)."""
    if jax.process_index() != 0:
        return
    hist = plots.read_history(metrics_path)
    with contextlib.suppress(Exception):
        plots.plot_loss_curves(hist, os.path.join(workdir, "loss_curves.png"), title=title)
