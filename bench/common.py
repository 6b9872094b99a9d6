"""Shared benchmark helpers: step timing (medians after warm-up), peak memory, worker
subprocesses, machine description.

Each measured side (ours, the torch reference) runs in its own Python subprocess
(:func:`run_worker`), so peak resident memory (``ru_maxrss``) belongs to one side only and the
two frameworks' thread pools never compete inside one process. A worker prints one line
``BENCH_RESULT <json>`` on stdout; everything else it prints is passed through to stderr.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

__all__ = [
    "Shapes",
    "RESULT_PREFIX",
    "time_calls",
    "time_calls_pipelined",
    "pick_torch_threads",
    "enable_jax_cache",
    "bf16_matmul_peak_tflops",
    "median",
    "peak_rss_mb",
    "emit",
    "run_worker",
    "log",
    "xla_memory",
    "machine",
    "versions",
    "loadavg",
    "utc_now",
]

RESULT_PREFIX = "BENCH_RESULT "
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Benchmark shapes, shared by both sides (bench/bench_train.py builds ours from the same)."""

    batch: int = 2
    frames: int = 16
    image: int = 112
    text_len: int = 16
    # ViT-S/14 (real)
    vit_width: int = 384
    vit_depth: int = 12
    vit_heads: int = 6
    vit_mlp: int = 1536
    lora_blocks: tuple[int, ...] = (9, 10, 11)
    # temporal (real)
    t_width: int = 512
    t_heads: int = 8
    t_mlp: int = 2048
    # mBART (reduced depth by default; real width)
    d_model: int = 1024
    m_heads: int = 16
    m_ffn: int = 4096
    enc_layers: int = 2
    dec_layers: int = 2
    vocab: int = 2172
    num_pg: int = 2322
    max_pos: int = 1024
    # ours only: the ViT's attention (``ViTConfig.attention``); the reference always uses SDPA,
    # which picks flash attention on CUDA by itself
    vit_attention: str = "xla"

    def describe(self) -> str:
        return (f"B={self.batch} T={self.frames} {self.image}px; ViT-S/14 {self.vit_depth}x{self.vit_width} "
                f"(LoRA blocks {','.join(map(str, self.lora_blocks))}); temporal {self.t_width}/"
                f"{self.t_heads}h 2+2; mBART d{self.d_model} {self.enc_layers}+{self.dec_layers} layers "
                f"ffn{self.m_ffn} V{self.vocab}; L={self.text_len}"
                + (f"; our ViT attention {self.vit_attention}" if self.vit_attention != "xla" else ""))


def time_calls(fn: Callable[[], Any], *, warmup: int, iters: int, sync: Callable[[Any], Any] = lambda x: x,
               max_seconds: float | None = None) -> list[float]:
    """Wall seconds of ``iters`` calls of ``fn`` after ``warmup`` untimed calls.

    ``sync(result)`` must block until the work is done (``jax.block_until_ready``, ``float()``);
    ``max_seconds`` stops early (after at least 2 timed calls) so slow settings stay bounded.
    """
    for _ in range(warmup):
        sync(fn())
    out: list[float] = []
    start = time.perf_counter()
    for _ in range(iters):
        t0 = time.perf_counter()
        sync(fn())
        out.append(time.perf_counter() - t0)
        if max_seconds is not None and len(out) >= 2 and time.perf_counter() - start > max_seconds:
            break
    return out


def time_calls_pipelined(fn: Callable[[], Any], *, warmup: int, iters: int, sync: Callable[[Any], Any],
                         max_seconds: float | None = None) -> list[float]:
    """Like :func:`time_calls`, but each call's result is synced only after the next call is
    queued, as our trainer runs its steps (it reads a step's finiteness flags one step late):
    the host's dispatch of step i+1 overlaps the device's step i. Each entry is the time
    between two consecutive completions, the steady-state seconds per call."""
    prev = fn()
    for _ in range(warmup):
        cur = fn()
        sync(prev)
        prev = cur
    out: list[float] = []
    start = last = time.perf_counter()
    for _ in range(iters):
        cur = fn()
        sync(prev)
        now = time.perf_counter()
        out.append(now - last)
        last, prev = now, cur
        if max_seconds is not None and len(out) >= 2 and now - start > max_seconds:
            break
    sync(prev)
    return out


def pick_torch_threads(fn: Callable[[], Any], sync: Callable[[Any], Any] = lambda x: x) -> dict:
    """Gives the reference its best thread count: after one warm-up call, times one call with
    ``os.cpu_count()`` intra-op threads and one with a single thread, keeps the faster.

    Why: on a shared, oversubscribed CPU PyTorch's OpenMP barriers make multi-threaded eager
    steps many times slower than one thread (measured 10-20x at load average 8 on 2 cores);
    on an idle machine all cores win. Returns ``{"threads", "probe_s": {n: seconds}}``."""
    import torch

    n_all = os.cpu_count() or 1
    sync(fn())
    probe = {}
    for n in sorted({n_all, 1}, reverse=True):
        torch.set_num_threads(n)
        t0 = time.perf_counter()
        sync(fn())
        probe[n] = time.perf_counter() - t0
    best = min(probe, key=probe.get)
    torch.set_num_threads(best)
    return {"threads": best, "probe_s": probe}


def bf16_matmul_peak_tflops(n: int | None = None, iters: int = 10) -> float:
    """This device's measured bf16 matmul rate (best of ``iters`` jit ``dot`` calls of two
    n x n matrices; n = 8192 on accelerators, 1024 on CPU): the denominator of the
    accelerator rows' MFU, measured in the same run as the step it divides."""
    import jax
    import jax.numpy as jnp

    if n is None:
        n = 1024 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    dot = jax.jit(lambda x, y: x @ y)
    times = time_calls(lambda: dot(a, a), warmup=2, iters=iters, sync=jax.block_until_ready)
    return 2 * n**3 / min(times) / 1e12


def enable_jax_cache() -> str | None:
    """Worker side: use JAX's persistent compilation cache when ``HFA_BENCH_JAX_CACHE`` names a
    folder (run_all.py sets it), so repeated benchmark runs skip XLA compiles. Compilation is
    never inside a timed step; ``compile_s`` is then the cache load time. Returns the folder."""
    path = os.environ.get("HFA_BENCH_JAX_CACHE")
    if not path:
        return None
    import jax

    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(result: dict) -> None:
    """Worker side: print the result line read by :func:`run_worker`."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_worker(script: str, args: Sequence[str], *, timeout: float = 1800.0, env: dict | None = None) -> dict:
    """Runs ``python bench/<script> <args>`` in a subprocess and returns its result dict.

    The worker's stderr (its progress lines, :func:`log`) goes straight to ours, live, so a long
    accelerator run shows where its time goes even if it is stopped. Raises RuntimeError with
    the worker's stdout tail when it fails or prints no result (its stderr is already shown).
    """
    cmd = [sys.executable, os.path.join(BENCH_DIR, script), *args]
    e = dict(os.environ)
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    e.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        e.update(env)
    try:
        p = subprocess.run(cmd, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"worker {' '.join(cmd[1:3])} ... timed out after {timeout:.0f} s") from exc
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"worker {' '.join(cmd[1:])} failed (exit {p.returncode}; its stderr is above):\n"
                       f"{(p.stdout or '')[-1000:]}")


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Worker side: one progress line on stderr, with seconds since the worker started."""
    sys.stderr.write(f"    [{os.path.basename(sys.argv[0])} {time.perf_counter() - _T0:6.1f} s] {msg}\n")
    sys.stderr.flush()


def xla_memory(compiled) -> dict[str, float]:
    """MiB from XLA's compiled memory analysis: arguments, outputs, temporaries, and the peak
    estimate ``arguments + outputs - aliased + temporaries`` (donated buffers are aliased)."""
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    mib = 1024.0 ** 2
    arg, out = ma.argument_size_in_bytes, ma.output_size_in_bytes
    alias, tmp = ma.alias_size_in_bytes, ma.temp_size_in_bytes
    return {"arguments_mib": arg / mib, "outputs_mib": out / mib, "temp_mib": tmp / mib,
            "peak_mib": (arg + out - alias + tmp) / mib}


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 1024 ** 2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} x {cpu}{mem}"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "peft", "numpy"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:  # noqa: BLE001 - a missing optional package is reported, not fatal
            out[name] = "missing"
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
