"""eleme: the reference .npy arrays through the builder (imu_npy functions), label column names, errors."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
from limubert_jax.datasets.imu_npy import imu_npy_dataset_builder as imu_npy

import dataset_testing as testing

DUMMY = pathlib.Path(testing.dummy_data_dir("eleme"))
STEPS = {"20_120": 120, "10_100": 100}


@pytest.fixture(scope="module", params=["20_120", "10_100"])
def built(request, tmp_path_factory):
    builder, source = testing.build("eleme", request.param, tmp_path_factory.mktemp("tfds"))
    return request.param, builder, source


def test_builds_the_arrays_row_for_row(built):
    version, builder, source = built
    data_name, label_name = imu_npy.file_names(version)
    data, label = np.load(DUMMY / data_name), np.load(DUMMY / label_name)
    got = testing.read_all(source)
    assert len(source) == data.shape[0] == {"20_120": 24, "10_100": 10}[version]
    assert got["imu"].dtype == np.float32 and got["imu"].shape == (len(data), STEPS[version], 9)
    np.testing.assert_array_equal(got["imu"], data.astype(np.float32))
    assert got["label"].dtype == np.int64 and got["label"].shape == (len(data), STEPS[version], 2)
    np.testing.assert_array_equal(got["label"], label.astype(np.int64))

    assert builder.info.features["imu"].shape == (STEPS[version], None)
    assert set(builder.info.features) == {"imu", "label"}  # no ClassLabel: the columns are undocumented
    meta = source.dataset_info.metadata
    assert (meta["sampling_rate_hz"], meta["seq_len"]) == ({"20_120": 20, "10_100": 10}[version], STEPS[version])
    assert (meta["num_windows"], meta["num_features"], meta["num_labels"]) == (len(data), 9, 2)
    assert meta["label_columns"] == ["label_0", "label_1"]
    assert meta["data_sha256"] == imu_npy.sha256(DUMMY / data_name)
    assert meta["label_sha256"] == imu_npy.sha256(DUMMY / label_name)
    assert meta["feature_names"][6:] == ["mag_x", "mag_y", "mag_z"]
    assert "LIMU-BERT" in builder.info.citation and builder.info.description.startswith("# eleme")
    assert builder.info.disable_shuffling


def copy_dummy(target: pathlib.Path, version: str) -> pathlib.Path:
    target.mkdir(parents=True)
    for name in imu_npy.file_names(version):
        shutil.copy(DUMMY / name, target / name)
    return target


def test_label_columns_json_names_the_columns(tmp_path):
    raw = copy_dummy(tmp_path / "raw", "10_100")
    (raw / imu_npy.LABEL_COLUMNS_FILE).write_text(json.dumps(["activity", "user"]))
    _, source = testing.build("eleme", "10_100", tmp_path / "tfds", manual_dir=raw)
    assert source.dataset_info.metadata["label_columns"] == ["activity", "user"]


@pytest.mark.parametrize(
    "text, match",
    [
        ('["activity"]', r" names 1 label columns, but the label file has 2"),
        ('["a", "a"]', r" must be a JSON list of distinct, non-empty strings"),
        ('{"activity": 0, "user": null}', r": the classes of 'activity' must be a list of distinct"),
        ('{"activity": ["sit", "walk"], "user": null}', r": 'activity' names 2 classes, but its labels run from 0 "
                                                        r"to 2 \(each label must index the names\)"),
        ('{"activity": ["a", "b", "c"]}', r" names 1 label columns, but the label file has 2"),
        ('"activity"', r" must be a JSON list of distinct, non-empty strings"),
        ("[activity", r" is not valid JSON"),
    ],
)
def test_bad_label_columns_json(tmp_path, text, match):
    (tmp_path / imu_npy.LABEL_COLUMNS_FILE).write_text(text)
    label = np.zeros((4, 3, 2), np.int64)
    label[2, :, 0] = 2  # activity labels 0..2
    with pytest.raises(ValueError, match=rf"label_columns\.json{match}"):
        imu_npy.label_columns(tmp_path, label)


def test_missing_or_incomplete_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"eleme/20_120: the manual directory .* data_20_120\.npy.*proprietary"):
        testing.build("eleme", "20_120", tmp_path / "tfds", manual_dir=tmp_path / "nowhere")
    raw = copy_dummy(tmp_path / "raw", "20_120")
    (raw / "label_20_120.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"eleme/20_120: missing label_20_120\.npy in .*raw"):
        testing.build("eleme", "20_120", tmp_path / "tfds", manual_dir=raw)


def test_bad_arrays_name_the_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    np.save(raw / "data_20_120.npy", np.zeros((3, 100, 9)))
    np.save(raw / "label_20_120.npy", np.zeros((3, 100, 2)))
    with pytest.raises(ValueError, match=r"eleme/20_120: windows in .*data_20_120\.npy have 100 steps"):
        testing.build("eleme", "20_120", tmp_path / "tfds", manual_dir=raw)
