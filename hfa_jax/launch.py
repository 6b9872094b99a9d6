"""Runs a multi-process (multi-host) training on one machine: the local stand-in for a pod slice or
a GPU cluster.

    python -m hfa_jax.launch --num_processes=2 --devices_per_process=2 -- \\
        --config=configs/demo.py:smoke --workdir=runs/two_hosts

starts ``python -m hfa_jax.main <flags>`` ``num_processes`` times with a coordinator on 127.0.0.1
at a free port (``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, read by
:mod:`hfa_jax.train.distributed`), CPU collectives (gloo) and ``devices_per_process`` emulated
CPU devices each. Every output line is prefixed with its process id (``[p1] ...``).

When a process fails or is killed, one line names it, the others are stopped (SIGTERM, then
SIGKILL after ``--grace_s``: a survivor may be blocked in a collective with the lost process),
and the launcher exits with the first failure's status (128 + signal for a killed process).
On real hardware the same ``hfa_jax.main`` command runs once per host instead (see
docs/multi_device.md).
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Sequence


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_env(base: dict, *, process_id: int, num_processes: int, devices: int, port: int) -> dict:
    """The environment of process ``process_id``: coordinator, CPU platform, emulated devices."""
    env = dict(base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env.update({
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "JAX_NUM_PROCESSES": str(num_processes),
        "JAX_PROCESS_ID": str(process_id),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _pump(stream: IO[bytes], prefix: str, out: IO[str], lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with lock:
            out.write(f"{prefix} {line}\n")
            out.flush()


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by signal {-rc} ({signal.Signals(-rc).name})"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


def _stop(procs: Sequence[subprocess.Popen], grace_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def launch(main_args: Sequence[str], *, num_processes: int, devices_per_process: int = 1,
           grace_s: float = 10.0, module: str = "hfa_jax.main", out: IO[str] = sys.stdout) -> int:
    """Runs ``python -m module main_args`` in ``num_processes`` coordinated processes; returns the
    exit status (0 when all succeed, else the first failure's, 128 + signal if it was killed)."""
    port = free_port()
    lock = threading.Lock()
    procs, pumps = [], []
    for i in range(num_processes):
        env = process_env(os.environ, process_id=i, num_processes=num_processes, devices=devices_per_process,
                          port=port)
        p = subprocess.Popen([sys.executable, "-m", module, *main_args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(p)
        t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}]", out, lock), daemon=True)
        t.start()
        pumps.append(t)

    def forward(signum, _frame):  # Ctrl-C / SIGTERM of the launcher reaches every process
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    # One waiter per process records when it ended, so the line names the process that failed
    # first: a lost process makes its peers abort (SIGABRT from gloo or the coordination
    # service) within milliseconds, and a poll would see all of them dead at once.
    ended: "queue.Queue[tuple[int, int]]" = queue.Queue()
    for i, p in enumerate(procs):
        threading.Thread(target=lambda i=i, p=p: ended.put((i, p.wait())), daemon=True).start()

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        for _ in range(num_processes):
            i, rc = ended.get()
            if rc == 0:
                continue
            time.sleep(0.5)  # peers that died with it: the root cause is the one that did not abort
            others = []
            while not ended.empty():
                others.append(ended.get())
            if rc == -signal.SIGABRT:
                i, rc = next(((j, r) for j, r in others if r not in (0, -signal.SIGABRT)), (i, rc))
            running = sum(p.poll() is None for p in procs)
            with lock:
                out.write(f"hfa_jax.launch: process {i} {_describe(rc)}"
                          + (f"; stopping the other {running} process(es)\n" if running else "\n"))
                out.flush()
            _stop(procs, grace_s)
            status = 128 - rc if rc < 0 else rc
            break
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for t in pumps:
            t.join(timeout=5)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        cut = argv.index("--")
        own, main_args = argv[:cut], argv[cut + 1:]
    else:
        own, main_args = argv, []
    parser = argparse.ArgumentParser(prog="python -m hfa_jax.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--devices_per_process", type=int, default=1)
    parser.add_argument("--grace_s", type=float, default=10.0,
                        help="seconds the others get to stop after a failure before SIGKILL")
    parser.add_argument("--module", default="hfa_jax.main", help="the module each process runs")
    args = parser.parse_args(own)
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("--num_processes and --devices_per_process must be >= 1")
    if not main_args:
        parser.error("give the hfa_jax.main flags after --, e.g. -- --config=configs/demo.py:smoke")
    return launch(main_args, num_processes=args.num_processes, devices_per_process=args.devices_per_process,
                  grace_s=args.grace_s, module=args.module)


if __name__ == "__main__":
    sys.exit(main())
