"""The Apache Beam pipeline of ``data_prep.build_dataset``: convert the pending shards.

Installing Beam: apache-beam 2.78 declares ``protobuf<7``, while transformers 5.23 needs
protobuf >= 7.36 to read SentencePiece models; Beam runs on protobuf 7.36 (this project's build
tests pass on it), so it is installed without its own pins, after the project::

    pip install -e ".[beam]" && pip install --no-deps apache-beam==2.78.0

Without Beam, the same shard function runs on a local process pool (``engine="local"``), with
the same output, shard for shard.

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

from data_prep import build_dataset as bd
from data_prep.clip_frames import ClipLimits
from hfa_jax.errors import DataError


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


def beam_available() -> bool:
    """Whether Apache Beam imports here (installed with all it needs)."""
    try:
        _import_beam()
    except ImportError:
        return False
    return True


def _convert_shard_fn(opts: "bd.EncodeOptions", limits: ClipLimits, skip_bad: bool):
    """A Beam DoFn: ShardTask -> (split, shard index) once the shard and its sidecar are written."""
    beam, _ = _import_beam()

    class ConvertShard(beam.DoFn):
        def __init__(self):
            self._features = None

        def setup(self):
            self._features = bd.make_features(opts)

        def process(self, task: "bd.ShardTask"):
            bd.convert_shard(task, opts, self._features, limits, skip_bad)
            yield task.split, task.index

    return ConvertShard()


def pipeline_options(workers: int, beam_args: Sequence[str]):
    """Beam's options: the caller's flags, or the DirectRunner with `workers` processes."""
    _, PipelineOptions = _import_beam()
    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        args += ["--runner=DirectRunner", f"--direct_num_workers={workers}",
                 "--direct_running_mode=" + ("in_memory" if workers == 1 else "multi_processing")]
    return PipelineOptions(args)


# Per-process state of the local pool's workers (set by _init_local).
_LOCAL: dict = {}


def _init_local(opts, limits, skip_bad) -> None:
    _LOCAL.update(opts=opts, limits=limits, skip_bad=skip_bad, features=bd.make_features(opts))


def _local_shard(task: "bd.ShardTask") -> tuple[str, int]:
    bd.convert_shard(task, _LOCAL["opts"], _LOCAL["features"], _LOCAL["limits"], _LOCAL["skip_bad"])
    return task.split, task.index


def _run_local(tasks, opts, limits, skip_bad, workers: int) -> None:
    """The engine without Beam: the same shard function on `workers` spawned processes."""
    if workers == 1:
        _init_local(opts, limits, skip_bad)
        for t in tasks:
            _local_shard(t)
        return
    import multiprocessing

    # spawn: workers must not inherit a parent that may hold JAX/XLA threads.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_local, initargs=(opts, limits, skip_bad)) as pool:
        for _ in pool.imap_unordered(_local_shard, tasks, chunksize=1):
            pass


def _run_beam(tasks, opts, limits, skip_bad, workers: int, beam_args: Sequence[str]) -> None:
    beam, _ = _import_beam()
    with beam.Pipeline(options=pipeline_options(workers, beam_args)) as p:
        _ = (p
             | "Shards" >> beam.Create(list(tasks), reshuffle=False)
             | "Convert" >> beam.ParDo(_convert_shard_fn(opts, limits, skip_bad)))


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


ENGINES = ("auto", "beam", "local")


def run(tasks: Sequence["bd.ShardTask"], opts: "bd.EncodeOptions", limits: ClipLimits,
        skip_bad: bool, *, workers: int, beam_args: Sequence[str] = (),
        progress: bool = True, engine: str = "auto") -> str:
    """Converts `tasks` on Beam (or the local pool: `engine`); a bad video (without `skip_bad`)
    raises its one-line DataError. Returns the engine used."""
    if engine == "auto":
        engine = "beam" if beam_available() else "local"
    if engine == "beam" and not beam_available():
        raise DataError("apache-beam is not installed: pip install --no-deps apache-beam==2.78.0 "
                        "(see docs/asl.md), or pass --engine local")
    if engine == "local" and beam_args:
        raise DataError(f"flags {' '.join(beam_args)} are for Beam, which is not used here; "
                        "install apache-beam (docs/asl.md) or drop them")
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
        if engine == "beam":
            _run_beam(tasks, opts, limits, skip_bad, workers, beam_args)
        else:
            _run_local(tasks, opts, limits, skip_bad, workers)
    except Exception as e:  # noqa: BLE001 - Beam wraps worker errors; report the worker's line
        failed.set()
        for t in tasks:
            failure = bd._read_sidecar(t.failure_file) if os.path.isfile(t.failure_file) else None
            if failure is not None:
                raise DataError(failure["message"]) from None
        raise DataError(f"the Beam pipeline failed ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}); "
                        "rerun the same command to resume") from None
    finally:
        stop.set()
        watcher.join()
        sys.stderr.flush()
        os.dup2(terminal.fileno(), 2)
        terminal.close()
    return engine
