"""Pretraining on the `huawei` TFDS builder; `--config=configs/huawei.py:10_100` picks the version."""

from limubert_jax import config_lib


def get_config(version: str = "20_120"):
    default = config_lib.sibling_config(__file__, "default")
    return config_lib.with_dataset(default.get_config(), "huawei", version)
