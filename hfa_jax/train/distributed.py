"""Multi-process start-up: one JAX process per host (TPU VM, GPU node) or, on one machine, per
emulated host (:mod:`hfa_jax.launch`).

:func:`initialize` runs before anything touches a JAX backend. It connects the process to the
others when the run is distributed:

* ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` in the environment
  (what :mod:`hfa_jax.launch` sets, and what a cluster script may set by hand), or
* ``config.mesh.distributed=True`` with JAX's own cluster detection (Cloud TPU VMs started with
  ``--worker=all``, SLURM ``srun``, Open MPI, Kubernetes).

On CPU the cross-process collectives use gloo (JAX's CPU default has none).
"""

from __future__ import annotations

import logging
import os

import jax

from hfa_jax.train.settings import MeshSettings

log = logging.getLogger("hfa_jax.train")

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


def requested(mesh: MeshSettings) -> bool:
    """Whether this run is distributed (config switch or launcher environment)."""
    return mesh.distributed or all(k in os.environ for k in (ENV_ADDRESS, ENV_COUNT, ENV_ID))


def initialize(mesh: MeshSettings) -> None:
    """Connects to the other processes if the run is distributed; a no-op otherwise, and when JAX
    is already initialised (a second stage in the same process)."""
    if not requested(mesh) or jax.distributed.is_initialized():
        return
    kwargs = {}
    if all(k in os.environ for k in (ENV_ADDRESS, ENV_COUNT, ENV_ID)):
        kwargs = dict(coordinator_address=os.environ[ENV_ADDRESS], num_processes=int(os.environ[ENV_COUNT]),
                      process_id=int(os.environ[ENV_ID]))
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # A lost process is noticed by the coordination service within this many seconds (JAX's
    # default is 100); the others then stop instead of waiting in a collective.
    jax.distributed.initialize(heartbeat_timeout_seconds=mesh.heartbeat_timeout_s, **kwargs)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


_barriers = 0


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Every process waits here until all have arrived; a no-op on one process.

    The coordination service's barrier, not a device collective. The loop calls it after
    compiling a program and before running it: processes finish compiling at different times
    (minutes apart on a loaded machine), and gloo's CPU collectives abort the process (SIGABRT)
    when a peer is that late to the first collective of a step.
    """
    global _barriers
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed  # the client; jax has no public barrier

    _barriers += 1
    jax_distributed.global_state.client.wait_at_barrier(f"hfa_jax:{name}:{_barriers}", timeout_s * 1000)
