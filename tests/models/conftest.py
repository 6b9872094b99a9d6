"""Shared helpers of the model tests."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_on_cpu_devices(script: str, devices: int = 4, timeout: int = 600) -> None:
    """Runs ``script`` (Python source that prints "ok" last) in a fresh process that sees
    ``devices`` CPU devices (the device count is fixed when JAX starts, so a mesh test cannot run
    in the test process), from the repository root; fails with its stderr otherwise."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
