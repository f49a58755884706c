"""huawei: the reference .npy arrays through the builder (the eleme builder under another name), errors."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
from limubert_jax.datasets.imu_npy import imu_npy_dataset_builder as imu_npy

import dataset_testing as testing

DUMMY = pathlib.Path(testing.dummy_data_dir("huawei"))
STEPS = {"20_120": 120, "10_100": 100}


@pytest.mark.parametrize("version", ["20_120", "10_100"])
def test_builds_the_arrays_row_for_row(tmp_path, version):
    raw = tmp_path / "raw"
    shutil.copytree(DUMMY, raw)
    (raw / "label_columns.json").write_text(json.dumps(["activity", "position", "user"]))
    builder, source = testing.build("huawei", version, tmp_path / "tfds", manual_dir=raw)
    data_name, label_name = imu_npy.file_names(version)
    data, label = np.load(DUMMY / data_name), np.load(DUMMY / label_name)
    got = testing.read_all(source)
    assert len(source) == data.shape[0] == {"20_120": 22, "10_100": 9}[version]
    assert got["imu"].dtype == np.float32 and got["imu"].shape == (len(data), STEPS[version], 6)
    np.testing.assert_array_equal(got["imu"], data.astype(np.float32))
    assert got["label"].dtype == np.int64 and got["label"].shape == (len(data), STEPS[version], 3)
    np.testing.assert_array_equal(got["label"], label.astype(np.int64))

    assert builder.name == "huawei" and pathlib.Path(builder.pkg_dir_path).name == "huawei"
    meta = source.dataset_info.metadata
    assert (meta["num_windows"], meta["num_features"], meta["num_labels"]) == (len(data), 6, 3)
    assert meta["label_columns"] == ["activity", "position", "user"]
    assert meta["feature_names"] == ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
    assert meta["data_sha256"] == imu_npy.sha256(DUMMY / data_name)
    assert meta["seq_len"] == STEPS[version]
    assert "LIMU-BERT" in builder.info.citation and builder.info.description.startswith("# huawei")


def test_missing_or_incomplete_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"huawei/10_100: the manual directory .* data_10_100\.npy"):
        testing.build("huawei", "10_100", tmp_path / "tfds", manual_dir=tmp_path / "nowhere")
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(DUMMY / "label_10_100.npy", raw / "label_10_100.npy")
    with pytest.raises(FileNotFoundError, match=r"huawei/10_100: missing data_10_100\.npy in .*raw"):
        testing.build("huawei", "10_100", tmp_path / "tfds", manual_dir=raw)


def test_bad_arrays_name_the_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    np.save(raw / "data_10_100.npy", np.zeros((3, 100, 6)))
    np.save(raw / "label_10_100.npy", np.full((3, 100, 2), 0.5))
    with pytest.raises(ValueError, match=r"huawei/10_100: .*label_10_100\.npy has a non-integer label in window 0"):
        testing.build("huawei", "10_100", tmp_path / "tfds", manual_dir=raw)
