"""The main job: `python -m limubert_jax.main --config=configs/motion.py --workdir=DIR`.

Rerunning the same command resumes the run in DIR. Override any config field with
`--config.<section>.<field>=VALUE`, e.g. `--config.train.batch_size=64`.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from limubert_jax import train
from limubert_jax.errors import LimuBertError
from limubert_jax.log_filters import quiet_libraries

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:version]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_libraries()
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except LimuBertError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
