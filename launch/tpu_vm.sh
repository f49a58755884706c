#!/usr/bin/env bash
# Runs the pretraining job on a Cloud TPU VM slice: create (directly or as a queued resource),
# wait until ready, install this package on every worker, run the same main command on every
# worker with the logs streamed here, and delete the slice on exit. `--help` lists the options.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REMOTE_SRC="limubert-jax"          # the source tree on each worker, under $HOME
readonly REMOTE_VENV="limubert-venv"        # the virtual environment on each worker, under $HOME
readonly REMOTE_TARBALL="limubert-jax.tar.gz"

usage() {
  cat <<EOF
Usage: launch/tpu_vm.sh --workdir=gs://BUCKET/PATH [options] [-- MAIN_ARGS...]

Creates a Cloud TPU VM slice, installs limubert-jax on all of its workers, runs
  python -m limubert_jax.main --config=CONFIG --workdir=WORKDIR MAIN_ARGS...
on every worker at once (logs streamed here and saved under --log-dir), then deletes
the slice. Rerunning with the same --workdir resumes from the latest checkpoint.

Options (each also read from the environment variable in brackets; flags win):
  --workdir=DIR         [TPU_WORKDIR]  run directory; gs://... for slices of several hosts
                                       and for anything that must outlive the slice (required)
  --config=FILE[:ARG]   [TPU_CONFIG]   config file relative to the repository, or a config's
                                       name (hhar, hhar:10_100) ($CONFIG_DEFAULT)
  --name=NAME           [TPU_NAME]     TPU VM (and queued resource) name ($NAME_DEFAULT)
  --project=PROJECT     [TPU_PROJECT]  Google Cloud project (default: gcloud's configured one)
  --zone=ZONE           [TPU_ZONE]     zone with quota for the type ($ZONE_DEFAULT)
  --type=TYPE           [TPU_TYPE]     accelerator type, e.g. v5litepod-8, v4-8, v5litepod-16
                                       ($TYPE_DEFAULT)
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
  --dry-run             [TPU_DRY_RUN=1] print every command instead of running it
  -h, --help            this text
  [TPU_POLL_SECONDS]                   seconds between readiness checks (30)

Everything after -- goes to the main job (and to prepare_data), e.g.
  -- --config.train.batch_size=256 --config.dataset.data_dir=gs://BUCKET/tfds

Examples:
  launch/tpu_vm.sh --workdir=gs://my-bucket/limubert/hhar --config=configs/hhar.py
  launch/tpu_vm.sh --type=v4-8 --zone=us-central2-b --spot --workdir=gs://b/run -- \\
      --config.train.num_epochs=10
EOF
}

readonly CONFIG_DEFAULT="configs/hhar.py"
USER_SLUG="${USER:-user}"
USER_SLUG="${USER_SLUG,,}"
readonly NAME_DEFAULT="limubert-${USER_SLUG//[^a-z0-9]/-}"  # TPU names: lowercase, digits, hyphens
readonly ZONE_DEFAULT="us-west4-a"
readonly TYPE_DEFAULT="v5litepod-8"
readonly PYTHON_DEFAULT="3.12"
readonly PIP_DEFAULT="jax[tpu] gcsfs"  # gcsfs: gs:// workdirs and TFDS data_dirs
readonly WAIT_MINUTES_DEFAULT="120"

die() {
  echo "tpu_vm.sh: $*" >&2
  exit 2
}

WORKDIR="${TPU_WORKDIR:-}"
CONFIG="${TPU_CONFIG:-$CONFIG_DEFAULT}"
NAME="${TPU_NAME:-$NAME_DEFAULT}"
PROJECT="${TPU_PROJECT:-}"
ZONE="${TPU_ZONE:-$ZONE_DEFAULT}"
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
DRY_RUN="${TPU_DRY_RUN:-0}"
POLL_SECONDS="${TPU_POLL_SECONDS:-30}"
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
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) die "unknown option '$1' (options take --name=VALUE; arguments for the main job go after --; see --help)" ;;
  esac
  shift
done

[[ -n "$WORKDIR" ]] || die "--workdir is required (a gs://BUCKET/PATH the workers can all write; see --help)"
[[ -n "$REF" && -z "$REPO" ]] && die "--ref=$REF needs --repo=URL"
[[ "$WAIT_MINUTES" =~ ^[0-9]+$ ]] || die "--wait-minutes must be a whole number, got '$WAIT_MINUTES'"
case "$PREPARE_WORKERS" in all | 0 | none) ;; *) die "--prepare-workers must be all, 0 or none, got '$PREPARE_WORKERS'" ;; esac
if [[ -z "$RUNTIME" ]]; then
  case "$TYPE" in
    v5litepod-* | v5e-*) RUNTIME="v2-alpha-tpuv5-lite" ;;
    v5p-*) RUNTIME="v2-alpha-tpuv5" ;;
    v6e-*) RUNTIME="v2-alpha-tpuv6e" ;;
    v2-* | v3-* | v4-*) RUNTIME="tpu-ubuntu2204-base" ;;
    *) die "no default runtime for --type=$TYPE; pass --runtime=VERSION" ;;
  esac
fi
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
teardown() {
  local status=$?
  trap - EXIT INT TERM
  [[ -n "$TMP_DIR" ]] && rm -rf "$TMP_DIR"
  if ((KEEP)); then
    echo "tpu_vm.sh: --keep: $NAME stays up (and is billed); delete it with:" >&2
    if ((QUEUED)); then
      show gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_FLAGS[@]}" --force >&2
    else
      show gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}" >&2
    fi
  else
    echo "tpu_vm.sh: deleting $NAME" >&2
    if ((QUEUED)); then
      # A reused slice may have been created directly, without a queued resource.
      run gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_FLAGS[@]}" --force ||
        run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}" || status=1
    else
      run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}" || status=1
    fi
  fi
  exit "$status"
}

if ((!DRY_RUN)); then
  command -v gcloud >/dev/null || die "gcloud not found; install the Google Cloud CLI and run 'gcloud auth login'"
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
if exists tpu-vm; then
  echo "tpu_vm.sh: reusing the existing TPU VM $NAME"
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
ON_WORKER="set -euo pipefail; cd ~/$REMOTE_SRC && . ~/$REMOTE_VENV/bin/activate && export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=60"
if [[ "$PREPARE_WORKERS" != none ]]; then
  on_workers_logged "$PREPARE_WORKERS" "$ON_WORKER; $(quote "${PREPARE[@]}")"
fi
on_workers_logged all "$ON_WORKER; $(quote "${MAIN[@]}") 2>&1 | sed -u \"s/^/[\$(hostname)] /\""
((DRY_RUN)) || echo "tpu_vm.sh: the run finished; results are in $WORKDIR"

# 4. Tear down: the EXIT trap deletes the slice (unless --keep).
