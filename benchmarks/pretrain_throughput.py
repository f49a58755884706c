"""Pretraining speed: limubert_jax vs the reference PyTorch job, the whole job and the train step.

    python benchmarks/pretrain_throughput.py --out /tmp/limubert-bench          # everything, both sides
    python benchmarks/pretrain_throughput.py --whole-job-only --out DIR          # the whole job only
    python benchmarks/pretrain_throughput.py --skip-whole-job --epochs 3         # step and loop only
    python benchmarks/pretrain_throughput.py --skip-torch                        # limubert_jax only
    python benchmarks/pretrain_throughput.py --smoke --out /tmp/throughput-smoke # does it run? (seconds)

Both sides train LIMU-BERT `base_v1` with Adam (lr 1e-3) on the same synthetic raw windows
(`limubert_jax.data.synthetic.synthetic_windows`), on the same machine, one process at a time.

1. The whole job (the goal's measure: the reference's loop per epoch over limubert_jax's, 2.0x
   wanted at batch 128 and 1.5x at batch 32). A UCI-sized dataset (`--whole-job-windows`,
   2,088 windows of 120 x 6: 1,670 train / 208 validation) is written as `data_20_120.npy`
   with a zero `label_20_120.npy`, and each side's command runs on it as a whole process,
   timed by this driver from launch to exit (wall clock):
   * reference: `benchmarks/reference_pretrain.py`, the original `pretrain.py` job written
     from docs/reference.md: the 80/10/10 split, a `Dataset` that normalizes and span-masks each window
     with NumPy, a shuffling `DataLoader` (num_workers 0), `torch.optim.Adam`, `loss.item()`
     every step, validation through the same masking `Dataset` after every epoch and
     `torch.save` of the best model (with `--drop-last`: both sides train
     `1670 // batch * batch` windows an epoch);
   * limubert_jax: `python -m limubert_jax.main --config=configs/npy.py` on the same files
     (built into TFDS once, untimed, before any timed run), validation and a checkpoint every
     epoch as by default, `--config.optimizer.name=adam` (`--jax-optimizer`: the reference's
     optimizer; BertAdam's schedule puts the run length into the compiled step).
   Per batch size (`--whole-job-batch-sizes`, default 128,32) each side runs at two lengths
   (`--whole-job-epochs`, default 2,6), interleaved (reference short, jax short, reference
   long, jax long; `--whole-job-repeats` times, the median wall time per length counts), and
   seconds per epoch = (T_long - T_short) / (E_long - E_short), so that what a run pays once
   cancels; startup = T_short - E_short x seconds per epoch. Ratio = reference seconds per
   epoch / limubert_jax seconds per epoch. limubert_jax's commands use their persistent XLA
   cache (`LIMUBERT_XLA_CACHE`, a fresh folder per batch size; `JAX_COMPILATION_CACHE_DIR`
   removed): a first, untimed run at the short length fills it (its startup is reported as
   the first run's, cold cache) and the timed runs load from it, as a rerun of the same
   command does. Also reported: time to first step (the job's `summary.json` `startup_s`),
   peak resident memory of each process (`os.wait4`'s `ru_maxrss`) and peak device memory
   (`summary.json` `peak_device_bytes`; the reference's `torch.cuda.max_memory_allocated`).
2. The train step and loop, in-process (each side in its own worker interpreter,
   `--num-windows` 1,670 windows, `--batch-size`):
   * limubert_jax: `steps.jit_train_step` on `sharding.training_mesh`'s mesh, the cores split
     into CPU devices as the main job splits them (`runtime.cpu_devices`), the optimizer of
     `optim.pretrain_optimizer("adam")` (Adam with the unused head `fc` frozen, as PyTorch
     skips it); normalization and span masking run on device inside the step. Batches come
     from a NumPy feed (a per-epoch permutation of the windows, `sharding.global_batch`) or,
     with `--input grain`, from the project's grain pipeline `input_pipeline.train_batches`.
   * PyTorch: `tests/torch_reference.py`'s `LIMUBertModel4Pretrain` trained as the reference
     trains it (`benchmarks/reference_pipeline.py`'s per-window NumPy masking `Dataset`, a
     shuffling `DataLoader` (num_workers 0), `MSELoss`, `torch.optim.Adam`, `loss.item()`
     every step, `torch.set_num_threads(--torch-threads)`).
   steady state: the train step alone on one fixed batch in memory, median ms per step ->
   samples/s; end to end: whole epochs (input pipeline + masking + step, `len // batch`
   batches, no validation), windows per second of wall time, median over epochs. Each
   worker also reports its peak RSS and its JAX device's `peak_bytes_in_use` (None on CPU).

Writes `pretrain_throughput.json` and `pretrain_throughput.png` (a panel per measurement) to
`--out` and prints a table per measurement and batch size, then the line
`whole job, batch 128: X.XXx (goal 2.0x); batch 32: Y.YYx (goal 1.5x)`. The machine should
be otherwise idle: the load average is recorded around every run, and a busy machine is
warned about.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import REPO, log



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


def _step_loop_model(args):
    """The step and loop measurement's model: base_v1, or the smoke model."""
    from limubert_jax.models.encoder import MODEL_CONFIGS, LimuBertConfig

    return LimuBertConfig(**harness.SMOKE_MODEL) if args.smoke else MODEL_CONFIGS["base_v1"]


def run_jax(args) -> dict:
    import jax
    import numpy as np

    from limubert_jax.models.encoder import LimuBertModel4Pretrain
    from limubert_jax.pretraining import optim
    from limubert_jax.pretraining.steps import MaskConfig, TrainState, jit_train_step
    from limubert_jax.runtime import cpu_devices, sharding

    cpu_devices.split_cores()  # as the main job does, before JAX starts
    raw = _windows(args)
    cfg = _step_loop_model(args)
    batch_size = args.batch_size
    mesh = sharding.training_mesh(batch_size)
    tx = optim.pretrain_optimizer("adam", learning_rate=args.lr)
    state = TrainState.create(LimuBertModel4Pretrain(cfg).init_params(jax.random.key(args.seed)), tx)
    step = jit_train_step(mesh, model_config=cfg, mask_config=MaskConfig(), tx=tx)
    key = jax.random.key(args.seed)

    fixed = sharding.global_batch(raw[:batch_size], mesh)
    t0 = time.perf_counter()
    state, metrics = step(state, fixed, key)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    log(f"jax: compiled the train step in {compile_s:.1f} s ({mesh.devices.size} device(s))")
    for _ in range(args.warmup_steps):
        state, metrics = step(state, fixed, key)
    jax.block_until_ready(metrics)

    def fixed_step():
        nonlocal state
        state, metrics = step(state, fixed, key)
        jax.block_until_ready(metrics)

    load_before = os.getloadavg()[0]
    steady = _stats(harness.call_seconds(fixed_step, args.steady_steps), batch_size)
    log(f"jax: steady state {steady['median_s'] * 1e3:.1f} ms/step")

    steps_per_epoch = len(raw) // batch_size
    if args.input == "grain":
        from types import SimpleNamespace

        from limubert_jax.data import input_pipeline, loading

        source = [{"imu": w} for w in raw]
        data = SimpleNamespace(name="synthetic", version="benchmark",
                               train=loading.WindowView(source, np.arange(len(raw))))
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
        log(f"jax: epoch {epoch + 1}/{args.epochs}: {epoch_times[-1]:.2f} s, loss {losses[-1]:.4f}")
    e2e = _stats(epoch_times, steps_per_epoch * batch_size)
    return {
        "framework": f"jax {jax.__version__} ({jax.default_backend()}, {mesh.devices.size} device(s))",
        "input": "grain input_pipeline.train_batches" if args.input == "grain" else "numpy permutation feed",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "compile_s": compile_s,
        "steady": steady,
        "end_to_end": e2e,
        "steps_per_epoch": steps_per_epoch,
        "last_losses": losses,
        "load_avg_1min": [load_before, os.getloadavg()[0]],
        **harness.peak_memory(),
    }


def run_torch(args) -> dict:
    import numpy as np
    import torch

    from reference_pipeline import reference_training
    from reference_pipeline import train_step as reference_step

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # the reference masks with NumPy's legacy global generator
    raw = _windows(args)
    cfg = _step_loop_model(args)
    batch_size = args.batch_size
    model, optimizer, criterion, loader = reference_training(cfg, raw, batch_size=batch_size, lr=args.lr,
                                                             num_workers=args.torch_workers)

    def train_step(batch) -> float:
        return reference_step(model, optimizer, criterion, batch).item()

    fixed = next(iter(loader))
    for _ in range(args.warmup_steps + 1):
        train_step(fixed)
    load_before = os.getloadavg()[0]
    steady = _stats(harness.call_seconds(lambda: train_step(fixed), args.steady_steps), batch_size)
    log(f"torch: steady state {steady['median_s'] * 1e3:.1f} ms/step")

    steps_per_epoch = len(loader)
    epoch_times, losses = [], []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        for batch in loader:
            loss = train_step(batch)
        losses.append(loss)
        epoch_times.append(time.perf_counter() - t0)
        log(f"torch: epoch {epoch + 1}/{args.epochs}: {epoch_times[-1]:.2f} s, loss {loss:.4f}")
    e2e = _stats(epoch_times, steps_per_epoch * batch_size)
    return {
        "framework": f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "input": f"per-window NumPy masking in a Dataset, DataLoader num_workers={args.torch_workers}",
        "steady": steady,
        "end_to_end": e2e,
        "steps_per_epoch": steps_per_epoch,
        "last_losses": losses,
        "load_avg_1min": [load_before, os.getloadavg()[0]],
        # No device peak: this loop runs on the CPU (torch.cuda.max_memory_allocated otherwise).
        **harness.peak_memory(jax_device=False),
    }


# ---------------------------------------------------------------------------------------
# The whole job: each side's command run as a process, timed from launch to exit.

WHOLE_JOB_VERSION = "20_120"  # the files' version: data_20_120.npy / label_20_120.npy, 120 x 6
GOALS = {128: 2.0, 32: 1.5}  # the issue's: reference seconds per epoch / limubert_jax seconds per epoch
# `--model tiny`, for quick checks of the benchmark itself: the tests' model (tests/configs/test.py).
TINY_JAX_FLAGS = ("--config.model.hidden=24", "--config.model.hidden_ff=48", "--config.model.n_layers=2",
                  "--config.model.n_heads=2", "--config.train.encoder_chunk=0")


def epoch_cost(short_epochs: int, short_s: float, long_epochs: int, long_s: float) -> dict:
    """A command's seconds per epoch and startup seconds from its wall time at two run lengths.

    wall(E) = startup + E * per_epoch, so per_epoch = (long_s - short_s) / (long_epochs -
    short_epochs) and startup = short_s - short_epochs * per_epoch: what a run pays once
    (interpreter, imports, data, compiling or loading programs, the final save and plot)
    cancels out of the per-epoch cost.
    """
    if short_epochs < 1 or long_epochs <= short_epochs:
        raise ValueError(f"need 1 <= short < long epochs, got {short_epochs} and {long_epochs}")
    per_epoch = (long_s - short_s) / (long_epochs - short_epochs)
    return {"per_epoch_s": per_epoch, "startup_s": short_s - short_epochs * per_epoch}


def epoch_ratio(reference_per_epoch: float | None, jax_per_epoch: float | None) -> float | None:
    """Reference seconds per epoch over limubert_jax's (higher: limubert_jax faster); None when
    either is missing or not positive (run lengths too close for the machine's noise)."""
    if reference_per_epoch is None or jax_per_epoch is None or reference_per_epoch <= 0 or jax_per_epoch <= 0:
        return None
    return reference_per_epoch / jax_per_epoch


def launch(cmd: list[str], *, log_path: Path, env: dict | None = None, cwd: Path = REPO) -> dict:
    """Runs `cmd` to its exit, its stdout and stderr into `log_path`. Returns the wall seconds
    from launch to exit (the driver's clock), the exit status, and the child's own resource
    usage from `os.wait4`: its peak resident memory (the largest of it and the processes it
    waited for) and CPU seconds."""
    load_before = os.getloadavg()[0]
    with open(log_path, "w") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return {"wall_s": wall, "returncode": proc.returncode,
            "peak_rss_mb": usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024),
            "cpu_s": usage.ru_utime + usage.ru_stime, "load_avg_1min": [load_before, os.getloadavg()[0]],
            "log": str(log_path)}


def _check_exit(record: dict, what: str) -> None:
    if record["returncode"] != 0:
        tail = Path(record["log"]).read_text(errors="replace")[-3000:]
        raise SystemExit(f"{what} failed (exit {record['returncode']}); the end of {record['log']}:\n{tail}")


def _jax_env(cache: str | Path) -> dict:
    """The environment of a limubert_jax command: the commands' own persistent XLA cache in
    `cache` (`LIMUBERT_XLA_CACHE`), and not a cache chosen through JAX's variable."""
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["LIMUBERT_XLA_CACHE"] = str(cache)
    return env


def write_whole_job_data(folder: Path, num_windows: int, seed: int) -> Path:
    """`data_20_120.npy` (synthetic raw windows, N x 120 x 6) and a zero `label_20_120.npy`
    (N x 120 x 2, float32), the reference's file layout, in `folder`. Returns the data file."""
    import numpy as np

    from limubert_jax.data.synthetic import synthetic_windows

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"data_{WHOLE_JOB_VERSION}.npy"
    np.save(data, synthetic_windows(num_windows, seed=seed))
    np.save(folder / f"label_{WHOLE_JOB_VERSION}.npy", np.zeros((num_windows, 120, 2), np.float32))
    return data


class WholeJob:
    """Both sides' commands on one dataset; `run(batch)` measures one batch size."""

    def __init__(self, args, root: Path):
        self.args, self.root = args, root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.manual_dir = root / f"npy_{args.whole_job_windows}w_seed{args.seed}"
        self.tfds_dir = root / f"tfds_{args.whole_job_windows}w_seed{args.seed}"
        self.data_file = write_whole_job_data(self.manual_dir, args.whole_job_windows, args.seed)
        self.short, self.long = args.whole_job_epochs

    def prepare(self) -> dict:
        """Builds the TFDS dataset the limubert_jax command reads, before any timed run."""
        cmd = [sys.executable, "-m", "limubert_jax.prepare_data", "--config=configs/npy.py",
               f"--config.dataset.manual_dir={self.manual_dir}", f"--config.dataset.data_dir={self.tfds_dir}"]
        log(f"whole job: building the dataset ({self.args.whole_job_windows} windows, untimed)")
        record = launch(cmd, log_path=self.logs / "prepare_data.log", env=_jax_env("off"))
        _check_exit(record, "prepare_data")
        return record

    def reference_command(self, save: Path, epochs: int, batch: int) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve().parent / "reference_pretrain.py"),
                "--data", str(self.data_file), "--epochs", str(epochs), "--batch-size", str(batch), "--save", str(save),
                "--threads", str(self.args.torch_threads), "--lr", str(self.args.lr), "--model", self.args.model,
                "--drop-last"]  # limubert_jax drops the last partial batch: both train the same windows per epoch

    def jax_command(self, workdir: Path, epochs: int, batch: int) -> list[str]:
        cmd = [sys.executable, "-m", "limubert_jax.main", "--config=configs/npy.py",
               f"--config.dataset.manual_dir={self.manual_dir}", f"--config.dataset.data_dir={self.tfds_dir}",
               f"--workdir={workdir}", f"--config.train.num_epochs={epochs}", f"--config.train.batch_size={batch}",
               f"--config.optimizer.name={self.args.jax_optimizer}", f"--config.optimizer.learning_rate={self.args.lr}"]
        if self.args.model == "tiny":
            cmd += TINY_JAX_FLAGS
        return cmd + list(self.args.jax_flag)

    def run_reference(self, batch: int, epochs: int, tag: str) -> dict:
        save = self.root / f"b{batch}" / f"reference_e{epochs}_{tag}"
        shutil.rmtree(save, ignore_errors=True)
        record = launch(self.reference_command(save, epochs, batch),
                        log_path=self.logs / f"b{batch}_reference_e{epochs}_{tag}.log")
        _check_exit(record, f"the reference job (batch {batch}, {epochs} epochs)")
        inside = harness.read_result(Path(record["log"]).read_text(), f"the reference job (log {record['log']})")
        keep = ("epoch_seconds", "total_seconds", "import_seconds", "peak_rss_mb", "peak_device_bytes", "best_epoch",
                "best_val_loss", "steps_per_epoch", "train_windows", "vali_windows", "device", "threads", "torch",
                "jax_imported")
        record.update(side="reference", batch_size=batch, epochs=epochs, tag=tag,
                      script={k: inside.get(k) for k in keep})
        log(f"whole job, batch {batch}: reference {epochs} epochs ({tag}): {record['wall_s']:.1f} s, "
            f"peak RSS {record['peak_rss_mb']:.0f} MB (load {record['load_avg_1min'][0]:.1f})")
        return record

    def run_jax(self, batch: int, epochs: int, tag: str, cache: Path) -> dict:
        workdir = self.root / f"b{batch}" / f"jax_e{epochs}_{tag}"
        shutil.rmtree(workdir, ignore_errors=True)  # a workdir holding a run would resume it
        record = launch(self.jax_command(workdir, epochs, batch), env=_jax_env(cache),
                        log_path=self.logs / f"b{batch}_jax_e{epochs}_{tag}.log")
        _check_exit(record, f"the limubert_jax job (batch {batch}, {epochs} epochs)")
        summary_path = workdir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        record.update(side="limubert_jax", batch_size=batch, epochs=epochs, tag=tag,
                      time_to_first_step_s=summary.get("startup_s"),
                      peak_device_bytes=summary.get("peak_device_bytes"),
                      summary_peak_host_bytes=summary.get("peak_host_bytes"),
                      epoch_seconds=_jax_epoch_seconds(workdir / "metrics.jsonl", batch))
        first_step = record["time_to_first_step_s"]
        log(f"whole job, batch {batch}: limubert_jax {epochs} epochs ({tag}): {record['wall_s']:.1f} s, "
            f"first step after {'-' if first_step is None else f'{first_step:.1f}'} s, "
            f"peak RSS {record['peak_rss_mb']:.0f} MB (load {record['load_avg_1min'][0]:.1f})")
        return record

    def run(self, batch: int) -> dict:
        args, short, long = self.args, self.short, self.long
        cache = self.root / f"xla_cache_b{batch}"
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        # Untimed for the per-epoch figures: the first run fills the empty cache (what the first
        # run of a command on a machine pays); the timed runs load from it, as a rerun does.
        # A smoke run skips it: its numbers mean nothing, and it checks the timed runs' path.
        warmups = [] if args.smoke else [self.run_jax(batch, short, "first", cache)]
        if args.jax_optimizer == "bert_adam":  # its schedule's length is in the program: one per run length
            warmups.append(self.run_jax(batch, long, "warmup", cache))
        runs: list[dict] = []
        for repeat in range(args.whole_job_repeats):  # interleaved, so that drifting load hits both sides alike
            for epochs in (short, long):
                if not args.skip_torch:
                    runs.append(self.run_reference(batch, epochs, f"r{repeat}"))
                runs.append(self.run_jax(batch, epochs, f"r{repeat}", cache))
        return summarize_batch(batch, short, long, runs, warmups, windows=args.whole_job_windows)


def _jax_epoch_seconds(metrics_path: Path, batch: int) -> list[float]:
    """Each epoch's seconds as the job measured them itself (metrics.jsonl: steps and samples/s)."""
    if not metrics_path.is_file():
        return []
    seconds, previous = [], 0
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if record.get("samples_per_second"):
            seconds.append((record["step"] - previous) * batch / record["samples_per_second"])
            previous = record["step"]
    return seconds


def _max_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _median_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize_side(runs: list[dict], short: int, long: int) -> dict:
    """One side's timed runs (any number per length; the median wall time per length) ->
    seconds per epoch, startup, and its peak memory over the runs."""
    wall = {epochs: statistics.median(r["wall_s"] for r in runs if r["epochs"] == epochs) for epochs in (short, long)}
    return {"wall_s": {str(k): v for k, v in wall.items()}, **epoch_cost(short, wall[short], long, wall[long]),
            "peak_rss_mb": _max_or_none(r["peak_rss_mb"] for r in runs),
            "peak_device_bytes": _max_or_none(r.get("peak_device_bytes") for r in runs)}


def summarize_batch(batch: int, short: int, long: int, runs: list[dict], jax_warmups: list[dict],
                    windows: int | None = None) -> dict:
    """The whole-job figures of one batch size from its run records (`launch` records with
    `side`, `epochs` and, for limubert_jax, `time_to_first_step_s` and `peak_device_bytes`)."""
    result: dict = {"batch_size": batch, "epochs": [short, long], "windows": windows, "goal": GOALS.get(batch)}
    ref_runs = [r for r in runs if r["side"] == "reference"]
    jax_runs = [r for r in runs if r["side"] == "limubert_jax"]
    if ref_runs:
        ref = summarize_side(ref_runs, short, long)
        ref["script_epoch_s_median"] = _median_or_none(
            s for r in ref_runs if r["epochs"] == long for s in r.get("script", {}).get("epoch_seconds", [])[1:])
        script = ref_runs[0].get("script", {})
        ref.update(train_windows=script.get("train_windows"), vali_windows=script.get("vali_windows"),
                   steps_per_epoch=script.get("steps_per_epoch"), runs=ref_runs)
        result["reference"] = ref
    jx = summarize_side(jax_runs, short, long)
    jx["time_to_first_step_s"] = _median_or_none(r.get("time_to_first_step_s") for r in jax_runs)
    jx["script_epoch_s_median"] = _median_or_none(
        s for r in jax_runs if r["epochs"] == long for s in r.get("epoch_seconds", [])[1:])
    first = jax_warmups[0] if jax_warmups else None
    if first is not None:
        jx["first_run"] = {"epochs": first["epochs"], "wall_s": first["wall_s"],
                           "startup_s": first["wall_s"] - first["epochs"] * jx["per_epoch_s"],
                           "time_to_first_step_s": first.get("time_to_first_step_s"),
                           "peak_rss_mb": first["peak_rss_mb"], "peak_device_bytes": first.get("peak_device_bytes")}
    jx.update(runs=jax_runs, warmup_runs=jax_warmups)
    result["limubert_jax"] = jx
    result["ratio"] = epoch_ratio(result["reference"]["per_epoch_s"] if ref_runs else None, jx["per_epoch_s"])
    result["wall_ratio"] = ({str(e): float(result["reference"]["wall_s"][str(e)] / jx["wall_s"][str(e)])
                             for e in (short, long)} if ref_runs else None)
    result["repeat_ratios"] = repeat_ratios(runs, short, long)
    return result


def repeat_ratios(runs: list[dict], short: int, long: int) -> list[float]:
    """The ratio of each interleaved repeat (tag) from its own four runs, both sides at both
    lengths. `ratio` takes the median run per length instead; the spread of these shows how
    much of it is the machine's noise. Repeats missing a run, or too noisy for a positive
    per-epoch cost, are left out."""
    walls: dict[str, dict] = {}
    for r in runs:
        walls.setdefault(r["tag"], {})[r["side"], r["epochs"]] = r["wall_s"]
    ratios = []
    for wall in walls.values():
        try:
            per_epoch = [epoch_cost(short, wall[side, short], long, wall[side, long])["per_epoch_s"]
                         for side in ("reference", "limubert_jax")]
        except KeyError:
            continue
        ratio = epoch_ratio(*per_epoch)
        if ratio is not None:
            ratios.append(ratio)
    return ratios


def _fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _fmt_startup(value) -> str:
    """A startup estimate; below zero it is the two run lengths' noise, not a time."""
    return "noise" if value is not None and value < 0 else _fmt(value)


def _spread(values) -> str:
    if not values:
        return "-"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}x"


def _mb(nbytes) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.0f}"


def whole_job_table(batch: dict) -> str:
    """One batch size's whole-job figures as a plain-text table."""
    ref, jx = batch.get("reference") or {}, batch["limubert_jax"]
    first = jx.get("first_run") or {}
    short, long = batch["epochs"]
    walls = batch.get("wall_ratio") or {}
    ratio = batch.get("ratio")
    rows = [
        ("seconds per epoch (long - short run) / epochs", _fmt(ref.get("per_epoch_s"), ".2f"),
         _fmt(jx["per_epoch_s"], ".2f"), "-" if ratio is None else f"{ratio:.2f}x"),
        ("  ... as timed inside the job (median, long run)", _fmt(ref.get("script_epoch_s_median"), ".2f"),
         _fmt(jx.get("script_epoch_s_median"), ".2f"), ""),
        (f"wall seconds, {short} epochs (launch to exit)", _fmt(ref.get("wall_s", {}).get(str(short))),
         _fmt(jx["wall_s"][str(short)]), _fmt(walls.get(str(short)), ".2f") + ("x" if walls else "")),
        (f"wall seconds, {long} epochs (launch to exit)", _fmt(ref.get("wall_s", {}).get(str(long))),
         _fmt(jx["wall_s"][str(long)]), _fmt(walls.get(str(long)), ".2f") + ("x" if walls else "")),
        ("  ... ratio of each repeat on its own: min / median / max", "", "", _spread(batch.get("repeat_ratios"))),
        ("startup seconds: rerun (jax: warm XLA cache)", _fmt_startup(ref.get("startup_s")),
         _fmt_startup(jx["startup_s"]), ""),
        ("startup seconds: first run (jax: cold XLA cache)", "", _fmt_startup(first.get("startup_s")), ""),
        ("time to first step, s: rerun / first run", "",
         f"{_fmt(jx.get('time_to_first_step_s'))} / {_fmt(first.get('time_to_first_step_s'))}", ""),
        ("peak host RSS, MB (per process)", _fmt(ref.get("peak_rss_mb"), ".0f"), _fmt(jx.get("peak_rss_mb"), ".0f"),
         ""),
        ("peak device memory, MB", _mb(ref.get("peak_device_bytes")), _mb(jx.get("peak_device_bytes")), ""),
    ]
    train = f", {ref['train_windows']} train / {ref['vali_windows']} validation" if ref.get("train_windows") else ""
    head_name = f"whole job, batch {batch['batch_size']}: {batch.get('windows') or '?'} windows{train}"
    width = max(len(head_name), max(len(r[0]) for r in rows)) + 1
    last = max(10, max(len(r[3]) for r in rows))
    head = f"{head_name:{width}s} {'reference':>11s} {'limubert_jax':>13s} {'ref / jax':>{last}s}"
    lines = [head, "-" * len(head)]
    lines += [f"{name:{width}s} {a:>11s} {b:>13s} {c:>{last}s}" for name, a, b, c in rows]
    return "\n".join(lines)


def whole_job_line(batches: list[dict]) -> str:
    """'whole job, batch 128: 2.10x (goal 2.0x); batch 32: 1.60x (goal 1.5x)'."""
    parts = []
    for b in batches:
        ratio = "n/a" if b.get("ratio") is None else f"{b['ratio']:.2f}x"
        goal = f" (goal {b['goal']:.1f}x)" if b.get("goal") else ""
        parts.append(f"batch {b['batch_size']}: {ratio}{goal}")
    return "whole job, " + "; ".join(parts)


def run_whole_job(args) -> dict:
    """Every `--whole-job-batch-sizes` batch size, both sides; the scratch folder (data, TFDS
    build, XLA caches, workdirs, logs) is `--whole-job-dir`, else a temporary folder removed
    after a successful run (kept, and named, after a failure)."""
    # Absolute: the commands run from the checkout, wherever this script was started.
    root = (Path(args.whole_job_dir).resolve() if args.whole_job_dir
            else Path(tempfile.mkdtemp(prefix="limubert-whole-job-")))
    ok = False
    try:
        job = WholeJob(args, root)
        build = job.prepare()
        batches = [job.run(batch) for batch in args.whole_job_batch_sizes]
        ok = True
    finally:
        if not ok:
            log(f"whole job: kept {root} (logs in {root / 'logs'})")
        elif not args.whole_job_dir:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "scratch_dir": str(root), "scratch_kept": bool(args.whole_job_dir), "windows": args.whole_job_windows,
        "epochs": list(args.whole_job_epochs), "repeats": args.whole_job_repeats, "model": args.model,
        "jax_optimizer": args.jax_optimizer, "jax_flags": list(args.jax_flag),
        "reference_command": job.reference_command(Path("SAVE"), "EPOCHS", "BATCH")[1:],
        "jax_command": job.jax_command(Path("WORKDIR"), "EPOCHS", "BATCH")[1:],
        "jax_env": {"LIMUBERT_XLA_CACHE": "a fresh folder per batch size", "JAX_COMPILATION_CACHE_DIR": "unset",
                    **{k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_")) and
                       k != "JAX_COMPILATION_CACHE_DIR"}},
        "dataset_build_s": build["wall_s"], "batches": batches,
    }


# ---------------------------------------------------------------------------------------
# Driver.


def _run_worker(side: str, argv: list[str]) -> dict:
    return harness.run_worker([sys.executable, str(Path(__file__).resolve()), "--worker", side, *argv],
                              f"the {side} worker")


def _table(results: dict, args) -> str:
    jx, th = results.get("jax"), results.get("torch")
    rows = [
        ("steady state: ms / train step (median)", lambda r: f"{r['steady']['median_s'] * 1e3:.1f}", None),
        ("steady state: samples / s", lambda r: f"{r['steady']['samples_per_s_median']:.0f}", "steady"),
        ("end to end: s / epoch (median)", lambda r: f"{r['end_to_end']['median_s']:.2f}", None),
        ("end to end: samples / s", lambda r: f"{r['end_to_end']['samples_per_s_median']:.0f}", "end_to_end"),
        ("peak host RSS, MB (worker process)", lambda r: _fmt(r.get("peak_rss_mb"), ".0f"), None),
        ("peak device memory, MB", lambda r: _mb(r.get("peak_device_bytes")), None),
    ]
    width = 40
    title = f"batch {args.batch_size}, {args.num_windows} windows"
    head = f"{title:{width}s} {'limubert_jax':>14s}"
    if th:
        head += f" {'torch ref':>12s} {'jax / torch':>12s}"
    lines = ["train step and training loop (in-process, no validation)", head, "-" * len(head)]
    for name, fmt, key in rows:
        line = f"{name:{width}s} {fmt(jx):>14s}"
        if th:
            line += f" {fmt(th):>12s}"
            if key:
                line += f" {results['ratios'][key]:>11.2f}x"
        lines.append(line)
    return "\n".join(lines)


def _plot_steps(ax, results: dict) -> None:
    sides = [s for s in ("jax", "torch") if s in results]
    labels = {"jax": "limubert_jax", "torch": "PyTorch reference"}
    colors = {"jax": "#1f77b4", "torch": "#ee6a2f"}
    groups = [("steady", "steady state\n(train step only)"), ("end_to_end", "end to end\n(pipeline + masking + step)")]
    width = 0.8 / len(sides)
    for i, side in enumerate(sides):
        values = [results[side][g]["samples_per_s_median"] for g, _ in groups]
        xs = [j + (i - (len(sides) - 1) / 2) * width for j in range(len(groups))]
        bars = ax.bar(xs, values, width, label=labels[side], color=colors[side])
        ax.bar_label(bars, fmt="%.0f", padding=2)
    ax.set_xticks(range(len(groups)), [label for _, label in groups])
    ax.set_ylabel("pretraining samples / s (higher is better)")
    title = f"train step and loop (base_v1), batch {results['config']['batch_size']}"
    if "ratios" in results:
        title += "\njax / torch: " + ", ".join(
            f"{name.split(chr(10))[0]} {results['ratios'][g]:.2f}x" for g, name in groups)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    ax.margins(y=0.15)


def _plot_whole_job(ax, whole: dict) -> None:
    batches = whole["batches"]
    sides = [("reference", "reference pretrain.py", "#ee6a2f"),
             ("limubert_jax", "python -m limubert_jax.main", "#1f77b4")]
    sides = [s for s in sides if any(s[0] in b for b in batches)]
    width = 0.8 / len(sides)
    for i, (key, label, color) in enumerate(sides):
        values = [b[key]["per_epoch_s"] if key in b else 0.0 for b in batches]
        xs = [j + (i - (len(sides) - 1) / 2) * width for j in range(len(batches))]
        bars = ax.bar(xs, values, width, label=label, color=color)
        ax.bar_label(bars, fmt="%.2f", padding=2)
    names = []
    for b in batches:
        goal = f" (goal {b['goal']:.1f}x)" if b.get("goal") else ""
        ratio = "" if b.get("ratio") is None else f"\n{b['ratio']:.2f}x{goal}"
        names.append(f"batch {b['batch_size']}{ratio}")
    ax.set_xticks(range(len(batches)), names)
    ax.set_ylabel("seconds per epoch (lower is better)")
    short, long = whole["epochs"]
    ax.set_title(f"whole job ({whole['model']}), launch to exit: "
                 f"({long}-epoch run - {short}-epoch run) / {long - short}\n"
                 f"{whole['windows']} windows, validation + checkpoint every epoch", fontsize=10)
    ax.legend(loc="upper right")
    ax.margins(y=0.2)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (["steps"] if "jax" in results else []) + (["whole"] if results.get("whole_job") else [])
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "steps":
            _plot_steps(ax, results)
        else:
            _plot_whole_job(ax, results["whole_job"])
    cores = results["environment"]["cpu_count"]
    fig.suptitle(f"LIMU-BERT pretraining, limubert_jax vs the reference, {cores} CPU cores", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


# `--smoke`'s sizes (every whole-job command, the step loop's workers and the reference job).
SMOKE_SIZES = {"epochs": 1, "batch_size": harness.SMOKE_BATCH, "num_windows": harness.SMOKE_WINDOWS,
               "steady_steps": 2, "warmup_steps": 1, "whole_job_batch_sizes": (harness.SMOKE_BATCH,),
               "whole_job_epochs": (1, 2), "whole_job_windows": 100, "model": "tiny", "torch_threads": 1}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed end-to-end epochs per side (train loop)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch of the train step and loop measurement")
    parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON and PNG")
    parser.add_argument("--skip-torch", action="store_true", help="run the limubert_jax side only")
    parser.add_argument("--num-windows", type=int, default=1670, help="synthetic training windows (train loop)")
    parser.add_argument("--steady-steps", type=int, default=20, help="timed steady-state steps per side")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--input", choices=("numpy", "grain"), default="numpy",
                        help="JAX batches: NumPy permutation feed, or limubert_jax.data.input_pipeline.train_batches")
    parser.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads (both measurements)")
    parser.add_argument("--torch-workers", type=int, default=0, help="DataLoader num_workers (reference: 0)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic windows (and the train loop)")
    whole = parser.add_argument_group("whole job (each side's command as a process, launch to exit)")
    which = whole.add_mutually_exclusive_group()
    which.add_argument("--skip-whole-job", action="store_true", help="only the train step and loop measurement")
    which.add_argument("--whole-job-only", action="store_true", help="only the whole-job measurement")
    whole.add_argument("--whole-job-batch-sizes", type=_int_tuple, default=(128, 32), help="comma-separated")
    whole.add_argument("--whole-job-epochs", type=_int_tuple, default=(2, 6),
                       help="SHORT,LONG: the two run lengths; seconds per epoch = (T_long - T_short) / (LONG - SHORT)")
    whole.add_argument("--whole-job-windows", type=int, default=2088,
                       help="synthetic windows in data_20_120.npy (UCI's 2,088: 1,670 train / 208 validation)")
    whole.add_argument("--whole-job-repeats", type=int, default=1,
                       help="timed runs per side and length (the median wall time per length counts)")
    whole.add_argument("--whole-job-dir", default="",
                       help="scratch folder, kept (data, TFDS build, XLA caches, workdirs, logs); "
                            "default: a temporary folder removed after a successful run")
    whole.add_argument("--jax-optimizer", choices=("adam", "bert_adam"), default="adam",
                       help="limubert_jax's config.optimizer.name: adam, as the reference job (torch.optim.Adam)")
    whole.add_argument("--jax-flag", action="append", default=[],
                       help="an extra flag for the limubert_jax command, "
                            "e.g. --jax-flag=--config.train.steps_per_dispatch=8")
    whole.add_argument("--model", choices=("base_v1", "tiny"), default="base_v1",
                       help="whole job's model; tiny only checks that the benchmark runs")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick check that the script runs, never a timing: the smoke model in the step loop "
                             f"({', '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in SMOKE_SIZES.items())})")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = harness.parse_args(parser, argv, SMOKE_SIZES)
    if args.epochs < 1 or args.steady_steps < 1 or args.batch_size < 1:
        parser.error("--epochs, --steady-steps and --batch-size must be >= 1")
    if args.num_windows < args.batch_size:
        parser.error("--num-windows must be at least --batch-size")
    if len(args.whole_job_epochs) != 2 or args.whole_job_epochs[0] >= args.whole_job_epochs[1]:
        parser.error("--whole-job-epochs takes SHORT,LONG with SHORT < LONG, e.g. 2,6")
    if args.whole_job_repeats < 1:
        parser.error("--whole-job-repeats must be >= 1")
    if not args.skip_whole_job and int(args.whole_job_windows * 0.8) < max(args.whole_job_batch_sizes):
        parser.error("--whole-job-windows: the training split (80%) must hold at least one batch of each "
                     "--whole-job-batch-sizes")
    return args


def _write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrain_throughput.json").write_text(json.dumps(results, indent=2) + "\n")


def load_readings(results: dict) -> list[float]:
    """Every 1-minute load average recorded during the measurements."""
    readings = [x for s in ("jax", "torch") if s in results for x in results[s]["load_avg_1min"]]
    for batch in (results.get("whole_job") or {}).get("batches", []):
        for side in ("reference", "limubert_jax"):
            if side in batch:
                for run in batch[side]["runs"] + batch[side].get("warmup_runs", []):
                    readings += run["load_avg_1min"]
    return readings


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        result = run_jax(args) if args.worker == "jax" else run_torch(args)
        harness.emit_result(result)
        return 0

    out = Path(args.out)
    worker_argv = [a for a in argv if a != "--skip-torch"]
    results: dict = {
        "config": {k: v for k, v in vars(args).items() if k != "worker"} | {
            "model_step_loop": harness.SMOKE_MODEL if args.smoke else "base_v1", "optimizer_step_loop": "adam"},
        "environment": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_1min_at_start": os.getloadavg()[0],
        },
    }
    if not args.whole_job_only:
        log(f"running the limubert_jax side (load average {os.getloadavg()[0]:.1f})")
        results["jax"] = _run_worker("jax", worker_argv)
        if not args.skip_torch:
            log(f"running the PyTorch side (load average {os.getloadavg()[0]:.1f})")
            results["torch"] = _run_worker("torch", worker_argv)
            results["ratios"] = {
                key: results["jax"][key]["samples_per_s_median"] / results["torch"][key]["samples_per_s_median"]
                for key in ("steady", "end_to_end")
            }
        _write(results, out)  # a whole job cut short keeps these
    if not args.skip_whole_job:
        results["whole_job"] = run_whole_job(args)
    _write(results, out)
    _plot(results, out / "pretrain_throughput.png")
    if "jax" in results:
        print(_table(results, args))
    if results.get("whole_job"):
        for batch in results["whole_job"]["batches"]:
            print()
            print(whole_job_table(batch))
        print()
        print(whole_job_line(results["whole_job"]["batches"]))
    # The benchmark itself keeps every core busy (load ~ cpu_count); more means other work.
    cores = os.cpu_count() or 1
    start = results["environment"]["load_avg_1min_at_start"]
    peak = max([start + cores] + load_readings(results))
    if start > 0.5 * cores or peak > 1.5 * cores:
        print(f"warning: the machine was busy (1-minute load average {start:.1f} at the start, up to {peak:.1f} "
              f"during the run, on {cores} cores): the numbers are unreliable; rerun on an otherwise idle machine")
    print(f"wrote {out / 'pretrain_throughput.json'} and {out / 'pretrain_throughput.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
