"""Entry point: ``python -m hfa_jax.main --config=configs/pretrain.py [--workdir=DIR] [--config.x=...]``.

Thin on purpose (flax ``examples/wmt/main.py`` layout): flags -> :func:`hfa_jax.train.loop.run`
(one training stage) or :func:`hfa_jax.demo.run` (``config.job == "demo"``). ``--workdir``
defaults to ``runs/<config.name>``. Variants: ``--config=configs/finetune.py:stage1``.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from hfa_jax import config_cli, demo
from hfa_jax.errors import ConfigError, UserError
from hfa_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (configs/*.py[:variant])",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder (default: runs/<config name>)")


def default_workdir(config) -> str:
    return os.path.join("runs", str(config.get("name", "run")))


FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _maybe_fast_compile(config) -> None:
    """The demo's tiny models spend more time in XLA's CPU compiler than in training; these flags
    halve compile time (runtime ~20% slower). They only work before JAX starts its backend."""
    demo = config.get("demo", None)
    if demo is not None and bool(demo.get("fast_compile", False)):
        flags_now = os.environ.get("XLA_FLAGS", "")
        if "xla_backend_optimization_level" not in flags_now:
            os.environ["XLA_FLAGS"] = (flags_now + " " + FAST_COMPILE_FLAGS).strip()


def run(config, workdir: str | None = None) -> dict:
    """What ``main`` does, callable from Python: dispatches on ``config.job``."""
    workdir = workdir or default_workdir(config)
    job = config.get("job", "train")
    if job == "demo":
        return demo.run(config, workdir)
    if job != "train":
        raise ConfigError(f"config.job={job!r} is not 'train' or 'demo'")
    return loop.run(config, workdir)


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config=... --workdir=...")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
    _maybe_fast_compile(config)
    if not flags.FLAGS["verbosity"].present:
        # absl's default (INFO) lets orbax and tensorflow-datasets log every checkpoint write and
        # dataset open between our progress bars; our own log ("hfa_jax.train", train.log) is
        # separate and stays at INFO. --verbosity=0 brings the libraries' INFO lines back.
        absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        run(config, _WORKDIR.value)
    except UserError as e:  # one line, no traceback (hfa_jax.errors.cli_main convention)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    app.run(_main, flags_parser=config_cli.parse_flags)  # --config errors: one line


if __name__ == "__main__":
    main()
