"""A workdir is never lost or silently wrong: one job at a time, resumes that match the run,
verified checkpoints, clean restarts after kills, one-line errors for bad command lines."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from limubert_jax import config_lib, main, tasks
from limubert_jax.data import loading
from limubert_jax.io import checkpoint, workdir
from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain
from limubert_jax.pretraining import steps
from limubert_jax.runtime.errors import LimuBertError

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 15  # 480 synthetic training windows (train_rate 0.2) at the test batch of 32


def _config(data_dir, epochs: int, **train_overrides):
    config = config_lib.sibling_config(str(ROOT / "tests" / "configs" / "test.py"), "test").get_config()
    config.dataset.data_dir = str(data_dir)
    config.dataset.train_rate = 0.2
    config.train.num_epochs = epochs
    config.train.update(train_overrides)
    return config


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory, synthetic_data_dir):
    """A run of 2 epochs (checkpoints at steps 15 and 30); tests work on copies."""
    path = tmp_path_factory.mktemp("two-epochs") / "run"
    tasks.run(_config(synthetic_data_dir, 2), path)
    return path


@pytest.fixture
def run(two_epochs, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(two_epochs, copy)
    return copy


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (path / "metrics.jsonl").read_text().splitlines()]


def _main(*args, cwd):
    return subprocess.run([sys.executable, "-m", "limubert_jax.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


# ---------------------------------------------------------------------------------------
# One job at a time.


@pytest.mark.slow  # the pretraining of `run`
def test_a_second_job_exits_2_naming_the_holder(run, synthetic_data_dir):
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-11-28 09:00:00",
              "command": "python -m limubert_jax.main --config=configs/test.py"}
    (run / workdir.LOCK_FILE).write_text(json.dumps(holder))
    before = _tree(run)
    result = _main(f"--config={ROOT / 'tests' / 'configs' / 'test.py'}", f"--workdir={run}",
                   f"--config.dataset.data_dir={synthetic_data_dir}", "--config.dataset.train_rate=0.2",
                   "--config.train.num_epochs=2", cwd=run.parent)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"is in use by another run (pid {os.getpid()} on {socket.gethostname()}" in lines[0]
    assert "Traceback" not in result.stderr
    assert _tree(run) == before  # nothing written, the holder's lock kept


def test_the_lock_of_a_gone_run_is_taken_over_and_released(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / workdir.LOCK_FILE
    lock.write_text(json.dumps({"pid": int(finished.stdout), "host": socket.gethostname()}))  # a dead pid
    with workdir.WorkdirLock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    # Another host's lock: held while it is refreshed, abandoned once it is older than STALE_SECONDS.
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then", "command": "train"}))
    with pytest.raises(LimuBertError, match=r"in use by another run \(pid 1 on elsewhere, started then: train\)"):
        with workdir.WorkdirLock(tmp_path):
            pass
    old = time.time() - workdir.STALE_SECONDS - 5
    os.utime(lock, (old, old))
    with workdir.WorkdirLock(tmp_path):
        assert json.loads(lock.read_text())["host"] == socket.gethostname()
    assert not lock.exists()


def test_a_workdir_that_is_a_file_or_cannot_be_made(tmp_path, synthetic_data_dir):
    (tmp_path / "file").write_text("notes")
    with pytest.raises(LimuBertError, match=r"workdir .*file exists and is not a directory"):
        tasks.run(_config(synthetic_data_dir, 1), tmp_path / "file")
    with pytest.raises(LimuBertError, match=r"workdir .*file/run: cannot create it"):
        tasks.run(_config(synthetic_data_dir, 1), tmp_path / "file" / "run")
    assert (tmp_path / "file").read_text() == "notes"


# ---------------------------------------------------------------------------------------
# Resumes.


def _refusal(run, config) -> str:
    """The one line that refuses `config` in the workdir `run`, which it leaves as it was."""
    before = _tree(run)
    with pytest.raises(LimuBertError) as refused:
        tasks.run(config, run)
    assert _tree(run) == before  # config.json and run.json too, byte for byte
    message = str(refused.value)
    assert message.startswith(f"workdir {run} holds another run (") and "\n" not in message
    return message


@pytest.mark.slow  # the pretraining of `run`
def test_a_resume_of_other_data_or_steps_is_one_line_and_writes_nothing(run, synthetic_data_dir, tmp_path):
    elsewhere = tmp_path / "recordings"
    elsewhere.mkdir()
    config = _config(synthetic_data_dir, 2)
    config.model.hidden = 32
    config.dataset.update(manual_dir=str(elsewhere), stride=40, acc_unit="g")
    config.optimizer.learning_rate = 3e-4
    message = _refusal(run, config)
    assert (f"(config.model.hidden: 24 -> 32; config.optimizer.learning_rate: 0.001 -> 0.0003; "
            f"config.dataset.manual_dir: None -> {str(elsewhere)!r}; config.dataset.stride: 0 -> 40; "
            f"config.dataset.acc_unit: 'm/s^2' -> 'g'): resume with the run's settings, or use a new workdir") in message
    # Another split, or another batch: other windows, or other steps per epoch.
    message = _refusal(run, _config(synthetic_data_dir, 2, batch_size=16))
    assert ("(config.train.batch_size: 32 -> 16; steps_per_epoch: 15 -> 30; total_steps: 30 -> 60)" in message)
    config = _config(synthetic_data_dir, 2)
    config.dataset.split_by = "user"
    assert "(config.dataset.split_by: 'window' -> 'user')" in _refusal(run, config)


@pytest.mark.slow  # the pretraining of `run`
def test_the_epochs_change_only_by_extend_to_epochs(run, synthetic_data_dir):
    message = _refusal(run, _config(synthetic_data_dir, 3))
    assert message.endswith("(config.train.num_epochs: 2 -> 3; total_steps: 30 -> 45): to carry it on to 3 epochs, "
                            "rerun with --config.train.extend_to_epochs=3 (exact: adam's learning rate does not "
                            "depend on the run's length), or use a new workdir")
    message = _refusal(run, _config(synthetic_data_dir, 1))
    assert message.endswith("(config.train.num_epochs: 2 -> 1; total_steps: 30 -> 15; its checkpoint is at step 30, "
                            "past this run's 15 steps): resume with --config.train.num_epochs=2, or use a new workdir")
    assert "; its checkpoint is at step 30" in _refusal(run, _config(synthetic_data_dir, 2, extend_to_epochs=1))
    message = _refusal(run, _config(synthetic_data_dir, 2, extend_to_epochs=3, batch_size=16))
    assert message.endswith("(config.train.extend_to_epochs continues a run whose only change is its number of "
                            "epochs)")
    # A run whose warmup and decay span its length cannot be carried on exactly.
    for name, edit in (("config.json", lambda c: c["optimizer"].update(name="bert_adam")),
                       (workdir.RUN_FILE, lambda r: r.update(schedule_steps=30))):
        saved = json.loads((run / name).read_text())
        edit(saved)
        (run / name).write_text(json.dumps(saved))
    config = _config(synthetic_data_dir, 2, extend_to_epochs=3)
    config.optimizer.name = "bert_adam"
    assert _refusal(run, config).endswith(
        "(config.train.num_epochs: 2 -> 3; total_steps: 30 -> 45; schedule_steps: 30 -> 45): carrying it on is not "
        "exact: bert_adam's warmup and decay span the run's total steps, so its steps so far followed another "
        "schedule than a run of 3 epochs; use a new workdir")


@pytest.mark.slow  # the pretraining of `run`
def test_how_a_run_is_computed_logged_or_used_may_change_on_a_resume(run, synthetic_data_dir, tmp_path):
    config = _config(synthetic_data_dir, 2, log_every_steps=7, checkpoint_every_epochs=3, plot_windows=1,
                     eval_batch_size=16, steps_per_dispatch=4, compute_dtype="bfloat16", encoder_chunk=8,
                     matmul_precision="default", fall_back_to_good_checkpoint=True)
    config.task = "pretrain+embed"
    config.dataset.fingerprint = "content"
    config.downstream.update(label="user", label_rate=0.5, num_epochs=3, classifier="lstm_v1")
    data = loading.load_data(config)
    config.dataset.data_dir = str(tmp_path / "rebuilt")  # the same build elsewhere
    workdir.check_resume(run, config, data)
    (run / workdir.RUN_FILE).unlink()  # a run of an earlier version: compared by its config alone
    workdir.check_resume(run, config, data)
    with pytest.raises(LimuBertError, match=r"\(config\.seed: 3431 -> 1\):"):
        config.seed = 1  # the shuffle and the masks
        workdir.check_resume(run, config, data)


@pytest.mark.slow  # a pretraining (its programs are those the module's run compiled)
def test_a_resume_on_rewritten_arrays_is_refused(tmp_path, two_epochs):
    arrays, rng = tmp_path / "arrays", np.random.default_rng(0)
    arrays.mkdir()
    np.save(arrays / "data_20_120.npy", rng.normal(size=(640, 120, 9)).astype(np.float32))
    config = _config(tmp_path / "tfds", 1)
    config.dataset.update(name="imu_npy", manual_dir=str(arrays))
    tasks.run(config, tmp_path / "run")
    np.save(arrays / "data_20_120.npy", rng.normal(size=(1280, 120, 9)).astype(np.float32))
    config.dataset.data_dir = str(tmp_path / "tfds-new")  # the first build would be refused as stale
    assert re.search(r"holds another run \(data\.windows: 640 -> 1280; data\.data_sha256: [0-9a-f]{12}\.\.\. -> "
                     r"[0-9a-f]{12}\.\.\.; train_windows: 128 -> 256; steps_per_epoch: 4 -> 8; total_steps: 4 -> 8\): "
                     r"resume with the run's settings, or use a new workdir$", _refusal(tmp_path / "run", config))


def test_a_runs_data_is_known_by_its_builds_fingerprint():
    from types import SimpleNamespace

    def data(windows, full_name="x/20_120/1.0.0", **metadata):
        return SimpleNamespace(sources=(), num_windows=windows,
                               info=SimpleNamespace(full_name=full_name, metadata=metadata))

    recordings = data(50, fingerprint_mode="content", source_fingerprint="f" * 64, recordings=[])
    assert workdir.data_identity(recordings) == {"windows": 50, "source_fingerprint_content": "f" * 64}
    arrays = data(400, data_sha256="a" * 64, label_sha256=None)
    assert workdir.data_identity(arrays) == {"windows": 400, "data_sha256": "a" * 64, "label_sha256": None}
    merged = SimpleNamespace(sources=(arrays, data(9)))
    assert workdir.data_identity(merged) == {"parts": [workdir.data_identity(arrays),
                                                       {"windows": 9, "build": "x/20_120/1.0.0"}]}


@pytest.mark.slow
def test_a_corrupted_step_is_refused_or_skipped_when_asked_and_metrics_stay_unique(run, synthetic_data_dir):
    meta = run / "checkpoints" / "30" / "meta" / "metadata"
    record = json.loads(meta.read_text())
    record["state_sha256"] = "0" * 64  # as if the state's bytes had changed on disk
    meta.write_text(json.dumps(record))
    with pytest.raises(LimuBertError, match=r"^checkpoint step 30 in .* is corrupted: .*SHA-256 mismatch\); rerun "
                                            r"with --config.train.fall_back_to_good_checkpoint=True"):
        tasks.run(_config(synthetic_data_dir, 2, extend_to_epochs=3), run)
    # A kill after the metrics line of step 45 and before its checkpoint, and a line cut short.
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 45, "epoch": 3}) + "\n" + '{"step": 6')
    tasks.run(_config(synthetic_data_dir, 2, extend_to_epochs=3, fall_back_to_good_checkpoint=True), run)
    assert _steps(run) == [15, 30, 45]  # resumed from step 15: 30 and 45 logged once each
    assert [p.name.split("-")[0] for p in (run / workdir.CORRUPT_DIR).iterdir()] == ["30"]
    kept = {int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()}
    assert {30, 45} <= kept <= {15, 30, 45}  # the new steps 30 and 45, and 15 if it is still the best


@pytest.mark.slow  # the pretraining of `run`
def test_a_longer_run_in_the_same_process_reuses_the_compiled_steps(run, synthetic_data_dir):
    # The module's run compiled them here; constant-rate Adam makes the run's length no setting.
    programs = (steps.jit_train_step, steps.jit_eval_step)
    before = [p.cache_info() for p in programs]
    summary = tasks.run(_config(synthetic_data_dir, 2, extend_to_epochs=3), run)
    after = [p.cache_info() for p in programs]
    assert [a.misses for a in after] == [b.misses for b in before]
    assert [a.hits for a in after] == [b.hits + 1 for b in before]
    assert _steps(run) == [15, 30, 45] and summary["steps"] == 45
    record = json.loads((run / workdir.RUN_FILE).read_text())
    assert (record["num_epochs"], record["steps_per_epoch"], record["total_steps"]) == (3, 15, 45)
    workdir.check_resume(run, _config(synthetic_data_dir, 3))  # carried on, the run is one of 3 epochs


@pytest.mark.slow  # the pretraining of `run`
def test_unreadable_checkpoint_files_are_one_line(run, synthetic_data_dir):
    for data_file in (run / "checkpoints" / "30" / "state").rglob("d/*"):
        data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 3])
    result = _main(f"--config={ROOT / 'tests' / 'configs' / 'test.py'}", f"--workdir={run}",
                   f"--config.dataset.data_dir={synthetic_data_dir}", "--config.dataset.train_rate=0.2",
                   "--config.train.num_epochs=2", "--config.train.extend_to_epochs=3", cwd=run.parent)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checkpoint step 30 in" in errors[0] and "cannot be read" in errors[0], result.stderr
    assert len(result.stderr.splitlines()) < 15 and "Traceback" not in result.stderr


@pytest.mark.slow  # the pretraining of `run`
def test_model_loads_verify_the_parameters(run, tmp_path):
    """embed, to-torch and the downstream tasks load through `checkpoint.load_model`."""
    best = checkpoint.best_step(run)
    meta = run / "checkpoints" / str(best) / "meta" / "metadata"
    record = json.loads(meta.read_text())
    assert checkpoint.load_model(run)[0] == "limu_bert"
    meta.write_text(json.dumps(dict(record, params_sha256="f" * 64)))
    with pytest.raises(LimuBertError, match=rf"checkpoint step {best} of .* is corrupted: its parameters differ"):
        checkpoint.load_model(run)
    cfg = LimuBertConfig(hidden=8, hidden_ff=16, n_layers=1, n_heads=2, seq_len=20)
    path = checkpoint.save_model(tmp_path / "model", LimuBertModel4Pretrain(cfg).init_params(jax.random.key(0)), cfg)
    config_file = path / checkpoint.CONFIG_FILE
    saved = json.loads(config_file.read_text())
    assert len(saved["params_sha256"]) == 64 and checkpoint.load_model(path)[1] == cfg
    config_file.write_text(json.dumps(dict(saved, params_sha256="0" * 64)))
    with pytest.raises(LimuBertError, match=r"checkpoint .*model is corrupted"):
        checkpoint.load_model(path)


@pytest.mark.slow
def test_a_failed_asynchronous_save_stops_the_run_at_the_next_epoch(run, synthetic_data_dir, monkeypatch):
    def failed(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", failed)
    with pytest.raises(LimuBertError,
                       match=r"/checkpoints: no space left on the device .*; checkpoint step 45 was not saved$"):
        tasks.run(_config(synthetic_data_dir, 2, extend_to_epochs=4), run)
    assert _steps(run) == [15, 30, 45]  # stopped at the end of the epoch after the failed save


@pytest.mark.slow  # the pretraining of `run`
def test_interrupted_saves_and_deletes_are_cleaned_on_start(run):
    checkpoints = run / "checkpoints"
    (checkpoints / "45.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)  # a save killed midway
    (checkpoints / workdir.DELETING_DIR / "15" / "state").mkdir(parents=True)  # a delete killed midway
    manager = workdir.RunCheckpoints(run)
    try:
        deadline = time.monotonic() + 30  # Orbax removes its tmp directories in the background
        while sorted(p.name for p in checkpoints.iterdir()) != ["15", "30"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(p.name for p in checkpoints.iterdir()) == ["15", "30"]
        assert manager.manager.all_steps() == [15, 30]
    finally:
        manager.close()


# ---------------------------------------------------------------------------------------
# Command lines.


def test_bad_command_lines_are_one_line(tmp_path, synthetic_data_dir, capsys, monkeypatch):
    # The command's own `main`, in this process (the errors come before any JAX work); a real
    # process's stderr: `test_unreadable_checkpoint_files_are_one_line` and the lock test above.
    test_config = ROOT / "tests" / "configs" / "test.py"
    monkeypatch.chdir(tmp_path)
    cases = [
        ([f"--config={test_config}", "--config.train.bogus=1"],
         "error: --config.train.bogus: no config field 'bogus' (every field: configs/default.py)"),
        ([f"--config={tmp_path / 'missing.py'}"], f"error: --config: [Errno 2] No such file or directory: "
                                                  f"'{tmp_path / 'missing.py'}'"),
    ]
    for args, expected in cases:
        try:  # a flag's usage error exits (SystemExit), as argparse's do; other errors return the status
            status = main.main([*args, f"--workdir={tmp_path / 'run'}"])
        except SystemExit as exit_info:
            status = exit_info.code
        assert (status, capsys.readouterr().err.strip()) == (2, expected)
    assert not (tmp_path / "run").exists()
    with pytest.raises(LimuBertError, match=r"^config\.train: global_batch_size 4096 is larger than the training "
                                            r"split of synthetic_imu/20_120 \(480 windows\)"):
        tasks.run(_config(synthetic_data_dir, 1, batch_size=4096), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    np.testing.assert_equal(sorted(p.name for p in tmp_path.iterdir()), [])
