"""A persistent compilation and autotuning cache for the command-line tools.

A paper-scale train step compiles for minutes, and on a GPU XLA's GEMM autotuning (on by
default, with Triton GEMM fusions) adds more; a second run of the same program should pay none
of it. ``python -m hfa_jax.main``, ``hfa_jax.translate`` and ``hfa_jax.serve`` therefore turn on
JAX's persistent compilation cache by default (:func:`enable`), with XLA's per-fusion GPU
autotuning results stored beside the executables (``jax_persistent_cache_enable_xla_caches``),
so autotuning runs once per program and machine.

Where: ``$XDG_CACHE_HOME/hfa_jax/jax`` (``~/.cache/hfa_jax/jax``), or the folder the setting names.
The setting: each tool's ``--compile_cache`` flag, else the ``HFA_JAX_COMPILE_CACHE`` environment
variable, else ``auto``; ``off`` (or ``0``, ``false``, ``none``) turns the cache off. A cache
folder that cannot be created gives one warning and the run goes on without a cache. Programs
that compile in under ``jax_persistent_cache_min_compile_time_secs`` (JAX's default, 1 s) are not
stored. A cache folder JAX was already given (a test's, a user's own ``jax.config``) is kept.

Library calls (``hfa_jax.train.loop.run``, ``Translator``) do not touch JAX's configuration: the
cache is the command-line tools' default only.
"""

from __future__ import annotations

import os
import sys

ENV = "HFA_JAX_COMPILE_CACHE"
OFF = frozenset({"off", "0", "false", "no", "none", ""})
HELP = ("persistent compilation + autotuning cache: 'auto' (~/.cache/hfa_jax/jax), a folder, or 'off' "
        f"(default: ${ENV}, else auto)")

# XLA's own caches JAX keeps inside the compilation cache folder: the GPU per-fusion autotuning
# results (the GEMM configurations XLA's autotuner picked).
XLA_CACHES = "xla_gpu_per_fusion_autotune_cache_dir"


def default_dir() -> str:
    """``$XDG_CACHE_HOME/hfa_jax/jax``, ``XDG_CACHE_HOME`` defaulting to ``~/.cache``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hfa_jax", "jax")


def resolve(setting: str | None = None) -> str | None:
    """The cache folder a setting names (None: the environment variable, else ``auto``), or None
    when it is off."""
    if setting is None:
        setting = os.environ.get(ENV, "auto")
    setting = str(setting).strip()
    if setting.lower() in OFF:
        return None
    if setting.lower() == "auto":
        return default_dir()
    return os.path.abspath(os.path.expanduser(setting))


def enable(setting: str | None = None) -> str | None:
    """Turns JAX's persistent compilation cache on in :func:`resolve`'s folder, with XLA's GPU
    autotuning cache inside it. Returns the folder in use (None: off). Call before the first
    compile."""
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:  # already configured by the caller: theirs wins
        return current
    path = resolve(setting)
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        print(f"warning: compilation cache off: cannot create {path} ({e.strerror}); "
              f"set {ENV}=off or --compile_cache=DIR", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_enable_xla_caches", XLA_CACHES)
    return path


def add_argument(parser) -> None:
    """``--compile_cache`` for an argparse command (default: the environment, else auto)."""
    parser.add_argument("--compile_cache", default=None, help=HELP)
