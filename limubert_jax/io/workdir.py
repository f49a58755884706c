"""What keeps a training workdir whole: one job at a time, resumes that match the run, and
checkpoints that are verified before they are trusted.

* `WorkdirLock`: a job holds `WORKDIR/.lock` while it runs. A second job on the same
  workdir stops with one line naming the holder (pid, host, command, start time). A lock
  whose holder is gone is taken over: on the same host when its pid is no longer alive, from
  any host when the holder stopped refreshing it (the holder touches it every
  `HEARTBEAT_SECONDS`; a lock older than `STALE_SECONDS` is abandoned). Creation relies on
  `open(O_CREAT | O_EXCL)` being atomic, which local file systems and NFSv3+ guarantee; on an
  object store (`gs://`) the lock is advisory (look, then write). In a multi-process run
  process 0 takes it for all and tells the others.
* `check_resume`: a rerun in a workdir that holds checkpoints must describe the same run:
  the config fields of RESUME_FIELDS (config.json) and the run record (`run_record`,
  RUN_FILE): the data as built, the windows trained on, the steps per epoch and in all.
  Anything else stops, before a byte is written, with one line naming every difference.
  The one change that can continue a run exactly is its number of epochs, under a learning
  rate that does not depend on the run's length: `config.train.extend_to_epochs`.
* `RunCheckpoints`: the Orbax CheckpointManager of a pretraining run, keeping the two latest
  steps (the resume point and one before it) and the best validation step. Each step's
  metadata carries the SHA-256 of its train state and of its parameters
  (`checkpoint.content_digest`), written with the step and verified whenever the step is
  restored; a step that fails is an error naming it, or, when asked, moved aside to
  `checkpoints-corrupt/` and the newest good step resumed instead. An asynchronous save that
  failed stops the run at the next epoch end. Interrupted saves (Orbax's tmp directories)
  are removed on start, and old steps are deleted by renaming them into
  `checkpoints/deleting/` first, so a kill mid-delete leaves no half step behind.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from limubert_jax.data import input_pipeline, loading
from limubert_jax.io import storage
from limubert_jax.io.checkpoint import (
    BEST_METRIC,
    CHECKPOINTS_DIR,
    META_ITEM,
    STATE_ITEM,
    best_metric,
    content_digest,
    host_copy,
)
from limubert_jax.runtime.errors import LimuBertError, destination_error, first_line

LOCK_FILE = ".lock"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0  # ten missed heartbeats
CORRUPT_DIR = "checkpoints-corrupt"
DELETING_DIR = "deleting"  # under checkpoints/: old steps renamed here, then removed
KEEP_LATEST = 2  # the resume point and the step before it, to fall back to

# Config fields a resumed run must share with the run that wrote the checkpoints: what decides
# the model, the windows (source, build options, split), their order and masks (seeds, batch,
# where they are shuffled) and the optimizer's steps ('section.*': every field of it). The
# epochs are compared through the run record (`run_epochs`). Every other field may change on a
# resume: how the steps are computed (compute_dtype, matmul_precision, encoder_chunk,
# steps_per_dispatch), what is logged, checkpointed and plotted, where the builds are kept
# (data_dir; a rebuild is compared by its content), the recordings' fingerprint mode, and the
# downstream tasks.
RESUME_FIELDS = (
    "seed", "model.*", "mask.*", "optimizer.*",
    "dataset.name", "dataset.version", "dataset.manual_dir", "dataset.seed", "dataset.train_rate",
    "dataset.vali_rate", "dataset.split_by", "dataset.stride", "dataset.max_gap_s", "dataset.acc_unit",
    "dataset.gyro_unit", "dataset.timestamp_unit", "dataset.columns", "dataset.label_columns",
    "dataset.ignore_columns",
    "train.batch_size", "train.device_resident",
)
RUN_FILE = "run.json"  # the run record, beside config.json
EPOCHS_FIELD = "config.train.num_epochs"  # how the run record's `num_epochs` is named to users


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir for one job (see the module docstring)."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = storage.as_path(workdir)
        self.path = self.workdir / LOCK_FILE
        self._record = {"pid": os.getpid(), "host": socket.gethostname(),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> "WorkdirLock":
        error = None
        if jax.process_index() == 0:
            try:
                self._acquire()
            except LimuBertError as e:
                error = str(e)
        if jax.process_count() > 1:  # everyone learns whether process 0 got it
            from jax.experimental import multihost_utils  # noqa: PLC0415

            ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
            if not int(ok) and error is None:
                error = f"{self.workdir}: process 0 could not lock the workdir (see its error)"
        if error is not None:
            raise LimuBertError(error)
        return self

    def __exit__(self, *exc) -> None:
        if jax.process_index() == 0:
            self._stop.set()
            if self._heartbeat is not None:
                self._heartbeat.join()
            if self._holder() == self._record:
                self.path.unlink(missing_ok=True)

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or damaged: judged by its age alone

    def _age(self) -> float:
        try:
            return time.time() - os.stat(self.path).st_mtime if storage.is_local(self.path) else 0.0
        except FileNotFoundError:
            return 0.0

    def _acquire(self) -> None:
        try:
            if self.workdir.exists() and not self.workdir.is_dir():
                raise LimuBertError(f"workdir {self.workdir} exists and is not a directory")
            self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LimuBertError(f"workdir {self.workdir}: cannot create it ({e.strerror or e})") from None
        for _ in range(3):
            if self._create():
                self._start_heartbeat()
                return
            holder = self._holder()
            if holder is None:
                continue  # released meanwhile
            same_host = holder.get("host") == self._record["host"]
            dead = same_host and isinstance(holder.get("pid"), int) and not storage.pid_alive(holder["pid"])
            if dead or self._age() > STALE_SECONDS:
                logging.warning("taking over the lock of a run that is gone: %s", holder or self.path)
                self.path.unlink(missing_ok=True)
                continue
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
                   f"{holder.get('command')}") if holder else "a process whose lock is being written"
            raise LimuBertError(
                f"workdir {self.workdir} is in use by another run ({who}); wait for it to end, or, if that "
                f"run is gone, delete {self.path}"
            )
        raise LimuBertError(f"workdir {self.workdir}: could not take its lock {self.path}")

    def _create(self) -> bool:
        text = json.dumps(self._record) + "\n"
        if not storage.is_local(self.path):
            if self.path.exists():
                return False
            self.path.write_text(text)
            return True
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        except OSError as e:
            raise LimuBertError(f"workdir {self.workdir} is not writable ({e.strerror or e})") from None
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True

    def _start_heartbeat(self) -> None:
        if not storage.is_local(self.path):
            return

        def beat():
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    os.utime(self.path)
                except OSError:
                    pass

        self._heartbeat = threading.Thread(target=beat, name="workdir-lock-heartbeat", daemon=True)
        self._heartbeat.start()


def run_epochs(config: ml_collections.ConfigDict) -> int:
    """The run's epochs: `config.train.extend_to_epochs` where set (a resume carrying a run on
    to that many), else `config.train.num_epochs`."""
    extend = config.train.get("extend_to_epochs")
    return config.train.num_epochs if extend is None else extend


def data_identity(data) -> dict[str, Any]:
    """What the windows of `data` (an `loading.PretrainData`) are, as built: the
    build's count of windows and the fingerprint of its source that the build recorded
    (recordings: of their folder; npy layouts: the arrays' SHA-256), or where it records none
    (datasets built from fixed downloads) the build's full name. A merged dataset: each part's."""
    if data.sources:
        return {"parts": [data_identity(part) for part in data.sources]}
    meta = dict(data.info.metadata or {})
    identity: dict[str, Any] = {"windows": int(data.num_windows)}
    if "source_fingerprint" in meta:
        # Keyed by its mode: fingerprints of another mode say nothing about a change.
        identity[f"source_fingerprint_{meta.get('fingerprint_mode', 'stat')}"] = meta["source_fingerprint"]
    elif "data_sha256" in meta:
        identity.update(data_sha256=meta["data_sha256"], label_sha256=meta.get("label_sha256"))
    else:
        identity["build"] = str(data.info.full_name)
    return identity


def run_record(config: ml_collections.ConfigDict, data) -> dict[str, Any]:
    """The run's record (RUN_FILE): its data (`data_identity`), the training windows, the
    epochs and steps, and the steps its learning-rate schedule spans (None: a constant rate,
    which a run of any length shares)."""
    steps_per_epoch = input_pipeline.steps_per_epoch(data, config.train.batch_size)
    total_steps = steps_per_epoch * run_epochs(config)
    return {
        "data": data_identity(data), "train_windows": len(data.train), "num_epochs": run_epochs(config),
        "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
        "schedule_steps": total_steps if config.optimizer.name == "bert_adam" else None,
    }


def write_run_files(workdir: str | os.PathLike, config: ml_collections.ConfigDict, record: dict[str, Any]) -> None:
    """config.json and the run record, written together (by the caller's process 0)."""
    workdir = storage.as_path(workdir)
    storage.write_together({workdir / "config.json": (config.to_json(indent=2) + "\n").encode(),
                            workdir / RUN_FILE: (json.dumps(record, indent=2) + "\n").encode()})


def _config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """RESUME_FIELDS of a config (as JSON), by their names on the command line; a field the
    config lacks (written before the field existed) is left out."""
    fields = {}
    for name in RESUME_FIELDS:
        section, _, key = name.rpartition(".")
        values = (config.get(section) or {}) if section else config
        for field in sorted(values) if key == "*" else [key]:
            if field in values:
                fields[f"config.{section + '.' if section else ''}{field}"] = values[field]
    return fields


def _flat(prefix: str, value: Any, into: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}", item, into)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _flat(f"{prefix}[{i}]", item, into)
    else:
        into[prefix] = value
    return into


def flat_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A record's leaves by dotted name (`data.windows`, `dataset_config.stride`, `parts[0].build`):
    what a check that a run is the one recorded compares, and names in its refusal."""
    fields: dict[str, Any] = {}
    for key, value in record.items():
        _flat(key, value, fields)
    return fields


def _compared(config: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """What a resume compares, by name: the config fields, and the run record's entries
    (`data.windows`, `steps_per_epoch`, ...; its `num_epochs` as EPOCHS_FIELD)."""
    fields = _config_fields(config)
    for key, value in (record or {}).items():
        _flat(EPOCHS_FIELD if key == "num_epochs" else key, value, fields)
    return fields


def _shown(value: Any) -> str:
    if isinstance(value, str) and len(value) > 16 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "..."  # a digest: its head tells two apart
    return repr(value)


def saved_steps(workdir: str | os.PathLike) -> list[int]:
    """The checkpoint steps in `workdir`, oldest first, read from its folder names (no Orbax)."""
    directory = storage.as_path(workdir) / CHECKPOINTS_DIR
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def check_resume(workdir: str | os.PathLike, config: ml_collections.ConfigDict, data=None) -> None:
    """A `LimuBertError` when `workdir` holds checkpoints of a run other than the one that
    `config` trains on `data` (an `loading.PretrainData`; None: loaded here): one line
    naming each field that differs, old and new, and how to go on (see the module docstring).
    A workdir written before RUN_FILE existed is compared by its config alone."""
    workdir = storage.as_path(workdir)
    saved_path = workdir / "config.json"
    steps = saved_steps(workdir)
    if not steps or not saved_path.exists():
        return
    data = loading.load_data(config) if data is None else data
    try:
        saved_config = json.loads(saved_path.read_text())
        saved_record = json.loads((workdir / RUN_FILE).read_text()) if (workdir / RUN_FILE).exists() else None
    except ValueError as e:
        raise LimuBertError(f"{workdir}: config.json or {RUN_FILE} is not readable JSON ({e}); the run's record is "
                            "needed to resume it") from None
    if saved_record is None:
        logging.warning("%s has no %s (a run of an earlier version): its data and steps cannot be compared, only "
                        "its config", workdir, RUN_FILE)
    record = run_record(config, data)
    before = _compared(saved_config, {"num_epochs": run_epochs(ml_collections.ConfigDict(saved_config)),
                                      **(saved_record or {})})
    after = _compared(json.loads(config.to_json()), record)
    # Names on one side only are not compared: fields of another version, fingerprints of
    # another mode (the count of windows is always there).
    diffs = {name: (old, after[name]) for name, old in before.items() if name in after and old != after[name]}
    latest, total, epochs = steps[-1], record["total_steps"], record["num_epochs"]
    length_only = set(diffs) <= {EPOCHS_FIELD, "total_steps", "schedule_steps"}
    exact = record["schedule_steps"] is None  # a rate that a run of any length shares
    extend = config.train.get("extend_to_epochs")
    if latest <= total and (not diffs or (length_only and exact and extend is not None)):
        if diffs:
            logging.info("carrying the run in %s on to %d epochs (%d steps)", workdir, epochs, total)
        return
    what = [f"{name}: {_shown(old)} -> {_shown(new)}" for name, (old, new) in diffs.items()]
    if latest > total:
        what.append(f"its checkpoint is at step {latest}, past this run's {total} steps")
    if diffs and length_only and latest > total:
        how = f"resume with --{EPOCHS_FIELD}={before[EPOCHS_FIELD]}, or use a new workdir"
    elif diffs and length_only and not exact:
        how = (f"carrying it on is not exact: {config.optimizer.name}'s warmup and decay span the run's total steps, "
               f"so its steps so far followed another schedule than a run of {epochs} epochs; use a new workdir")
    elif diffs and length_only:
        how = (f"to carry it on to {epochs} epochs, rerun with --config.train.extend_to_epochs={epochs} (exact: "
               f"{config.optimizer.name}'s learning rate does not depend on the run's length), or use a new workdir")
    else:
        how = "resume with the run's settings, or use a new workdir" + (
            " (config.train.extend_to_epochs continues a run whose only change is its number of epochs)"
            if extend is not None else "")
    raise LimuBertError(f"workdir {workdir} holds another run ({'; '.join(what)}): {how}")


class CorruptCheckpointError(LimuBertError):
    """A checkpoint step that cannot be read or whose content differs from what was saved."""


class RunCheckpoints:
    """A pretraining run's checkpoints (see the module docstring). Every process creates it
    and calls save/restore alike (Orbax: process 0 writes what is replicated)."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = storage.as_path(workdir)
        self.directory = storage.absolute(self.workdir / CHECKPOINTS_DIR)
        policy = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(KEEP_LATEST),
            checkpoint_managers.BestN(get_metric_fn=best_metric, reverse=True, n=1),  # reverse: lowest is best
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, best_fn=best_metric, best_mode="min",
            cleanup_tmp_directories=True, todelete_subdir=DELETING_DIR,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._remove_deleted()
        self._pending: int | None = None  # a step whose asynchronous save may still be running

    def _remove_deleted(self) -> None:
        """Removes the old steps Orbax renamed into DELETING_DIR (whole or half deleted)."""
        if jax.process_index() == 0 and (self.directory / DELETING_DIR).exists():
            (self.directory / DELETING_DIR).rmtree(missing_ok=True)

    def check_saved(self) -> None:
        """Raises `LimuBertError` if the last asynchronous save failed."""
        if self._pending is None:
            return
        try:
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001  (Orbax re-raises the writer thread's error)
            raise self._save_failed(e) from None

    def _save_failed(self, error: Exception) -> LimuBertError:
        # A full or read-only disk names the checkpoints folder, not the array file deep
        # inside Orbax's temporary step that TensorStore names.
        line = destination_error(error, where=self.directory)
        if line is not None:
            return LimuBertError(f"{line}; checkpoint step {self._pending} was not saved")
        return LimuBertError(f"saving checkpoint step {self._pending} in {self.directory} failed: {first_line(error)}")

    def save(self, step: int, state, record: dict[str, Any]) -> None:
        """Saves `state` at `step` with `record` (the epoch's metrics) and its digests.

        What is written is a host copy of the state (one transfer, for the digests too): a
        save of NumPy arrays took half the CPU time of one of device arrays (85 instead of
        160 ms for base_v1 with BertAdam's state), and it records no device topology, so
        any process restores it onto its own devices (`restore`) or without a target.
        """
        self.check_saved()
        state = host_copy(state)
        record = dict(record, state_sha256=content_digest(state), params_sha256=content_digest(state.params))
        self.manager.save(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave(record),
        }), metrics={BEST_METRIC: record[BEST_METRIC]})
        self._pending = step
        self._remove_deleted()

    def wait(self) -> None:
        """Waits for the last save; a failure is a `LimuBertError` naming its step."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_failed(e) from None
        self._remove_deleted()

    def record(self, step: int) -> dict[str, Any]:
        """The metadata saved with `step` (its metrics and digests)."""
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()}))[META_ITEM]
        except Exception as e:  # noqa: BLE001
            raise CorruptCheckpointError(f"checkpoint step {step} in {self.directory}: its metadata cannot be "
                                         f"read ({first_line(e)})") from None

    def restore(self, step: int, like) -> Any:
        """The train state saved at `step` (laid out like `like`), verified against its digest."""
        expected = self.record(step).get("state_sha256")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        try:
            state = self.manager.restore(step, args=ocp.args.Composite(**{
                STATE_ITEM: ocp.args.StandardRestore(abstract)}))[STATE_ITEM]
        except Exception as e:  # noqa: BLE001  (tensorstore and Orbax raise many kinds)
            raise CorruptCheckpointError(f"checkpoint step {step} in {self.directory} cannot be read "
                                         f"({first_line(e)})") from None
        if expected is not None and content_digest(state) != expected:
            raise CorruptCheckpointError(f"checkpoint step {step} in {self.directory} is corrupted: its content "
                                         "differs from what was saved (SHA-256 mismatch)")
        return state

    def steps(self) -> list[int]:
        """The saved steps, oldest first."""
        return sorted(self.manager.all_steps())

    def restore_latest(self, like, *, fall_back: bool) -> tuple[int, Any]:
        """(step, state) of the newest step, or (0, `like`) when there is none. A bad step is
        an error, or with `fall_back` moved to CORRUPT_DIR and the next newest tried."""
        for step in reversed(self.steps()):
            try:
                return step, self.restore(step, like)
            except CorruptCheckpointError as e:
                if not fall_back:
                    raise CorruptCheckpointError(
                        f"{e}; rerun with --config.train.fall_back_to_good_checkpoint=True to move it to "
                        f"{self.workdir / CORRUPT_DIR} and resume from the newest good step") from None
                self._move_aside(step)
                logging.warning("%s; moved to %s, trying the step before", e, self.workdir / CORRUPT_DIR)
        return 0, like

    def _move_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            target = self.workdir / CORRUPT_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # noqa: PLC0415

            multihost_utils.sync_global_devices(f"limubert_jax.io.workdir.move_aside:{step}")
        self.manager.reload()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def close(self) -> None:
        self.manager.close()

