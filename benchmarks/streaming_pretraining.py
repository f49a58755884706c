"""Pretraining on a corpus larger than what the process holds: streaming vs in-memory windows.

    python benchmarks/streaming_pretraining.py --out /tmp/limubert-streaming                 # 2,000,000 windows
    python benchmarks/streaming_pretraining.py --windows 20000 --steps 20 --out /tmp/look  # a quick look
    python benchmarks/streaming_pretraining.py --smoke --out /tmp/limubert-streaming-smoke  # does it run?

The corpus is `--windows` synthetic windows of 120 x 6 float32 (2,000,000: 5.8 GB), written
chunk by chunk as `data_20_120.npy` (unlabelled windows, the `imu_npy` layout) and built into
TFDS array_record by the project's own path, `loading.load_pretrain_data` (the imu_npy
builder reads the .npy memory-mapped). Both are kept in `--cache-dir`, so a rerun goes straight
to the measurements. Each phase runs in its own interpreter, which reports its peak resident
memory: anonymous (RssAnon, sampled every 0.1 s: what the process itself holds) and in all
(VmHWM, which also counts the file pages it maps, e.g. the .npy the build reads
memory-mapped: page cache that the kernel reclaims under pressure), and the training phases
their JAX device's peak memory (`peak_bytes_in_use`; not on CPU, which keeps no statistics):

* build: preparing the array_record build from the .npy (windows/s, wall time, peak memory);
* streaming: `base_v1` pretraining steps (Adam, batch `--batch-size`, the jitted
  `steps.jit_train_step` with on-device masking, the CPU default encoder chunking) fed by
  `input_pipeline.train_batches` (the training stream: blocks of batches gathered from the
  build's window store by background threads) over the reference training split of the whole build;
* in memory: the same steps fed by the same `train_batches`, over the first
  `--in-memory-windows` windows loaded into a NumPy array in RAM (what a dataset small enough
  to hold would give; the step does not depend on the corpus size).

Throughput is windows trained per second, median over blocks of `--block` steps after
`--warmup` steps; the ratio streaming / in-memory is the figure to watch (>= 0.9 wanted). Peak
anonymous memory of the streaming phase against the corpus bytes shows that the corpus is never held; with
`--scaling` a second streaming run over a 10x smaller build shows that it does not grow
with the corpus. The page cache is not process memory: with `--drop-caches` (root) the kernel
drops it before each phase, so the streaming reads come from the disk.

Writes `streaming_pretraining.json` and `streaming_pretraining.png` to `--out` and prints a table.
`--smoke` checks that the script runs: 2,000 windows, the benchmarks' smoke model
(`harness.SMOKE_MODEL`) at batch 16, 4 measured steps, the corpus under `--out`; never a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness import log
SEQ_LEN, FEATURES = 120, 6
VERSION = "20_120"


def _corpus_dir(args, windows: int) -> Path:
    return Path(args.cache_dir) / f"npy_{windows}"


def _dataset_config(args, windows: int) -> dict:
    return {"name": "imu_npy", "version": VERSION, "manual_dir": str(_corpus_dir(args, windows)),
            "data_dir": str(Path(args.cache_dir) / f"tfds_{windows}")}


def generate(args, windows: int) -> Path:
    """data_20_120.npy of `windows` windows (`harness.write_npy_corpus`), kept in the cache."""
    return harness.write_npy_corpus(_corpus_dir(args, windows), windows, SEQ_LEN, FEATURES, VERSION, args.seed)


# ---------------------------------------------------------------------------------------
# Phases (each in its own interpreter).


def phase_build(args) -> dict:
    from limubert_jax.data import loading

    peaks = harness.MemoryPeaks()
    t0 = time.perf_counter()
    data = loading.load_pretrain_data(_dataset_config(args, args.phase_windows))
    seconds = time.perf_counter() - t0
    return {"windows": data.num_windows, "seconds": seconds, "windows_per_s": data.num_windows / seconds,
            **peaks.read()}


class _ArraySource:
    """Windows in RAM with the data-source interface `WindowView` reads."""

    def __init__(self, windows):
        self.windows = windows

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        return {"imu": self.windows[i]}

    def __getitems__(self, keys):
        return [{"imu": self.windows[k]} for k in keys]


def phase_train(args) -> dict:
    import dataclasses

    import jax
    import numpy as np

    from limubert_jax.data import input_pipeline, loading, splits
    from limubert_jax.models.encoder import MODEL_CONFIGS, LimuBertConfig, LimuBertModel4Pretrain
    from limubert_jax.pretraining import optim
    from limubert_jax.pretraining.steps import MaskConfig, TrainState, jit_train_step
    from limubert_jax.runtime import sharding

    peaks = harness.MemoryPeaks()
    data = loading.load_pretrain_data(_dataset_config(args, args.phase_windows))
    if args.phase == "memory":  # the first windows, read into RAM, split like the whole
        n = min(args.in_memory_windows, data.num_windows)
        source = data.train.source
        windows = np.concatenate([np.stack([np.asarray(r["imu"], np.float32) for r in
                                            source.__getitems__(list(range(s, min(s + 4096, n))))])
                                  for s in range(0, n, 4096)])
        train, vali, _ = splits.pretrain_split(n)
        ram = _ArraySource(windows)
        data = dataclasses.replace(data, train=loading.WindowView(ram, train),
                                   vali=loading.WindowView(ram, vali), num_windows=n)
    rss_before_training = peaks.read()["peak_rss_anon_mb"]
    cfg = LimuBertConfig(**harness.SMOKE_MODEL) if args.smoke else MODEL_CONFIGS["base_v1"]
    mesh = sharding.make_mesh()
    tx = optim.pretrain_optimizer("adam", learning_rate=1e-3)
    state = TrainState.create(LimuBertModel4Pretrain(cfg).init_params(jax.random.key(0)), tx)
    step = jit_train_step(mesh, model_config=cfg, mask_config=MaskConfig(), tx=tx, encoder_chunk=16)
    stream = input_pipeline.train_batches(data, global_batch_size=args.batch_size, seed=args.seed)
    key = jax.random.key(args.seed)

    def run(steps: int) -> float:
        nonlocal state
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, sharding.global_batch(next(stream), mesh), key)
        jax.block_until_ready(metrics)
        return time.perf_counter() - t0

    run(args.warmup)
    load_before = os.getloadavg()[0]
    blocks = []
    for b in range(args.steps // args.block):
        blocks.append(run(args.block))
        log(f"{args.phase}: block {b + 1}/{args.steps // args.block}: {args.block * args.batch_size / blocks[-1]:.1f} "
            f"windows/s, peak RSS {peaks.read()['peak_rss_anon_mb']:,.0f} MB anonymous")
    rates = args.block * args.batch_size / np.asarray(blocks)
    return {"windows": data.num_windows, "train_windows": len(data.train), "block_seconds": blocks,
            "windows_per_s_median": float(np.median(rates)), "windows_per_s_blocks": rates.tolist(),
            "peak_rss_anon_mb_before_training": rss_before_training, **peaks.read(),
            "peak_device_bytes": harness.peak_device_bytes(),
            "load_avg_1min": [load_before, os.getloadavg()[0]], "jax": jax.__version__}


def _run_phase(args, phase: str, windows: int) -> dict:
    if args.drop_caches:
        subprocess.run(["sync"], check=False)
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError as e:
            log(f"could not drop the page cache ({e}); reads may come from memory")
    cmd = [sys.executable, __file__, "--phase", phase, "--phase-windows", str(windows)] + args.passthrough
    log(f"{phase} ({windows:,} windows): {' '.join(cmd[1:])}")
    return harness.run_worker(cmd, f"phase {phase}")


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["in memory", "streaming"]
    rates = [results["memory"]["windows_per_s_median"], results["streaming"]["windows_per_s_median"]]
    ax1.bar(names, rates, color=["tab:gray", "tab:blue"])
    ax1.set_ylabel("windows / s (median)")
    ax1.set_title(f"pretraining throughput, ratio {rates[1] / rates[0]:.3f}")
    key = "peak_rss_anon_mb"
    bars = {"corpus on disk": results["corpus_gb"] * 1024, "build": results["build"][key],
            "in memory": results["memory"][key], "streaming": results["streaming"][key]}
    if "streaming_small" in results:
        bars["streaming, 1/10 corpus"] = results["streaming_small"][key]
    ax2.bar(list(bars), list(bars.values()), color=["tab:red"] + ["tab:blue"] * (len(bars) - 1))
    ax2.set_ylabel("MB")
    ax2.set_title("peak anonymous resident memory per phase vs corpus size")
    ax2.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=2_000_000, help="corpus size (windows of 120 x 6 float32)")
    parser.add_argument("--cache-dir", default=None,
                        help="corpus and builds, reused "
                             "(default /tmp/limubert-streaming-cache; OUT/cache with --smoke)")
    parser.add_argument("--out", default="/tmp/limubert-streaming", help="where the JSON and PNG go")
    parser.add_argument("--steps", type=int, default=240, help="measured train steps per phase")
    parser.add_argument("--block", type=int, default=20, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=10, help="steps before timing (compilation included)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--in-memory-windows", type=int, default=100_000, help="windows the in-memory phase holds")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick check that the script runs: 2,000 windows, the smoke model, 4 steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scaling", action="store_true", help="also stream a 10x smaller corpus (peak RSS vs size)")
    parser.add_argument("--drop-caches", action="store_true", help="drop the page cache before each phase (root)")
    parser.add_argument("--phase", choices=["build", "streaming", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--phase-windows", type=int, help=argparse.SUPPRESS)
    args = harness.parse_args(parser, None, dict(windows=2000, steps=4, block=2, warmup=1,
                                                 batch_size=harness.SMOKE_BATCH, in_memory_windows=1000))
    if args.cache_dir is None:  # a smoke run keeps its corpus with its results
        args.cache_dir = str(Path(args.out) / "cache") if args.smoke else "/tmp/limubert-streaming-cache"
    if args.phase:
        result = phase_build(args) if args.phase == "build" else phase_train(args)
        harness.emit_result(result)
        return
    args.passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in (
        ("cache_dir", args.cache_dir), ("steps", args.steps), ("block", args.block), ("warmup", args.warmup),
        ("batch_size", args.batch_size), ("in_memory_windows", args.in_memory_windows), ("seed", args.seed))]
    args.passthrough += ["--smoke"] if args.smoke else []
    if args.steps < args.block:
        raise SystemExit("--steps must be at least --block")

    sizes = [args.windows] + ([args.windows // 10] if args.scaling else [])
    for windows in sizes:
        generate(args, windows)
    corpus_bytes = args.windows * SEQ_LEN * FEATURES * 4
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    results = {"machine": machine,
               "windows": args.windows, "corpus_gb": corpus_bytes / 2**30, "batch_size": args.batch_size,
               "drop_caches": args.drop_caches}
    results["build"] = _run_phase(args, "build", args.windows)
    results["memory"] = _run_phase(args, "memory", args.windows)
    results["streaming"] = _run_phase(args, "streaming", args.windows)
    if args.scaling:
        _run_phase(args, "build", args.windows // 10)
        results["streaming_small"] = _run_phase(args, "streaming", args.windows // 10)
    ratio = results["streaming"]["windows_per_s_median"] / results["memory"]["windows_per_s_median"]
    results["streaming_over_memory"] = ratio

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "streaming_pretraining.json").write_text(json.dumps(results, indent=2))
    _plot(results, out / "streaming_pretraining.png")
    b, m, s = results["build"], results["memory"], results["streaming"]
    print(f"corpus: {args.windows:,} windows, {results['corpus_gb']:.2f} GB ({os.cpu_count()} CPUs, jax {s['jax']})")
    def mem(r):
        device = r.get("peak_device_bytes")
        return (f"peak RSS {r['peak_rss_anon_mb']:6,.0f} MB anonymous, {r['peak_rss_mb']:6,.0f} MB with mapped files"
                + ("" if device is None else f", device {device / 2**20:,.0f} MB"))

    print(f"build:      {b['seconds']:8.1f} s, {b['windows_per_s']:8,.0f} windows/s    {mem(b)}")
    print(f"in memory:  {m['windows_per_s_median']:8.1f} windows/s ({m['windows']:,} windows in RAM)    {mem(m)}")
    print(f"streaming:  {s['windows_per_s_median']:8.1f} windows/s ({s['train_windows']:,} training windows)    "
          f"{mem(s)}")
    if args.scaling:
        print(f"streaming, {args.windows // 10:,} windows: {mem(results['streaming_small'])}")
    print(f"streaming / in memory: {ratio:.3f}; results in {out}")


if __name__ == "__main__":
    main()
