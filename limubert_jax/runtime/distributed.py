"""Multi-process (multi-host) runs: joining JAX's multi-controller runtime.

`initialize(...)` must run before any JAX computation (the main job calls it first). Every
process then runs the same program over the global device mesh. It joins a run

* explicitly, given the coordinator's `host:port` (process 0's address and a free port,
  the same on every process), the number of processes and this process's id
  (`--coordinator_address`, `--num_processes`, `--process_id` of the main job); or
* automatically, with `jax.distributed.initialize()` and no arguments, on a cluster whose
  environment JAX reads (`detected_cluster`): a Slurm job step of more than one task, an
  Open MPI job of more than one rank, a Cloud TPU VM. Flags given there override what JAX
  would detect.

Anything else (a plain single-machine run, Kubernetes without the flags) stays a single
process: no coordinator is contacted, nothing blocks. On CPU, cross-process collectives
use gloo (`jax_cpu_collectives_implementation`) unless another implementation was chosen.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping

import jax
from absl import logging

from limubert_jax.runtime.errors import LimuBertError

SLURM = "Slurm"
OPEN_MPI = "Open MPI"
CLOUD_TPU = "Cloud TPU"
# The variables JAX's Slurm detection reads; srun sets all of them in a job step.
_SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def _count(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ.get(name, "1"))
    except ValueError:
        return 1


def _on_cloud_tpu_vm() -> bool:
    # JAX records at import whether libtpu found TPU chips on a Cloud TPU VM; it keeps the
    # flag in a private module, so a JAX that moved it loses only this auto-detection.
    try:
        return bool(getattr(importlib.import_module("jax._src.cloud_tpu_init"), "running_in_cloud_tpu_vm", False))
    except ImportError:
        return False


def detected_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The multi-process cluster that `jax.distributed.initialize()` can configure itself
    from (`SLURM`, `OPEN_MPI`, `CLOUD_TPU`), or None. `environ` defaults to os.environ.

    Only clusters JAX detects from local state count, and Slurm and Open MPI only with more
    than one process: a single task needs no coordinator. A Cloud TPU VM (read from the
    running JAX, not `environ`) counts whatever its host count: JAX reads the slice's hosts
    from the VM's metadata server.
    """
    environ = os.environ if environ is None else environ
    if all(name in environ for name in _SLURM_VARIABLES) and _count(environ, "SLURM_NTASKS") > 1:
        return SLURM
    if "OMPI_MCA_orte_hnp_uri" in environ and _count(environ, "OMPI_COMM_WORLD_SIZE") > 1:
        return OPEN_MPI
    if _on_cloud_tpu_vm():
        return CLOUD_TPU
    return None


def _check_flags(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
                 cluster: str | None) -> None:
    if cluster is None and (num_processes is not None or process_id is not None or coordinator_address):
        missing = [f"--{name}" for name, value in (("coordinator_address", coordinator_address),
                                                    ("num_processes", num_processes),
                                                    ("process_id", process_id)) if value is None]
        if missing:
            raise LimuBertError(
                f"a multi-process run needs --coordinator_address (host:port of process 0), "
                f"--num_processes and --process_id on every process; missing {', '.join(missing)} "
                "(no Slurm, Open MPI or Cloud TPU cluster detected to supply them)"
            )
    if coordinator_address is not None:
        host, _, port = coordinator_address.rpartition(":")
        if not host or not port.isdigit():
            raise LimuBertError(f"--coordinator_address={coordinator_address!r}: expected host:port")
    if num_processes is not None and num_processes < 1:
        raise LimuBertError(f"--num_processes={num_processes}: must be >= 1")
    if process_id is not None and (process_id < 0 or (num_processes is not None and process_id >= num_processes)):
        raise LimuBertError(f"--process_id={process_id}: must be in [0, --num_processes={num_processes})")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Joins this process to a multi-process run when one is configured or detected.

    Returns True if JAX's distributed runtime is initialized on return (now, or already by
    the caller), False for a single-process run. `coordinator_address` defaults to
    `$JAX_COORDINATOR_ADDRESS`, as in JAX. Inconsistent arguments (a process id without a
    coordinator, an id out of range, an address without a port) raise LimuBertError before
    anything is contacted.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    cluster = detected_cluster()
    _check_flags(coordinator_address, num_processes, process_id, cluster)
    if cluster is None and coordinator_address is None:
        return False
    if jax.config.jax_cpu_collectives_implementation is None:
        # Without an implementation, XLA:CPU cannot run a computation spanning processes.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    logging.info("process %d of %d (%s; coordinator %s)", jax.process_index(), jax.process_count(),
                 cluster or "explicit flags", coordinator_address or "auto-detected")
    return True
