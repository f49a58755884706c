"""The `wisdm` TFDS builder: pretraining, or a downstream task.

`--config=wisdm:10_100` (or `configs/wisdm.py:10_100`) picks the version;
`:classify` (or `:10_100,classify`) the task.
"""

from limubert_jax import config_lib


def get_config(arg: str = "20_120"):
    default = config_lib.sibling_config(__file__, "default")
    return config_lib.with_dataset(default.get_config(), "wisdm", arg)
