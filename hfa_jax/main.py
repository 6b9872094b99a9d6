"""Entry point: ``python -m hfa_jax.main --config=configs/pretrain.py [--workdir=DIR] [--config.x=...]``.

Thin on purpose (flax ``examples/wmt/main.py`` layout): flags -> the job the config names
(``config.job``), looked up in :data:`JOBS` and imported only then. ``train`` (the default) is
one training stage, :func:`hfa_jax.train.loop.run`; ``demo`` is the whole CPU demo,
:func:`hfa_jax.demo.run`, so a training run never loads the demo's data builders.
``--workdir`` defaults to ``runs/<config.name>``. Variants: ``--config=configs/finetune.py:stage1``.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from hfa_jax import compile_cache, config_cli
from hfa_jax.errors import ConfigError, UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (configs/*.py[:variant])",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder (default: runs/<config name>)")
_COMPILE_CACHE = flags.DEFINE_string("compile_cache", None, compile_cache.HELP)

# config.job -> "module:function", a ``run(config, workdir) -> dict``. A job module may also
# define ``process_setup(config)``: it runs before JAX starts its backend (e.g. to set XLA flags).
JOBS = {
    "train": "hfa_jax.train.loop:run",
    "demo": "hfa_jax.demo:run",
}


def default_workdir(config) -> str:
    return os.path.join("runs", str(config.name))


def _job_module(config):
    """The module of ``config.job`` and its run function's name (imported here, on demand)."""
    job = str(config.job)
    if job not in JOBS:
        raise ConfigError(f"config.job={job!r} is not one of {sorted(JOBS)}")
    module, _, function = JOBS[job].partition(":")
    return importlib.import_module(module), function


def run(config, workdir: str | None = None) -> dict:
    """What ``main`` does, callable from Python: runs the job ``config.job`` names."""
    module, function = _job_module(config)
    return getattr(module, function)(config, workdir or default_workdir(config))


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config=... --workdir=...")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
    compile_cache.enable(_COMPILE_CACHE.value)  # compile (and autotune) once per program and machine
    if not flags.FLAGS["verbosity"].present:
        # absl's default (INFO) lets orbax and tensorflow-datasets log every checkpoint write and
        # dataset open between our progress bars; our own log ("hfa_jax.train", train.log) is
        # separate and stays at INFO. --verbosity=0 brings the libraries' INFO lines back.
        absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        module, _ = _job_module(config)
        if hasattr(module, "process_setup"):
            module.process_setup(config)
        run(config, _WORKDIR.value)
    except UserError as e:  # one line, no traceback (hfa_jax.errors.cli_main convention)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    app.run(_main, flags_parser=config_cli.parse_flags)  # --config errors: one line


if __name__ == "__main__":
    main()
