"""The training stream against a plain memory-mapped gather, and the build rate, with a
projection to a corpus of LIMU-BERT-X's size.

    python benchmarks/input_pipeline.py --out /tmp/limubert-input                 # 2 M + 5 M windows, 2 M from CSV
    python benchmarks/input_pipeline.py --smoke --out /tmp/limubert-input-smoke   # does it run?

Two synthetic corpora (`harness.write_npy_corpus`, kept in `--cache-dir`): `--windows` windows of
120 x 6 and `--short-windows` of 20 x 6 float32 (LIMU-BERT-X's window), both far larger than
`input_pipeline.KEEP_IN_MEMORY_BYTES`. Each is built through the project's own path
(`loading.load_pretrain_data`: the imu_npy build, array_record records and the window store
beside them) in a process of its own, which reports the build's windows/s and peak memory.

Then builds from what users bring: for each of `--recording-strides`, a folder of phone-like
CSV recordings (`harness.write_recordings_corpus`, also kept: `--recording-hz` timestamps with
jitter, 6 channels, an `activity` label; as many `--recording-file-seconds` files as give at
least `--recording-windows` windows of 120 steps every `stride` steps at 20 Hz), built as
`recordings` version 20_120 the same way: reading and checking the CSV, the anti-aliased
resampling, cutting and writing the windows. The stride sets how many source rows a window
costs (stride x raw rate / 20), hence the mix of reading and writing; each row also gives the
source rows (CSV lines) and CSV megabytes read per second of the whole build.

Then, in a process pinned to 1 and to 2 cores (`os.sched_setaffinity`), for each corpus:
* stream: `input_pipeline.train_batches` (batch `--batch-size`, the reference training split,
  0 reader threads on 1 core, 2 on 2 cores) for `--seconds`, counted in windows per second of
  wall time and per CPU-second of the process (all its threads);
* memmap gather: the same process gathering `--batch-size` random rows per batch from the
  same window store, memory-mapped (`np.load(mmap_mode="r")`): what a random read from memory
  costs, the yardstick the stream is held to (ratio = stream / gather, per CPU-second);
* warm (the store read once through before) and cold (its pages evicted from the page cache
  with `posix_fadvise(DONTNEED)`; the first `--seconds` of reads then come from the disk).

The projection: LIMU-BERT-X's 1.43 M hours at 20 Hz are about 5.1 x 10^9 one-second windows
(20 x 6): hours per epoch for one host streaming at the measured 2-core rate from memory, and
from the disk at the slowest cold rate measured (the first cold pass reads the disk; later ones
may find the file in the virtual machine's host cache), and how many such
hosts feed an 8-GPU node and a v5e-256 slice at the accelerator rates given by
`--gpu-windows-per-s` (default: the README's H200 figure for 120-step windows, scaled to 20-step
windows by `--short-window-speedup`, an assumption until measured) and `--tpu-chip-windows-per-s`
(default: the same per chip as the H200, an upper bound on what a v5e chip consumes).

Writes `input_pipeline.json`, `input_pipeline.md` (the table) and `input_pipeline.png` to `--out`
and prints the table. `--smoke` checks that the script runs: tiny corpora, 0.1 s per
measurement; never a timing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import harness
from harness import log

SHAPES = {"120x6": (120, 6, "20_120"), "20x6": (20, 6, "20_20")}
LIMU_BERT_X_HOURS = 1.43e6
LIMU_BERT_X_WINDOWS = LIMU_BERT_X_HOURS * 3600  # one-second windows at 20 Hz: 20 steps each
# docs/accelerators.md: base_v1 pretraining on one H200, device-resident epochs in bf16, 120-step windows.
H200_WINDOWS_PER_S_120 = 95_434
SHORT_WINDOW_SPEEDUP = 6.0  # 20- vs 120-step windows: the model's cost per window is about linear in its length
# The flags a worker takes from its driver (besides --cache-dir), also recorded in the results.
SETTINGS = ("windows", "short_windows", "recording_windows", "recording_strides", "recording_hz",
            "recording_file_seconds", "batch_size", "seconds")
V5E_256_CHIPS = 256
GPUS_PER_NODE = 8


def _corpus(args, shape: str) -> tuple[Path, Path]:
    """(the corpus folder, the TFDS data_dir of its build)."""
    windows = args.windows if shape == "120x6" else args.short_windows
    root = Path(args.cache_dir)
    return root / f"npy_{shape}_{windows}", root / f"tfds_{shape}_{windows}"


def _strides(args) -> list[int]:
    return [int(s) for s in str(args.recording_strides).split(",") if s.strip()]


def _recordings(args, stride: int) -> dict:
    """The recordings corpus for windows every `stride` steps: its size, folder and data_dir."""
    steps = round(args.recording_file_seconds * 20)  # per file at version 20_120
    per_file = (steps - 120) // (stride or 120) + 1
    files = math.ceil(args.recording_windows / per_file)
    name = f"{files}x{args.recording_file_seconds:g}s_{args.recording_hz:g}hz"
    root = Path(args.cache_dir)
    return {"files": files, "folder": root / f"recordings_{name}",
            "data_dir": root / f"tfds_recordings_{name}_stride{stride}"}


def _dataset_config(args, shape: str) -> dict:
    folder, data_dir = _corpus(args, shape)
    return {"name": "imu_npy", "version": SHAPES[shape][2], "manual_dir": str(folder), "data_dir": str(data_dir)}


# ---------------------------------------------------------------------------------------
# Workers (each in its own interpreter).


def worker_build(args) -> dict:
    """Builds one corpus (records and window store; its data_dir removed before): windows/s and
    peak memory."""
    from limubert_jax.data import loading

    peaks = harness.MemoryPeaks()
    t0 = time.perf_counter()
    data = loading.load_pretrain_data(_dataset_config(args, args.shape))
    seconds = time.perf_counter() - t0
    assert data.train.in_store, "the build has no window store"
    return {"windows": data.num_windows, "seconds": seconds, "windows_per_s": data.num_windows / seconds,
            **peaks.read()}


def worker_build_recordings(args) -> dict:
    """Builds the recordings corpus (its data_dir removed before): windows/s, source rows/s,
    CSV MB/s and peak memory."""
    from limubert_jax.data import loading

    corpus = _recordings(args, args.stride)
    folder = corpus["folder"]
    rows = corpus["files"] * harness.recording_rows(args.recording_file_seconds, args.recording_hz)
    csv_bytes = sum(p.stat().st_size for p in folder.glob("*.csv"))
    peaks = harness.MemoryPeaks()
    t0 = time.perf_counter()
    data = loading.load_pretrain_data({"name": "recordings", "version": "20_120", "manual_dir": str(folder),
                                       "data_dir": str(corpus["data_dir"]), "stride": args.stride})
    seconds = time.perf_counter() - t0
    assert data.train.in_store, "the build has no window store"
    return {"windows": data.num_windows, "seconds": seconds, "windows_per_s": data.num_windows / seconds,
            "files": corpus["files"], "file_seconds": args.recording_file_seconds, "raw_hz": args.recording_hz,
            "stride": args.stride, "source_rows": rows, "source_rows_per_s": rows / seconds,
            "csv_mb": csv_bytes / 1e6, "csv_mb_per_s": csv_bytes / 1e6 / seconds, **peaks.read()}


def _evict(path: Path, mapped) -> None:
    """Drops a file's pages from the page cache. The pages this process maps (`mapped`, its
    np.memmap) are unmapped first: the kernel keeps mapped pages in the cache."""
    import mmap

    mapped._mmap.madvise(mmap.MADV_DONTNEED)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _rate(read_batch, batch_size: int, seconds: float) -> dict:
    """Calls `read_batch()` for `seconds`: windows per wall second and per CPU-second."""
    n, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while True:
        read_batch()
        n += 1
        wall = time.perf_counter() - wall0
        if wall >= seconds:
            break
    cpu = time.process_time() - cpu0
    return {"batches": n, "wall_s": wall, "cpu_s": cpu, "per_s": n * batch_size / wall,
            "per_cpu_s": n * batch_size / max(cpu, 1e-9)}


def worker_stream(args) -> dict:
    """Stream vs memmap gather on `--cores` cores, warm and cold, for every corpus."""
    import numpy as np

    from limubert_jax.data import input_pipeline, loading

    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    threads = 0 if args.cores == 1 else args.cores
    results = {}
    for shape in SHAPES:
        data = loading.load_pretrain_data(_dataset_config(args, shape))
        path = Path(data.train.store.filename)
        store, rows = data.train.store, data.train.indices
        rng = np.random.default_rng(0)
        for cache in ("warm", "cold"):
            if cache == "warm":
                for start in range(0, len(store), 1 << 16):  # read through once: pages cached
                    np.asarray(store[start : start + (1 << 16)]).sum()
            else:
                _evict(path, store)
            stream = input_pipeline.train_batches(data, global_batch_size=args.batch_size, seed=0,
                                                  num_threads=threads)
            stream_rate = _rate(lambda: next(stream), args.batch_size, args.seconds)  # noqa: B023  (called here)
            stream.close()  # its reader threads stop before the gather is timed
            if cache == "cold":
                _evict(path, store)
            gather_rate = _rate(lambda: store[rows[rng.integers(0, len(rows), args.batch_size)]], args.batch_size,
                                args.seconds)
            results[f"{shape} {cache}"] = {
                "shape": shape, "cache": cache, "cores": args.cores, "reader_threads": threads,
                "store_gb": path.stat().st_size / 2**30, "stream": stream_rate, "gather": gather_rate,
                "ratio_per_cpu_s": stream_rate["per_cpu_s"] / gather_rate["per_cpu_s"],
            }
            log(f"{args.cores} core(s), {shape} {cache}: stream {stream_rate['per_s']:,.0f}/s "
                f"({stream_rate['per_cpu_s']:,.0f}/CPU-s), gather {gather_rate['per_cpu_s']:,.0f}/CPU-s")
    return results


WORKERS = {"build": worker_build, "build_recordings": worker_build_recordings, "stream": worker_stream}

# ---------------------------------------------------------------------------------------
# The driver.


def _worker(args, kind: str, **extra) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, *args.passthrough,
           *(f"--{k.replace('_', '-')}={v}" for k, v in extra.items())]
    return harness.run_worker(cmd, f"{kind} worker")


def projection(args, from_memory: float, from_disk: float) -> dict:
    """Hours per epoch of a LIMU-BERT-X-sized corpus for one host streaming `from_memory` (the
    2-core rate on 20 x 6 windows in the page cache) or `from_disk` windows/s (the slowest cold
    rate measured: a random window costs a page read, whatever its size), and how many such
    hosts an 8-GPU node and a v5e-256 slice need."""
    gpu = args.gpu_windows_per_s * args.short_window_speedup
    tpu_chip = args.tpu_chip_windows_per_s * args.short_window_speedup
    demand = {f"{GPUS_PER_NODE}-GPU node": GPUS_PER_NODE * gpu, f"v5e-{V5E_256_CHIPS}": V5E_256_CHIPS * tpu_chip}
    return {
        "windows": LIMU_BERT_X_WINDOWS, "terabytes": LIMU_BERT_X_WINDOWS * 20 * 6 * 4 / 1e12,
        "host_windows_per_s": {"memory": from_memory, "disk": from_disk},
        "hours_per_epoch_one_host_warm": LIMU_BERT_X_WINDOWS / from_memory / 3600,
        "hours_per_epoch_one_host_cold": LIMU_BERT_X_WINDOWS / from_disk / 3600,
        "accelerator_windows_per_s": demand,
        "hosts_warm": {name: math.ceil(rate / from_memory) for name, rate in demand.items()},
        "hosts_cold": {name: math.ceil(rate / from_disk) for name, rate in demand.items()},
    }


def table(results: dict) -> str:
    rows = ["| windows | cores | page cache | stream windows/s | stream per CPU-s | memmap gather per CPU-s | ratio |",
            "|---|---:|---|---:|---:|---:|---:|"]
    for cores in (1, 2):
        for key, r in results["stream"][str(cores)].items():
            rows.append(f"| {r['shape']} | {cores} | {r['cache']} | {r['stream']['per_s']:,.0f} | "
                        f"{r['stream']['per_cpu_s']:,.0f} | {r['gather']['per_cpu_s']:,.0f} | "
                        f"{r['ratio_per_cpu_s']:.2f} |")
    rows += ["", "| build | windows | seconds | windows/s | source rows/s | CSV MB/s | peak RSS (anonymous) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, b in results["build"].items():
        if name.startswith("recordings"):
            what = (f"recordings 120x6, stride {b['stride']}: {b['files']:,} x {b['file_seconds']:g} s of "
                    f"{b['raw_hz']:g} Hz CSV ({b['source_rows']:,} rows, {b['csv_mb']:,.0f} MB)")
            source = f"{b['source_rows_per_s']:,.0f} | {b['csv_mb_per_s']:.1f}"
        else:
            what, source = f"imu_npy {name}", "— | —"
        rows.append(f"| {what} | {b['windows']:,} | {b['seconds']:.1f} | {b['windows_per_s']:,.0f} | {source} | "
                    f"{b['peak_rss_anon_mb']:,.0f} MB |")
    p = results["projection"]
    hosts = ", ".join(f"{name}: {p['hosts_warm'][name]} ({p['hosts_cold'][name]} from disk)"
                      for name in p["hosts_warm"])
    rows += ["", f"LIMU-BERT-X-sized corpus ({p['windows']:.2e} windows of 20 x 6, {p['terabytes']:.1f} TB): "
             f"{p['hours_per_epoch_one_host_warm']:.1f} h per epoch for one 2-core host from memory "
             f"({p['host_windows_per_s']['memory']:,.0f} windows/s), {p['hours_per_epoch_one_host_cold']:.1f} h from "
             f"this disk ({p['host_windows_per_s']['disk']:,.0f} windows/s); hosts to feed {hosts}."]
    return "\n".join(rows)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    labels, stream, gather = [], [], []
    for cores in (1, 2):
        for r in results["stream"][str(cores)].values():
            labels.append(f"{r['shape']}\n{cores} core{'s' * (cores > 1)}\n{r['cache']}")
            stream.append(r["stream"]["per_cpu_s"])
            gather.append(r["gather"]["per_cpu_s"])
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], gather, width=0.4, label="memmap gather", color="tab:gray")
    ax.bar([i + 0.2 for i in x], stream, width=0.4, label="training stream", color="tab:blue")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("windows per CPU-second")
    ax.set_title("training stream vs a random gather from the memory-mapped window store")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=2_000_000,
                        help="windows of 120 x 6 (also the build-rate corpus)")
    parser.add_argument("--short-windows", type=int, default=5_000_000, help="windows of 20 x 6")
    parser.add_argument("--recording-windows", type=int, default=2_000_000,
                        help="at least this many windows of 120 x 6 from the recordings corpus (version 20_120)")
    parser.add_argument("--recording-strides", default="1,6",
                        help="a recordings build for each: steps between window starts (0: the window length, no "
                             "overlap), comma-separated")
    parser.add_argument("--recording-hz", type=float, default=100.0, help="the recordings' raw sampling rate")
    parser.add_argument("--recording-file-seconds", type=float, default=3600.0, help="length of each recording")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--cache-dir", default=None,
                        help="corpora and builds, reused (default /tmp/limubert-input-cache; OUT/cache with --smoke)")
    parser.add_argument("--out", default="/tmp/limubert-input", help="where the JSON, table and PNG go")
    parser.add_argument("--gpu-windows-per-s", type=float, default=H200_WINDOWS_PER_S_120,
                        help="one GPU's pretraining rate on 120-step windows")
    parser.add_argument("--tpu-chip-windows-per-s", type=float, default=H200_WINDOWS_PER_S_120,
                        help="one v5e chip's rate on 120-step windows (default: the H200's, an upper bound)")
    parser.add_argument("--short-window-speedup", type=float, default=SHORT_WINDOW_SPEEDUP,
                        help="accelerator windows/s on 20-step windows over 120-step ones")
    parser.add_argument("--smoke", action="store_true", help="a quick check that the script runs (tiny corpora)")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=list(SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--cores", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stride", type=int, help=argparse.SUPPRESS)
    args = harness.parse_args(parser, argv, dict(windows=3_000, short_windows=20_000, recording_windows=300,
                                                 recording_strides="6", recording_file_seconds=60.0, seconds=0.1))
    if args.cache_dir is None:
        args.cache_dir = str(Path(args.out) / "cache") if args.smoke else "/tmp/limubert-input-cache"
    harness.use_checkout()
    if args.worker:
        harness.emit_result(WORKERS[args.worker](args))
        return
    args.passthrough = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in (*SETTINGS, "cache_dir")]
    usable = len(os.sched_getaffinity(0))
    if usable < 2:
        raise SystemExit(f"this process may use {usable} core; the benchmark measures 1 and 2")
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                           "load_avg_1min_before": os.getloadavg()[0]},
               "settings": {k: getattr(args, k) for k in SETTINGS}}
    results["build"] = {}
    for shape, (seq_len, features, version) in SHAPES.items():
        folder, _ = _corpus(args, shape)
        harness.write_npy_corpus(folder, args.windows if shape == "120x6" else args.short_windows, seq_len, features,
                                 version)
        shutil.rmtree(_corpus(args, shape)[1], ignore_errors=True)  # a rerun builds again: the build is measured
        log(f"build {shape}")
        results["build"][shape] = _worker(args, "build", shape=shape)
    for stride in _strides(args):
        corpus = _recordings(args, stride)
        harness.write_recordings_corpus(corpus["folder"], corpus["files"], args.recording_file_seconds,
                                        args.recording_hz)
        shutil.rmtree(corpus["data_dir"], ignore_errors=True)
        log(f"build recordings, stride {stride} ({corpus['files']} files)")
        results["build"][f"recordings stride {stride}"] = _worker(args, "build_recordings", stride=stride)
        shutil.rmtree(corpus["data_dir"], ignore_errors=True)  # not streamed: its disk space back
    results["stream"] = {str(cores): _worker(args, "stream", cores=cores) for cores in (1, 2)}
    two = results["stream"]["2"]
    cold = [r["stream"]["per_s"] for rows in results["stream"].values() for r in rows.values() if r["cache"] == "cold"]
    disk = min(cold)
    results["projection"] = projection(args, two["20x6 warm"]["stream"]["per_s"], disk)
    text = table(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "input_pipeline.json").write_text(json.dumps(results, indent=2))
    (out / "input_pipeline.md").write_text(text + "\n")
    _plot(results, out / "input_pipeline.png")
    print(text)


if __name__ == "__main__":
    main()
