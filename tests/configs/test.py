"""A tiny CPU config for tests: a small model for a few epochs on a small synthetic set (the
packaged `default` config, overridden; test code, not in the wheel)."""

from limubert_jax import config_lib


def get_config(arg: str = "20_120"):
    default = config_lib.sibling_config(str(config_lib.configs_dir() / "default.py"), "default").get_config()
    config = config_lib.with_dataset(default, "synthetic_imu", arg)
    config.model.hidden = 24  # small and fast; the architecture is unchanged
    config.model.hidden_ff = 48
    config.model.n_layers = 2
    config.model.n_heads = 2
    config.optimizer.name = "adam"
    config.train.batch_size = 32
    config.train.eval_batch_size = 64
    config.train.num_epochs = 3
    config.train.log_every_steps = 1
    config.train.plot_windows = 2
    config.train.encoder_chunk = 0  # whole batches: faster for this tiny model, and compiles in 60% of the time
    return config
