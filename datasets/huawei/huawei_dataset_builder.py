"""huawei: the proprietary Huawei IMU data of LIMU-BERT, from the reference .npy arrays.

There is no public download. The manual directory holds the reference layout for version
`V` (`20_120` or `10_100`): `data_V.npy`, (N, S, F) IMU windows in physical units, and
`label_V.npy`, (N, S, L) integer-valued labels, read and validated with the `imu_npy`
functions: one example per window in row order, `imu` float32 (S, F) and `label` int64
(S, L), F and L taken from the files. The builder is the `eleme` one under another name
(`eleme_dataset_builder.ReferenceNpyBuilder`).

The reference does not document the label columns. An optional `label_columns.json` in the
manual directory, a JSON list of L strings, names them (metadata `label_columns`); without
it they are `label_0`, ..., `label_<L-1>`.
"""

from __future__ import annotations

from limubert_jax.datasets import common
from limubert_jax.datasets.eleme import eleme_dataset_builder as eleme
from limubert_jax.datasets.imu_npy import imu_npy_dataset_builder as imu_npy


class Builder(eleme.ReferenceNpyBuilder, imu_npy.Builder):
    """DatasetBuilder for huawei (see the module docstring)."""

    BUILDER_CONFIGS = common.version_configs("Huawei IMU windows (reference data_/label_<version>.npy),")
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    The Huawei data are proprietary (not publicly released); they can only be built from the
    reference arrays if you have them. Put data_<version>.npy, (N, S, F) IMU windows in
    physical units, and label_<version>.npy, (N, S, L) integer labels (version 20_120:
    S = 120; 10_100: S = 100), in a directory and pass it as --config.dataset.manual_dir=DIR
    (TFDS: DownloadConfig(manual_dir=DIR)). The label columns are not documented by the
    reference: to record what they are, add label_columns.json there, a JSON list of L
    names, e.g. ["activity", "position", "user"].
    """
