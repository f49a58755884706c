"""recordings: your own continuous IMU recordings (one CSV or Parquet file each), resampled to
a version's rate and cut into windows, one build per folder and options. README.md beside this
file states the contract; `reader` reads and checks the folder (`read_source`), this builder
writes the windows it cuts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from limubert_jax.datasets import common
from limubert_jax.datasets.recordings import reader


class Builder(common.UserFolderBuilder):
    """DatasetBuilder for recordings (see README.md)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # Every build is `Builder.config_for(version, source_dir, **options)` (a custom config; TFDS
    # accepts one when no listed config has its name): there is no default build.
    BUILDER_CONFIGS: list = []
    SOURCE_OPTIONS = reader.SOURCE_OPTIONS  # config.dataset fields that change what is built, with their defaults
    # See common.py: pin TFDS's code/metadata paths to this folder (README.md).
    code_path = epath.Path(__file__)
    pkg_dir_path = code_path.parent
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put your recordings, one .csv or .parquet file each (columns timestamp, acc_x, acc_y, acc_z,
    gyro_x, gyro_y, gyro_z, optionally mag_x, mag_y, mag_z, and any label columns), in a folder and
    build `Builder.config_for(version, source_dir=DIR)` (or set `config.dataset.manual_dir = DIR`
    for the training job).
    """

    @classmethod
    def config_for(cls, version: str, source_dir, **options) -> common.SourceConfig:
        """The build of the recordings in `source_dir` at `version` (`<rate>_<steps>`) with
        `options` (SOURCE_OPTIONS; missing or None ones take their defaults), keyed by both.
        ValueError naming the config field for a bad option (`reader.check_options`)."""
        return common.source_config(cls.name, version, source_dir, reader.check_options(**options))

    def check_current(self, manual_dir: os.PathLike | str) -> None:
        """Refuses a build whose folder has changed since (recordings added, removed or
        rewritten): the build records the folder's fingerprint (`reader.fingerprint`: paths,
        sizes and modification times, or the files' SHA-256) and how it was taken."""
        meta = self.info.metadata or {}
        if "source_fingerprint" not in meta:
            return
        if reader.fingerprint(manual_dir, mode=meta.get("fingerprint_mode", "stat")) != meta["source_fingerprint"]:
            raise ValueError(
                f"{self.name}/{self.builder_config.window_version} in {self.data_dir} was built from "
                f"{meta.get('source_dir')!r}, and its recordings have changed since (files added, removed or "
                f"rewritten); delete {self.data_dir} to rebuild it, or use another data_dir"
            )

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        if not isinstance(config, common.SourceConfig):
            raise ValueError(f"{self.name} is built from your folder: tfds.builder('{self.name}', "
                             f"config=Builder.config_for(version, source_dir=DIR))")
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "imu": common.imu_feature(config.seq_len, None,
                                              "IMU readings (S, F) in physical units: acc m/s^2, gyro rad/s, mag uT"),
                    "label": tfds.features.Tensor(
                        shape=(config.seq_len, None), dtype=np.int64, encoding=tfds.features.Encoding.BYTES,
                        doc="class index per step (S, L) of each label column (metadata label_columns), -1: none",
                    ),
                    "recording": tfds.features.Tensor(
                        shape=(), dtype=np.int64, doc="index into metadata `recordings`",
                    ),
                }
            ),
            disable_shuffling=True,  # recordings, segments and windows in order
            metadata=common.imu_metadata(config, 6),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        source = reader.read_source(config.source_dir, config.sampling_rate, config.seq_len, **dict(config.options))
        self.info.metadata.update(common.imu_metadata(config, source.num_features))
        # The fingerprint taken before the files were read, checked again after (read_source).
        self.info.metadata.update(source.metadata(), source_fingerprint=source.fingerprint)
        return {"train": self._examples(source)}

    def _examples(self, source: reader.Source) -> common.ExampleChunks:
        return common.ExampleChunks(source.num_windows, lambda: window_chunks(source))


def window_chunks(source: reader.Source) -> Iterator[dict[str, np.ndarray]]:
    """`source.windows()` as chunks of about `common.CHUNK_WINDOWS` windows (`common.ExampleChunks`):
    `imu` float32 [k, S, F], `label` int64 [k, S, L], `recording` int64 [k]."""
    pending, size = [], 0
    for index, recording in enumerate(source.recordings):
        for imu, labels in recording.segments:
            starts = np.asarray(source.starts(len(imu)), np.int64)
            changes = _label_changes(labels) if len(starts) else None
            for first in range(0, len(starts), common.CHUNK_WINDOWS):
                pending.append(_windows(imu, labels, changes, starts[first : first + common.CHUNK_WINDOWS],
                                        source.seq_len, index))
                size += len(pending[-1]["recording"])
                if size >= common.CHUNK_WINDOWS:
                    yield _concatenate(pending)
                    pending, size = [], 0
    if pending:
        yield _concatenate(pending)


def _label_changes(labels: np.ndarray) -> np.ndarray:
    """(M, L): how often each column of a segment's labels (M, L) changed up to each step."""
    return np.concatenate([np.zeros((1, labels.shape[1]), np.int64), np.cumsum(labels[1:] != labels[:-1], axis=0)])


def _windows(imu: np.ndarray, labels: np.ndarray, changes: np.ndarray, starts: np.ndarray, seq_len: int,
             recording: int) -> dict[str, np.ndarray]:
    """The windows of one segment (imu (M, F), labels (M, L), their `_label_changes`) at `starts`,
    as `Source.windows` cuts them: a label column not the same at every step of a window (or
    missing, -1) is -1 at every step of it."""
    steps = starts[:, None] + np.arange(seq_len)
    first = labels[starts].astype(np.int64)
    # the same at every step: no change between the window's first and last step
    keep = (changes[starts + seq_len - 1] == changes[starts]) & (first >= 0)
    label = np.where(keep, first, reader.MISSING_LABEL)
    return {
        "imu": imu[steps],
        "label": np.broadcast_to(label[:, None, :], (len(starts), seq_len, labels.shape[1])),
        "recording": np.full(len(starts), recording, np.int64),
    }


def _concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
