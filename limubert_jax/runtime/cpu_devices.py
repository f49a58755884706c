"""The CPU backend's devices: one per core, so that pretraining runs data parallel over the cores.

With one CPU device, XLA:CPU runs a program on every core by splitting its ops between
threads. The ops of LIMU-BERT's train step are small (chunks of 8 windows, see
`pretraining.steps.loss_and_grads`), and that splitting kept the 2 cores of the machine the
package is measured on from being used fully. With one CPU device per core, each device takes
the gradient of its rows of the batch on its own core and the devices average their gradients
once per step (`pretraining.steps`): a train step of 128 windows took 166-173 instead of
203-204 ms, and one of 32 windows 46 instead of 92 ms (2 cores). Programs without a mesh
(inference, the downstream classifiers) run on the first device and still use every core.

JAX fixes the device count when its backend starts, so `split_cores` must run before any JAX
computation; the main job calls it first.
"""

from __future__ import annotations

import os

import jax
from absl import logging

# `config.cpu_devices` that asks for one CPU device per usable core.
ONE_PER_CORE = -1
_FORCED_COUNT_FLAG = "xla_force_host_platform_device_count"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def check_count(devices) -> int:
    """`devices` if it is a valid `config.cpu_devices` (ONE_PER_CORE or a positive int), else a ValueError."""
    if isinstance(devices, bool) or not isinstance(devices, int) or (devices < 1 and devices != ONE_PER_CORE):
        raise ValueError(f"cpu_devices must be {ONE_PER_CORE} (one per core) or a positive integer, got {devices!r}")
    return devices


def split_cores(devices: int = ONE_PER_CORE) -> int | None:
    """Asks JAX for `devices` CPU devices (ONE_PER_CORE: one per usable core). Returns the count
    asked for, or None where it is left as it is: a count chosen already (`JAX_NUM_CPU_DEVICES`,
    `jax_num_cpu_devices`, or `--xla_force_host_platform_device_count` in `XLA_FLAGS`), or a JAX
    backend already running (logged). Accelerator devices are not affected."""
    devices = usable_cores() if check_count(devices) == ONE_PER_CORE else devices
    if jax.config.jax_num_cpu_devices != -1 or _FORCED_COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    try:
        jax.config.update("jax_num_cpu_devices", devices)
    except RuntimeError:  # the backend started before this call: its device count stays
        logging.info("JAX is running already; the CPU device count stays %d", len(jax.devices("cpu")))
        return None
    return devices


def cores_per_device() -> int:
    """The cores each of this process's CPU devices has to itself (at least 1)."""
    return max(1, usable_cores() // len(jax.local_devices(backend="cpu")))
