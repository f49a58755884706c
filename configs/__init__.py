"""The config files, installed as the package `limubert_jax.configs` (see pyproject.toml).

Each file is loaded by path through `--config` (ml_collections), never imported as a
module of this package; the package exists so that a wheel ships the files and
`limubert_jax.config_lib.configs_dir` finds them. `--config=NAME` takes a file's name.
"""
