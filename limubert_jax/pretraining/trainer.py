"""The pretraining loop: `pretrain(config, workdir)`.

Epochs of sharded masked-reconstruction steps, validation after each epoch with fixed
masks, Orbax checkpoints under `workdir/checkpoints` (the latest for resuming, the best
validation step for export), metrics to `metrics.jsonl` and TensorBoard, and a PNG of
reconstructed masked spans at the end. Rerunning the same command resumes exactly: the
data position is the step, and every random draw derives from (seed, step).

Multi-process runs (`limubert_jax.runtime.distributed`): every process runs `pretrain` alike, reads
its own rows of each global batch, and saves and restores checkpoints through the same
Orbax CheckpointManager (process 0 writes what is replicated; the workdir must be shared by
all processes). Only process 0 writes metrics.jsonl, TensorBoard, the plot, summary.json,
config.json, run.json (the run record a resume is compared with, `io.workdir.run_record`) and
model_config.json, and shows progress.

The workdir may be a bucket path (`gs://bucket/dir`, see `limubert_jax.io.storage`): Orbax
writes checkpoints there itself, metrics.jsonl is rewritten whole each epoch (objects do
not append), and TensorBoard goes through tensorboardX's own `gs://` / `s3://` writers
(they need google-cloud-storage / boto3; without them the run logs a warning and writes no
TensorBoard events).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from tqdm.auto import tqdm

from limubert_jax.data import input_pipeline, loading
from limubert_jax.data.loading import load_data
from limubert_jax.data.normalization import normalize
from limubert_jax.export import released
from limubert_jax.io import checkpoint, plots, storage
from limubert_jax.io.checkpoint import CHECKPOINTS_DIR, CONFIG_FILE, host_copy, model_record
from limubert_jax.io.model_card import CARD_FILE, model_card
from limubert_jax.io.state_dict import LIMU_BERT
from limubert_jax.io.workdir import RunCheckpoints, check_resume, run_record, write_run_files
from limubert_jax.models.encoder import ENCODER_STREAMS, LimuBertConfig, LimuBertModel4Pretrain
from limubert_jax.pretraining import optim
from limubert_jax.pretraining.metrics import MetricsWriter
from limubert_jax.pretraining.steps import (
    MaskConfig,
    TrainState,
    compute_dtype_of,
    jit_eval_step,
    jit_resident_epoch,
    jit_train_step,
    jit_train_steps,
    mask_batch,
)
from limubert_jax.runtime import precision, resources
from limubert_jax.runtime.errors import LimuBertError, check_terminated
from limubert_jax.runtime.sharding import check_batch_size, global_batch, replicated, training_mesh
from limubert_jax.runtime.xla_options import compile_once


class NonFiniteLossError(LimuBertError):
    """Training produced a NaN or Inf loss; the last good checkpoint is kept."""


def model_seq_len(config: ml_collections.ConfigDict) -> int:
    """The model's window length: `config.model.seq_len`, or when unset (None) the steps of
    `config.dataset.version`, so that `--config.dataset.version=50_200` alone is enough."""
    if config.model.get("seq_len") is not None:
        return config.model.seq_len
    from limubert_jax.datasets.common import parse_version  # noqa: PLC0415  (registers the builders)

    try:
        return parse_version(config.dataset.version)[1]
    except ValueError as e:
        raise LimuBertError(f"config.dataset.version: {e}") from None


def init_from(config: ml_collections.ConfigDict):
    """The checkpoint `config.train.init_from` names (released weights by name are fetched:
    `export.released`), None when unset."""
    value = config.train.get("init_from")
    return storage.as_path(released.resolve(value)) if value else None


def _check_start_kind(config: ml_collections.ConfigDict, kind: str) -> None:
    """A one-line error unless the init_from checkpoint holds a LIMU-BERT (`kind`)."""
    if kind != LIMU_BERT:
        raise LimuBertError(f"config.train.init_from={config.train.init_from}: holds a {kind} model, not a "
                            "LIMU-BERT to pretrain on from")


def _start_config(config: ml_collections.ConfigDict, path) -> LimuBertConfig:
    """The LIMU-BERT config of the init_from checkpoint `path`; an error for any other kind."""
    kind, start = checkpoint.read_model_config(path)
    _check_start_kind(config, kind)
    return start


def model_config_from(config: ml_collections.ConfigDict) -> LimuBertConfig:
    """The frozen model config from the `model` section (the window length per
    `model_seq_len`), with a clear error for bad values. With `config.train.init_from`, the
    fields left at their defaults (and an unset seq_len) follow that checkpoint's model, and
    a field set otherwise must equal it (its weights fix every shape)."""
    start_from = init_from(config)
    if start_from is not None:
        start, defaults, fields = _start_config(config, start_from), LimuBertConfig(), {}
        for name, theirs in start.to_dict().items():
            given = config.model.get(name)
            if given is None or (name != "seq_len" and given == getattr(defaults, name)):
                fields[name] = theirs
            elif given != theirs:
                raise LimuBertError(f"config.model.{name}={given!r} but config.train.init_from="
                                    f"{config.train.init_from} has {name} {theirs!r}: leave config.model.{name} unset "
                                    "(it follows the weights) or start from weights of that shape")
            else:
                fields[name] = given
        return start if fields == start.to_dict() else LimuBertConfig.from_dict(fields)
    try:
        return LimuBertConfig.from_dict({**dict(config.model), "seq_len": model_seq_len(config)})
    except (TypeError, ValueError) as e:
        raise LimuBertError(f"config.model: {e}") from None


def initial_params(config: ml_collections.ConfigDict, model_config: LimuBertConfig):
    """The parameters of `config.train.init_from` for a new run of `model_config` (None
    without it): the whole pretraining model (encoder and reconstruction head) as saved by a
    pretraining, `limubert-convert from_torch` or `limubert-fetch`; every shape must be the model's."""
    start_from = init_from(config)
    if start_from is None:
        return None
    kind, _, params = checkpoint.load_model(start_from)
    _check_start_kind(config, kind)
    expected = jax.eval_shape(LimuBertModel4Pretrain(model_config).init_params, jax.random.key(0))
    want = {checkpoint.leaf_name(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    have = {checkpoint.leaf_name(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
    for name in sorted(set(want) | set(have)):
        if want.get(name) != have.get(name):
            raise LimuBertError(f"config.train.init_from={config.train.init_from}: parameter {name} has shape "
                                f"{have.get(name)}, the model {model_config} needs {want.get(name)}")
    return jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.float32), params)


def mask_config_from(config: ml_collections.ConfigDict) -> MaskConfig:
    """The frozen masking config from the `mask` section."""
    try:
        return MaskConfig(**dict(config.mask))
    except TypeError as e:
        raise LimuBertError(f"config.mask: {e}") from None


# `config.train.encoder_chunk` that leaves the encoder's work split to the backend (`encoder.default_chunk`).
DEFAULT_ENCODER_CHUNK = -1


def _check_config(config, data, model_config: LimuBertConfig, mask_config: MaskConfig, mesh) -> None:
    train = config.train
    counts = ["batch_size", "num_epochs", "eval_batch_size", "log_every_steps", "checkpoint_every_epochs",
              "steps_per_dispatch"]
    if train.get("extend_to_epochs") is not None:  # None: unset
        counts.append("extend_to_epochs")
    for name in counts:
        if not isinstance(train[name], int) or train[name] < 1:
            raise LimuBertError(f"config.train.{name} must be a positive integer, got {train[name]!r}")
    if data.seq_len != model_config.seq_len:
        hint = (f" (the length of config.train.init_from={train.init_from}: pretrain it on windows of that length, "
                f"e.g. dataset version <rate>_{model_config.seq_len})" if train.get("init_from") else "")
        raise LimuBertError(
            f"config.model.seq_len={model_config.seq_len} but dataset {config.dataset.name}/"
            f"{config.dataset.version} has windows of {data.seq_len} steps{hint}"
        )
    if data.num_features < model_config.feature_num:
        raise LimuBertError(
            f"config.model.feature_num={model_config.feature_num} but dataset {config.dataset.name} "
            f"has only {data.num_features} features"
        )
    try:
        compute_dtype_of(train.compute_dtype)
        precision.check_matmul_precision(train.matmul_precision)
    except ValueError as e:
        raise LimuBertError(f"config.train: {e}") from None
    chunk = train.encoder_chunk
    if not isinstance(chunk, int) or chunk < DEFAULT_ENCODER_CHUNK or (chunk > 0 and chunk % ENCODER_STREAMS):
        raise LimuBertError(f"config.train.encoder_chunk must be {DEFAULT_ENCODER_CHUNK} (the backend's default), "
                            f"0 (whole batch) or a positive multiple of {ENCODER_STREAMS}, got {chunk!r}")
    for name in ("batch_size", "eval_batch_size"):
        try:
            check_batch_size(train[name], mesh)
        except ValueError:
            devices = mesh.devices.size
            raise LimuBertError(f"config.train.{name}={train[name]} does not divide by the {devices} devices of the "
                                f"mesh; choose a multiple of {devices} (e.g. --config.train.{name}="
                                f"{max(devices, train[name] // devices * devices)})") from None
    try:
        input_pipeline.steps_per_epoch(data, train.batch_size)  # a batch larger than the split
    except ValueError as e:
        raise LimuBertError(f"config.train: {e}") from None
    try:  # traces the masking once, so bad mask parameters fail here rather than mid-run
        raw = jax.ShapeDtypeStruct((1, data.seq_len, data.num_features), jnp.float32)
        jax.eval_shape(lambda key, x: mask_batch(key, x, model_config, mask_config), jax.random.key(0), raw)
    except ValueError as e:
        raise LimuBertError(f"config.mask: {e}") from None


def eval_batch_size(config, data, mesh) -> int:
    """`config.train.eval_batch_size`, or where the validation split is smaller, the split
    rounded up to a multiple of the devices: padding rows cost as much as real ones."""
    devices = mesh.shape["data"]
    return min(config.train.eval_batch_size, max(1, -(-len(data.vali) // devices)) * devices)


def _evaluate(eval_step, params, data, batch_size: int, mesh, key) -> float:
    """Mean masked squared error over the validation split, masks fixed by `key`."""
    total, count = 0.0, 0.0
    for raw, weights in input_pipeline.eval_batches(data, global_batch_size=batch_size):
        sse, n = eval_step(params, global_batch(raw, mesh), global_batch(weights, mesh), key)
        total, count = total + float(sse), count + float(n)
    return total / count


# The device-resident shuffle's random stream: fold_in(key(seed), this), then the epoch.
RESIDENT_SHUFFLE_STREAM = 0x5F

# An epoch runner trains one epoch: (state, epoch, progress) -> (state, losses [steps_per_epoch]).
EpochRunner = Callable[[TrainState, int, Any], tuple[TrainState, jax.Array]]


class StartupClock:
    """When training started: seconds from the process's launch (imports, data, compiling or
    loading the programs) until its first train step was dispatched."""

    def __init__(self):
        self.seconds: float | None = None

    def mark(self) -> None:
        if self.seconds is None:
            self.seconds = resources.seconds_since_launch()
            logging.info("training started %.1f s after launch", self.seconds)


class HostInputClock:
    """The train loop's host time per step: waiting for the input pipeline's next batches and
    handing them to the devices, i.e. what an accelerator waits for between steps when the
    host is the bottleneck. The first read (the pipeline starting) counts as start-up."""

    def __init__(self):
        self.seconds, self.steps, self._first = 0.0, 0, True

    def add(self, seconds: float, steps: int) -> None:
        if self._first:
            self._first = False
            return
        self.seconds += seconds
        self.steps += steps

    @property
    def ms_per_step(self) -> float | None:
        return 1e3 * self.seconds / self.steps if self.steps else None


def _host_epochs(config, data, mesh, step_kwargs: dict, rng, steps_per_epoch: int, start_step: int,
                 clock: StartupClock, host: HostInputClock) -> EpochRunner:
    """Epochs fed by the host input pipeline, `config.train.steps_per_dispatch` steps per
    compiled call (a `lax.scan` over a stack of batches; 1: the plain step). An epoch's
    remainder, fewer steps than a call, goes through the plain step one by one: a program
    whose length fits any remainder, so changing the batch size or `steps_per_dispatch`
    compiles nothing new for it (nor does a test comparing against the plain loop)."""
    per_call = config.train.steps_per_dispatch
    batches = input_pipeline.train_batches(data, global_batch_size=config.train.batch_size, seed=config.seed,
                                           start_step=start_step)
    one_step = jit_train_step(mesh, **step_kwargs)
    many_steps = jit_train_steps(mesh, **step_kwargs)
    log_every = config.train.log_every_steps

    def run(state, epoch, progress):
        losses, done = [], 0
        while done < steps_per_epoch:
            n = per_call if steps_per_epoch - done >= per_call else 1
            start = time.perf_counter()
            if n == 1:
                batch = global_batch(next(batches), mesh)
                host.add(time.perf_counter() - start, 1)
                state, metrics = one_step(state, batch, rng)
                losses.append(metrics["loss"][None])
            else:
                stack = global_batch(np.stack([next(batches) for _ in range(n)]), mesh, stacked=True)
                host.add(time.perf_counter() - start, n)
                state, metrics = many_steps(state, stack, rng)
                losses.append(metrics["loss"])
            clock.mark()
            step = epoch * steps_per_epoch + done
            done += n
            if (step + n) // log_every > step // log_every:
                progress.set_postfix(loss=f"{float(losses[-1][-1]):.4f}")
            progress.update(n)
        return state, jnp.concatenate(losses)

    return run


def _resident_epochs(config, data, mesh, step_kwargs: dict, rng, steps_per_epoch: int,
                     clock: StartupClock) -> EpochRunner:
    """Epochs on training windows held on every device: each epoch, its shuffle and masking
    included, is one compiled call (`steps.resident_epoch`)."""
    windows = data.train.read(np.arange(len(data.train)))  # [N, S, F] float32
    resident = jax.make_array_from_callback(windows.shape, replicated(mesh), lambda index: windows[index])
    shuffle_key = jax.random.fold_in(jax.random.key(config.seed), RESIDENT_SHUFFLE_STREAM)
    run_epoch = jit_resident_epoch(mesh, steps=steps_per_epoch, batch_size=config.train.batch_size, **step_kwargs)

    def run(state, epoch, progress):
        state, metrics = run_epoch(state, resident, jax.random.fold_in(shuffle_key, epoch), rng)
        clock.mark()
        progress.update(steps_per_epoch)
        return state, metrics["loss"]

    return run


@functools.lru_cache(maxsize=8)
def _optimizer(name: str, learning_rate: float, total_steps: int | None, warmup: float, decay_grouping: str):
    """`optim.pretrain_optimizer`, one object per setting: the compiled steps are memoized on
    it (`steps.jit_train_step`)."""
    return optim.pretrain_optimizer(name, learning_rate=learning_rate, total_steps=total_steps, warmup=warmup,
                                    decay_grouping=decay_grouping)


@functools.lru_cache(maxsize=8)
def _reconstruct_program(model_config: LimuBertConfig, mask_config: MaskConfig):
    """(params, raw [N, S, F_raw], key) -> (masked positions [N, M], reconstructions [N, M, F]),
    for the end-of-run plot: masked as validation masks them (`key`)."""
    def reconstruct(params, raw, key):
        masked, positions, _ = mask_batch(key, raw, model_config, mask_config)
        return positions, LimuBertModel4Pretrain(model_config).apply({"params": params}, masked, positions)

    return compile_once(reconstruct)


def check_pretrain_config(config: ml_collections.ConfigDict, data: loading.PretrainData,
                          mesh=None) -> tuple[LimuBertConfig, MaskConfig]:
    """The model and masking configs, once every pretraining field is checked against `data`
    and the device mesh (default: `training_mesh`'s); a bad field is a `LimuBertError` naming it."""
    model_config, mask_config = model_config_from(config), mask_config_from(config)
    mesh = training_mesh(config.train.batch_size) if mesh is None else mesh
    _check_config(config, data, model_config, mask_config, mesh)
    return model_config, mask_config


def pretrain(config: ml_collections.ConfigDict, workdir: epath.PathLike,
             data: loading.PretrainData | None = None, *, checked: bool = False) -> dict[str, Any]:
    """Pretrains LIMU-BERT as `config` says, resuming from `workdir` if it holds a run.

    `workdir` is a local directory or a bucket path (`gs://...`); `data`: the dataset already
    loaded by `load_data(config)`. `checked`: the caller (`tasks.run`) has already run
    `check_pretrain_config` and `check_resume` on this config, workdir and data, so they are
    not run twice. Returns the summary also written to `workdir/summary.json` (by process 0).
    """
    workdir = storage.as_path(workdir)
    mesh = training_mesh(config.train.batch_size)
    data = load_data(config) if data is None else data
    if checked:
        model_config, mask_config = model_config_from(config), mask_config_from(config)
    else:  # a direct call: nothing has checked the fields or the workdir yet
        model_config, mask_config = check_pretrain_config(config, data, mesh)
        check_resume(workdir, config, data)  # before anything is written
    workdir.mkdir(parents=True, exist_ok=True)

    record = run_record(config, data)
    steps_per_epoch, total_steps = record["steps_per_epoch"], record["total_steps"]
    try:
        # Constant-rate Adam has no schedule steps: runs of any length share its compiled steps.
        tx = _optimizer(config.optimizer.name, config.optimizer.learning_rate, record["schedule_steps"],
                        config.optimizer.warmup, config.optimizer.decay_grouping)
    except ValueError as e:
        raise LimuBertError(f"config.optimizer: {e}") from None
    learning_rate = (
        optim.warmup_linear_schedule(config.optimizer.learning_rate, warmup=config.optimizer.warmup,
                                     total_steps=record["schedule_steps"])
        if record["schedule_steps"] is not None else (lambda step: config.optimizer.learning_rate)
    )

    init_key, mask_key, val_key = jax.random.split(jax.random.key(config.seed), 3)

    def initial_state(key) -> TrainState:
        return TrainState.create(LimuBertModel4Pretrain(model_config).init_params(key), tx)

    # A resumed run restores into the state's shapes; only a new one computes (and compiles) the init.
    checkpoints = RunCheckpoints(workdir)
    start_step, state = 0, None
    if checkpoints.steps():
        like = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated(mesh)),
                                      jax.eval_shape(initial_state, init_key))
        start_step, state = checkpoints.restore_latest(like, fall_back=config.train.fall_back_to_good_checkpoint)
    if start_step:  # a resumed run goes on from its own checkpoints, whatever init_from says
        logging.info("resumed from step %d of %d in %s", start_step, total_steps, workdir)
    else:
        start = initial_params(config, model_config)
        if start is not None:
            logging.info("starting from the weights of %s", config.train.init_from)
        state = jax.device_put(initial_state(init_key) if start is None else TrainState.create(start, tx),
                               replicated(mesh))
    if jax.process_index() == 0:
        storage.write_text(workdir / CONFIG_FILE, json.dumps(model_record(model_config), indent=2) + "\n")
        write_run_files(workdir, config, record)
        _write_card(workdir, config, model_config, None)

    encoder_chunk = None if config.train.encoder_chunk == DEFAULT_ENCODER_CHUNK else config.train.encoder_chunk
    step_kwargs = dict(model_config=model_config, mask_config=mask_config, tx=tx,
                       compute_dtype=compute_dtype_of(config.train.compute_dtype),
                       matmul_precision=config.train.matmul_precision, encoder_chunk=encoder_chunk)
    clock, host = StartupClock(), HostInputClock()
    if config.train.device_resident:
        run_epoch = _resident_epochs(config, data, mesh, step_kwargs, mask_key, steps_per_epoch, clock)
    else:
        run_epoch = _host_epochs(config, data, mesh, step_kwargs, mask_key, steps_per_epoch, start_step, clock, host)
    validation_batch = eval_batch_size(config, data, mesh)
    eval_step = jit_eval_step(mesh, model_config=model_config, mask_config=mask_config, encoder_chunk=encoder_chunk)
    writer = MetricsWriter(workdir, start_step) if jax.process_index() == 0 else None
    progress = tqdm(total=total_steps, initial=start_step, unit="step", desc="pretrain",
                    disable=jax.process_index() != 0, dynamic_ncols=True)
    step = start_step  # checkpoints are written at epoch ends, so a run resumes at one
    try:
        while step < total_steps:
            check_terminated()
            epoch_start = time.perf_counter()
            state, epoch_losses = run_epoch(state, step // steps_per_epoch, progress)
            step += steps_per_epoch
            losses = np.asarray(epoch_losses)
            if not np.isfinite(losses).all():
                first = int(np.argmin(np.isfinite(losses)))
                bad_step = step - len(losses) + first
                raise NonFiniteLossError(
                    f"loss became {losses[first]} at step {bad_step} (epoch {bad_step // steps_per_epoch}); "
                    f"stopped, the last good checkpoint in {workdir / CHECKPOINTS_DIR} is kept"
                )
            checkpoints.check_saved()  # a failed asynchronous save stops the run here
            val_loss = _evaluate(eval_step, state.params, data, validation_batch, mesh, val_key)
            epoch = step // steps_per_epoch
            seconds = time.perf_counter() - epoch_start
            record = {
                "step": step, "epoch": epoch, "train_loss": float(losses.mean()), "val_loss": val_loss,
                "learning_rate": float(learning_rate(step - 1)),
                "samples_per_second": len(losses) * config.train.batch_size / seconds,
            }
            if writer is not None:
                writer.write(record)
            progress.set_postfix(loss=f"{record['train_loss']:.4f}", val=f"{val_loss:.4f}")
            if epoch % config.train.checkpoint_every_epochs == 0 or step == total_steps:
                checkpoints.save(step, state, record)
    except BaseException:
        progress.close()
        if writer is not None:
            writer.close()
        try:  # the error in flight is the one to report; a failed save is logged beside it
            checkpoints.wait()
        except LimuBertError as e:
            logging.error("%s", e)
        raise
    progress.close()
    if writer is not None:
        writer.close()
    checkpoints.wait()

    best_step = checkpoints.best_step()
    best = checkpoints.record(best_step)
    summary = {"steps": total_steps, "best_step": best_step, "best_val_loss": best["val_loss"],
               "checkpoints": str(workdir / CHECKPOINTS_DIR), "devices": int(mesh.devices.size),
               "startup_s": clock.seconds, "input": _input_kind(config, data),
               "host_input_ms_per_step": host.ms_per_step,
               "peak_host_bytes": resources.peak_host_bytes(), "peak_device_bytes": resources.peak_device_bytes()}
    # Every process takes part in the restore (Orbax); process 0 plots from its host copy
    # of the replicated parameters, on its own devices only.
    best_params = checkpoints.restore(best_step, state).params
    if jax.process_index() == 0:
        best_params = host_copy(best_params)
        raw, _ = next(iter(input_pipeline.eval_batches(
            data, global_batch_size=config.train.plot_windows, shard_options=grain.sharding.NoSharding())))

        reconstruct = _reconstruct_program(model_config, mask_config)
        positions, predictions = reconstruct(best_params, jnp.asarray(raw), val_key)
        summary["plot"] = str(plots.reconstruction_png(
            workdir / "reconstruction.png", normalize(np.asarray(raw), model_config.feature_num),
            np.asarray(positions), np.asarray(predictions), title=f"best step {best_step}",
        ))
        storage.write_text(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
        _write_card(workdir, config, model_config, summary)
        summary["table"] = summary_lines(summary)
    checkpoints.close()
    return summary


def _input_kind(config, data: loading.PretrainData) -> str:
    if config.train.device_resident:
        return "device-resident"
    return "window store" if getattr(data.train, "in_store", False) else "records"


def summary_lines(summary: dict[str, Any]) -> str:
    """What the main command prints when pretraining ends: the best checkpoint, the start-up
    time, and the loop's host time per step (what an accelerator would wait for)."""
    lines = [f"pretrained {summary['steps']} steps: best validation loss {summary['best_val_loss']:.4f} at step "
             f"{summary['best_step']} ({summary['checkpoints']})"]
    if summary.get("startup_s") is not None:
        lines.append(f"first step {summary['startup_s']:.1f} s after launch")
    host = summary.get("host_input_ms_per_step")
    if host is not None:
        lines.append(f"host time per step {host:.2f} ms (reading batches from the {summary['input']} and handing them "
                     f"to the devices)")
    return "\n".join(lines)


def _write_card(workdir, config, model_config: LimuBertConfig, summary: dict[str, Any] | None) -> None:
    """The workdir's model card (README.md beside model_config.json): the run so far, or its result."""
    start = config.train.get("init_from")
    about = (f"A LIMU-BERT encoder with its reconstruction head, pretrained by masked reconstruction "
             f"{f'from the weights of {start} ' if start else ''}in this training workdir (its best checkpoint is "
             "the model" + ("; the run has not finished" if summary is None else "") + ").")
    metrics = None if summary is None else {"best validation loss": summary["best_val_loss"],
                                             "at step": summary["best_step"], "of steps": summary["steps"]}
    text = model_card(LIMU_BERT, model_config, title=f"LIMU-BERT pretrained on {config.dataset.name}", about=about,
                      path=workdir, data=f"{config.dataset.name}/{config.dataset.version}"
                      + (f" ({config.dataset.manual_dir})" if config.dataset.get("manual_dir") else ""),
                      metrics=metrics, source=f"limubert-jax pretraining, seed {config.seed}"
                      + (f", started from {start}" if start else ""),
                      licence="that of the data (and of the starting weights, if any)")
    storage.write_text(storage.as_path(workdir) / CARD_FILE, text)
