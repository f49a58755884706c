"""The main job (`limubert-train`): pretraining and the downstream tasks of a config.

    limubert-train --config=motion --workdir=DIR
    python -m limubert_jax.main --config=configs/motion.py --workdir=DIR

`--config` is a packaged config by name (`motion`, `motion:10_100`, `quickstart`) or the path
of a config file. Rerunning the same command resumes the run in DIR. Override any config
field with `--config.<section>.<field>=VALUE`, e.g. `--config.train.batch_size=64`.

Multi-process runs: every process runs the same command, plus `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` where the cluster is not detected (see
`limubert_jax.runtime.distributed`).
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import flags

from limubert_jax import config_lib
from limubert_jax.runtime import cli, cpu_devices, distributed
from limubert_jax.runtime.errors import LimuBertError


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    config_lib.define_config(fv, argv)
    flags.DEFINE_string("workdir", None, "Directory (or gs://bucket/dir) for checkpoints, metrics and plots; "
                        "shared by all processes.", required=True, flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "Multi-process runs: host:port of process 0's coordinator, "
                        "the same on every process.", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Multi-process runs: the number of processes.", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's id, 0 .. num_processes - 1.",
                         flag_values=fv)


def _show(task: str, summary: dict) -> None:
    # A result for the user goes to stdout from the command module, as every command's does;
    # the package itself only logs (absl logging, stderr).
    if "table" in summary:
        print(summary["table"])


def _values() -> list[str]:
    """What `--help` lists after the usage: the values `--config` and `config.task` take."""
    # The task registry imports the trainers (seconds): loaded for --help or a run only.
    from limubert_jax import tasks  # noqa: PLC0415

    return [f"configs (--config=NAME): {', '.join(config_lib.config_names())}",
            f"tasks (--config.task=TASK, several joined by '+'): {', '.join(tasks.TASKS)}"]


def _run(fv: flags.FlagValues, args: list[str]) -> None:
    from limubert_jax import tasks  # noqa: PLC0415  (see _values)

    config = cli.flag_value(fv["config"])
    try:  # before JAX starts: the CPU device count is fixed then
        cpu_devices.split_cores(config.get("cpu_devices", cpu_devices.ONE_PER_CORE))
    except ValueError as e:
        raise LimuBertError(f"config.{e}") from None
    distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)
    tasks.run(config, fv.workdir, on_done=_show)


def main(argv: Sequence[str] | None = None) -> int:
    """The command (`limubert-train`); argv after the program name, None for sys.argv. Returns the exit status."""
    return cli.run_command(__doc__, define_flags, _run, argv, help_lines=_values)


if __name__ == "__main__":
    sys.exit(main())
