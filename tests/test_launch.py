"""hfa_jax.launch with stand-in processes (no JAX): the line that names a failure, the exit
status, and the survivors stopped."""

from __future__ import annotations

import io
import signal
import textwrap
import time

from hfa_jax import launch

# Each stand-in reads its JAX_PROCESS_ID and acts out one role.
STAND_IN = textwrap.dedent('''
    import os, signal, sys, time
    pid = int(os.environ["JAX_PROCESS_ID"])
    role = os.environ["STAND_IN_ROLES"].split(",")[pid]
    print("ready", flush=True)
    kind, _, delay = role.partition("@")
    time.sleep(float(delay or 0))
    if kind == "ok":
        sys.exit(0)
    if kind == "exit3":
        sys.exit(3)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "abort":
        os.abort()
    time.sleep(600)  # "hang": a survivor blocked in a collective
''')


def run(tmp_path, monkeypatch, roles: str, n: int) -> tuple[int, list[str], float]:
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("STAND_IN_ROLES", roles)
    out = io.StringIO()
    t0 = time.time()
    rc = launch.launch(["x"], num_processes=n, module="stand_in", grace_s=2.0, out=out)
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("[p") and line.endswith("ready") for line in lines) == n  # prefixed output
    return rc, [line for line in lines if line.startswith("hfa_jax.launch:")], time.time() - t0


def test_all_succeed(tmp_path, monkeypatch):
    rc, lines, _ = run(tmp_path, monkeypatch, "ok,ok@0.3", 2)
    assert rc == 0 and lines == []


def test_a_failure_stops_a_hanging_survivor(tmp_path, monkeypatch):
    rc, lines, seconds = run(tmp_path, monkeypatch, "hang,exit3@0.5", 2)
    assert rc == 3
    assert lines == ["hfa_jax.launch: process 1 exited with status 3; stopping the other 1 process(es)"]
    assert seconds < 60  # not the survivor's 600 s


def test_the_killed_process_is_named_not_the_peer_that_aborted(tmp_path, monkeypatch):
    # Process 0 aborts first (as a peer of a lost process does), process 1 was SIGKILLed just after.
    rc, lines, _ = run(tmp_path, monkeypatch, "abort@1.0,kill@1.2,hang", 3)
    assert rc == 128 + signal.SIGKILL
    assert lines == ["hfa_jax.launch: process 1 was killed by signal 9 (SIGKILL); stopping the other 1 process(es)"]


def test_an_abort_alone_is_named(tmp_path, monkeypatch):
    rc, lines, _ = run(tmp_path, monkeypatch, "hang,abort@0.5", 2)
    assert rc == 128 + signal.SIGABRT
    assert lines == ["hfa_jax.launch: process 1 was killed by signal 6 (SIGABRT); stopping the other 1 process(es)"]
