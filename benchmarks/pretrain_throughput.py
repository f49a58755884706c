"""Pretraining throughput: limubert_jax vs the reference PyTorch training loop, side by side.

    python benchmarks/pretrain_throughput.py --out /tmp/limubert-bench          # both sides
    python benchmarks/pretrain_throughput.py --skip-torch --epochs 3             # JAX only

Both sides train `base_v1` LIMU-BERT with Adam (lr 1e-3) on the same synthetic raw windows
(`limubert_jax.data.synthetic.synthetic_windows`, N = 1,670 like the UCI training split, 120 x 6), on
the same machine, each in its own subprocess, one after the other:

* limubert_jax: `steps.jit_train_step` on a `sharding.make_mesh()` mesh, the optimizer of
  `optim.pretrain_optimizer("adam")` (Adam with the unused head `fc` frozen, as PyTorch skips
  it); normalization and span masking run on device inside the step. Batches come from a
  NumPy feed (a per-epoch permutation of the windows, fed with `sharding.global_batch`) or,
  with `--input grain`, from the project's grain pipeline `input_pipeline.train_batches`.
* PyTorch: `tests/torch_reference.py`'s `LIMUBertModel4Pretrain` (the SPEC-faithful model)
  trained the way the reference code trains it: a `Dataset` that normalizes and span-masks
  every window with NumPy in `__getitem__` (`benchmarks/reference_pipeline.py`), a shuffling
  `DataLoader` (num_workers 0, as the reference), `MSELoss`, `torch.optim.Adam`,
  `loss.item()` every step, `torch.set_num_threads(--torch-threads)`.

Two numbers per side:

* steady state: the train step alone, on one fixed batch already in memory (JAX: the jitted
  step including its on-device masking; PyTorch: forward, backward and optimizer step on a
  batch already masked by the DataLoader): median milliseconds per step -> samples/s.
* end to end: whole epochs (input pipeline + masking + step), `len(windows) // batch`
  batches each (the remainder is dropped on both sides, as the project's pipeline does):
  windows trained per second of wall time, median over epochs. Validation is not included.

Writes `pretrain_throughput.json` and `pretrain_throughput.png` to `--out` and prints a table.
The machine should be otherwise idle: the table records the load average around each side.
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

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "RESULT_JSON "


# ---------------------------------------------------------------------------------------
# Workers (each runs in its own interpreter).


def _windows(args):
    from limubert_jax.data.synthetic import synthetic_windows

    return synthetic_windows(args.num_windows, seed=args.seed)


def _stats(times: list[float], samples_per_item: int) -> dict:
    import numpy as np

    arr = np.asarray(times)
    return {
        "seconds": [float(t) for t in arr],
        "median_s": float(np.median(arr)),
        "min_s": float(arr.min()),
        "samples_per_s_median": float(samples_per_item / np.median(arr)),
        "samples_per_s_best": float(samples_per_item / arr.min()),
    }


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_jax(args) -> dict:
    import jax
    import numpy as np

    from limubert_jax.models.encoder import MODEL_CONFIGS, LimuBertModel4Pretrain
    from limubert_jax.pretraining import optim
    from limubert_jax.pretraining.steps import MaskConfig, TrainState, jit_train_step
    from limubert_jax.runtime import sharding

    raw = _windows(args)
    cfg = MODEL_CONFIGS["base_v1"]
    batch_size = args.batch_size
    mesh = sharding.make_mesh()
    sharding.check_batch_size(batch_size, mesh)
    tx = optim.pretrain_optimizer("adam", learning_rate=args.lr)
    state = TrainState.create(LimuBertModel4Pretrain(cfg).init_params(jax.random.key(args.seed)), tx)
    step = jit_train_step(mesh, model_config=cfg, mask_config=MaskConfig(), tx=tx)
    key = jax.random.key(args.seed)

    fixed = sharding.global_batch(raw[:batch_size], mesh)
    t0 = time.perf_counter()
    state, metrics = step(state, fixed, key)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    _log(f"jax: compiled the train step in {compile_s:.1f} s ({len(jax.devices())} device(s))")
    for _ in range(args.warmup_steps):
        state, metrics = step(state, fixed, key)
    jax.block_until_ready(metrics)

    load_before = os.getloadavg()[0]
    times = []
    for _ in range(args.steady_steps):
        t0 = time.perf_counter()
        state, metrics = step(state, fixed, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    steady = _stats(times, batch_size)
    _log(f"jax: steady state {steady['median_s'] * 1e3:.1f} ms/step")

    steps_per_epoch = len(raw) // batch_size
    if args.input == "grain":
        from types import SimpleNamespace

        from limubert_jax.data import input_pipeline

        source = [{"imu": w} for w in raw]
        data = SimpleNamespace(name="synthetic", version="benchmark",
                               train=input_pipeline.WindowView(source, np.arange(len(raw))))
        stream = input_pipeline.train_batches(data, global_batch_size=batch_size, seed=args.seed)
        next_batch = lambda: next(stream)  # noqa: E731
    else:
        rng = np.random.default_rng(args.seed)
        order = iter(())

        def next_batch():
            nonlocal order
            try:
                return raw[next(order)]
            except StopIteration:
                perm = rng.permutation(len(raw))
                order = iter(perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size))
                return raw[next(order)]

    epoch_times, losses = [], []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        for _ in range(steps_per_epoch):
            state, metrics = step(state, sharding.global_batch(next_batch(), mesh), key)
        losses.append(float(metrics["loss"]))  # waits for the epoch's last step
        epoch_times.append(time.perf_counter() - t0)
        _log(f"jax: epoch {epoch + 1}/{args.epochs}: {epoch_times[-1]:.2f} s, loss {losses[-1]:.4f}")
    e2e = _stats(epoch_times, steps_per_epoch * batch_size)
    return {
        "framework": f"jax {jax.__version__} ({jax.default_backend()}, {len(jax.devices())} device(s))",
        "input": "grain input_pipeline.train_batches" if args.input == "grain" else "numpy permutation feed",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "compile_s": compile_s,
        "steady": steady,
        "end_to_end": e2e,
        "steps_per_epoch": steps_per_epoch,
        "last_losses": losses,
        "load_avg_1min": [load_before, os.getloadavg()[0]],
    }


def run_torch(args) -> dict:
    import numpy as np
    import torch

    # The SPEC-faithful PyTorch model is test code (tests/torch_reference.py), not package code.
    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "tests")]
    from reference_pipeline import PretrainDataset
    from torch_reference import LIMUBertModel4Pretrain

    from limubert_jax.models.encoder import MODEL_CONFIGS

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # the reference masks with NumPy's legacy global generator
    raw = _windows(args)
    cfg = MODEL_CONFIGS["base_v1"]
    batch_size = args.batch_size
    model = LIMUBertModel4Pretrain(cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    criterion = torch.nn.MSELoss(reduction="none")
    loader = torch.utils.data.DataLoader(PretrainDataset(raw, cfg.feature_num), batch_size=batch_size,
                                         shuffle=True, drop_last=True, num_workers=args.torch_workers)

    def train_step(batch) -> float:
        masked, positions, targets = batch
        optimizer.zero_grad()
        loss = criterion(model(masked, positions), targets).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    fixed = next(iter(loader))
    for _ in range(args.warmup_steps + 1):
        train_step(fixed)
    load_before = os.getloadavg()[0]
    times = []
    for _ in range(args.steady_steps):
        t0 = time.perf_counter()
        train_step(fixed)
        times.append(time.perf_counter() - t0)
    steady = _stats(times, batch_size)
    _log(f"torch: steady state {steady['median_s'] * 1e3:.1f} ms/step")

    steps_per_epoch = len(loader)
    epoch_times, losses = [], []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        for batch in loader:
            loss = train_step(batch)
        losses.append(loss)
        epoch_times.append(time.perf_counter() - t0)
        _log(f"torch: epoch {epoch + 1}/{args.epochs}: {epoch_times[-1]:.2f} s, loss {loss:.4f}")
    e2e = _stats(epoch_times, steps_per_epoch * batch_size)
    return {
        "framework": f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "input": f"per-window NumPy masking in a Dataset, DataLoader num_workers={args.torch_workers}",
        "steady": steady,
        "end_to_end": e2e,
        "steps_per_epoch": steps_per_epoch,
        "last_losses": losses,
        "load_avg_1min": [load_before, os.getloadavg()[0]],
    }


# ---------------------------------------------------------------------------------------
# Driver.


def _run_worker(side: str, argv: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, *argv]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the {side} worker failed (exit {proc.returncode}); its output:\n{proc.stdout[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def _table(results: dict, args) -> str:
    jx, th = results.get("jax"), results.get("torch")
    rows = [
        ("steady state: ms / train step (median)", lambda r: f"{r['steady']['median_s'] * 1e3:.1f}", None),
        ("steady state: samples / s", lambda r: f"{r['steady']['samples_per_s_median']:.0f}", "steady"),
        ("end to end: s / epoch (median)", lambda r: f"{r['end_to_end']['median_s']:.2f}", None),
        ("end to end: samples / s", lambda r: f"{r['end_to_end']['samples_per_s_median']:.0f}", "end_to_end"),
    ]
    width = 40
    head = f"{'batch ' + str(args.batch_size) + ', ' + str(args.num_windows) + ' windows':{width}s} {'limubert_jax':>14s}"
    if th:
        head += f" {'torch ref':>12s} {'jax / torch':>12s}"
    lines = [head, "-" * len(head)]
    for name, fmt, key in rows:
        line = f"{name:{width}s} {fmt(jx):>14s}"
        if th:
            line += f" {fmt(th):>12s}"
            if key:
                line += f" {results['ratios'][key]:>11.2f}x"
        lines.append(line)
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [s for s in ("jax", "torch") if s in results]
    labels = {"jax": "limubert_jax", "torch": "PyTorch reference"}
    colors = {"jax": "#1f77b4", "torch": "#ee6a2f"}
    groups = [("steady", "steady state\n(train step only)"), ("end_to_end", "end to end\n(pipeline + masking + step)")]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / len(sides)
    for i, side in enumerate(sides):
        values = [results[side][g]["samples_per_s_median"] for g, _ in groups]
        xs = [j + (i - (len(sides) - 1) / 2) * width for j in range(len(groups))]
        bars = ax.bar(xs, values, width, label=labels[side], color=colors[side])
        ax.bar_label(bars, fmt="%.0f", padding=2)
    ax.set_xticks(range(len(groups)), [label for _, label in groups])
    ax.set_ylabel("pretraining samples / s (higher is better)")
    title = f"LIMU-BERT base_v1 pretraining, batch {results['config']['batch_size']}, {results['environment']['cpu_count']} CPU cores"
    if "ratios" in results:
        title += "\njax / torch: " + ", ".join(
            f"{name.split(chr(10))[0]} {results['ratios'][g]:.2f}x" for g, name in groups)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed end-to-end epochs per side")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON and PNG")
    parser.add_argument("--skip-torch", action="store_true", help="run the limubert_jax side only")
    parser.add_argument("--num-windows", type=int, default=1670, help="synthetic training windows")
    parser.add_argument("--steady-steps", type=int, default=20, help="timed steady-state steps per side")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--input", choices=("numpy", "grain"), default="numpy",
                        help="JAX batches: NumPy permutation feed, or limubert_jax.data.input_pipeline.train_batches")
    parser.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--torch-workers", type=int, default=0, help="DataLoader num_workers (reference: 0)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.steady_steps < 1 or args.batch_size < 1:
        parser.error("--epochs, --steady-steps and --batch-size must be >= 1")
    if args.num_windows < args.batch_size:
        parser.error("--num-windows must be at least --batch-size")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        result = run_jax(args) if args.worker == "jax" else run_torch(args)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    worker_argv = [a for a in argv if a != "--skip-torch"]
    results: dict = {
        "config": {k: v for k, v in vars(args).items() if k != "worker"} | {"model": "base_v1", "optimizer": "adam"},
        "environment": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_1min_at_start": os.getloadavg()[0],
        },
    }
    _log(f"running the limubert_jax side (load average {os.getloadavg()[0]:.1f})")
    results["jax"] = _run_worker("jax", worker_argv)
    if not args.skip_torch:
        _log(f"running the PyTorch side (load average {os.getloadavg()[0]:.1f})")
        results["torch"] = _run_worker("torch", worker_argv)
        results["ratios"] = {
            key: results["jax"][key]["samples_per_s_median"] / results["torch"][key]["samples_per_s_median"]
            for key in ("steady", "end_to_end")
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrain_throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(results, out / "pretrain_throughput.png")
    print(_table(results, args))
    # The benchmark itself keeps every core busy (load ~ cpu_count); more means other work.
    cores = os.cpu_count() or 1
    peak = max([results["environment"]["load_avg_1min_at_start"] + cores]
               + [x for s in ("jax", "torch") if s in results for x in results[s]["load_avg_1min"]])
    if results["environment"]["load_avg_1min_at_start"] > 0.5 * cores or peak > 1.5 * cores:
        print(f"warning: the machine was busy (1-minute load average {results['environment']['load_avg_1min_at_start']:.1f} "
              f"at the start, up to {peak:.1f} during the run, on {cores} cores): the numbers are unreliable; "
              "rerun on an otherwise idle machine")
    print(f"wrote {out / 'pretrain_throughput.json'} and {out / 'pretrain_throughput.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
