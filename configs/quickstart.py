"""The embedded default: pretraining on the generated `synthetic_imu` data, no download.

30 epochs of ~2,400 windows (450 steps of batch 128); the validation loss falls from ~0.91
to ~0.80 (measured on 2 CPU cores).
"""

from limubert_jax import config_lib


def get_config(version: str = "20_120"):
    config = config_lib.with_dataset(config_lib.sibling_config(__file__, "default").get_config(), "synthetic_imu", version)
    config.optimizer.name = "adam"  # the public release's optimizer; learns fastest in a short run
    config.train.num_epochs = 30  # ~2,400 windows -> 15 steps per epoch
    config.train.log_every_steps = 5  # refresh the progress bar often in a short run
    return config
