"""Your own recordings: `--config=recordings:50_200 --config.dataset.manual_dir=DIR`, where DIR
holds one CSV (or Parquet) file per recording (see README, "Your own recordings")."""

from limubert_jax import config_lib


def get_config(arg: str = "20_120"):
    default = config_lib.sibling_config(__file__, "default")
    return config_lib.with_dataset(default.get_config(), "recordings", arg)
