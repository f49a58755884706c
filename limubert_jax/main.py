"""The main job: `python -m limubert_jax.main --config=configs/motion.py --workdir=DIR`.

Rerunning the same command resumes the run in DIR. Override any config field with
`--config.<section>.<field>=VALUE`, e.g. `--config.train.batch_size=64`.

Multi-process runs: every process runs the same command, plus `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` where the cluster is not detected (see
`limubert_jax.runtime.distributed`).
"""

from absl import app, flags
from ml_collections import config_flags

from limubert_jax import tasks
from limubert_jax.runtime import distributed
from limubert_jax.runtime.errors import flag_value, parse_absl_flags, run_absl_main

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:version]).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory (or gs://bucket/dir) for checkpoints, metrics and plots; shared by all processes.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process runs: host:port of process 0's coordinator, the same on every process.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's id, 0 .. num_processes - 1.")
flags.mark_flags_as_required(["config", "workdir"])


def _run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    tasks.run(flag_value(_CONFIG), _WORKDIR.value)


def main(argv):
    run_absl_main(_run, argv)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_absl_flags)
