"""What the benchmark scripts share: the checkout's paths, the progress log, the smoke
sizes, the worker protocol, memory and timing readings, and the PyTorch oracle.

The scripts import it as a sibling module (`python benchmarks/X.py` puts benchmarks/ first
on sys.path). It imports the standard library only: the reference job
(`reference_pretrain.py`) imports it too and must never load JAX; the readings that need
JAX import it when called.

The worker protocol: a script measures in a fresh interpreter (its own flags, or a clean
process's memory peaks) by running itself as a worker, which prints one
`RESULT_JSON {...}` line (`emit_result`); the driver reads the last such line
(`run_worker`, `read_result`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "RESULT_JSON "
# The reference-faithful PyTorch model: test code (the tests check exports against it), kept out of
# the wheel, and imported from there by the benchmarks' PyTorch sides.
TORCH_ORACLE = REPO / "tests" / "torch_reference.py"

# `--smoke`: every script's check that it runs end to end, in seconds on a CPU (the tests run
# each: tests/test_benchmark_smoke.py). They all train or export the same small model on the
# same batch shapes, so that a program one compiles, another loads from the persistent XLA
# cache. The model keeps base_v1's head size (18), which gpu_variants.py's fused attention pads.
SMOKE_MODEL = {"hidden": 36, "hidden_ff": 72, "n_layers": 1, "n_heads": 2}
SMOKE_WINDOWS = 64
SMOKE_BATCH = 16


def log(msg: str) -> None:
    """A timestamped progress line on stderr (stdout carries results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def use_checkout() -> None:
    """Makes `limubert_jax` importable from this checkout, also where it is not installed (the
    GPU image)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def parse_args(parser, argv, smoke_defaults: dict):
    """`parser.parse_args(argv)` (None: sys.argv) for a script with a `--smoke` flag: with it,
    the flags not given take `smoke_defaults` (those given still win), and XLA compiles as
    `smoke_compiles` says."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--smoke" in argv:
        parser.set_defaults(**smoke_defaults)
    args = parser.parse_args(argv)
    if args.smoke:
        smoke_compiles()
    return args


def smoke_compiles() -> None:
    """For a `--smoke` run: XLA compiles without its backend optimisations (half the compile
    time; the programs compute the same operations, only slower), in this process and the
    processes it starts. A check that the script runs, never a timing."""
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"  # the children, and JAX if not imported yet
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_disable_most_optimizations", True)


# ---------------------------------------------------------------------------------------
# The worker protocol.


def emit_result(result: dict) -> None:
    """A worker's result, as the one line its driver reads."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def read_result(output: str, what: str) -> dict:
    """The last result line in `output` (a worker's stdout, or a log holding it); a
    `SystemExit` naming `what` when there is none."""
    lines = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise SystemExit(f"{what} printed no {RESULT_PREFIX.strip()} line; its output ends:\n{output[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def run_worker(cmd: Sequence[str], what: str, *, cwd: Path = REPO) -> dict:
    """Runs a worker to its exit (its stderr, the progress log, passes through) and returns
    its result; a `SystemExit` naming `what` if it fails."""
    proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, text=True, cwd=cwd, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}); its output:\n{proc.stdout[-3000:]}")
    return read_result(proc.stdout, what)


# ---------------------------------------------------------------------------------------
# Readings.


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB. `ru_maxrss` read here rather than
    through `limubert_jax.runtime.resources`, which imports JAX."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # Linux reports KiB


def peak_device_bytes() -> int | None:
    """The JAX devices' peak memory in use so far; None where the backend keeps no statistics
    (XLA:CPU). Initializes JAX's backend: only for processes that use it."""
    from limubert_jax.runtime import resources  # imports JAX: only when asked

    return resources.peak_device_bytes()


def peak_memory(jax_device: bool = True) -> dict:
    """`peak_rss_mb` and, with `jax_device`, `peak_device_bytes` (else None: querying would
    initialize JAX's backend, which would take GPU memory from PyTorch)."""
    return {"peak_rss_mb": peak_rss_mb(), "peak_device_bytes": peak_device_bytes() if jax_device else None}


def _status_mb(*fields: str) -> dict[str, float]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            values[name] = int(rest.split()[0]) / 1024
    return values


class MemoryPeaks:
    """Peak resident memory of this process, sampled every 0.1 s by a thread: `anon` (what the
    process owns: heap, arrays) and `total` (VmHWM: also the file pages it maps, e.g. the .npy
    a build reads memory-mapped, which are page cache the kernel reclaims under pressure)."""

    def __init__(self):
        import threading

        self.anon = 0.0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            self.anon = max(self.anon, _status_mb("RssAnon").get("RssAnon", 0.0))
            time.sleep(0.1)

    def read(self) -> dict[str, float]:
        self.anon = max(self.anon, _status_mb("RssAnon").get("RssAnon", 0.0))
        return {"peak_rss_anon_mb": self.anon, "peak_rss_mb": _status_mb("VmHWM")["VmHWM"]}


CORPUS_CHUNK = 20_000  # windows generated at once by `write_npy_corpus`


def write_npy_corpus(folder: Path, windows: int, seq_len: int, features: int, version: str, seed: int = 0) -> Path:
    """`folder/data_<version>.npy`: `windows` synthetic IMU-like windows [seq_len, features]
    float32 (sines plus noise, gravity on channel 2), the unlabelled `imu_npy` layout, written
    chunk by chunk (never held whole); kept once complete, so a rerun reuses it."""
    import numpy as np

    path = folder / f"data_{version}.npy"
    done = folder / "complete"
    if done.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(windows, seq_len, features))
    rng = np.random.default_rng(seed)
    t = np.arange(seq_len, dtype=np.float32) / 20.0
    t0 = time.perf_counter()
    for start in range(0, windows, CORPUS_CHUNK):
        n = min(CORPUS_CHUNK, windows - start)
        freq = rng.uniform(0.2, 3.0, (n, 1, 1)).astype(np.float32)
        amp = rng.uniform(0.1, 4.0, (n, 1, features)).astype(np.float32)
        chunk = amp * np.sin(2 * np.pi * freq * t[None, :, None]) + rng.standard_normal((n, seq_len, features),
                                                                                      dtype=np.float32) * 0.3
        chunk[:, :, min(2, features - 1)] += 9.8
        out[start : start + n] = chunk
        if (start // CORPUS_CHUNK) % 20 == 0:
            rate = (start + n) / (time.perf_counter() - t0)
            log(f"corpus {folder.name}: {start + n:,}/{windows:,} windows, {rate:,.0f}/s, "
                f"ETA {(windows - start - n) / rate:.0f} s")
    out.flush()
    del out
    done.write_text("ok")
    return path


RECORDING_ACTIVITIES = ("walk", "sit", "stand", "bike", "stairs")


def recording_rows(seconds_per_file: float, raw_hz: float) -> int:
    """Rows (samples) of each file `write_recordings_corpus` writes."""
    return round(seconds_per_file * raw_hz)


def write_recordings_corpus(folder: Path, files: int, seconds_per_file: float, raw_hz: float, seed: int = 0) -> Path:
    """`folder/rec_XXXX.csv`: `files` synthetic phone recordings in the `recordings` layout
    (datasets/recordings/README.md), `seconds_per_file` each at `raw_hz`, written one file at a
    time; kept once complete, so a rerun reuses it. Returns `folder` (the manual_dir).

    As a phone logs them: Unix-like timestamps in seconds, on a steady clock with +-10 % of a
    step of jitter, to the microsecond; the channels of `write_npy_corpus` (sines plus noise,
    gravity on acc_z; frequency and amplitudes drawn again at each activity change) to 5
    decimals; a text label `activity` changing about every 30 s."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    done = folder / ".complete"  # the reader skips dot names: the folder stays a valid one
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = recording_rows(seconds_per_file, raw_hz)
    step = 1.0 / raw_hz
    channels = ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
    written, t0 = 0, time.perf_counter()
    for i in range(files):
        t = np.arange(rows) * step
        span_starts = np.arange(0.0, seconds_per_file, 30.0)
        span_starts[1:] += rng.uniform(-5, 5, len(span_starts) - 1)
        span = np.searchsorted(span_starts, t, side="right") - 1  # each row's activity span
        # no activity twice in a row: each span moves 1-4 names on from the last
        activity_of_span = np.cumsum(rng.integers(1, len(RECORDING_ACTIVITIES), len(span_starts))) % len(
            RECORDING_ACTIVITIES)
        freq = rng.uniform(0.2, 3.0, len(span_starts))[span]
        amp = rng.uniform(0.1, 4.0, (len(span_starts), 6))[span]
        phase = 2 * np.pi * np.cumsum(freq * step)  # continuous through activity changes
        signal = amp * np.sin(phase)[:, None] + rng.standard_normal((rows, 6)) * 0.3
        signal[:, 2] += 9.8
        timestamps = 1.7e9 + i * (seconds_per_file + 60) + t + rng.uniform(-0.1, 0.1, rows) * step
        columns = {"timestamp": np.round(timestamps, 6)}
        columns.update({name: np.round(signal[:, j], 5) for j, name in enumerate(channels)})
        columns["activity"] = np.asarray(RECORDING_ACTIVITIES)[activity_of_span[span]]
        part = folder / f".rec_{i:04d}.csv.part"  # renamed once whole: a stopped run leaves no short file
        with part.open("wb") as out:  # a header without quotes, as loggers write it (pyarrow quotes its own)
            out.write((",".join(columns) + "\n").encode())
            pacsv.write_csv(pa.table(columns), out, pacsv.WriteOptions(include_header=False, quoting_style="none"))
        part.rename(folder / f"rec_{i:04d}.csv")
        written += rows
        if i % 10 == 0 or i == files - 1:
            rate = written / (time.perf_counter() - t0)
            log(f"corpus {folder.name}: {i + 1:,}/{files:,} files, {rate:,.0f} rows/s, "
                f"ETA {(files - i - 1) * rows / rate:.0f} s")
    done.write_text("ok")
    return folder


def call_seconds(call: Callable[[], object], repeats: int, warmup: int = 0) -> list[float]:
    """Wall seconds of each of `repeats` calls of `call`, after `warmup` untimed ones. `call`
    must wait for its work (`jax.block_until_ready`, `.item()`): dispatch is not the cost."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------------------------
# The PyTorch oracle.


def torch_oracle() -> types.ModuleType:
    """`tests/torch_reference.py`, the one PyTorch model of the reference that the tests and
    the benchmarks share. It imports torch alone, so the reference job stays free of JAX."""
    if "torch_reference" in sys.modules:  # the tests' import of it: one module, not two
        return sys.modules["torch_reference"]
    spec = importlib.util.spec_from_file_location("torch_reference", TORCH_ORACLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
