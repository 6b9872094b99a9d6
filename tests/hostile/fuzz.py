"""What every property-based test of a reader of untrusted input asserts: the call gives a value
or one :class:`~hfa_jax.errors.UserError` line, within a memory bound (tracemalloc's peak, which
counts NumPy's buffers too) and a time bound (Hypothesis' deadline)."""

from __future__ import annotations

import tracemalloc
from typing import Any, Callable

from hypothesis import HealthCheck, settings

from hfa_jax.errors import UserError

# Few, fixed examples: the suite stays fast and a failure reproduces on every machine.
FUZZ = settings(max_examples=60, deadline=3000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def value_or_one_line(fn: Callable[[], Any], *, max_bytes: int, names: tuple[str, ...] = ()) -> tuple[Any, str | None]:
    """Runs ``fn``; returns (its value, None) or (None, the UserError's message), after checking
    the message is one line naming each of ``names`` and that no more than ``max_bytes`` were
    allocated at once. Any other exception propagates (the test fails)."""
    tracemalloc.start()
    try:
        try:
            return fn(), None
        except UserError as e:
            msg = str(e)
            assert msg and "\n" not in msg, msg
            for name in names:
                assert name in msg, (name, msg)
            return None, msg
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            assert peak <= max_bytes, f"peak {peak} bytes > {max_bytes}"
    finally:
        tracemalloc.stop()
