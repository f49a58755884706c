"""shoaib: the reference preprocessing on tiny hand-made files, the builder on dummy_data, errors."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from limubert_jax.datasets.shoaib import shoaib_dataset_builder as shoaib

import dataset_testing as testing

DUMMY = pathlib.Path(testing.dummy_data_dir("shoaib"))
TIME, LINEAR = "5555", "-777"  # values of the columns that must not be read


SEPARATORS = (13, 27, 41, 55)  # 0-based indices of the empty columns between the five blocks
ACTIVITY = 69  # 0-based index of the activity name, right after the belt block (56..68)
BLOCK_NAMES = "Time_Stamp,Ax,Ay,Az,Lx,Ly,Lz,Gx,Gy,Gz,Mx,My,Mz"
HEADER = (  # the real layout: 70 fields each
    "Left_pocket" + "," * 14 + "Right_pocket" + "," * 14 + "Wrist" + "," * 14 + "Upper_arm" + "," * 14
    + "Belt" + "," * 13,
    ",,".join([BLOCK_NAMES] * 5) + ",Activity_Label",
)


def csv_row(activity: str, base: float) -> str:
    """One data row in the real layout (70 columns: five 13-column blocks time, acc xyz, linear
    acc xyz, gyro xyz, mag xyz, an empty separator between blocks only, the activity at index 69):
    position p, feature j (acc xyz, gyro xyz, mag xyz) holds base + 10 p + j."""
    fields = []
    for p in range(5):
        v = [float(base + 10 * p + j) for j in range(9)]
        fields += ([""] if p else []) + [TIME] + [repr(x) for x in v[:3]] + [LINEAR] * 3 + [repr(x) for x in v[3:]]
    fields.append(activity)
    assert len(fields) == 70 and fields[ACTIVITY] == activity and all(fields[c] == "" for c in SEPARATORS)
    return ",".join(fields)


def indexed_row(activity: str, base: int) -> list[str]:
    """A real-layout row (70 fields) where 0-based column c holds base + c, except the empty
    separators (13, 27, 41, 55) and the activity (69)."""
    fields = [f"{base + c}.0" for c in range(70)]
    for c in SEPARATORS:
        fields[c] = ""
    fields[ACTIVITY] = activity
    return fields


def write_lines(path, rows) -> None:
    """The two header rows, then `rows` (strings) as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*HEADER, *rows]) + "\n")


def write_participant(folder, k: int, runs) -> None:
    """runs: [(activity name, row bases)], written in order after two header rows."""
    write_lines(folder / f"Participant_{k}.csv", [csv_row(name, b) for name, bases in runs for b in bases])


def expected(bases, p: int) -> np.ndarray:
    """[len(bases), 9]: the values csv_row wrote for position p."""
    return np.asarray(bases, np.float64)[:, None] + 10 * p + np.arange(9)


# ---------------------------------------------------------------------------------------
# Plain functions.


def test_read_participant_selects_acc_gyro_mag_and_maps_the_typo(tmp_path):
    write_participant(tmp_path, 1, [("walking", [0, 100]), ("upsatirs", [200]), (" Upstairs ", [300]),
                                    ("downstairs", [400])])
    sensors, activity = shoaib.read_participant(tmp_path / "Participant_1.csv")
    assert sensors.dtype == np.float32 and sensors.shape == (5, 5, 9)
    for p in range(5):
        np.testing.assert_array_equal(sensors[:, p], expected([0, 100, 200, 300, 400], p))
    np.testing.assert_array_equal(activity, [0, 0, 5, 5, 6])
    assert shoaib.sensor_columns(0) == [1, 2, 3, 7, 8, 9, 10, 11, 12]
    assert shoaib.sensor_columns(4) == [57, 58, 59, 63, 64, 65, 66, 67, 68]


def test_the_real_layout_constants():
    assert (shoaib.COLUMNS_PER_POSITION, shoaib.POSITION_STRIDE, shoaib.NUM_SEPARATORS) == (13, 14, 4)
    assert (shoaib.ACTIVITY_COLUMN, shoaib.NUM_COLUMNS) == (69, 70)
    assert [len(line.split(",")) for line in HEADER] == [70, 70]


def test_a_70_column_row_is_read_by_column_index(tmp_path):
    # Column c holds 100 r + c: the values read show which columns were taken.
    path = tmp_path / "Participant_1.csv"
    write_lines(path, [",".join(indexed_row("jogging", 0)), ",".join(indexed_row("Biking", 100))])
    sensors, activity = shoaib.read_participant(path)
    assert sensors.shape == (2, 5, 9)
    np.testing.assert_array_equal(sensors[0, 0], [1, 2, 3, 7, 8, 9, 10, 11, 12])  # left pocket
    np.testing.assert_array_equal(sensors[0, 1], [15, 16, 17, 21, 22, 23, 24, 25, 26])  # right pocket
    np.testing.assert_array_equal(sensors[0, 2], [29, 30, 31, 35, 36, 37, 38, 39, 40])  # wrist
    np.testing.assert_array_equal(sensors[0, 3], [43, 44, 45, 49, 50, 51, 52, 53, 54])  # upper arm
    np.testing.assert_array_equal(sensors[0, 4], [57, 58, 59, 63, 64, 65, 66, 67, 68])  # belt
    np.testing.assert_array_equal(sensors[1, 4], [157, 158, 159, 163, 164, 165, 166, 167, 168])
    np.testing.assert_array_equal(activity, [3, 4])


@pytest.mark.parametrize("tail", [",", ", ", ",,,"])
def test_trailing_empty_fields_are_read_identically(tmp_path, tail):
    rows = [",".join(indexed_row("sitting", 100 * r)) for r in range(3)]
    write_lines(tmp_path / "a" / "Participant_1.csv", rows)
    write_lines(tmp_path / "b" / "Participant_1.csv", [rows[0] + tail, rows[1], rows[2] + tail])
    assert len(rows[0].split(",")) == 70 and len((rows[0] + tail).split(",")) > 70
    plain = shoaib.read_participant(tmp_path / "a" / "Participant_1.csv")
    padded = shoaib.read_participant(tmp_path / "b" / "Participant_1.csv")
    for a, b in zip(plain, padded):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(plain[1], [1, 1, 1])
    np.testing.assert_array_equal(plain[0][2, 4, 8], 268)  # row 2, belt mag z: column 68


def test_windows_from_real_layout_rows_by_hand(tmp_path):
    # 8 rows (some with a trailing empty field), column c of row r holds 100 r + c.
    # 50 -> 20 Hz averages rows {0, 1}, {2, 3, 4}, {5, 6}: 50 + c, 300 + c, 550 + c.
    rows = [",".join(indexed_row("upstairs", 100 * r)) + ("," if r % 3 == 0 else "") for r in range(8)]
    write_lines(tmp_path / "Participant_4.csv", rows)
    windows = list(shoaib.shoaib_windows(tmp_path, 20, 3))
    assert [labels for _, labels in windows] == [{"activity": 5, "position": p, "user": 3} for p in range(5)]
    left = [1, 2, 3, 7, 8, 9, 10, 11, 12]
    belt = [57, 58, 59, 63, 64, 65, 66, 67, 68]
    np.testing.assert_allclose(windows[0][0], [[50 + c for c in left], [300 + c for c in left],
                                               [550 + c for c in left]], rtol=1e-6)
    np.testing.assert_allclose(windows[4][0], [[50 + c for c in belt], [300 + c for c in belt],
                                               [550 + c for c in belt]], rtol=1e-6)
    wrist_gyro_x = 28 + 7
    np.testing.assert_allclose(windows[2][0][:, 3], [50 + wrist_gyro_x, 300 + wrist_gyro_x, 550 + wrist_gyro_x],
                               rtol=1e-6)


_COUNT = r"70 expected \(5 position blocks of 13, 4 separators, activity\)"


@pytest.mark.parametrize(
    "row, match",
    [
        (lambda: ",".join(indexed_row("walking", 0)[:69]), rf"row 4: 69 columns, {_COUNT}$"),
        (lambda: ",".join(indexed_row("walking", 0)[1:]), rf"row 4: 69 columns, {_COUNT}$"),
        (lambda: ",".join(indexed_row("walking", 0) + ["0"]), rf"row 4: 71 columns, {_COUNT}; .*column 71 holds '0'$"),
        # The layout this builder used to assume: a separator after the belt block, the activity 71st.
        (lambda: ",".join(indexed_row("", 0) + ["walking"]), r"row 4: 71 columns, .*column 71 holds 'walking'$"),
        (lambda: ",".join(indexed_row("walking", 0) + ["", "x"]), r"row 4: 72 columns, .*column 72 holds 'x'$"),
    ],
)
def test_rows_with_a_wrong_column_count_are_refused_in_one_line(tmp_path, row, match):
    path = tmp_path / "Participant_5.csv"
    write_lines(path, [",".join(indexed_row("walking", 0)), row()])
    with pytest.raises(ValueError, match=rf"^shoaib: .*Participant_5\.csv, {match}") as raised:
        shoaib.read_participant(path)
    assert "\n" not in str(raised.value)


def test_downsampling_stops_when_the_next_block_passes_the_last_row(tmp_path):
    # 50 -> 20 Hz, blocks 2, 3, 2, ...: 8 rows give rows {0,1}, {2,3,4}, {5,6} (the third block
    # starts at 5 and 5 + 3 <= 8); 7 rows give only two samples, so no 3-step window.
    write_participant(tmp_path / "a", 1, [("sitting", list(range(8)))])
    write_participant(tmp_path / "b", 1, [("sitting", list(range(7)))])
    windows = list(shoaib.shoaib_windows(tmp_path / "a", 20, 3))
    assert [labels for _, labels in windows] == [{"activity": 1, "position": p, "user": 0} for p in range(5)]
    for p, (window, _) in enumerate(windows):
        np.testing.assert_allclose(window, expected([0.5, 3.0, 5.5], p), rtol=1e-6)
    assert list(shoaib.shoaib_windows(tmp_path / "b", 20, 3)) == []
    # 50 -> 10 Hz: blocks of 5; 11 rows give rows 0-4 and 5-9.
    write_participant(tmp_path / "c", 1, [("biking", list(range(11)))])
    windows = list(shoaib.shoaib_windows(tmp_path / "c", 10, 2))
    assert len(windows) == 5 and windows[0][1] == {"activity": 4, "position": 0, "user": 0}
    np.testing.assert_allclose(windows[3][0], expected([2.0, 7.0], 3), rtol=1e-6)


def test_window_order_labels_and_concatenated_activity_rows(tmp_path):
    # Written in the order 10, 2, 1; read in numeric order 1, 2, 10 (user k - 1).
    write_participant(tmp_path, 10, [("downstairs", [900, 901, 902, 903, 904, 905, 906, 907])])
    write_participant(tmp_path, 2, [("upsatirs", [500, 501, 502, 503]), ("upstairs", [600, 601, 602, 603])])
    # Sitting comes first in the file, walking is split into two runs of 4 rows.
    write_participant(tmp_path, 1, [("sitting", [50, 51, 52, 53, 54, 55, 56, 57]), ("walking", [0, 1, 2, 3]),
                                    ("standing", [70, 71]), ("walking", [10, 11, 12, 13])])
    windows = list(shoaib.shoaib_windows(tmp_path, 20, 3))
    labels = [(w["activity"], w["position"], w["user"]) for _, w in windows]
    assert labels == (
        [(0, p, 0) for p in range(5)] + [(1, p, 0) for p in range(5)]
        + [(5, p, 1) for p in range(5)] + [(6, p, 9) for p in range(5)]
    )
    # Walking = rows 0, 1, 2, 3, 10, 11, 12, 13 concatenated: the second block (2, 3, 10) spans both
    # runs (as separate runs of 4 rows neither would give a 3-step window).
    np.testing.assert_allclose(windows[0][0], expected([0.5, 5.0, 11.5], 0), rtol=1e-6)
    np.testing.assert_allclose(windows[4][0], expected([0.5, 5.0, 11.5], 4), rtol=1e-6)
    np.testing.assert_allclose(windows[7][0], expected([50.5, 53.0, 55.5], 2), rtol=1e-6)
    # Upstairs = the upsatirs rows then the upstairs rows: (502 + 503 + 600) / 3 = 535.
    np.testing.assert_allclose(windows[10][0], expected([500.5, 535.0, 601.5], 0), rtol=1e-6)
    np.testing.assert_allclose(windows[19][0], expected([900.5, 903.0, 905.5], 4), rtol=1e-6)
    assert all(w.dtype == np.float32 and w.shape == (3, 9) for w, _ in windows)


@pytest.mark.parametrize(
    "row, match",
    [
        (lambda: csv_row("walking", 0), None),  # 70 columns
        (lambda: csv_row("walking", 0) + ",", None),  # a trailing empty field is fine
        (lambda: csv_row("walking", 0) + ",,", None),  # and so are more
        (lambda: csv_row("walking", 0)[: -len(",walking")], r"row 4: 69 columns, 70 expected \(5 position blocks"),
        (lambda: csv_row("walking", 0) + ",walking", r"row 4: 71 columns, 70 expected .*column 71 holds 'walking'"),
        (lambda: csv_row("flying", 0), r"row 4, column 70: unknown activity 'flying'"),
        (lambda: csv_row("", 0), r"row 4, column 70: unknown activity ''"),
        (lambda: csv_row("walking", 0).replace("5.0", "x5", 1), r"row 4, column 10: 'x5' is not a finite number"),
        (lambda: csv_row("walking", 0).replace("12.0", "", 1), r"row 4, column 18: '' is not a finite number"),
        (lambda: csv_row("walking", 0).replace("1.0", "nan", 1), r"row 4, column 3: 'nan' is not a finite number"),
        (lambda: csv_row("walking", 0).replace("48.0", "inf", 1), r"row 4, column 69: 'inf' is not a finite number"),
    ],
)
def test_malformed_rows_name_the_file_and_row(tmp_path, row, match):
    write_participant(tmp_path, 3, [("walking", [0])])
    path = tmp_path / "Participant_3.csv"
    path.write_text(path.read_text() + row() + "\n")
    if match is None:
        sensors, activity = shoaib.read_participant(path)
        assert sensors.shape == (2, 5, 9)
        for p in range(5):
            np.testing.assert_array_equal(sensors[:, p], expected([0, 0], p))
        np.testing.assert_array_equal(activity, [0, 0])
        return
    with pytest.raises(ValueError, match=rf"Participant_3\.csv, {match}"):
        shoaib.read_participant(path)


def test_participant_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Participant_<k>.csv"):
        shoaib.participant_files(tmp_path)
    write_participant(tmp_path, 11, [("walking", [0])])
    with pytest.raises(ValueError, match="participant 11 is outside 1..10"):
        shoaib.participant_files(tmp_path)


# ---------------------------------------------------------------------------------------
# The builder on dummy_data.


@pytest.fixture(scope="module", params=["20_120", "10_100"])
def built(request, tmp_path_factory):
    builder, source = testing.build("shoaib", request.param, tmp_path_factory.mktemp("tfds"))
    return request.param, builder, source


def test_builds_the_reference_windows_from_dummy_data(built):
    version, builder, source = built
    rate, steps = {"20_120": (20, 120), "10_100": (10, 100)}[version]
    data = testing.read_all(source)
    want = list(shoaib.shoaib_windows(DUMMY / "DataSet", rate, steps))
    assert len(source) == len(want) == {"20_120": 25, "10_100": 10}[version]
    assert data["imu"].shape == (len(want), steps, 9) and data["imu"].dtype == np.float32
    np.testing.assert_array_equal(data["imu"], np.stack([w for w, _ in want]))
    for task in ("activity", "position", "user"):
        np.testing.assert_array_equal(data[task], [labels[task] for _, labels in want])
    if version == "20_120":  # participant 10; upstairs made of the upsatirs and upstairs rows
        assert set(data["user"]) == {0, 1, 9} and set(data["activity"]) == {0, 1, 3, 5, 6}
    else:  # only walking (510 rows) and jogging (510) are long enough for 100 steps at 10 Hz
        assert set(data["user"]) == {0, 1} and set(data["activity"]) == {0, 3}

    features = builder.info.features
    assert features["activity"].names == list(shoaib.ACTIVITIES) and features["activity"].num_classes == 7
    assert features["position"].names == list(shoaib.POSITIONS) and features["position"].num_classes == 5
    assert features["user"].num_classes == 10 and features["user"].names[9] == "participant_10"
    assert builder.info.supervised_keys == ("imu", "activity")
    meta = source.dataset_info.metadata
    assert (meta["sampling_rate_hz"], meta["seq_len"], meta["raw_sampling_rate_hz"]) == (rate, steps, 50)
    assert meta["feature_names"][6:] == ["mag_x", "mag_y", "mag_z"] and meta["feature_units"][3] == "rad/s"
    assert meta["tasks"]["position"] == list(shoaib.POSITIONS)
    assert "Shoaib" in builder.info.citation and "upsatirs" in builder.info.description


# ---------------------------------------------------------------------------------------
# Errors through the builder.


def test_missing_or_incomplete_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist or is empty"):
        testing.build("shoaib", "20_120", tmp_path / "tfds", manual_dir=tmp_path / "nowhere")
    write_participant(tmp_path / "raw" / "DataSet", 2, [("walking", [0])])
    with pytest.raises(FileNotFoundError, match=r"missing .*DataSet/Participant_1\.csv"):
        testing.build("shoaib", "20_120", tmp_path / "tfds", manual_dir=tmp_path / "raw")


def test_rar_without_a_tool_says_how_to_extract(tmp_path, monkeypatch):
    monkeypatch.setattr(shoaib, "find_rar_tool", lambda: None)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / shoaib.ARCHIVE).write_bytes(b"Rar!\x1a\x07\x00")
    with pytest.raises(FileNotFoundError, match=r"RAR archive.*none of unrar, rar, 7z, 7za, bsdtar is on PATH"):
        testing.build("shoaib", "20_120", tmp_path / "tfds", manual_dir=tmp_path / "raw")


def test_malformed_csv_through_the_builder(tmp_path):
    write_participant(tmp_path / "raw" / "DataSet", 1, [("walking", [0, 1])])
    path = tmp_path / "raw" / "DataSet" / "Participant_1.csv"
    path.write_text(path.read_text() + csv_row("swimming", 2) + "\n")
    with pytest.raises(ValueError, match=r"Participant_1\.csv, row 5, column 70: unknown activity 'swimming'"):
        testing.build("shoaib", "20_120", tmp_path / "tfds", manual_dir=tmp_path / "raw")


def test_dummy_data_has_the_real_layout():
    files = sorted((DUMMY / "DataSet").glob("Participant_*.csv"))
    assert [f.name for f in files] == ["Participant_1.csv", "Participant_10.csv", "Participant_2.csv"]
    for path in files:
        lines = path.read_text().splitlines()
        first, second = (line.split(",") for line in lines[:2])
        assert len(first) == len(second) == 70
        assert {c: first[c] for c in range(70) if first[c]} == {
            0: "Left_pocket", 14: "Right_pocket", 28: "Wrist", 42: "Upper_arm", 56: "Belt"}
        assert [c for c in range(70) if not second[c]] == list(SEPARATORS)
        assert second[69] == "Activity_Label" and second[56:69] == BLOCK_NAMES.split(",")
        for line in lines[2:]:
            fields = line.split(",")
            assert len(fields) == 70 and [c for c in range(70) if not fields[c]] == list(SEPARATORS), line
            assert shoaib.activity_index(fields[69]) is not None, line
