"""Bring your own arrays: `--config=npy --config.dataset.manual_dir=DIR` where DIR holds
`data_<version>.npy` (N, S, F) and `label_<version>.npy` (N, S, L) in the reference layout."""

from limubert_jax import config_lib


def get_config(arg: str = "20_120"):
    default = config_lib.sibling_config(__file__, "default")
    return config_lib.with_dataset(default.get_config(), "imu_npy", arg)
