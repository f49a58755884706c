"""Helpers for the builder tests here: build from raw files into a temporary data_dir, read
back, and write small recordings (`write_recording`).

Builder tests (`<name>_dataset_builder_test.py`) build from the committed
`datasets/<name>/dummy_data/` (written by `make_dummy_data.py`, never downloaded) or from raw
files the test writes itself, with TFDS's manual directory pointing at them; no TensorFlow needed.
"""

from __future__ import annotations

import os

import limubert_jax.datasets  # noqa: F401  (registers the builders)
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from limubert_jax.datasets import common
from make_dummy_data import dummy_data_dir


def build(name: str, version: str, data_dir: os.PathLike | str, manual_dir: os.PathLike | str | None = None):
    """Prepares `name/version` (array_record) from `manual_dir` (default: its dummy_data)
    into `data_dir` and returns `(builder, tfds.data_source of the train split)`."""
    manual_dir = dummy_data_dir(name) if manual_dir is None else manual_dir
    builder = tfds.builder(f"{name}/{version}", data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)),
    )
    return builder, tfds.data_source(f"{name}/{version}", split="train", data_dir=os.fspath(data_dir), download=False)


def read_all(source) -> dict[str, np.ndarray]:
    """Every example of a data source stacked per feature, in order."""
    examples = [source[i] for i in range(len(source))]
    return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]} if examples else {}


def build_versions(name: str, tmp_path_factory) -> dict[str, tuple]:
    """Both reference versions of `name` built from its dummy_data into pytest temp dirs:
    {version: (builder, read_all(source))}."""
    out = {}
    for version in ("20_120", "10_100"):
        builder, source = build(name, version, tmp_path_factory.mktemp(f"{name}_{version}"))
        out[version] = (builder, read_all(source))
    return out


def recording_signals(t: np.ndarray, num_features: int = 6) -> np.ndarray:
    """Channel j = (j + 1) * t + j: every step's time can be read back from acc_x."""
    return np.stack([(j + 1) * t + j for j in range(num_features)], axis=1)


def write_recording(path: os.PathLike | str, t, x=None, labels: dict | None = None, *, names=None,
                    times=None) -> epath.Path:
    """A CSV recording for the recordings builder: a header (`names`, default timestamp, the
    channels, the label columns), then per row the timestamp (`times` as written, default
    repr of t), the channels (x (N, F), default `recording_signals(t)`), the labels ({column:
    values}; None: an empty cell). Floats are written with repr, so they read back exactly."""
    path = epath.Path(path)
    t = np.asarray(t, np.float64)
    x = recording_signals(t) if x is None else np.asarray(x, np.float64)
    labels = labels or {}
    times = [repr(float(v)) for v in t] if times is None else [str(v) for v in times]
    lines = [",".join(names or ["timestamp", *common.FEATURE_NAMES[: x.shape[1]], *labels])]
    for i in range(len(t)):
        cells = [times[i], *(repr(float(v)) for v in x[i])]
        cells += ["" if labels[c][i] is None else str(labels[c][i]) for c in labels]
        lines.append(",".join(cells))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
