"""hhar: the paired-bin procedure on hand-made raw files, the builder on dummy_data, errors."""

from __future__ import annotations

import pathlib
import zipfile

import numpy as np
import pytest
from limubert_jax.datasets.hhar import hhar_dataset_builder as hhar

import dataset_testing as testing

T0 = 1_424_696_631_913_248_572  # ns
DUMMY = pathlib.Path(testing.dummy_data_dir("hhar"))
DUMMY_LAYOUT = DUMMY / hhar.LAYOUT_DIR


def _row(ms: float, x: float, user="a", model="nexus4", gt="walk", y: float = 0.0) -> str:
    return f"0,0,{T0 + round(ms * 1_000_000)},{x},{y},0.5,{user},{model},{model}_1,{gt}"


def _write(folder: pathlib.Path, acc: list[str], gyro: list[str]) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    header = ",".join(hhar.HEADER)
    (folder / hhar.ACC_FILE).write_text("\n".join([header, *acc]) + "\n")
    (folder / hhar.GYRO_FILE).write_text("\n".join([header, *gyro]) + "\n")
    return folder


def _rows(spec) -> list[str]:
    """spec: [(ms, dict of _row keywords)]; x is the row's time, so a step's mean x tells
    which rows it averaged."""
    return [_row(ms, float(ms), **kw) for ms, kw in spec]


def _steps(imu: np.ndarray) -> list[tuple[float, float]]:
    """(acc mean x, gyro mean x) per step of every window (x = time in ms, see _rows)."""
    return [(float(a), float(g)) for a, g in imu.reshape(-1, 6)[:, [0, 3]]]


# ---------------------------------------------------------------------------------------
# The procedure, computed by hand.


def test_bins_average_the_rows_within_the_window_of_the_tag(tmp_path):
    acc = [_row(0, 1), _row(10, 3), _row(50, 5), _row(60, 7), _row(100, 1, y=2), _row(110, 3, y=4), _row(150, 2)]
    gyro = [_row(5, 0.1), _row(55, 0.3), _row(105, 0.5), _row(155, 0.7)]
    imu, labels = hhar.preprocess(_write(tmp_path, acc, gyro), window_ms=50, seq_len=2)
    # tag 0: acc rows at 0, 10 (50 is not < 50 ms away), gyro 5; tag 50: acc 50, 60, gyro 55; ...
    expected = np.array(
        [
            [[2, 0, 0.5, 0.1, 0, 0.5], [6, 0, 0.5, 0.3, 0, 0.5]],
            [[2, 3, 0.5, 0.5, 0, 0.5], [2, 0, 0.5, 0.7, 0, 0.5]],
        ]
    )
    np.testing.assert_allclose(imu, expected, rtol=0, atol=1e-12)
    assert imu.dtype == np.float64
    assert {k: v.tolist() for k, v in labels.items()} == {"user": [0, 0], "device_model": [0, 0], "activity": [5, 5]}


@pytest.mark.parametrize(
    "user, model, gt, expected",
    [("a", "nexus4", "bike", (0, 0, 0)), ("c", "s3mini", "stairsup", (2, 2, 3)), ("i", "samsungold", "walk", (8, 3, 5)),
     ("e", "s3", "stairsdown", (4, 1, 2)), ("h", "nexus4", "sit", (7, 0, 1)), ("b", "s3", "stand", (1, 1, 4))],
)  # fmt: skip
def test_labels_are_indices_into_the_fixed_class_lists(tmp_path, user, model, gt, expected):
    kw = dict(user=user, model=model, gt=gt)
    _, labels = hhar.preprocess(_write(tmp_path, [_row(0, 1, **kw)], [_row(1, 2, **kw)]), seq_len=1)
    assert (labels["user"][0], labels["device_model"][0], labels["activity"][0]) == expected
    assert hhar.USERS == tuple("abcdefghi")
    assert hhar.MODELS == ("nexus4", "s3", "s3mini", "samsungold")
    assert hhar.ACTIVITIES == ("bike", "sit", "stairsdown", "stairsup", "stand", "walk")


# With seq_len 1 every valid bin is a window; expected: (acc mean x, gyro mean x) per valid bin.
CASES = {
    # tag 0: acc rows 0 (a) and 20 (b) mix users -> invalid; restart at the earliest unread
    # row (gyro 55, not 50): acc [60], gyro [55]; then tag 105: acc [110], gyro [105].
    "user mismatch within a sensor's bin, restart at the earliest unread row": (
        [(0, {}), (20, {"user": "b"}), (60, {}), (110, {})],
        [(5, {}), (55, {}), (105, {})],
        [(60, 55), (110, 105)],
    ),
    "gt change within a sensor's bin": (
        [(0, {}), (20, {"gt": "sit"}), (60, {}), (110, {})],
        [(5, {}), (55, {}), (105, {})],
        [(60, 55), (110, 105)],
    ),
    "user mismatch between acc and gyro": ([(0, {}), (50, {})], [(5, {"user": "b"}), (55, {})], [(50, 55)]),
    "gt mismatch between acc and gyro": ([(0, {}), (50, {})], [(5, {"gt": "sit"}), (55, {})], [(50, 55)]),
    "model mismatch between acc and gyro": ([(0, {}), (50, {})], [(5, {"model": "s3"}), (55, {})], [(50, 55)]),
    # Only User and gt must be uniform within a sensor's bin; its model is its first row's.
    "model of a bin is its first row's": ([(0, {}), (20, {"model": "s3"})], [(5, {})], [(10, 5)]),
    "null gt never forms a step, even when both sensors agree": (
        [(0, {"gt": "null"}), (50, {})],
        [(5, {"gt": "null"}), (55, {})],
        [(50, 55)],
    ),
    "null next to an activity in one bin": ([(0, {}), (20, {"gt": "null"}), (60, {})], [(5, {}), (55, {})], [(60, 55)]),
    # tag 50: gyro's next row (155) is too far -> invalid; restart at 100 (acc): gyro still
    # none -> invalid; restart at 150: both.
    "missing sensor": ([(0, {}), (50, {}), (100, {}), (150, {})], [(5, {}), (155, {})], [(0, 5), (150, 155)]),
    # Rows are walked in file order: acc's row at 50 comes after the one at 200 and is never
    # within reach again; the walk ends when gyro runs out.
    "file order, not time order": ([(0, {}), (200, {}), (50, {})], [(5, {}), (55, {}), (205, {})], [(0, 5), (200, 205)]),
    "both sensors empty at a tag restart at the next row": ([(0, {}), (300, {})], [(5, {}), (310, {})], [(0, 5), (300, 310)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bin_validity_rules(tmp_path, name):
    acc, gyro, expected = CASES[name]
    imu, _ = hhar.preprocess(_write(tmp_path, _rows(acc), _rows(gyro)), window_ms=50, seq_len=1)
    assert _steps(imu) == [(float(a), float(g)) for a, g in expected]


def test_an_invalid_bin_drops_the_partial_window_and_restarts(tmp_path):
    acc = _rows([(0, {}), (50, {}), (100, {"gt": "null"}), (150, {}), (200, {}), (250, {}), (300, {})])
    gyro = _rows([(3, {}), (53, {}), (103, {"gt": "null"}), (153, {}), (203, {}), (253, {})])
    imu, _ = hhar.preprocess(_write(tmp_path, acc, gyro), window_ms=50, seq_len=3)
    # bins 0 and 50 are valid, 100 is null: both dropped; restart at 150: 150, 200, 250.
    assert imu.shape == (1, 3, 6)
    assert _steps(imu) == [(150.0, 153.0), (200.0, 203.0), (250.0, 253.0)]


def test_100_ms_bins(tmp_path):
    acc = _rows([(0, {}), (40, {}), (90, {}), (140, {}), (190, {})])
    gyro = _rows([(10, {}), (60, {}), (110, {}), (160, {})])
    imu, _ = hhar.preprocess(_write(tmp_path, acc, gyro), window_ms=100, seq_len=2)
    # tag 0: acc 0, 40, 90 / gyro 10, 60; tag 100: acc 140, 190 / gyro 110, 160.
    assert _steps(imu) == [(130 / 3, 35.0), (165.0, 135.0)]


def test_chunked_reading_does_not_change_the_windows():
    expected, labels = hhar.preprocess(DUMMY_LAYOUT, 50, 120)
    for chunk_rows in (1, 3, 1000):
        imu, other = hhar.preprocess(DUMMY_LAYOUT, 50, 120, chunk_rows=chunk_rows)
        np.testing.assert_array_equal(imu, expected)
        assert all(np.array_equal(other[k], labels[k]) for k in labels)


# ---------------------------------------------------------------------------------------
# The builder on dummy_data.

DUMMY_WINDOWS = {"20_120": 21, "10_100": 13}


@pytest.mark.parametrize("version", ["20_120", "10_100"])
def test_builder_on_dummy_data(tmp_path, version):
    builder, source = testing.build("hhar", version, tmp_path)
    rate, seq_len = {"20_120": (20, 120), "10_100": (10, 100)}[version]
    data = testing.read_all(source)
    imu, labels = hhar.preprocess(DUMMY_LAYOUT, 1000 // rate, seq_len)
    assert len(source) == DUMMY_WINDOWS[version] == len(imu)
    assert data["imu"].shape == (len(imu), seq_len, 6) and data["imu"].dtype == np.float32
    np.testing.assert_array_equal(data["imu"], imu.astype(np.float32))  # same values, same order
    for task in ("user", "device_model", "activity"):
        np.testing.assert_array_equal(data[task], labels[task])
    # Both users, three phone models (samsungold has no gyroscope), four activities.
    assert set(data["user"].tolist()) == {0, 1}
    assert set(data["device_model"].tolist()) == {0, 1, 2}
    assert set(data["activity"].tolist()) == {0, 1, 4, 5}
    features = builder.info.features
    assert features["user"].names == list("abcdefghi") and features["user"].num_classes == 9
    assert features["device_model"].names == ["nexus4", "s3", "s3mini", "samsungold"]
    assert features["activity"].names == ["bike", "sit", "stairsdown", "stairsup", "stand", "walk"]
    meta = builder.info.metadata
    assert (meta["sampling_rate_hz"], meta["seq_len"]) == (rate, seq_len)
    assert meta["feature_names"] == ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
    assert meta["feature_units"] == ["m/s^2"] * 3 + ["rad/s"] * 3
    assert meta["reference_label_columns"] == ["user", "device_model", "activity"]
    assert builder.info.supervised_keys == ("imu", "activity")


def _zip_layout(path: pathlib.Path) -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as z:
        for name in (hhar.ACC_FILE, hhar.GYRO_FILE):
            z.write(DUMMY_LAYOUT / name, f"{hhar.LAYOUT_DIR}/{name}")
    return path


def test_builder_reads_the_archive(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    _zip_layout(manual / "Activity recognition exp.zip")
    _, source = testing.build("hhar", "10_100", tmp_path / "tfds", manual)
    assert len(source) == DUMMY_WINDOWS["10_100"]


def test_builder_reads_the_nested_archive(tmp_path):
    """The UCI download: heterogeneity+activity+recognition.zip holding Activity recognition exp.zip."""
    inner = _zip_layout(tmp_path / "Activity recognition exp.zip")
    manual = tmp_path / "manual"
    manual.mkdir()
    with zipfile.ZipFile(manual / "heterogeneity+activity+recognition.zip", "w") as z:
        z.write(inner, inner.name)
    _, source = testing.build("hhar", "10_100", tmp_path / "tfds", manual)
    assert len(source) == DUMMY_WINDOWS["10_100"]


# ---------------------------------------------------------------------------------------
# Errors.


def test_incomplete_manual_dir_names_the_missing_file(tmp_path):
    layout = tmp_path / "manual" / hhar.LAYOUT_DIR
    layout.mkdir(parents=True)
    (layout / hhar.ACC_FILE).write_bytes((DUMMY_LAYOUT / hhar.ACC_FILE).read_bytes())
    with pytest.raises(FileNotFoundError, match=hhar.GYRO_FILE):
        testing.build("hhar", "20_120", tmp_path / "tfds", tmp_path / "manual")


def test_missing_file_in_raw_dir(tmp_path):
    _write(tmp_path, [_row(0, 1)], [_row(0, 1)])
    (tmp_path / hhar.ACC_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=hhar.ACC_FILE):
        hhar.preprocess(tmp_path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("0,0,1,abc,0,0,a,nexus4,nexus4_1,walk", r"line 4: malformed row \(x is not a number"),
        ("0,0,1,0,0,a,nexus4,nexus4_1,walk", r"line 4: malformed row \(9 fields, expected 10"),
        ("0,0,1.5e9,0,0,0,a,nexus4,nexus4_1,walk", r"line 4: malformed row \(Creation_Time is not a number"),
        ("0,0,1,0,0,0,a,iphone,iphone_1,walk", r"line 4: unknown Model 'iphone'"),
        ("0,0,1,0,0,0,z,nexus4,nexus4_1,walk", r"line 4: unknown User 'z'"),
        ("0,0,1,0,0,0,a,nexus4,nexus4_1,run", r"line 4: unknown gt 'run'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    _write(tmp_path, [_row(0, 1), _row(10, 1), bad, _row(20, 1)], [_row(0, 1)])
    with pytest.raises(ValueError, match=f"{hhar.ACC_FILE}, {message}"):
        hhar.preprocess(tmp_path, chunk_rows=2)


def test_wrong_header(tmp_path):
    _write(tmp_path, [_row(0, 1)], [_row(0, 1)])
    (tmp_path / hhar.GYRO_FILE).write_text("a,b,c\n" + _row(0, 1) + "\n")
    with pytest.raises(ValueError, match=f"{hhar.GYRO_FILE}, line 1: expected the header"):
        hhar.preprocess(tmp_path)


# ---------------------------------------------------------------------------------------
# dummy_data.


def test_dummy_data_exercises_the_pairing_rules():
    text = (DUMMY_LAYOUT / hhar.ACC_FILE).read_text()
    gyro = (DUMMY_LAYOUT / hhar.GYRO_FILE).read_text()
    assert ",null\n" in text and ",null\n" in gyro
    assert ",samsungold," in text and ",samsungold," not in gyro
    assert {line.split(",")[6] for line in text.splitlines()[1:]} == {"a", "b"}
