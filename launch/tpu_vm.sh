#!/usr/bin/env bash
# Runs the pretraining job on a Cloud TPU VM slice: create (directly or as a queued resource),
# wait until ready, install this package on every worker, run the same main command on every
# worker with the logs streamed here, and delete the slice on exit; or, with --detach, start the
# job in the background on every worker and return, leaving the slice up. The subcommands
# status, logs and stop reattach to a detached run. `--help` lists the options.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REMOTE_SRC="limubert-jax"          # the source tree on each worker, under $HOME
readonly REMOTE_VENV="limubert-venv"        # the virtual environment on each worker, under $HOME
readonly REMOTE_TARBALL="limubert-jax.tar.gz"
readonly REMOTE_RUN="limubert-run"          # a detached job's files on each worker, under $HOME:
                                            # job.log, job.pid and exit-code (written when it ends)

usage() {
  cat <<EOF
Usage: launch/tpu_vm.sh --workdir=gs://BUCKET/PATH [options] [-- MAIN_ARGS...]
       launch/tpu_vm.sh status|logs|stop [--name=NAME] [--zone=ZONE] [options]

Creates a Cloud TPU VM slice, installs limubert-jax on all of its workers, runs
  python -m limubert_jax.main --config=CONFIG --workdir=WORKDIR MAIN_ARGS...
on every worker at once (logs streamed here and saved under --log-dir), then deletes
the slice. Rerunning with the same --workdir resumes from the latest checkpoint.
With --detach the main job is started in the background on every worker instead (it
outlives this shell, the ssh connection and your machine) and the slice is left up;
the subcommands below check on it, follow it, stop it and delete the slice.

Options (each also read from the environment variable in brackets; flags win):
  --workdir=DIR         [TPU_WORKDIR]  run directory; gs://... for slices of several hosts
                                       and for anything that must outlive the slice (required)
  --config=FILE[:ARG]   [TPU_CONFIG]   config file relative to the repository, or a config's
                                       name (hhar, hhar:10_100) ($CONFIG_DEFAULT)
  --name=NAME           [TPU_NAME]     TPU VM (and queued resource) name ($NAME_DEFAULT)
  --project=PROJECT     [TPU_PROJECT]  Google Cloud project (default: gcloud's configured one)
  --type=TYPE           [TPU_TYPE]     accelerator type, e.g. v5litepod-8 (or v5e-8: gcloud
                                       spells v5e "v5litepod", the script translates), v4-8,
                                       v5p-8, v6e-8, v5litepod-16 ($TYPE_DEFAULT)
  --zone=ZONE           [TPU_ZONE]     zone with quota for the type (default from the type's
                                       generation, a zone the Cloud TPU docs list for it:
                                       v5litepod $ZONE_V5E, v5p $ZONE_V5P, v6e $ZONE_V6E,
                                       v4 $ZONE_V4, v2-8 and v3-8 $ZONE_V2_V3_8, larger v2/v3
                                       $ZONE_V2_V3)
  --runtime=VERSION     [TPU_RUNTIME]  TPU software version (default from the type: v5litepod
                                       v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e
                                       v2-alpha-tpuv6e, v4 and older tpu-ubuntu2204-base)
  --queued              [TPU_QUEUED=1] request a queued resource and wait for it (default)
  --direct              [TPU_QUEUED=0] create the TPU VM directly (fails without capacity)
  --spot                [TPU_SPOT=1]   Spot capacity: cheaper, may be preempted (rerun to resume)
  --repo=URL            [TPU_REPO]     git clone URL to install from instead of this checkout
  --ref=REF             [TPU_REF]      branch, tag or commit of --repo (default: its HEAD)
  --source=DIR          [TPU_SOURCE]   local checkout to copy to the workers (default: the one
                                       holding this script); its tracked and untracked,
                                       not ignored, files are copied
  --python=VERSION      [TPU_PYTHON]   Python for the workers' venv, via uv ($PYTHON_DEFAULT)
  --pip=PACKAGES        [TPU_PIP]      extra packages installed with the checkout
                                       ("$PIP_DEFAULT": the TPU build of JAX, gs:// access)
  --prepare-workers=W   [TPU_PREPARE_WORKERS] workers that build the dataset before the run:
                                       all (each into its own disk; default), 0 (one build
                                       into a shared --config.dataset.data_dir=gs://...), none
  --wait-minutes=N      [TPU_WAIT_MINUTES] give up waiting for capacity after N minutes
                                       ($WAIT_MINUTES_DEFAULT; 0 waits forever)
  --log-dir=DIR         [TPU_LOG_DIR]  local log folder (default: tpu-logs/NAME)
  --keep                [TPU_KEEP=1]   leave the slice running at the end (delete it yourself)
  --detach              [TPU_DETACH=1] start the main job in the background on every worker
                                       (nohup + setsid, its output in ~/$REMOTE_RUN/job.log
                                       there, its exit code in ~/$REMOTE_RUN/exit-code when it
                                       ends) and return; implies --keep. Installing and
                                       building the dataset still run attached, before it
  --dry-run             [TPU_DRY_RUN=1] print every command instead of running it
  -h, --help            this text
  [TPU_POLL_SECONDS]                   seconds between readiness checks (30)

Subcommands for a detached run (pass the run's --name and --zone, or its --type; --project,
--direct and --dry-run apply too):
  status                is the slice there; on each worker: is the job running, done or
                        failed (its exit code), and the last lines of its log. Exits 1
                        when there is no such slice
  logs                  print each worker's log, lines prefixed with the worker's hostname
  stop                  stop the job on every worker (SIGTERM to its process group, SIGKILL
                        after 30 s); the slice stays up
  --worker=W            status and logs: the workers to ask, all (default) or a number
  --follow              logs: keep printing new lines until the job ends (Ctrl-C leaves
                        the job running)
  --delete              stop: then delete the slice (and its queued resource)

Everything after -- goes to the main job (and to prepare_data), e.g.
  -- --config.train.batch_size=256 --config.dataset.data_dir=gs://BUCKET/tfds

Examples:
  launch/tpu_vm.sh --workdir=gs://my-bucket/limubert/hhar --config=configs/hhar.py
  launch/tpu_vm.sh --type=v4-8 --spot --workdir=gs://b/run -- --config.train.num_epochs=10
  launch/tpu_vm.sh --detach --workdir=gs://b/run    # then: launch/tpu_vm.sh status
  launch/tpu_vm.sh logs --follow
  launch/tpu_vm.sh stop --delete
EOF
}

readonly CONFIG_DEFAULT="configs/hhar.py"
USER_SLUG="${USER:-user}"
USER_SLUG="${USER_SLUG,,}"
readonly NAME_DEFAULT="limubert-${USER_SLUG//[^a-z0-9]/-}"  # TPU names: lowercase, digits, hyphens
readonly TYPE_DEFAULT="v5litepod-8"
# Default zones by TPU generation: each is listed for all sizes of that generation in the Cloud
# TPU "regions and zones" documentation (https://cloud.google.com/tpu/docs/regions-zones).
readonly ZONE_V5E="us-west4-a"
readonly ZONE_V5P="us-east5-a"
readonly ZONE_V6E="us-east5-b"
readonly ZONE_V4="us-central2-b"     # the only zone with v4
readonly ZONE_V2_V3_8="us-central1-b"
readonly ZONE_V2_V3="europe-west4-a" # the larger v3 slices are offered there only
readonly PYTHON_DEFAULT="3.12"
readonly PIP_DEFAULT="jax[tpu] gcsfs"  # gcsfs: gs:// workdirs and TFDS data_dirs
readonly WAIT_MINUTES_DEFAULT="120"

die() {
  echo "tpu_vm.sh: $*" >&2
  exit 2
}

SUBCOMMAND="run"
case "${1:-}" in
  status | logs | stop) SUBCOMMAND="$1"; shift ;;
esac

WORKDIR="${TPU_WORKDIR:-}"
CONFIG="${TPU_CONFIG:-$CONFIG_DEFAULT}"
NAME="${TPU_NAME:-$NAME_DEFAULT}"
PROJECT="${TPU_PROJECT:-}"
ZONE="${TPU_ZONE:-}"
TYPE="${TPU_TYPE:-$TYPE_DEFAULT}"
RUNTIME="${TPU_RUNTIME:-}"
QUEUED="${TPU_QUEUED:-1}"
SPOT="${TPU_SPOT:-0}"
REPO="${TPU_REPO:-}"
REF="${TPU_REF:-}"
SOURCE="${TPU_SOURCE:-$REPO_ROOT}"
PYTHON_VERSION="${TPU_PYTHON:-$PYTHON_DEFAULT}"
PIP_PACKAGES="${TPU_PIP:-$PIP_DEFAULT}"
PREPARE_WORKERS="${TPU_PREPARE_WORKERS:-all}"
WAIT_MINUTES="${TPU_WAIT_MINUTES:-$WAIT_MINUTES_DEFAULT}"
LOG_DIR="${TPU_LOG_DIR:-}"
KEEP="${TPU_KEEP:-0}"
DETACH="${TPU_DETACH:-0}"
DRY_RUN="${TPU_DRY_RUN:-0}"
POLL_SECONDS="${TPU_POLL_SECONDS:-30}"
WORKER=""
FOLLOW=0
DELETE=0
MAIN_ARGS=()

while (($#)); do
  case "$1" in
    --workdir=*) WORKDIR="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --name=*) NAME="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --type=*) TYPE="${1#*=}" ;;
    --runtime=*) RUNTIME="${1#*=}" ;;
    --queued) QUEUED=1 ;;
    --direct) QUEUED=0 ;;
    --spot) SPOT=1 ;;
    --repo=*) REPO="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --source=*) SOURCE="${1#*=}" ;;
    --python=*) PYTHON_VERSION="${1#*=}" ;;
    --pip=*) PIP_PACKAGES="${1#*=}" ;;
    --prepare-workers=*) PREPARE_WORKERS="${1#*=}" ;;
    --wait-minutes=*) WAIT_MINUTES="${1#*=}" ;;
    --log-dir=*) LOG_DIR="${1#*=}" ;;
    --keep) KEEP=1 ;;
    --detach) DETACH=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --worker=*) WORKER="${1#*=}" ;;
    --follow) FOLLOW=1 ;;
    --delete) DELETE=1 ;;
    -h | --help) usage; exit 0 ;;
    --)
      [[ "$SUBCOMMAND" == run ]] || die "$SUBCOMMAND takes no arguments after --"
      shift; MAIN_ARGS=("$@"); break ;;
    status | logs | stop) die "'$1' must come first: launch/tpu_vm.sh $1 [options]" ;;
    *) die "unknown option '$1' (options take --name=VALUE; arguments for the main job go after --; see --help)" ;;
  esac
  shift
done

# Options of one subcommand only.
if [[ -n "$WORKER" ]]; then
  [[ "$SUBCOMMAND" == status || "$SUBCOMMAND" == logs ]] || die "--worker is for status and logs"
  [[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be all or a worker number, got '$WORKER'"
fi
((FOLLOW)) && [[ "$SUBCOMMAND" != logs ]] && die "--follow is for logs"
((DELETE)) && [[ "$SUBCOMMAND" != stop ]] && die "--delete is for stop"
WORKER="${WORKER:-all}"

# gcloud spells v5e "v5litepod" (the accelerator type v5e-8 does not exist for it).
if [[ "$TYPE" == v5e-* ]]; then
  echo "tpu_vm.sh: --type=$TYPE: gcloud calls v5e v5litepod, using --type=v5litepod-${TYPE#v5e-}" >&2
  TYPE="v5litepod-${TYPE#v5e-}"
fi
if [[ -z "$RUNTIME" ]]; then
  case "$TYPE" in
    v5litepod-*) RUNTIME="v2-alpha-tpuv5-lite" ;;
    v5p-*) RUNTIME="v2-alpha-tpuv5" ;;
    v6e-*) RUNTIME="v2-alpha-tpuv6e" ;;
    v2-* | v3-* | v4-*) RUNTIME="tpu-ubuntu2204-base" ;;
    *) if [[ "$SUBCOMMAND" == run ]]; then die "no default runtime for --type=$TYPE; pass --runtime=VERSION"; fi ;;
  esac
fi
# The type's default zone, and the zones where the Cloud TPU documentation lists its generation
# (for a warning only: a given zone always wins; the list grows, and gcloud says when a zone
# lacks the type).
case "$TYPE" in
  v5litepod-*) DEFAULT_ZONE="$ZONE_V5E" DOCUMENTED_ZONES="us-central1-a us-south1-a us-west1-c us-west4-a" ;;
  v5p-*) DEFAULT_ZONE="$ZONE_V5P" DOCUMENTED_ZONES="us-central1-a us-east5-a" ;;
  v6e-*) DEFAULT_ZONE="$ZONE_V6E" DOCUMENTED_ZONES="us-central1-b us-east1-d us-east5-a us-east5-b europe-west4-a" ;;
  v4-*) DEFAULT_ZONE="$ZONE_V4" DOCUMENTED_ZONES="us-central2-b" ;;
  v2-8 | v3-8) DEFAULT_ZONE="$ZONE_V2_V3_8" DOCUMENTED_ZONES="" ;;
  v2-* | v3-*) DEFAULT_ZONE="$ZONE_V2_V3" DOCUMENTED_ZONES="" ;;
  *) DEFAULT_ZONE="" DOCUMENTED_ZONES="" ;;
esac
if [[ -z "$ZONE" ]]; then
  [[ -n "$DEFAULT_ZONE" ]] || die "no default zone for --type=$TYPE; pass --zone=ZONE"
  ZONE="$DEFAULT_ZONE"
elif [[ -n "$DOCUMENTED_ZONES" && " $DOCUMENTED_ZONES " != *" $ZONE "* ]]; then
  echo "tpu_vm.sh: warning: --zone=$ZONE is not among the zones the Cloud TPU documentation lists" \
    "for ${TYPE%%-*} ($DOCUMENTED_ZONES); without that type there, gcloud will refuse" >&2
fi

if [[ "$SUBCOMMAND" == run ]]; then
  [[ -n "$WORKDIR" ]] || die "--workdir is required (a gs://BUCKET/PATH the workers can all write; see --help)"
  [[ -n "$REF" && -z "$REPO" ]] && die "--ref=$REF needs --repo=URL"
  [[ "$WAIT_MINUTES" =~ ^[0-9]+$ ]] || die "--wait-minutes must be a whole number, got '$WAIT_MINUTES'"
  case "$PREPARE_WORKERS" in all | 0 | none) ;; *) die "--prepare-workers must be all, 0 or none, got '$PREPARE_WORKERS'" ;; esac
  if [[ -z "$REPO" ]]; then
    [[ -f "$SOURCE/pyproject.toml" && -d "$SOURCE/configs" ]] ||
      die "--source=$SOURCE is not a limubert-jax checkout (no pyproject.toml and configs/)"
    config_file="${CONFIG%%:*}"
    # A bare name (hhar, hhar:10_100) is a config of configs/, as the commands read it.
    [[ "$config_file" == */* || "$config_file" == *.py ]] || config_file="configs/$config_file.py"
    [[ -f "$SOURCE/$config_file" ]] || die "--config=$CONFIG: no file $config_file in $SOURCE"
  fi
  if [[ "$WORKDIR" != gs://* ]]; then
    echo "tpu_vm.sh: warning: --workdir=$WORKDIR is on the workers' own disks: every host of a" \
      "multi-host slice needs the same directory, and it is lost when the slice is deleted" >&2
  fi
  ((DETACH)) && KEEP=1  # the job outlives this script, so must the slice
fi
LOG_DIR="${LOG_DIR:-tpu-logs/$NAME}"

GCLOUD_FLAGS=(--zone="$ZONE" --quiet)
[[ -n "$PROJECT" ]] && GCLOUD_FLAGS+=(--project="$PROJECT")

# Prints the words as one shell command line: plain where that is safe, else single-quoted.
quote() {
  local word sep=""
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      printf '%s%s' "$sep" "$word"
    else
      printf "%s'%s'" "$sep" "${word//\'/\'\\\'\'}"
    fi
    sep=" "
  done
}

# Prints a command in a form that can be pasted back into a shell.
show() {
  quote "$@"
  printf '\n'
}

# Runs a command, or with --dry-run prints it instead.
run() {
  if ((DRY_RUN)); then
    show "$@"
  else
    "$@"
  fi
}

# Runs a command on the given TPU workers over ssh.
on_workers() {
  local workers="$1" command="$2"
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" --worker="$workers" \
    --ssh-flag="-o ServerAliveInterval=60" --command="$command"
}

# Like on_workers, and the output also goes to the local log file.
on_workers_logged() {
  if ((DRY_RUN)); then
    on_workers "$@"
  else
    on_workers "$@" 2>&1 | tee -a "$LOG_FILE"
  fi
}

# Deletes the slice: its queued resource (which deletes the TPU VM with it), or the TPU VM.
delete_slice() {
  echo "tpu_vm.sh: deleting $NAME" >&2
  if ((QUEUED)); then
    # A reused slice may have been created directly, without a queued resource.
    run gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_FLAGS[@]}" --force ||
      run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}"
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}"
  fi
}

# The flags that name this slice to the subcommands, and the subcommands as lines to paste.
SLICE_FLAGS=(--name="$NAME" --zone="$ZONE")
[[ -n "$PROJECT" ]] && SLICE_FLAGS+=(--project="$PROJECT")
((QUEUED)) || SLICE_FLAGS+=(--direct)
reattach_hint() {
  printf '  %s   # running, done or failed, and the last log lines\n' "$(quote "$0" status "${SLICE_FLAGS[@]}")"
  printf '  %s   # the logs, until the job ends\n' "$(quote "$0" logs "${SLICE_FLAGS[@]}" --follow)"
  printf '  %s   # stop the job (if running) and delete the slice\n' "$(quote "$0" stop "${SLICE_FLAGS[@]}" --delete)"
}

# The commands run on the workers for a detached job, whose variables are the workers' own.
# shellcheck disable=SC2016
{
# Each starts with this: where the job's files are, its pid, and alive PID, true while that
# process runs (a zombie does not count, and pids are reused, so its command line must name
# limubert).
REMOTE_PRELUDE="set -euo pipefail
run=\"\$HOME/$REMOTE_RUN\""'
host="$(hostname)"
alive() { ps -o stat=,args= -p "$1" 2>/dev/null | grep -q "^ *[^Z ].*limubert"; }
pid="$(cat "$run/job.pid" 2>/dev/null || true)"
'

# On each worker: fail while a detached job runs there (it holds the TPU chips, and installing
# would replace its source tree).
REMOTE_IDLE='if alive "$pid"; then
  echo "[$host] a detached job (pid $pid) still runs here: stop it first (tpu_vm.sh stop)" >&2
  exit 1
fi
'

# On each worker: start $job (set before this) in a new session, immune to hangups, with no
# terminal and its output in job.log, so that it outlives the ssh session.
REMOTE_START='mkdir -p "$run"
rm -f "$run/job.pid" "$run/exit-code"
setsid nohup bash -c "$job" >"$run/job.log" 2>&1 </dev/null &
echo "[$host] started in the background; log: $run/job.log"
'

# On each worker: the job's state and the last lines of its log.
REMOTE_STATUS='if [[ ! -e "$run/job.log" ]]; then
  echo "[$host] no detached job has run here"
  exit 0
fi
code="$(cat "$run/exit-code" 2>/dev/null || true)"
if alive "$pid"; then state="running (pid $pid)"
elif [[ "$code" == 0 ]]; then state="done (exit code 0)"
elif [[ "$code" == stopped ]]; then state="stopped (tpu_vm.sh stop)"
elif [[ -n "$code" ]]; then state="failed (exit code $code)"
else state="ended without an exit code (killed, or the worker restarted)"
fi
echo "[$host] job $state; the last lines of $run/job.log:"
tail -n 10 "$run/job.log" | sed "s/^/[$host]   /"
'

# On each worker: the log, prefixed with the hostname; with follow=1 (set before this) new lines
# too until the job ends.
REMOTE_LOGS='if [[ ! -e "$run/job.log" ]]; then
  echo "[$host] no log at $run/job.log: no detached job has run here" >&2
  exit 1
fi
if ((follow)) && alive "$pid"; then
  tail -n +1 -F --pid="$pid" "$run/job.log"
else
  cat "$run/job.log"
fi | sed -u "s/^/[$host] /"
'

# On each worker: end the job's process group, politely first; mark it stopped.
REMOTE_STOP='if ! alive "$pid"; then
  echo "[$host] no job running"
  exit 0
fi
kill -TERM -- "-$pid" 2>/dev/null || true
for _ in $(seq 60); do
  alive "$pid" || break
  sleep 0.5
done
if alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
echo stopped >"$run/exit-code"
echo "[$host] stopped the job (pid $pid)"
'
}

if ((!DRY_RUN)); then
  command -v gcloud >/dev/null || die "gcloud not found; install the Google Cloud CLI and run 'gcloud auth login'"
fi

# The subcommands for a detached run.
case "$SUBCOMMAND" in
  status)
    if ((DRY_RUN)); then
      show gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_FLAGS[@]}" --format="value(state)"
    elif state="$(gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_FLAGS[@]}" --format="value(state)" 2>/dev/null)"; then
      echo "tpu_vm.sh: TPU VM $NAME in $ZONE: $state"
      [[ "$state" == READY ]] || exit 0
    elif state="$(gcloud compute tpus queued-resources describe "$NAME" "${GCLOUD_FLAGS[@]}" --format="value(state.state)")"; then
      echo "tpu_vm.sh: queued resource $NAME in $ZONE: $state (no TPU VM yet)"
      exit 0
    else
      echo "tpu_vm.sh: no TPU VM or queued resource $NAME in $ZONE${PROJECT:+ of project $PROJECT}" \
        "(other --name or --zone?)" >&2
      exit 1
    fi
    on_workers "$WORKER" "$REMOTE_PRELUDE$REMOTE_STATUS"
    exit ;;
  logs)
    on_workers "$WORKER" "$REMOTE_PRELUDE
follow=$FOLLOW
$REMOTE_LOGS"
    exit ;;
  stop)
    if ((DELETE)); then
      on_workers all "$REMOTE_PRELUDE$REMOTE_STOP" ||
        echo "tpu_vm.sh: could not stop the job on every worker; deleting $NAME anyway" >&2
      delete_slice
    else
      on_workers all "$REMOTE_PRELUDE$REMOTE_STOP"
      echo "tpu_vm.sh: $NAME stays up (and is billed); delete it with:" >&2
      show "$0" stop "${SLICE_FLAGS[@]}" --delete >&2
    fi
    exit ;;
esac

# Waits until `gcloud ... describe` reports the wanted state; fails on states that never turn ready.
wait_for_state() {
  local what="$1" want="$2" format="$3" state deadline failures
  if ((DRY_RUN)); then
    show gcloud compute tpus "$what" describe "$NAME" "${GCLOUD_FLAGS[@]}" --format="$format"
    return
  fi
  deadline=$((SECONDS + WAIT_MINUTES * 60))
  failures=0
  while true; do
    # A failed query is retried: giving up would delete a queued request and its place in line.
    if state="$(gcloud compute tpus "$what" describe "$NAME" "${GCLOUD_FLAGS[@]}" --format="$format")"; then
      failures=0
    else
      state="" failures=$((failures + 1))
      ((failures < 5)) || die "could not describe $what $NAME 5 times in a row"
    fi
    echo "tpu_vm.sh: $what $NAME: ${state:-unknown}"
    case "$state" in
      "$want") return ;;
      FAILED | SUSPENDED | SUSPENDING | PREEMPTED | TERMINATED | STOPPED)
        die "$what $NAME is $state; see 'gcloud compute tpus $what describe $NAME --zone=$ZONE'" ;;
    esac
    if ((WAIT_MINUTES > 0 && SECONDS >= deadline)); then
      die "$what $NAME not $want after $WAIT_MINUTES minutes (try another --zone or --spot)"
    fi
    sleep "$POLL_SECONDS"
  done
}

TMP_DIR=""
STARTED=0  # set once a detached job runs on every worker
teardown() {
  local status=$?
  trap - EXIT INT TERM
  [[ -n "$TMP_DIR" ]] && rm -rf "$TMP_DIR"
  if ((STARTED && status == 0)); then
    echo "tpu_vm.sh: the job runs detached on every worker of $NAME (its log: ~/$REMOTE_RUN/job.log" \
      "there); $NAME stays up, and is billed, until you delete it, also after the job ends:" >&2
    reattach_hint >&2
  elif ((KEEP)); then
    echo "tpu_vm.sh: $NAME stays up (and is billed); delete it with:" >&2
    if ((QUEUED)); then
      show gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_FLAGS[@]}" --force >&2
    else
      show gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}" >&2
    fi
  else
    delete_slice || status=1
  fi
  exit "$status"
}

if ((!DRY_RUN)); then
  mkdir -p "$LOG_DIR"
  LOG_FILE="$LOG_DIR/$(date +%Y%m%d-%H%M%S).log"
  echo "tpu_vm.sh: logging to $LOG_FILE"
fi

# True when the TPU VM (or queued resource) already exists, e.g. kept by an earlier --keep run.
exists() {
  ((!DRY_RUN)) && gcloud compute tpus "$1" describe "$NAME" "${GCLOUD_FLAGS[@]}" --format="value(name)" >/dev/null 2>&1
}

# 1. Create, or reuse a slice of that name. Teardown is armed before the request so an
# interrupted create is cleaned up too.
trap teardown EXIT
trap 'exit 130' INT TERM
CREATE=(--accelerator-type="$TYPE")
((SPOT)) && CREATE+=(--spot)
REUSED=0
if exists tpu-vm; then
  echo "tpu_vm.sh: reusing the existing TPU VM $NAME"
  REUSED=1
elif ((QUEUED)); then
  if exists queued-resources; then
    echo "tpu_vm.sh: waiting on the existing queued resource $NAME"
  else
    run gcloud compute tpus queued-resources create "$NAME" "${GCLOUD_FLAGS[@]}" --node-id="$NAME" \
      --runtime-version="$RUNTIME" "${CREATE[@]}"
  fi
  wait_for_state queued-resources ACTIVE "value(state.state)"
else
  run gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_FLAGS[@]}" --version="$RUNTIME" "${CREATE[@]}"
fi
wait_for_state tpu-vm READY "value(state)"
if ((REUSED)) && ! on_workers_logged all "$REMOTE_PRELUDE$REMOTE_IDLE"; then
  KEEP=1  # the slice runs that job: leave both alone
  die "a detached job still runs on $NAME; stop it first: $(quote "$0" stop "${SLICE_FLAGS[@]}")," \
    "or pick another --name"
fi

# 2. Install on every worker: the source tree, a venv with a recent Python (TPU images ship an
# older system Python than the package needs), the package and the TPU build of JAX.
if [[ -n "$REPO" ]]; then
  FETCH="rm -rf ~/$REMOTE_SRC && git clone --quiet $(quote "$REPO") ~/$REMOTE_SRC"
  if [[ -n "$REF" ]]; then
    FETCH+=" && git -C ~/$REMOTE_SRC checkout --quiet $(quote "$REF")"
  fi
else
  TARBALL="$REMOTE_TARBALL"
  if ((!DRY_RUN)); then
    TMP_DIR="$(mktemp -d)"
    TARBALL="$TMP_DIR/$REMOTE_TARBALL"
  fi
  if ((DRY_RUN)); then
    echo "# pack the tracked and untracked, not ignored, files of $SOURCE into $TARBALL"
  else
    (cd "$SOURCE" && git ls-files -z --cached --others --exclude-standard |
      tar --null --files-from=- --ignore-failed-read -czf "$TARBALL") ||
      die "could not pack $SOURCE (is it a git checkout?)"
  fi
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:$REMOTE_TARBALL" "${GCLOUD_FLAGS[@]}" --worker=all
  FETCH="rm -rf ~/$REMOTE_SRC && mkdir -p ~/$REMOTE_SRC && tar -xzf ~/$REMOTE_TARBALL -C ~/$REMOTE_SRC"
fi
read -r -a PIP_WORDS <<<"$PIP_PACKAGES"
INSTALL="set -euo pipefail; $FETCH
export PATH=\"\$HOME/.local/bin:\$PATH\"
command -v uv >/dev/null || python3 -m pip install --user --quiet uv || curl -LsSf https://astral.sh/uv/install.sh | sh
uv venv --quiet --allow-existing --python $(quote "$PYTHON_VERSION") ~/$REMOTE_VENV
uv pip install --quiet --python ~/$REMOTE_VENV/bin/python -e ~/$REMOTE_SRC $(quote ${PIP_WORDS[@]+"${PIP_WORDS[@]}"})"
on_workers_logged all "$INSTALL"

# 3. Build the dataset, then run the main job on every worker (JAX finds its peers itself).
# Building needs no accelerator; on CPU it leaves the TPU free and starts faster.
PREPARE=(env JAX_PLATFORMS=cpu python -m limubert_jax.prepare_data --config="$CONFIG" ${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"})
MAIN=(python -m limubert_jax.main --config="$CONFIG" --workdir="$WORKDIR" ${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"})
# A progress bar redrawn once a minute, not several times a second, keeps the streamed log short.
ENVIRONMENT="cd ~/$REMOTE_SRC && . ~/$REMOTE_VENV/bin/activate && export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=60"
ON_WORKER="set -euo pipefail; $ENVIRONMENT"
if [[ "$PREPARE_WORKERS" != none ]]; then
  on_workers_logged "$PREPARE_WORKERS" "$ON_WORKER; $(quote "${PREPARE[@]}")"
fi
if ((DETACH)); then
  # The detached job records its pid first and its exit code last, for status and stop.
  # shellcheck disable=SC2016  # $$, $? and $HOME belong to the job's shell on the worker
  JOB='echo $$ >"$HOME/'"$REMOTE_RUN"'/job.pid"; echo "job started $(date -u)"; '"$ENVIRONMENT && $(quote "${MAIN[@]}")"'
code=$?; echo "job ended with exit code $code $(date -u)"; echo "$code" >"$HOME/'"$REMOTE_RUN"'/exit-code"'
  on_workers_logged all "$REMOTE_PRELUDE$REMOTE_IDLE
job=$(quote "$JOB")
$REMOTE_START"
  STARTED=1
else
  on_workers_logged all "$ON_WORKER; $(quote "${MAIN[@]}") 2>&1 | sed -u \"s/^/[\$(hostname)] /\""
  ((DRY_RUN)) || echo "tpu_vm.sh: the run finished; results are in $WORKDIR"
fi

# 4. Tear down: the EXIT trap deletes the slice (unless --keep or --detach).
