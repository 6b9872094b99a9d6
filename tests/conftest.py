"""Suite-wide setup: one persistent JAX compilation cache for the whole run, and the slow tests
kept for their own command.

Slow tests (``@pytest.mark.slow``: the multi-process launches, the demo end to end) run when the
``-m`` expression names them: ``python -m pytest -q -n 2 -m slow tests`` runs them alone (CI runs it
after the main command). Otherwise they are skipped, with that command as the reason.

Many tests compile the same programs: the tiny trainer's steps in several runs of one test, a
1-process launch run again to resume (2-process launches were seen to get new keys at every
launch). A persistent compilation cache lets each program compile once per run, in whichever test
or subprocess meets it first.

The cache is a fresh directory per run (removed at the end), shared by the xdist workers and by
every subprocess the tests start (they inherit ``JAX_COMPILATION_CACHE_DIR``). It cannot make a
test pass that should fail: JAX keys an entry by the program's whole StableHLO, the compile
options and device assignment, the jaxlib and backend versions and the XLA flags, so a hit returns
the executable that compiling would have produced; and no entry outlives the run whose code made it.
``HFA_TEST_JAX_CACHE=<dir>`` keeps the cache across runs instead, in ``<dir>/jax-<v>-jaxlib-<v>``
(the keys above keep that sound too), and ``HFA_TEST_JAX_CACHE=off`` turns it off.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

_OWNED = "_HFA_TEST_JAX_CACHE_OWNED"  # set when this run created (and must remove) the directory


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the controller's environment is inherited
        return
    choice = os.environ.get("HFA_TEST_JAX_CACHE", "")
    if choice == "off" or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return  # off, or chosen by the caller
    if choice:
        from importlib.metadata import version

        path = os.path.join(os.path.abspath(choice), f"jax-{version('jax')}-jaxlib-{version('jaxlib')}")
        os.makedirs(path, exist_ok=True)
    else:
        path = tempfile.mkdtemp(prefix="hfa_jax_test_cache_")
        os.environ[_OWNED] = path
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    # Below 0.2 s of compilation (most eager operations) a program is not worth a file of its own.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    if "jax" in sys.modules:  # jax reads these variables when it is imported: it was already (a plugin)
        import jax

        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


SLOW_COMMAND = "python -m pytest -q -n 2 -m slow tests"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr") or ""):
        return  # -m slow, -m "not slow", ...: the expression decides
    skip = pytest.mark.skip(reason=f"slow: runs with `{SLOW_COMMAND}`")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def pytest_unconfigure(config: pytest.Config) -> None:
    path = os.environ.get(_OWNED)
    if path and not hasattr(config, "workerinput"):
        shutil.rmtree(path, ignore_errors=True)
