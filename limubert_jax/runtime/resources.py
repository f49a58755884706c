"""What a run cost the machine: time since the process started, peak host and device memory."""

from __future__ import annotations

import os
import resource
import sys
import time

import jax

# When this module was first imported: the launch time where the OS does not tell it.
_IMPORTED = time.time()


def process_start_time() -> float:
    """The process's start as a Unix time: from /proc on Linux (the interpreter's launch,
    imports included), else when this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            # Field 22, after the parenthesised command name (which may hold spaces).
            start_ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED


def seconds_since_launch() -> float:
    """Wall-clock seconds since `process_start_time()`."""
    return time.time() - process_start_time()


def peak_host_bytes() -> int:
    """This process's peak resident memory in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def peak_device_bytes() -> int | None:
    """The largest peak memory in use on this process's devices, None where the backend does
    not report it (XLA:CPU)."""
    peaks = [(device.memory_stats() or {}).get("peak_bytes_in_use") for device in jax.local_devices()]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None
