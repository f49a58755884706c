"""Prepares a dataset ahead of a run: `python -m limubert_jax.prepare_data --config=configs/hhar.py`.

Takes the same config and overrides as the main job and builds `config.dataset` (TFDS,
array_record) where the main job will read it, from `--config.dataset.manual_dir=DIR` (raw
files or archives, see `datasets/<name>/README.md`) or by downloading public data; then
prints what was built: windows, features, label names and counts per task, and the split.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from limubert_jax.data import input_pipeline
from limubert_jax.runtime.errors import flag_value, parse_absl_flags, run_absl_main

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:version]).")
flags.mark_flags_as_required(["config"])


def describe(data) -> str:
    """A few lines on a prepared dataset: size, features, split, labels per task."""
    info = data.info
    lines = [
        f"{data.name}/{data.version}: {data.num_windows} windows of {data.seq_len} steps x "
        f"{data.num_features} features at {data.sampling_rate_hz:g} Hz in {info.data_dir}",
        f"  features: {', '.join(data.feature_names or ())}",
        f"  pretraining split: {len(data.train)} train / {len(data.vali)} validation windows",
    ]
    source = data.train.source
    for task, feature in info.features.items():
        names = getattr(feature, "names", None)
        if names is None:
            continue
        counts = np.bincount([int(source[i][task]) for i in range(len(source))], minlength=len(names))
        shown = ", ".join(f"{n} {c}" for n, c in zip(names, counts) if c)
        lines.append(f"  {task} ({len(names)} classes): {shown}")
    return "\n".join(lines)


def _run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    print(describe(input_pipeline.load_data(flag_value(_CONFIG))))


def main(argv):
    run_absl_main(_run, argv)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_absl_flags)
