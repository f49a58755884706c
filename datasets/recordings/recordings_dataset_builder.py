"""recordings: your own continuous IMU recordings (one CSV or Parquet file each), resampled to
a version's rate and cut into windows, one build per folder and options. README.md beside this
file states the contract; `reader` reads and checks the folder (`read_source`), this builder
writes the windows it cuts.
"""

from __future__ import annotations

import os
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
        # The resampled recordings past memory wait in the build's own folder (TFDS's temporary
        # one, deleted if the build fails) until their windows are written.
        source = reader.read_source(config.source_dir, config.sampling_rate, config.seq_len, **dict(config.options),
                                    spill_dir=self.data_dir)
        self.info.metadata.update(common.imu_metadata(config, source.num_features))
        # The fingerprint taken before the files were read, checked again after (read_source).
        self.info.metadata.update(source.metadata(), source_fingerprint=source.fingerprint)
        return {"train": self._examples(source)}

    def _examples(self, source: reader.Source) -> common.ExampleChunks:
        return common.ExampleChunks(source.num_windows, lambda: source.window_chunks(common.CHUNK_WINDOWS),
                                    close=source.close)
