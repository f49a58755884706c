"""eleme: the proprietary Eleme courier IMU data of LIMU-BERT, from the reference .npy arrays.

There is no public download. The manual directory holds the reference layout for version
`V` (`20_120` or `10_100`): `data_V.npy`, (N, S, F) IMU windows in physical units, and
`label_V.npy`, (N, S, L) integer-valued labels. They are read and validated with the
`imu_npy` functions (`load_arrays`): one example per window in row order, `imu` float32
(S, F) and `label` int64 (S, L), F and L taken from the files.

The reference does not document the label columns. An optional `label_columns.json` in the
manual directory names them, and may name their classes (`imu_npy`'s module docstring);
without it they are `label_0`, ..., `label_<L-1>`.

`ReferenceNpyBuilder` (a mixin over `imu_npy.Builder`) is shared with the `huawei` builder.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from limubert_jax.datasets import common
from limubert_jax.datasets.imu_npy import imu_npy_dataset_builder as imu_npy


class ReferenceNpyBuilder:
    """Mixin for `imu_npy.Builder` subclasses that serve one named dataset in the reference
    .npy layout: README.md / CITATIONS.bib of the subclass's folder as description and
    citation, error messages under the dataset's name.

    A subclass sets `BUILDER_CONFIGS`, `MANUAL_DOWNLOAD_INSTRUCTIONS` and `HOMEPAGE`; its
    `code_path` / `pkg_dir_path` are pinned to its own folder (imu_npy pins its own).
    """

    HOMEPAGE: str | None = None
    LABELS_REQUIRED = True  # the reference's arrays come with their labels
    # One dataset: its reference versions only, each checked against the manual directory's
    # arrays as imu_npy checks a build (`check_current`).
    KEYED_BY_SOURCE = False

    def __init_subclass__(cls, **kwargs):
        common.pin_to_own_folder(cls)  # before TFDS registers the class
        super().__init_subclass__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "imu": common.imu_feature(config.seq_len, None,
                                              "IMU readings (S, F) in physical units, as in data_<version>.npy"),
                    "label": tfds.features.Tensor(
                        shape=(config.seq_len, None),
                        dtype=np.int64,
                        encoding=tfds.features.Encoding.BYTES,
                        doc="labels (S, L), as in label_<version>.npy (columns: metadata label_columns)",
                    ),
                }
            ),
            homepage=self.HOMEPAGE,
            disable_shuffling=True,  # keep the row order: reference split indices apply
            metadata=common.imu_metadata(config),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        try:
            generators = super()._split_generators(dl_manager)  # imu_npy: load_arrays, metadata
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{self._rename(e)} {self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}") from e
        except ValueError as e:
            raise ValueError(self._rename(e)) from e
        return generators

    def _rename(self, error: Exception) -> str:
        """imu_npy's message under this dataset's name ('imu_npy/20_120: ...' -> 'eleme/20_120: ...')."""
        message = str(error)
        return self.name + message[len("imu_npy") :] if message.startswith("imu_npy/") else f"{self.name}: {message}"


class Builder(ReferenceNpyBuilder, imu_npy.Builder):
    """DatasetBuilder for eleme (see the module docstring)."""

    BUILDER_CONFIGS = common.version_configs("Eleme courier IMU windows (reference data_/label_<version>.npy),")
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    The Eleme data are proprietary (not publicly released); they can only be built from the
    reference arrays if you have them. Put data_<version>.npy, (N, S, F) IMU windows in
    physical units, and label_<version>.npy, (N, S, L) integer labels (version 20_120:
    S = 120; 10_100: S = 100), in a directory and pass it as --config.dataset.manual_dir=DIR
    (TFDS: DownloadConfig(manual_dir=DIR)). The label columns are not documented by the
    reference: to record what they are, add label_columns.json there, a JSON list of L
    names, e.g. ["activity", "user"].
    """
