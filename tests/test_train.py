"""The main job end to end: outputs, export of the best checkpoint, exact resume after a real
kill, the non-finite guard and config errors. Uses the tiny `tests/configs/test.py`."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import child_env
from limubert_jax import config_lib, convert, embed, main, tasks
from limubert_jax.data import loading
from limubert_jax.io import checkpoint
from limubert_jax.pretraining import trainer
from limubert_jax.runtime import cpu_devices
from limubert_jax.runtime.errors import LimuBertError

ROOT = Path(__file__).resolve().parents[1]


def _config(data_dir, **overrides):
    config = config_lib.sibling_config(str(ROOT / "tests" / "configs" / "test.py"), "test").get_config()
    config.dataset.data_dir = str(data_dir)
    for dotted, value in overrides.items():
        section, field = dotted.split(".")
        config[section][field] = value
    return config


@pytest.fixture(scope="session")
def data_dir(synthetic_data_dir):
    return synthetic_data_dir


def _main_command(workdir, data_dir, *extra):
    return [sys.executable, "-m", "limubert_jax.main", f"--config={ROOT / 'tests' / 'configs' / 'test.py'}",
            f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}", *extra]


def _final_params(workdir, step):
    # Read without a target: the job saves host copies, so a step of its run on several CPU
    # devices reads back in this process of one device (`RunCheckpoints.save`).
    state = checkpoint.ocp.StandardCheckpointer().restore((Path(workdir) / "checkpoints" / str(step) / "state").absolute())
    return state["params"], int(state["step"])


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


# The main job's run that the tests below read: 4 epochs of 15 steps (a fifth of the
# synthetic set), so that a kill right after the first checkpoint still leaves three epochs.
EPOCHS = 4
RUN_ARGS = (f"--config.train.num_epochs={EPOCHS}", "--config.dataset.train_rate=0.2")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    """The main job run to the end as a user runs it (`RUN_ARGS`); tests only read it."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    start = time.monotonic()
    done = subprocess.run(_main_command(workdir, data_dir, *RUN_ARGS), cwd=workdir.parent,
                          capture_output=True, text=True, timeout=600)
    (workdir.parent / "wall_s").write_text(str(time.monotonic() - start))
    assert done.returncode == 0, done.stderr[-3000:]
    (workdir.parent / "stdout").write_text(done.stdout)
    return workdir


@pytest.mark.slow
def test_main_job_outputs_and_exports(tmp_path, finished_run):
    workdir = finished_run
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    for record in records:
        assert set(record) == {"step", "epoch", "train_loss", "val_loss", "learning_rate", "samples_per_second"}
        assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
    assert any((workdir / "tensorboard").iterdir())
    assert (workdir / "reconstruction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["best_val_loss"] == min(r["val_loss"] for r in records)
    # Startup is counted from the process's launch, so it lies within the command's wall time.
    assert 0.5 < summary["startup_s"] < float((workdir.parent / "wall_s").read_text())
    assert summary["peak_host_bytes"] > 100e6 and summary["peak_device_bytes"] is None  # XLA:CPU reports none
    # The loop's host time per step, read from the build's window store, is printed at the end.
    assert summary["input"] == "window store" and 0 < summary["host_input_ms_per_step"] < 1e3
    stdout = (workdir.parent / "stdout").read_text()
    assert f"host time per step {summary['host_input_ms_per_step']:.2f} ms (reading batches from the window store" in stdout
    assert f"best validation loss {summary['best_val_loss']:.4f} at step {summary['best_step']}" in stdout
    # The main job splits the cores into CPU devices and trains data parallel over as many
    # as the batch divides by (`runtime.cpu_devices`, `sharding.training_mesh`).
    batch = json.loads((workdir / "config.json").read_text())["train"]["batch_size"]
    cores = cpu_devices.usable_cores()
    assert summary["devices"] == max(n for n in range(1, cores + 1) if batch % n == 0)

    # The workdir exports like a checkpoint directory, taking the best step.
    pytest.importorskip("torch")
    assert convert.main(["to_torch", str(workdir), str(tmp_path / "model.pt")]) == 0
    _, _, best = checkpoint.load_model(workdir)
    params, step = _final_params(workdir, summary["best_step"])
    assert step == summary["best_step"]
    for a, b in zip(_leaves(best), _leaves(params)):
        np.testing.assert_array_equal(a, b)
    windows = np.random.default_rng(0).normal(size=(3, 120, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", windows)
    assert embed.main(["--checkpoint", str(workdir), "--input", str(tmp_path / "x.npy"),
                       "--output", str(tmp_path / "e.npy")]) == 0
    assert np.load(tmp_path / "e.npy").shape == (3, 120, 24)


@pytest.mark.parametrize("configured, windows, devices, expected", [
    (512, 208, 1, 208),  # a split smaller than the batch is one batch, unpadded
    (512, 30, 8, 32),  # padded to the devices only
    (16, 208, 1, 16),
    (512, 2000, 8, 512),
])
def test_validation_batch_is_no_larger_than_the_split(configured, windows, devices, expected):
    from types import SimpleNamespace

    config = SimpleNamespace(train=SimpleNamespace(eval_batch_size=configured))
    data, mesh = SimpleNamespace(vali=range(windows)), SimpleNamespace(shape={"data": devices})
    assert trainer.eval_batch_size(config, data, mesh) == expected


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(tmp_path, data_dir, finished_run):
    uninterrupted, epochs, args = finished_run, EPOCHS, RUN_ARGS
    total = json.loads((uninterrupted / "summary.json").read_text())["steps"]
    per_epoch = total // epochs

    killed = tmp_path / "killed"
    process = subprocess.Popen(_main_command(killed, data_dir, *args), cwd=tmp_path, env=child_env(xla_cache="read-only"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_checkpoint = killed / "checkpoints" / str(per_epoch)
    deadline = time.time() + 300
    while not first_checkpoint.is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert still_running, "the run finished before it could be killed"
    assert not (killed / "summary.json").exists()
    steps_saved = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert steps_saved and max(steps_saved) < total

    resumed = subprocess.run(_main_command(killed, data_dir, *args), cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, step_a = _final_params(uninterrupted, total)
    got, step_b = _final_params(killed, total)
    assert step_a == step_b == total
    for a, b in zip(_leaves(expected), _leaves(got)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    epochs_logged = [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs_logged[-1] == epochs and sorted(set(epochs_logged)) == list(range(1, epochs + 1))


@pytest.mark.slow
def test_a_run_resumes_on_another_device_count(tmp_path, data_dir, finished_run):
    # The finished run trained in a child process on one CPU device per core; this process
    # has one device. Its steps hold host copies, restored onto the resuming run's mesh.
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    before = json.loads((finished_run / "summary.json").read_text())
    config = _config(data_dir, **{"train.num_epochs": EPOCHS, "train.extend_to_epochs": EPOCHS + 1,
                                  "dataset.train_rate": 0.2})
    after = trainer.pretrain(config, workdir)
    assert after["devices"] == 1
    assert after["steps"] == before["steps"] // EPOCHS * (EPOCHS + 1)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 2))
    # It went on from the saved state: its one new epoch is where the run had got to, not
    # where a fresh start is.
    assert records[-1]["train_loss"] < 1.1 * records[-2]["train_loss"] < records[0]["train_loss"]


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    real = trainer.jit_train_step

    def poisoned(*args, **kwargs):
        step_fn = real(*args, **kwargs)

        def step(state, batch, rng):
            state, metrics = step_fn(state, batch, rng)
            if int(state.step) >= poison_from:
                metrics = {"loss": metrics["loss"] * np.nan}
            return state, metrics

        return step

    config = _config(data_dir)
    config.train.num_epochs = 3
    data = loading.load_pretrain_data(config.dataset)
    per_epoch = trainer.input_pipeline.steps_per_epoch(data, config.train.batch_size)
    poison_from = per_epoch + 5  # in the second epoch
    monkeypatch.setattr(trainer, "jit_train_step", poisoned)
    with pytest.raises(trainer.NonFiniteLossError, match=f"at step {poison_from - 1} \\(epoch 1\\)"):
        tasks.run(config, tmp_path)
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [per_epoch]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.seq_len": 100}, "seq_len=100 but dataset synthetic_imu/20_120 has windows of 120"),
        ({"model.feature_num": 12}, "feature_num=12 but dataset synthetic_imu has only 9"),
        ({"model.hidden": 25}, "must divide by n_heads"),
        ({"optimizer.name": "sgd"}, "unknown optimizer 'sgd'"),
        ({"train.num_epochs": 0}, "num_epochs must be a positive integer"),
        ({"train.extend_to_epochs": 0}, "extend_to_epochs must be a positive integer"),
        ({"mask.mask_ratio": 2.0}, "mask"),
        ({"train.encoder_chunk": 3}, r"encoder_chunk must be -1 \(the backend's default\), 0 \(whole batch\) or a "
                                     r"positive multiple of 2, got 3"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, data_dir, overrides, message):
    with pytest.raises((LimuBertError, ValueError), match=message):
        tasks.run(_config(data_dir, **overrides), tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_batch_that_does_not_divide_the_devices_names_its_field(data_dir):
    from types import SimpleNamespace

    data = trainer.load_data(_config(data_dir))
    two_devices = SimpleNamespace(devices=np.empty(2))
    for field, size, hint in (("eval_batch_size", 3, 2), ("batch_size", 33, 32)):
        with pytest.raises(LimuBertError, match=rf"^config\.train\.{field}={size} does not divide by the 2 devices of "
                                                rf"the mesh; choose a multiple of 2 \(e\.g\. --config\.train\.{field}={hint}\)$"):
            trainer.check_pretrain_config(_config(data_dir, **{f"train.{field}": size}), data, mesh=two_devices)


def test_bad_config_from_the_command_line_exits_2(tmp_path, data_dir, capsys):
    # The command's own `main`, in this process: the error comes before any JAX work (the
    # exit status and stderr of a real process: test_workdir.py's command-line tests).
    status = main.main(_main_command(tmp_path / "w", data_dir, "--config.optimizer.name=sgd")[3:])
    assert status == 2
    assert "error: config.optimizer: unknown optimizer 'sgd'" in capsys.readouterr().err
