"""Prepares a dataset ahead of a run (`limubert-prepare-data`).

    limubert-prepare-data --config=hhar
    python -m limubert_jax.prepare_data --config=configs/hhar.py

Takes the same config and overrides as the main job and builds `config.dataset` (TFDS,
array_record) where the main job will read it, from `--config.dataset.manual_dir=DIR` (raw
files or archives, see `datasets/<name>/README.md`) or by downloading public data; then
prints what was built: windows, features, label names and counts per task, and the split.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
from absl import flags

from limubert_jax import config_lib
from limubert_jax.data import input_pipeline
from limubert_jax.runtime import cli

define_flags = config_lib.define_config  # the main job's --config, overrides included


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


def _run(fv: flags.FlagValues, args: list[str]) -> None:
    # What was built is the command's result: stdout (logs go to stderr).
    print(describe(input_pipeline.load_data(cli.flag_value(fv["config"]))))


def main(argv: Sequence[str] | None = None) -> int:
    """The command (`limubert-prepare-data`); argv after the program name, None for sys.argv. Returns the exit status."""
    return cli.run_command(__doc__, define_flags, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
