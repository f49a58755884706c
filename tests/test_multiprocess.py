"""Multi-process pretraining on a simulated cluster: processes on localhost joined by
jax.distributed with gloo CPU collectives, each with its own fake CPU devices.

2 processes x 2 devices run the first half of a run and must log the same per-step losses
as 1 process x 4 devices; 1 process x 2 devices then resumes that run from its
multi-process checkpoint and must end with the same losses and the same checkpoint as the
uninterrupted 1 x 4 run. The tiny `tests/configs/test.py` trains on 48 windows, one step per
epoch, so metrics.jsonl (one line per epoch) holds every step's loss.

Also: inconsistent multi-process flags, cluster auto-detection, and the object-store
(`gs://`) writing paths exercised on a local directory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from etils import epath

from limubert_jax import config_lib
from limubert_jax.io import checkpoint, plots, storage
from limubert_jax.pretraining import metrics
from limubert_jax.runtime import distributed
from limubert_jax.runtime.errors import LimuBertError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "test.py"
EPOCHS = 4  # = steps
FIRST_LEG = 2  # epochs run by the 2-process leg before the resume on 2 devices
TOLERANCE = 1e-5
# The attention key bias has an exactly zero gradient (softmax ignores a shift shared by all
# keys), so Adam turns the rounding noise of that gradient into steps of up to about the
# learning rate: its value depends on the reduction order, i.e. on the device count.
NOISE_DRIVEN = "['params']['transformer']['attn']['proj_k']['bias']"
RUN_TIMEOUT_S = 300
# Not inherited by the children: a cluster around the test (single-process runs would join
# it) and the JAX device settings that the test sets itself.
_INHERITED_SETTINGS = ("SLURM_", "OMPI_", "JAX_COORDINATOR", "JAX_NUM_CPU_DEVICES", "JAX_PLATFORMS", "XLA_FLAGS")


def _overrides(data_dir: Path, epochs: int) -> list[str]:
    return [f"--config.dataset.data_dir={data_dir}", "--config.dataset.train_rate=0.02",
            "--config.dataset.vali_rate=0.02", f"--config.train.num_epochs={epochs}"]


def _test_config():
    return config_lib.sibling_config(str(CONFIG), "test").get_config()


@pytest.fixture(scope="module")
def data_dir(synthetic_data_dir):
    """The synthetic dataset, built before the concurrent runs so that they only read it."""
    return synthetic_data_dir


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_SETTINGS)}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
               XLA_FLAGS=os.environ.get("LIMUBERT_TESTS_XLA_FLAGS", ""))  # the session's compile settings
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Run:
    """One pretraining run as `processes` processes on localhost, `devices` CPU devices each."""

    def __init__(self, name: str, workdir: Path, data_dir: Path, epochs: int, *, processes: int, devices: int,
                 extra: tuple[str, ...] = ()):
        self.name, self.workdir = name, workdir
        cluster = []
        if processes > 1:
            port = _free_port()
            cluster = [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}"]
        self.logs, self.children = [], []
        for i in range(processes):
            log = workdir.parent / f"{name}.{i}.log"
            command = [sys.executable, "-m", "limubert_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
                       *_overrides(data_dir, epochs), *extra, *cluster, *([f"--process_id={i}"] if cluster else [])]
            with open(log, "w") as out:
                self.children.append(subprocess.Popen(command, cwd=workdir.parent, env=_env(devices),
                                                      stdout=out, stderr=subprocess.STDOUT))
            self.logs.append(log)

    def tails(self) -> str:
        return "\n".join(f"--- {log.name} (exit {child.poll()}) ---\n{log.read_text()[-2500:]}"
                         for child, log in zip(self.children, self.logs))

    def kill(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait()


def _wait(*runs: _Run) -> None:
    """Waits for every process of `runs`; the first failure or the timeout kills them all and
    fails with the tails of every process's output."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while True:
            codes = [child.poll() for run in runs for child in run.children]
            failed = any(code not in (None, 0) for code in codes)
            if failed or time.monotonic() > deadline:
                reason = "a process failed" if failed else f"timed out after {RUN_TIMEOUT_S} s"
                pytest.fail(f"{reason}:\n" + "\n".join(run.tails() for run in runs))
            if all(code == 0 for code in codes):
                return
            time.sleep(0.1)
    finally:
        for run in runs:
            run.kill()


def _losses(workdir: Path) -> dict[int, tuple[float, float]]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"{workdir}: a step logged twice (not by process 0 only?): {steps}"
    return {r["step"]: (r["train_loss"], r["val_loss"]) for r in records}


def _state(workdir: Path, step: int) -> dict[str, np.ndarray]:
    """The saved train state of `step` (parameters, optimizer state, step) by leaf path,
    read by this one process."""
    path = (workdir / "checkpoints" / str(step) / "state").absolute()
    state = checkpoint.restore_on_one_device(path)
    assert int(state["step"]) == step, f"{path}: holds step {int(state['step'])}"
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def _assert_losses_match(got: dict, expected: dict, steps: range, what: str) -> None:
    for step in steps:
        np.testing.assert_allclose(got[step], expected[step], rtol=0, atol=TOLERANCE,
                                   err_msg=f"{what}: train/val loss at step {step}")


@pytest.mark.slow
def test_two_processes_match_one_and_resume_on_fewer_devices(tmp_path, data_dir):
    reference = _Run("one_by_four", tmp_path / "one_by_four", data_dir, EPOCHS, processes=1, devices=4)
    multi = _Run("two_by_two", tmp_path / "resumed", data_dir, FIRST_LEG, processes=2, devices=2)
    _wait(reference, multi)  # concurrently: compiling is single-threaded, the machine has 2 cores

    expected, first_leg = _losses(reference.workdir), _losses(multi.workdir)
    assert sorted(expected) == list(range(1, EPOCHS + 1))
    assert sorted(first_leg) == list(range(1, FIRST_LEG + 1))
    _assert_losses_match(first_leg, expected, range(1, FIRST_LEG + 1), "2 processes x 2 devices vs 1 x 4")
    assert "pretrain:" not in multi.logs[1].read_text(), "process 1 showed progress"
    assert json.loads((multi.workdir / "summary.json").read_text())["steps"] == FIRST_LEG
    saved = sorted(int(p.name) for p in (multi.workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == FIRST_LEG
    first_leg_state = _state(multi.workdir, FIRST_LEG)  # written by 2 processes, read by one

    # The same run carried on to EPOCHS: said explicitly (a longer num_epochs alone is another run).
    resumed = _Run("one_by_two", multi.workdir, data_dir, FIRST_LEG, processes=1, devices=2,
                   extra=(f"--config.train.extend_to_epochs={EPOCHS}",))
    _wait(resumed)
    assert f"resumed from step {FIRST_LEG}" in resumed.logs[0].read_text(), resumed.tails()
    got = _losses(resumed.workdir)
    _assert_losses_match(got, expected, range(1, EPOCHS + 1), "2 x 2 then resumed on 1 x 2, vs 1 x 4 uninterrupted")
    final, reference_final = _state(resumed.workdir, EPOCHS), _state(reference.workdir, EPOCHS)
    assert final.keys() == reference_final.keys() == first_leg_state.keys()
    optimizer = _test_config().optimizer
    assert optimizer.name == "adam", "the bound below is Adam's largest step at a constant rate"
    for leaf, value in final.items():
        atol = 2 * optimizer.learning_rate * EPOCHS if leaf == NOISE_DRIVEN else TOLERANCE
        np.testing.assert_allclose(value, reference_final[leaf], rtol=0, atol=atol, err_msg=f"final state {leaf}")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_processes": 2, "process_id": 0}, "missing --coordinator_address"),
        ({"coordinator_address": "localhost:1234"}, "missing --num_processes, --process_id"),
        ({"coordinator_address": "localhost", "num_processes": 2, "process_id": 0}, "expected host:port"),
        ({"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 2}, r"must be in \[0, --num_processes=2\)"),
        ({"coordinator_address": "localhost:1234", "num_processes": 0, "process_id": 0}, "must be >= 1"),
    ],
)
def test_inconsistent_flags_are_one_line_errors(monkeypatch, kwargs, message):
    for name in list(os.environ):
        if name.startswith(_INHERITED_SETTINGS):
            monkeypatch.delenv(name)
    with pytest.raises(LimuBertError, match=message) as error:
        distributed.initialize(**kwargs)
    assert "\n" not in str(error.value)
    assert not jax.distributed.is_initialized()


def test_cluster_detection_reads_the_environment():
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "2",
             "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
    assert distributed.detected_cluster(slurm) == distributed.SLURM
    assert distributed.detected_cluster({**slurm, "SLURM_NTASKS": "1"}) is None  # one task: no coordinator
    assert distributed.detected_cluster({k: v for k, v in slurm.items() if k != "SLURM_STEP_NODELIST"}) is None
    ompi = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911", "OMPI_COMM_WORLD_SIZE": "4"}
    assert distributed.detected_cluster(ompi) == distributed.OPEN_MPI
    assert distributed.detected_cluster({**ompi, "OMPI_COMM_WORLD_SIZE": "1"}) is None
    assert distributed.detected_cluster({}) is None


def test_object_store_paths_write_whole_files(tmp_path, monkeypatch):
    """The bucket-path branches (no appends, no renames), run on a local directory."""
    assert storage.is_local(tmp_path) and storage.is_local("runs/x") and not storage.is_local("gs://b/run")
    assert str(storage.absolute("gs://b/run/checkpoints")) == "gs://b/run/checkpoints"
    assert storage.absolute(epath.Path("runs/x")) == epath.Path(os.getcwd()) / "runs" / "x"

    workdir = epath.Path(tmp_path)
    (workdir / "metrics.jsonl").write_text('{"step": 1}\n')
    monkeypatch.setattr(storage, "is_local", lambda path: False)
    writer = metrics.MetricsWriter(workdir)
    writer.write({"step": 2, "epoch": 2, "train_loss": 0.5})
    writer.write({"step": 3, "epoch": 3, "train_loss": 0.25})
    writer.close()
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]

    positions = np.tile(np.arange(3), (2, 1))
    png = plots.reconstruction_png(workdir / "r.png", np.zeros((2, 12, 6), np.float32), positions,
                                   np.zeros((2, 3, 6), np.float32))
    assert png == workdir / "r.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "r.png", "tensorboard"]
