"""The Apache Beam pipeline of ``data_prep.build_dataset``: convert the pending shards.

One element per output shard (the plan is made by the caller, so the output does not depend on
the runner or on how work is spread): a worker decodes the shard's videos, resizes and encodes
their frames, and writes the shard atomically (:func:`data_prep.build_dataset.convert_shard`).
Shards are the unit of work and of resume, like the per-file shards of tensorflow-datasets' Beam
datasets and of ``array_record``'s Beam sink.

Runners:

* default, this machine: Beam's DirectRunner (the portable FnApiRunner) with ``workers``
  processes (``--direct_num_workers``, ``--direct_running_mode=multi_processing``); one worker
  runs in this process.
* any other runner: pass Beam's own flags through ``build_dataset`` (docs/asl.md lists the exact
  ones for Dataflow, Flink and Spark). The workers need this package installed and the source and
  output folders mounted at the same paths, because frames and shards are read and written as
  local files.

Progress: the driver counts finished shard sidecars in the output's ``_work/`` folder, so the bar
works with every runner that writes to a folder this machine sees.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Sequence

from tqdm import tqdm


def _import_beam():
    # Beam's import logs a warning about optional Google Cloud clients through the root logger,
    # which would also switch on root logging for the whole process: give root a silent handler
    # for the import only.
    root = logging.getLogger()
    quiet = logging.NullHandler()
    root.addHandler(quiet)
    try:
        import apache_beam
        from apache_beam.options import pipeline_options
    finally:
        root.removeHandler(quiet)
    return apache_beam, pipeline_options.PipelineOptions


beam, PipelineOptions = _import_beam()

from data_prep import build_dataset as bd
from data_prep.clip_frames import ClipLimits
from hfa_jax.errors import DataError


class ConvertShard(beam.DoFn):
    """ShardTask -> (split, shard index) once the shard and its sidecar are written."""

    def __init__(self, opts: "bd.EncodeOptions", limits: ClipLimits, skip_bad: bool):
        self._opts, self._limits, self._skip_bad = opts, limits, skip_bad
        self._features = None

    def setup(self):
        self._features = bd.make_features(self._opts)

    def process(self, task: "bd.ShardTask"):
        bd.convert_shard(task, self._opts, self._features, self._limits, self._skip_bad)
        yield task.split, task.index


def pipeline_options(workers: int, beam_args: Sequence[str]) -> PipelineOptions:
    """Beam's options: the caller's flags, or the DirectRunner with `workers` processes."""
    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        args += ["--runner=DirectRunner", f"--direct_num_workers={workers}",
                 "--direct_running_mode=" + ("in_memory" if workers == 1 else "multi_processing")]
    return PipelineOptions(args)


def _watch(tasks: Sequence["bd.ShardTask"], stop: threading.Event, failed: threading.Event,
           progress: bool, out) -> None:
    """Progress bar over videos from the sidecars that appear as shards finish."""
    total = sum(len(t.records) for t in tasks)
    bar = tqdm(total=total, unit="video", desc="converting", disable=not progress,
               dynamic_ncols=True, file=out)
    seen: set[int] = set()
    frames = 0
    while True:
        stopping = stop.wait(0.5)
        for i, t in enumerate(tasks):
            if i not in seen and os.path.isfile(t.path):
                side = bd._read_sidecar(t.sidecar)
                if side is not None:
                    seen.add(i)
                    frames += side["num_frames"]
                    bar.update(len(t.records))
                    bar.set_postfix_str(f"{frames} frames")
        if stopping:
            break
    if failed.is_set():
        bar.leave = False  # clear the bar: the error stays the only line printed
    bar.close()


def run(tasks: Sequence["bd.ShardTask"], opts: "bd.EncodeOptions", limits: ClipLimits,
        skip_bad: bool, *, workers: int, beam_args: Sequence[str] = (),
        progress: bool = True) -> None:
    """Converts `tasks` on Beam; a bad video (without `skip_bad`) raises its one-line DataError."""
    # A failing worker is reported below in one line; Beam's own error log would add a traceback.
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    stop, failed = threading.Event(), threading.Event()
    # Beam's worker processes inherit this process's stderr and log their start-up to it: send
    # file descriptor 2 to _work/beam.log while the pipeline runs; the bar and errors keep the
    # terminal through a duplicate of the original descriptor.
    log_path = os.path.join(os.path.dirname(tasks[0].sidecar), "beam.log")
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 2)
    watcher = threading.Thread(target=_watch, args=(tasks, stop, failed, progress, terminal),
                               daemon=True)
    watcher.start()
    try:
        with beam.Pipeline(options=pipeline_options(workers, beam_args)) as p:
            _ = (p
                 | "Shards" >> beam.Create(list(tasks), reshuffle=False)
                 | "Convert" >> beam.ParDo(ConvertShard(opts, limits, skip_bad)))
    except Exception as e:  # noqa: BLE001 - Beam wraps worker errors; report the worker's line
        failed.set()
        for t in tasks:
            failed = bd._read_sidecar(t.failure_file) if os.path.isfile(t.failure_file) else None
            if failed is not None:
                raise DataError(failed["message"]) from None
        raise DataError(f"the Beam pipeline failed ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}); "
                        "rerun the same command to resume") from None
    finally:
        stop.set()
        watcher.join()
        sys.stderr.flush()
        os.dup2(terminal.fileno(), 2)
        terminal.close()
