"""wisdm: record parsing, acc/gyro pairing and runs on hand-made raw files, the builder on
dummy_data, errors."""

from __future__ import annotations

import pathlib
import zipfile

import numpy as np
import pytest
from limubert_jax.datasets import resampling
from limubert_jax.datasets.wisdm import wisdm_dataset_builder as wisdm

import dataset_testing as testing

T0 = 252_207_666_810_782  # ns
DUMMY = pathlib.Path(testing.dummy_data_dir("wisdm"))
DUMMY_LAYOUT = DUMMY / wisdm.LAYOUT_DIR


def _rec(ms: float, x: float, act: str = "A", subject: int = 1600) -> str:
    """A record at T0 + ms; its readings are (x, x / 10, -x)."""
    return f"{subject},{act},{T0 + round(ms * 1_000_000)},{x},{x / 10},{-x};"


def _write(root: pathlib.Path, acc: list[str], gyro: list[str], subject: int = 1600) -> pathlib.Path:
    for folder, name, lines in ((wisdm.ACC_DIR, "accel", acc), (wisdm.GYRO_DIR, "gyro", gyro)):
        path = root / folder / f"data_{subject}_{name}_phone.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return root


def _recs(times, act="A", subject=1600, gyro=False) -> list[str]:
    """Records at the given ms; x = the time (acc) or 1000 + the time (gyro)."""
    return [_rec(t, (1000.0 if gyro else 0.0) + t, act, subject) for t in times]


def _pairs(imu: np.ndarray) -> list[tuple[float, float]]:
    """(acc x, gyro x) per step of every window."""
    return [(float(a), float(g)) for a, g in imu.reshape(-1, 6)[:, [0, 3]]]


# ---------------------------------------------------------------------------------------
# Records.


def test_records_and_semicolon_terminators(tmp_path):
    path = tmp_path / "data_1600_accel_phone.txt"
    path.write_text(
        "1600,A,100,1.5,2.5,-3.5;\n"
        "1600,A,200,1,2,3;1600,B,300,4,5,6;\n"  # two records on a line
        "\n"  # blank line
        "1600,S,400,7,8,9\n"  # no terminator
        "  1600,O,500,0.25,-0.5,1e-3 ;  \n"  # spaces around
    )
    records = wisdm.read_records(path)
    assert records["subject"].tolist() == [1600] * 5
    assert records["activity"].tolist() == [0, 0, 1, 17, 13]  # A, A, B, S, O (no N: O is 13)
    assert records["time"].tolist() == [100, 200, 300, 400, 500]
    np.testing.assert_array_equal(
        records["xyz"], [[1.5, 2.5, -3.5], [1, 2, 3], [4, 5, 6], [7, 8, 9], [0.25, -0.5, 1e-3]]
    )


def test_activity_names_and_codes():
    assert len(wisdm.ACTIVITIES) == len(wisdm.ACTIVITY_CODES) == 18 and "N" not in wisdm.ACTIVITY_CODES
    codes = dict(zip(wisdm.ACTIVITY_CODES, wisdm.ACTIVITIES))
    assert (codes["A"], codes["C"], codes["M"], codes["O"], codes["S"]) == ("walking", "stairs", "kicking", "catch", "folding")
    assert wisdm.USERS[0] == "1600" and wisdm.USERS[-1] == "1650" and len(wisdm.USERS) == 51


# ---------------------------------------------------------------------------------------
# Pairing and runs, computed by hand (20 Hz: pairs closer than 25 ms, steps up to 75 ms).


def test_pairs_with_offset_and_jitter(tmp_path):
    raw = _write(tmp_path, _recs([0, 50, 100, 150]), _recs([12, 62, 109, 163], gyro=True))
    imu, labels = wisdm.preprocess(raw, 20, 2)
    assert imu.shape == (2, 2, 6) and imu.dtype == np.float64
    np.testing.assert_array_equal(imu[0, 1], [50, 5, -50, 1062, 106.2, -1062])
    assert _pairs(imu) == [(0, 1012), (50, 1062), (100, 1109), (150, 1163)]
    assert labels["activity"].tolist() == [0, 0] and labels["user"].tolist() == [0, 0]


CASES = {
    # gyro 75 is exactly 25 ms from acc 50 and acc 100: neither pairs (strictly closer).
    "tolerance is strict": ([0, 50, 100, 150], [24.9, 75, 150], 1, [(0, 1024.9), (150, 1150)]),
    "nearest gyro record": ([0, 50], [-20, 3, 30, 40, 49], 1, [(0, 1003), (50, 1049)]),
    "a tie goes to the earlier gyro record": ([0], [-10, 10], 1, [(0, 990)]),
    # acc 100 -> 200 is 100 ms > 75 ms: two runs; seq_len 2 drops the tail of the first.
    "a gap ends the run": ([0, 50, 100, 200, 250], [0, 50, 100, 200, 250], 2, [(0, 1000), (50, 1050), (200, 1200), (250, 1250)]),
    "75 ms steps continue the run": ([0, 75, 150], [0, 75, 150], 3, [(0, 1000), (75, 1075), (150, 1150)]),
    "a repeated timestamp ends the run": ([0, 50, 50, 100], [0, 50, 100], 2, [(0, 1000), (50, 1050), (50, 1050), (100, 1100)]),
    "a backwards timestamp ends the run": ([0, 50, 25, 75], [0, 25, 50, 75], 2, [(0, 1000), (50, 1050), (25, 1025), (75, 1075)]),
    # acc 0 and 40 both pair with gyro 20: the second use ends the run.
    "a gyro record is used once per run": ([0, 40], [20], 1, [(0, 1020), (40, 1020)]),
    "a gyro record is used once per run (seq_len 2)": ([0, 40], [20], 2, []),
    # gyro 100 missing: acc 100 is 50 ms from its neighbours, unpaired, and splits the run.
    "a missing gyro record leaves the acc record unpaired": ([0, 50, 100, 150, 200], [0, 50, 150, 200], 2, [(0, 1000), (50, 1050), (150, 1150), (200, 1200)]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_pairing_rules(tmp_path, name):
    acc, gyro, seq_len, expected = CASES[name]
    imu, _ = wisdm.preprocess(_write(tmp_path, _recs(acc), _recs(gyro, gyro=True)), 20, seq_len)
    assert _pairs(imu) == [(float(a), float(g)) for a, g in expected]


def test_pairs_only_within_subject_and_activity(tmp_path):
    acc = _recs([0, 50], "A") + _recs([100, 150], "B") + _recs([200, 250], "C")
    gyro = _recs([0, 50], "A", gyro=True) + _recs([100, 150], "D", gyro=True) + _recs([200, 250], "C", gyro=True)
    imu, labels = wisdm.preprocess(_write(tmp_path, acc, gyro), 20, 2)
    # B has no gyro records (the gyro file says D at those times); A and C are separate runs.
    assert _pairs(imu) == [(0, 1000), (50, 1050), (200, 1200), (250, 1250)]
    assert labels["activity"].tolist() == [0, 2]


def test_activity_change_ends_the_run(tmp_path):
    acc = _recs([0, 50], "A") + _recs([100, 150], "B")
    gyro = _recs([0, 50], "A", gyro=True) + _recs([100, 150], "B", gyro=True)
    imu, labels = wisdm.preprocess(_write(tmp_path, acc, gyro), 20, 3)
    assert len(imu) == 0  # two runs of 2
    imu, labels = wisdm.preprocess(_write(tmp_path, acc, gyro), 20, 2)
    assert labels["activity"].tolist() == [0, 1]


def test_labels_and_subject_order(tmp_path):
    _write(tmp_path, _recs([0, 50], "S", 1650), _recs([0, 50], "S", 1650, gyro=True), subject=1650)
    _write(tmp_path, _recs([0, 50], "O", 1601), _recs([0, 50], "O", 1601, gyro=True), subject=1601)
    imu, labels = wisdm.preprocess(tmp_path, 20, 2)
    assert labels["user"].tolist() == [1, 50]
    assert labels["activity"].tolist() == [13, 17]
    assert wisdm.ACTIVITIES[13] == "catch" and wisdm.ACTIVITIES[17] == "folding"


def test_10_hz_averages_pairs_of_samples(tmp_path):
    times = [0, 50, 100, 150, 200, 250, 300]
    imu, _ = wisdm.preprocess(_write(tmp_path, _recs(times), _recs(times, gyro=True)), 10, 2)
    # 7 samples, blocks of 2 while i + 3 < 7: (0, 50), (100, 150); the rest is dropped.
    assert _pairs(imu) == [(25, 1025), (125, 1125)]
    np.testing.assert_array_equal(imu[0, 0, [1, 2, 4, 5]], [2.5, -25, 102.5, -1025])


# ---------------------------------------------------------------------------------------
# The builder on dummy_data.

DUMMY_WINDOWS = {"20_120": 22, "10_100": 11}


@pytest.mark.parametrize("version", ["20_120", "10_100"])
def test_builder_on_dummy_data(tmp_path, version):
    builder, source = testing.build("wisdm", version, tmp_path)
    rate, seq_len = {"20_120": (20, 120), "10_100": (10, 100)}[version]
    data = testing.read_all(source)
    imu, labels = wisdm.preprocess(DUMMY_LAYOUT, rate, seq_len)
    assert len(source) == DUMMY_WINDOWS[version] == len(imu)
    assert data["imu"].shape == (len(imu), seq_len, 6) and data["imu"].dtype == np.float32
    np.testing.assert_array_equal(data["imu"], imu.astype(np.float32))  # same values, same order
    np.testing.assert_array_equal(data["activity"], labels["activity"])
    np.testing.assert_array_equal(data["user"], labels["user"])
    assert data["user"].tolist() == sorted(data["user"].tolist()) and set(data["user"].tolist()) == {0, 1}
    assert set(data["activity"].tolist()) == {0, 1, 3, 4, 12, 17}  # A B D E M S
    features = builder.info.features
    assert features["activity"].names == list(wisdm.ACTIVITIES) and features["activity"].num_classes == 18
    assert features["user"].names == [str(s) for s in range(1600, 1651)] and features["user"].num_classes == 51
    meta = builder.info.metadata
    assert (meta["sampling_rate_hz"], meta["seq_len"]) == (rate, seq_len)
    assert meta["feature_names"] == ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
    assert meta["feature_units"] == ["m/s^2"] * 3 + ["rad/s"] * 3
    assert meta["activity_codes"]["O"] == "catch"
    assert builder.info.supervised_keys == ("imu", "activity")


def test_10_100_is_the_20_hz_runs_down_sampled():
    acc = wisdm.read_records(wisdm.acc_path(DUMMY_LAYOUT, 1600))
    gyro = wisdm.read_records(wisdm.gyro_path(DUMMY_LAYOUT, 1600))
    partner = wisdm.pair(acc, gyro)
    start, end = wisdm.runs(acc, gyro, partner)[0]
    run = np.concatenate([acc["xyz"][start:end], gyro["xyz"][partner[start:end]]], axis=1)
    first = next(wisdm.subject_windows(acc, gyro, 10, 100))[0]
    np.testing.assert_array_equal(first, resampling.downsample(run, 20, 10)[:100])


def _zip_layout(path: pathlib.Path) -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as z:
        for p in sorted(DUMMY_LAYOUT.rglob("*.txt")):
            z.write(p, f"{wisdm.LAYOUT_DIR}/{p.relative_to(DUMMY_LAYOUT).as_posix()}")
    return path


def test_builder_reads_the_archive(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    _zip_layout(manual / "wisdm-dataset.zip")
    _, source = testing.build("wisdm", "10_100", tmp_path / "tfds", manual)
    assert len(source) == DUMMY_WINDOWS["10_100"]


def test_builder_reads_the_nested_archive(tmp_path):
    """The UCI download: its zip holds wisdm-dataset.zip."""
    inner = _zip_layout(tmp_path / "wisdm-dataset.zip")
    manual = tmp_path / "manual"
    manual.mkdir()
    with zipfile.ZipFile(manual / wisdm.Builder.ARCHIVES[0], "w") as z:
        z.write(inner, inner.name)
    _, source = testing.build("wisdm", "10_100", tmp_path / "tfds", manual)
    assert len(source) == DUMMY_WINDOWS["10_100"]


# ---------------------------------------------------------------------------------------
# Errors.


def test_incomplete_manual_dir_names_the_missing_folder(tmp_path):
    accel = tmp_path / "manual" / wisdm.LAYOUT_DIR / wisdm.ACC_DIR
    accel.mkdir(parents=True)
    (accel / "data_1600_accel_phone.txt").write_text(_rec(0, 1) + "\n")
    with pytest.raises(FileNotFoundError, match=wisdm.GYRO_DIR):
        testing.build("wisdm", "20_120", tmp_path / "tfds", tmp_path / "manual")


def test_missing_gyro_file_is_named(tmp_path):
    _write(tmp_path, _recs([0]), _recs([0], gyro=True))
    _write(tmp_path, _recs([0], subject=1601), _recs([0], subject=1601, gyro=True), subject=1601)
    (tmp_path / wisdm.GYRO_DIR / "data_1601_gyro_phone.txt").unlink()
    with pytest.raises(FileNotFoundError, match="data_1601_gyro_phone.txt"):
        wisdm.preprocess(tmp_path)


def test_no_accelerometer_files(tmp_path):
    (tmp_path / wisdm.ACC_DIR).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no data_<id>_accel_phone.txt files"):
        wisdm.preprocess(tmp_path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("1600,A,abc,1,2,3;", r"line 3: malformed record \(timestamp is not a number"),
        ("1600,A,1,2,3;", r"line 3: malformed record \(5 fields, expected 6"),
        ("1600,A,1,2,3,x4;", r"line 3: malformed record \(z is not a number"),
        ("1600,N,1,2,3,4;", r"line 3: unknown activity 'N'"),
        ("1600,walk,1,2,3,4;", r"line 3: unknown activity 'walk'"),
        ("1700,A,1,2,3,4;", r"line 3: subject 1700 outside 1600..1650"),
        ("1600,A,1,2,3,4;;", r"line 3: empty record"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    _write(tmp_path, [_rec(0, 1), _rec(50, 1), bad], _recs([0], gyro=True))
    with pytest.raises(ValueError, match=f"data_1600_accel_phone.txt, {message}"):
        wisdm.preprocess(tmp_path)


# ---------------------------------------------------------------------------------------
# dummy_data.
