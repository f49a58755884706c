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
from limubert_jax.data import loading
from limubert_jax.runtime import cli
from limubert_jax.runtime.errors import LimuBertError, destination_error

define_flags = config_lib.define_config  # the main job's --config, overrides included


def describe(data) -> str:
    """A few lines on a prepared dataset: size, features, split, labels per task (of merged
    datasets, the merge and then each dataset)."""
    split = "  pretraining split" + ("" if data.split_by == "window" else f" (by {data.split_by})")
    if data.sources:
        lines = [f"{data.name}/{data.version}: {data.num_windows} windows of {data.seq_len} steps x "
                 f"{data.num_features} features (the channels all {len(data.sources)} datasets have)",
                 f"{split}: {len(data.train)} train / {len(data.vali)} validation windows"]
        return "\n".join(lines + [describe(source) for source in data.sources])
    info = data.info
    lines = [
        f"{data.name}/{data.version}: {data.num_windows} windows of {data.seq_len} steps x "
        f"{data.num_features} features at {data.sampling_rate_hz:g} Hz in {info.data_dir}",
        f"  features: {', '.join(data.feature_names or ())}",
        f"{split}: {len(data.train)} train / {len(data.vali)} validation windows",
    ]
    source = data.train.source
    records = [source[i] for i in range(len(source))]
    for task, feature in info.features.items():
        names = getattr(feature, "names", None)
        if names is not None:
            lines.append(_counts(task, names, [int(r[task]) for r in records]))
    meta = dict(info.metadata or {})
    classes = meta.get("label_classes") or {}
    for column, task in enumerate(meta.get("label_columns") or ()):  # the npy layout's `label` columns
        values = np.array([int(np.asarray(r["label"])[0, column]) for r in records], np.int64)
        if task in classes:
            lines.append(_counts(task, classes[task], values))
        else:  # unnamed integer classes, shown by value
            found, counts = np.unique(values, return_counts=True)
            lines.append(f"  {task} ({len(found)} values): " + ", ".join(f"{v} {c}" for v, c in zip(found, counts)))
    return "\n".join(lines)


def _counts(task: str, names, values) -> str:
    """'  task (K classes): a 10, b 3[, no label 2]': windows per class (of its first step)."""
    values = np.asarray(values, np.int64)
    known = values[values >= 0]
    counts = np.bincount(known, minlength=len(names)) if known.size else np.zeros(len(names), np.int64)
    shown = ", ".join(f"{n} {c}" for n, c in zip(names, counts) if c)
    missing = int(np.count_nonzero(values < 0))
    return f"  {task} ({len(names)} classes): {shown}" + (f", no label {missing}" if missing else "")


def _run(fv: flags.FlagValues, args: list[str]) -> None:
    config = cli.flag_value(fv["config"])
    try:
        data = loading.load_data(config)
    except Exception as e:  # noqa: BLE001  (only a destination's errors are taken; others go on)
        # TFDS's own check of free space names no folder: the data_dir is where it builds.
        line = destination_error(e, where=config.dataset.get("data_dir") or None)
        if line is None:
            raise
        raise LimuBertError(line) from None
    # What was built is the command's result: stdout (logs go to stderr).
    print(describe(data))


def main(argv: Sequence[str] | None = None) -> int:
    """The command (`limubert-prepare-data`); argv after the program name, None for sys.argv. Returns the exit
    status."""
    return cli.run_command(__doc__, define_flags, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
