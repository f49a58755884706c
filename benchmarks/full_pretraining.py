"""Samples/s and the time of the paper's full pretraining run (3,200 epochs x 7,333 HHAR-sized
windows, batch 128, base_v1, BertAdam) under each of the job's execution modes.

    python benchmarks/full_pretraining.py --out /tmp/full                       # every mode, 3 timed epochs
    python benchmarks/full_pretraining.py --out /tmp/full --full-run resident   # ... then the whole run
    python benchmarks/full_pretraining.py --out /tmp/cpu --windows 1670 --epochs 1 --modes step,resident
    python benchmarks/full_pretraining.py --out /tmp/full-smoke --smoke          # does it run? (seconds)

Modes, each from fresh parameters on the same `demo.synthetic_windows` (no validation pass):

* step: the default job, the host feeds one batch per compiled call (a NumPy permutation per
  epoch, `sharding.global_batch`, `steps.jit_train_step`).
* dispatch: the host feeds `--steps-per-dispatch` batches per call (`jit_train_steps`).
* resident: the windows live on the device; each epoch, shuffle and masking included, is one
  call (`jit_resident_epoch`, config `train.device_resident`).
* resident_bf16: the same with bfloat16 compute (config `train.compute_dtype`).

Every JAX mode's train step computes its matmuls at `--matmul-precision` (config
`train.matmul_precision`; the README's H200 table was measured at `default`, TF32).
* torch: the reference PyTorch loop on the same device (`torch_reference`, a DataLoader that
  normalizes and masks each window with NumPy, num_workers 0), when torch is importable.

Per mode: the first epoch (compilation included) and `--epochs` timed epochs; samples/s from
the median epoch; the full run projected as compile + 3,200 x median epoch. `--full-run MODE`
(or `fastest`) then continues MODE to `--full-epochs` epochs, if projected under
`--max-full-seconds`, and reports the measured wall time. Writes
`full_pretraining.json` and `full_pretraining.png` to `--out` and prints a table. `--smoke`
checks that the script runs: every mode on the benchmarks' smoke model (`harness.SMOKE_MODEL`),
64 windows of batch 16, one timed epoch, then a 3-epoch full run; never a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import harness
from harness import log

PAPER_EPOCHS = 3200
MODES = ("step", "dispatch", "resident", "resident_bf16", "torch")


def _model_config(args):
    from limubert_jax.models.encoder import MODEL_CONFIGS, LimuBertConfig

    return LimuBertConfig(**harness.SMOKE_MODEL) if args.smoke else MODEL_CONFIGS["base_v1"]


def _jax_epoch_fn(mode: str, args, windows: np.ndarray):
    """(run_epoch(epoch) -> last loss, steps per epoch) for a JAX mode, from fresh parameters."""
    import jax
    import jax.numpy as jnp

    from limubert_jax.models.encoder import LimuBertModel4Pretrain
    from limubert_jax.pretraining import optim
    from limubert_jax.pretraining.steps import (
        MaskConfig,
        TrainState,
        jit_resident_epoch,
        jit_train_step,
        jit_train_steps,
    )
    from limubert_jax.runtime import sharding

    cfg = _model_config(args)
    batch = args.batch_size
    steps = len(windows) // batch
    mesh = sharding.make_mesh()
    tx = optim.pretrain_optimizer("bert_adam", learning_rate=1e-3, total_steps=steps * PAPER_EPOCHS, warmup=0.1)
    state = jax.device_put(TrainState.create(LimuBertModel4Pretrain(cfg).init_params(jax.random.key(0)), tx),
                           sharding.replicated(mesh))
    kwargs = dict(model_config=cfg, mask_config=MaskConfig(), tx=tx, matmul_precision=args.matmul_precision,
                  compute_dtype=jnp.bfloat16 if mode.endswith("bf16") else jnp.float32)
    rng, shuffle = jax.random.key(1), np.random.default_rng(0)
    holder = {"state": state}

    if mode.startswith("resident"):
        epoch_fn = jit_resident_epoch(mesh, steps=steps, batch_size=batch, **kwargs)
        resident = jax.device_put(windows, sharding.replicated(mesh))

        def run_epoch(epoch):
            holder["state"], metrics = epoch_fn(holder["state"], resident, jax.random.key(epoch), rng)
            return float(metrics["loss"][-1])  # waits for the epoch

        return run_epoch, steps

    per_call = 1 if mode == "step" else args.steps_per_dispatch
    step_fn = jit_train_step(mesh, **kwargs) if per_call == 1 else jit_train_steps(mesh, **kwargs)

    def run_epoch(epoch):
        order = shuffle.permutation(len(windows))[: steps * batch].reshape(steps, batch)
        loss = None
        for start in range(0, steps, per_call):
            rows = order[start : start + per_call]
            if per_call == 1:
                holder["state"], metrics = step_fn(holder["state"], sharding.global_batch(windows[rows[0]], mesh), rng)
            else:
                stacked = sharding.global_batch(windows[rows], mesh, stacked=True)
                holder["state"], metrics = step_fn(holder["state"], stacked, rng)
            loss = metrics["loss"]
        return float(jnp.ravel(loss)[-1])

    return run_epoch, steps


def _torch_epoch_fn(args, windows: np.ndarray):
    import torch

    from reference_pipeline import reference_training, train_step

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    np.random.seed(0)  # the reference masks with NumPy's legacy global generator
    cfg = _model_config(args)
    model, optimizer, criterion, loader = reference_training(cfg, windows, batch_size=args.batch_size,
                                                             device=device)

    def run_epoch(epoch):
        loss = None
        for batch in loader:
            loss = train_step(model, optimizer, criterion, batch, device)
        return float(loss.item())

    return run_epoch, len(loader), f"torch {torch.__version__} on {device}"


def measure(mode: str, args, windows: np.ndarray) -> dict:
    if mode == "torch":
        run_epoch, steps, framework = _torch_epoch_fn(args, windows)
    else:
        import jax

        run_epoch, steps = _jax_epoch_fn(mode, args, windows)
        framework = f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{len(jax.devices())}"
    t0 = time.perf_counter()
    first_loss = run_epoch(0)
    first = time.perf_counter() - t0
    times, losses = [], [first_loss]
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses.append(run_epoch(epoch))
        times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    samples = steps * args.batch_size
    result = {
        "mode": mode, "framework": framework, "steps_per_epoch": steps, "first_epoch_s": first,
        "epoch_s": times, "median_epoch_s": median, "samples_per_s": samples / median,
        "ms_per_step": 1e3 * median / steps, "compile_s": max(0.0, first - median),
        "projected_full_s": max(0.0, first - median) + PAPER_EPOCHS * median, "losses": losses,
        # The process's peaks so far: the modes run one after another.
        **harness.peak_memory(jax_device=mode != "torch"),
    }
    if mode == "torch":
        import torch

        result["peak_device_bytes"] = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    log(f"{mode}: {result['samples_per_s']:.0f} samples/s, {result['ms_per_step']:.2f} ms/step, "
        f"first epoch {first:.1f} s; full run ~{result['projected_full_s'] / 60:.1f} min ({framework})")
    return result, run_epoch


def full_run(result: dict, run_epoch, args) -> None:
    """Continues a measured mode to `--full-epochs` epochs; its timed epochs count in."""
    t0 = time.perf_counter()
    loss = result["losses"][-1]
    for epoch in range(args.epochs + 1, args.full_epochs):
        loss = run_epoch(epoch)
        if epoch % 200 == 0:
            elapsed = time.perf_counter() - t0
            rate = (epoch - args.epochs) / elapsed
            log(f"{result['mode']}: epoch {epoch}/{args.full_epochs}, {rate:.1f} epochs/s, "
                f"ETA {(args.full_epochs - epoch) / rate:.0f} s, loss {loss:.4f}")
    seconds = result["first_epoch_s"] + sum(result["epoch_s"]) + time.perf_counter() - t0
    result["full_run"] = {"epochs": args.full_epochs, "seconds": seconds, "last_loss": loss}
    log(f"{result['mode']}: the full run of {args.full_epochs} epochs took {seconds:.1f} s")


def _table(results: list[dict], args) -> str:
    torch_rate = next((r["samples_per_s"] for r in results if r["mode"] == "torch"), None)
    model = "the smoke model" if args.smoke else "base_v1"
    lines = [f"{args.windows} windows x {PAPER_EPOCHS} epochs, batch {args.batch_size} ({model}, BertAdam)", "",
             "| mode | samples/s | ms/step | first epoch s | full run (projected) | measured full run | vs torch "
             "| peak RSS MB | peak device MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        full = r.get("full_run")
        measured = f"{full['seconds']:.0f} s ({full['epochs']} epochs)" if full else "-"
        ratio = f"{r['samples_per_s'] / torch_rate:.1f}x" if torch_rate else "-"
        device_mb = "-" if r.get("peak_device_bytes") is None else f"{r['peak_device_bytes'] / 2**20:.0f}"
        lines.append(f"| {r['mode']} | {r['samples_per_s']:.0f} | {r['ms_per_step']:.2f} | {r['first_epoch_s']:.1f} | "
                     f"{r['projected_full_s'] / 60:.1f} min | {measured} | {ratio} | {r['peak_rss_mb']:.0f} "
                     f"| {device_mb} |")
    lines.append("")
    lines.append("peak RSS and JAX device memory are the process's peaks up to the end of each mode (the modes run "
                 "in this order in one process); PyTorch's device memory is its own peak (max_memory_allocated)")
    return "\n".join(lines)


def _plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [r["mode"] for r in results]
    ax.barh(names, [r["projected_full_s"] / 60 for r in results], color="tab:blue")
    ax.set_xlabel(f"minutes for {PAPER_EPOCHS} epochs (projected)")
    ax.set_title(title, fontsize=9)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and PNG")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--windows", type=int, default=7333, help="training windows (HHAR's split: 7,333)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per mode, after the first")
    parser.add_argument("--steps-per-dispatch", type=int, default=16, help="the dispatch mode's steps per call")
    parser.add_argument("--full-run", default="", help="a JAX mode (or 'fastest') to continue to --full-epochs epochs")
    parser.add_argument("--full-epochs", type=int, default=PAPER_EPOCHS)
    parser.add_argument("--max-full-seconds", type=float, default=300.0,
                        help="skip a full run projected longer (no limit with --smoke)")
    parser.add_argument("--matmul-precision", default="highest",
                        help="the JAX modes' config.train.matmul_precision: highest (the job's default), high, default")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick check that the script runs: the smoke model, 64 windows, 1 timed epoch per mode, "
                             "a 3-epoch full run of the fastest")
    args = harness.parse_args(parser, argv, dict(
        windows=harness.SMOKE_WINDOWS, batch_size=harness.SMOKE_BATCH, epochs=1, steps_per_dispatch=2,
        full_run="fastest", full_epochs=3, max_full_seconds=float("inf")))
    if min(args.windows, args.batch_size, args.epochs, args.steps_per_dispatch) < 1 or args.windows < args.batch_size:
        parser.error("--windows, --batch-size, --epochs and --steps-per-dispatch must be >= 1, "
                     "and --windows at least --batch-size")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(unknown)}; modes: {', '.join(MODES)}")
    from limubert_jax.data.synthetic import synthetic_windows

    windows = synthetic_windows(args.windows, seed=0).astype(np.float32)
    results, runners = [], {}
    for mode in modes:
        if mode == "torch":
            try:
                import torch  # noqa: F401
            except ImportError:
                log("torch: not installed, skipped")
                continue
        result, run_epoch = measure(mode, args, windows)
        results.append(result)
        runners[mode] = run_epoch
        _write(args, results)  # after every mode: a run cut short keeps what it measured
    if args.full_run:
        jax_results = [r for r in results if r["mode"] != "torch"]
        chosen = (min(jax_results, key=lambda r: r["projected_full_s"]) if args.full_run == "fastest"
                  else next(r for r in jax_results if r["mode"] == args.full_run))
        if chosen["projected_full_s"] <= args.max_full_seconds:
            full_run(chosen, runners[chosen["mode"]], args)
        else:
            log(f"full run skipped: {chosen['mode']} would take ~{chosen['projected_full_s']:.0f} s "
                f"(> --max-full-seconds {args.max_full_seconds:.0f})")
    _write(args, results)
    print(_table(results, args))
    _plot(results, args.out / "full_pretraining.png", results[0]["framework"] if results else "")
    return 0


def _write(args, results: list[dict]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.node(), "python": platform.python_version(), "load_avg_1min": os.getloadavg()[0],
            "args": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "full_pretraining.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
