"""User-facing errors: one line saying what is wrong, where, and what to do.

Command-line entry points catch :class:`UserError` and print its message without a traceback
(see :func:`cli_main`). Library code raises the most specific subclass.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """An error caused by input the user controls (a file, a flag, a config field)."""


class DataError(UserError):
    """A dataset file or folder is missing, malformed or inconsistent."""


class ConfigError(UserError):
    """A config names an unknown field, a bad value or a path that does not exist."""


class CheckpointError(UserError):
    """A weight folder or checkpoint is not what was expected (missing/mis-shaped tensors)."""


def cli_main(fn: F) -> F:
    """Decorator for `main()` functions: UserError -> one line on stderr, exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
