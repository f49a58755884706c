"""motionsense: the reference preprocessing on tiny hand-made raw files, and the TFDS builder
on the committed dummy data."""

from __future__ import annotations

import pathlib
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from limubert_jax.datasets.motionsense import motionsense_dataset_builder as ms

import dataset_testing as testing

ACC, GYRO = ms.ACC_DIR, ms.GYRO_DIR
DUMMY = pathlib.Path(testing.dummy_data_dir("motionsense"))


def _csv(path: pathlib.Path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",x,y,z"] + [f"{i}," + ",".join(repr(float(v)) for v in row) for i, row in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")


def _acc(n: int, offset: float = 0.0) -> np.ndarray:
    k = np.arange(n, dtype=np.float64) + offset
    return np.stack([k, 2 * k, -k], 1)  # g


def _gyro(n: int) -> np.ndarray:
    k = np.arange(n, dtype=np.float64)
    return np.stack([k / 10, np.zeros(n), np.ones(n)], 1)  # rad/s


def _write(root: pathlib.Path, recordings: dict, doubled: bool = False) -> pathlib.Path:
    """{(trial, user): (acc rows, gyro rows)} -> B_Accelerometer_data/ and C_Gyroscope_data/."""
    for (trial, user), (acc, gyro) in recordings.items():
        for name, rows in ((ACC, acc), (GYRO, gyro)):
            folder = root / name / name if doubled else root / name
            _csv(folder / trial / f"sub_{user}.csv", rows)
    return root


def _window(acc_means, gyro_means) -> np.ndarray:
    a, g = np.asarray(acc_means, float)[:, None], np.asarray(gyro_means, float)[:, None]
    return np.concatenate([a * 9.8, 2 * a * 9.8, -a * 9.8, g, 0 * g, 1 + 0 * g], axis=1)  # gyro x = k / 10


# ---------------------------------------------------------------------------------------
# Preprocessing pieces


def test_sensor_windows_block_means_and_stop_rule():
    x = np.arange(20, dtype=np.float64)[:, None]
    # 20 Hz: blocks [0,1] [2,3,4] [5,6] [7,8,9] [10,11]; 14 samples allow the fifth block
    # (10 + 3 < 14), 13 do not (10 + 3 < 13 is false).
    assert ms.sensor_windows(x[:14], 20, 1)[..., 0].tolist() == [[0.5], [3.0], [5.5], [8.0], [10.5]]
    assert ms.sensor_windows(x[:13], 20, 1)[..., 0].tolist() == [[0.5], [3.0], [5.5], [8.0]]
    assert ms.sensor_windows(x[:14], 20, 2)[..., 0].tolist() == [[0.5, 3.0], [5.5, 8.0]]  # tail dropped
    assert ms.sensor_windows(x[:14], 20, 5).shape == (0, 5, 1)  # L = 5 = S: no window (L > S)
    # 10 Hz: blocks of 5 while i + 6 < L.
    assert ms.sensor_windows(x[:16], 10, 1)[..., 0].tolist() == [[2.0], [7.0]]


def test_pairing_truncates_to_the_shorter_sensor_and_scales_acc():
    acc = np.ones((3, 2, 3))
    gyro = np.full((2, 2, 3), 0.5)
    paired = ms.pair_windows(acc, gyro)
    assert paired.shape == (2, 2, 6)
    np.testing.assert_array_equal(paired[..., :3], 9.8)
    np.testing.assert_array_equal(paired[..., 3:], 0.5)


def test_preprocess_windows_labels_and_order(tmp_path):
    root = _write(
        tmp_path,
        {
            ("dws_2", 10): (_acc(12), _gyro(9)),  # acc L = 5 (2 windows), gyro L = 3 (1): 1 pair
            ("dws_11", 3): (_acc(12, 100.0), _gyro(12)),  # 2 windows
            ("jog_16", 24): (_acc(12), _gyro(7)),  # gyro L = 2 = S: no window at all
            ("sit_5", 2): (_acc(8), _gyro(8)),  # L = 3: 1 window
            ("dws_2", 2): (_acc(8), _gyro(8)),
        },
    )
    imu, labels = ms.preprocess(root, 25, 2)  # 50 -> 25 Hz: blocks of 2 while i + 3 < L
    expected = [
        _window([100.5, 102.5], [0.05, 0.25]),  # dws_11/sub_3 comes first: sorted names
        _window([104.5, 106.5], [0.45, 0.65]),
        _window([0.5, 2.5], [0.05, 0.25]),  # dws_2/sub_10 before dws_2/sub_2
        _window([0.5, 2.5], [0.05, 0.25]),  # dws_2/sub_2
        _window([0.5, 2.5], [0.05, 0.25]),  # sit_5/sub_2
    ]
    np.testing.assert_allclose(imu, np.stack(expected), rtol=1e-12)
    assert labels["activity"].tolist() == [0, 0, 0, 0, 2]
    assert labels["user"].tolist() == [2, 2, 9, 1, 1]


def test_activity_codes_map_to_their_index(tmp_path):
    recordings = {(f"{code}_{i + 1}", 1): (_acc(8), _gyro(8)) for i, code in enumerate(ms.ACTIVITY_CODES)}
    _, labels = ms.preprocess(_write(tmp_path, recordings), 25, 2)
    order = sorted(f"{code}_{i + 1}" for i, code in enumerate(ms.ACTIVITY_CODES))
    assert labels["activity"].tolist() == [ms.ACTIVITY_CODES.index(t.split("_")[0]) for t in order]
    assert ms.ACTIVITIES[ms.ACTIVITY_CODES.index("jog")] == "jogging"


def test_doubled_top_folders_and_stray_files(tmp_path):
    plain = _write(tmp_path / "plain", {("wlk_7", 4): (_acc(30), _gyro(30))})
    doubled = _write(tmp_path / "doubled", {("wlk_7", 4): (_acc(30), _gyro(30))}, doubled=True)
    (doubled / ACC / ACC / "wlk_7" / "._sub_4.csv").write_text("junk")
    (doubled / ACC / "__MACOSX").mkdir()
    a, b = ms.preprocess(plain, 25, 4), ms.preprocess(doubled, 25, 4)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (3, 4, 6) and b[1]["user"].tolist() == [3, 3, 3]


def test_errors_name_the_file(tmp_path):
    root = _write(tmp_path / "a", {("std_6", 1): (_acc(8), _gyro(8))})
    (root / GYRO / "std_6" / "sub_1.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"C_Gyroscope_data/std_6/sub_1\.csv"):
        ms.preprocess(root, 25, 2)

    root = _write(tmp_path / "b", {("std_6", 1): (_acc(8), _gyro(8))})
    (root / ACC / "std_6" / "sub_1.csv").write_text(",x,y,z\n0,1.0,2.0,3.0\n1,1.0,bad,3.0\n")
    with pytest.raises(ValueError, match=r"B_Accelerometer_data/std_6/sub_1\.csv"):
        ms.preprocess(root, 25, 2)

    root = _write(tmp_path / "c", {("std_6", 1): (_acc(8), _gyro(8)[:, :2])})
    with pytest.raises(ValueError, match=r"C_Gyroscope_data/std_6/sub_1\.csv must have 4 columns"):
        ms.preprocess(root, 25, 2)

    root = _write(tmp_path / "d", {("std_6", 25): (_acc(8), _gyro(8))})
    with pytest.raises(ValueError, match="user 25"):
        ms.preprocess(root, 25, 2)

    (tmp_path / "e" / ACC).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="C_Gyroscope_data"):
        ms.preprocess(tmp_path / "e", 25, 2)


# ---------------------------------------------------------------------------------------
# Archives: each zip extracts to its own root (TFDS extraction itself needs TensorFlow, so
# the builder's archive step runs here with a stand-in download manager).


def _zip_dummy(manual: pathlib.Path, doubled: bool = True) -> None:
    manual.mkdir(parents=True, exist_ok=True)
    for name in (ACC, GYRO):
        with zipfile.ZipFile(manual / f"{name}.zip", "w") as z:
            for path in sorted((DUMMY / name).rglob("*")):
                rel = path.relative_to(DUMMY).as_posix()
                z.write(path, f"{name}/{rel}" if doubled else rel)


class _Extractor:
    """The part of TFDS's download manager that `layout.extract_archives` uses."""

    def __init__(self, download_dir: pathlib.Path):
        self.download_dir = download_dir


def test_archives_extract_to_separate_roots(tmp_path):
    _zip_dummy(tmp_path / "manual")
    builder = tfds.builder("motionsense/10_100", data_dir=str(tmp_path / "tfds"))
    archives = [tmp_path / "manual" / a for a in ms.Builder.ARCHIVES]
    dirs = builder._from_archives(_Extractor(tmp_path / "extracted"), archives, "the archives")
    assert dirs.acc.name == ACC and dirs.acc.parent.name == ACC  # the doubled folder
    got = [w for w, _ in builder.windows(dirs)]
    np.testing.assert_array_equal(np.stack(got), ms.preprocess(DUMMY, 10, 100)[0])

    with pytest.raises(FileNotFoundError, match=r"C_Gyroscope_data/ \(extracted from C_Gyroscope_data\.zip\)"):
        builder._from_archives(_Extractor(tmp_path / "extracted2"), archives[:1], "the archives")


def test_builds_from_archives_with_tfds(built, tmp_path):
    _zip_dummy(tmp_path / "manual")
    _, source = testing.build("motionsense", "10_100", tmp_path / "tfds", tmp_path / "manual")
    np.testing.assert_array_equal(testing.read_all(source)["imu"], built["10_100"][1]["imu"])


# ---------------------------------------------------------------------------------------
# The TFDS builder on the committed dummy data

# Windows per dummy recording at 20_120 in sorted order: dws_1/sub_1 2, dws_1/sub_10 2,
# dws_11/sub_2 2, jog_9/sub_1 2, jog_9/sub_10 1, sit_5/sub_2 2, std_6/sub_1 0 (L = 119),
# std_6/sub_10 2, ups_3/sub_1 2 (acc 3, gyro 2), ups_3/sub_2 2, wlk_7/sub_2 2, wlk_7/sub_24 2.
_DUMMY_20_120 = [(0, 0, 2), (0, 9, 2), (0, 1, 2), (5, 0, 2), (5, 9, 1), (2, 1, 2), (3, 9, 2), (1, 0, 2),
                 (1, 1, 2), (4, 1, 2), (4, 23, 2)]  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return testing.build_versions("motionsense", tmp_path_factory)


@pytest.mark.parametrize("version, count", [("20_120", 21), ("10_100", 10)])
def test_build_matches_preprocess(built, version, count):
    builder, data = built[version]
    rate, seq_len = builder.builder_config.sampling_rate, builder.builder_config.seq_len
    assert data["imu"].shape == (count, seq_len, 6) and data["imu"].dtype == np.float32
    imu, labels = ms.preprocess(DUMMY, rate, seq_len)
    np.testing.assert_array_equal(data["imu"], imu.astype(np.float32))
    for task in ("activity", "user"):
        np.testing.assert_array_equal(data[task], labels[task])
    assert builder.info.splits["train"].num_examples == count


def test_window_order(built):
    _, data = built["20_120"]
    assert data["activity"].tolist() == [a for a, _, n in _DUMMY_20_120 for _ in range(n)]
    assert data["user"].tolist() == [u for _, u, n in _DUMMY_20_120 for _ in range(n)]


def test_features_and_metadata(built):
    builder, _ = built["20_120"]
    features = builder.info.features
    assert features["activity"].names == ["downstairs", "upstairs", "sitting", "standing", "walking", "jogging"]
    assert features["user"].names == [str(u) for u in range(1, 25)] and features["user"].num_classes == 24
    assert builder.info.supervised_keys == ("imu", "activity")
    meta = builder.info.metadata
    assert meta["sampling_rate_hz"] == 20 and meta["seq_len"] == 120
    assert meta["feature_units"] == ["m/s^2"] * 3 + ["rad/s"] * 3
    assert meta["activity_codes"] == list(ms.ACTIVITY_CODES) and meta["acc_scale_to_m_s2"] == 9.8
    assert "Malekzadeh" in builder.info.citation
    assert built["10_100"][0].info.metadata["seq_len"] == 100


def test_incomplete_manual_dir_names_the_missing_file(tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY / ACC, manual / ACC)
    with pytest.raises(FileNotFoundError, match="C_Gyroscope_data"):
        testing.build("motionsense", "20_120", tmp_path / "tfds", manual)

    shutil.copytree(DUMMY / GYRO, manual / GYRO)
    (manual / GYRO / "wlk_7" / "sub_24.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"C_Gyroscope_data/wlk_7/sub_24\.csv"):
        testing.build("motionsense", "20_120", tmp_path / "tfds2", manual)


def test_malformed_raw_file_is_named(tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY, manual)
    (manual / ACC / "sit_5" / "sub_2.csv").write_text(",x,y,z\n0,1,2\n")
    with pytest.raises(ValueError, match=r"B_Accelerometer_data/sit_5/sub_2\.csv"):
        testing.build("motionsense", "20_120", tmp_path / "tfds", manual)
