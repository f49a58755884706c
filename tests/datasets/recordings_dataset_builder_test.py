"""recordings: small CSV / Parquet folders written by the tests; one TFDS build read back
(module fixture), the processing (`read_source`): window counts, copying at the own rate,
interpolation, labels, options and every malformed input. recordings_phone_test.py has the
low-pass, rate changes, timestamp units, column options and the folder checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow_datasets as tfds
from limubert_jax.datasets import common
from limubert_jax.datasets.recordings import example
from limubert_jax.datasets.recordings import reader as rec
from limubert_jax.datasets.recordings.recordings_dataset_builder import Builder

import dataset_testing as testing

CHANNELS = list(common.FEATURE_NAMES[:6])


def _read(folder, version="20_10", **options):
    rate, steps = common.parse_version(version)
    return rec.read_source(folder, rate, steps, **options)


def _windows(source):
    imu, label, recording = zip(*source.windows())
    return np.stack(imu), np.stack(label), np.array(recording)


def _build(folder, data_dir, version="20_40", **options):
    builder = tfds.builder("recordings", config=Builder.config_for(version, source_dir=folder, **options),
                           data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(file_format="array_record",
                                 download_config=tfds.download.DownloadConfig(manual_dir=folder))
    return builder


# ---------------------------------------------------------------------------------------
# One build, read back.


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recordings")
    t = np.arange(500) / 50  # 10 s, regular 50 Hz
    testing.write_recording(folder / "a.csv", t, labels={"activity": ["walk"] * 250 + ["sit"] * 250, "user": [1] * 500})
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.uniform(0.015, 0.025, 380))  # ~7.6 s, irregular
    testing.write_recording(folder / "sub" / "b.csv", t, labels={"user": [2] * 380, "place": ["home"] * 380})
    (folder / ".notes.txt").write_text("hidden files are skipped")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.bin").write_bytes(b"\0\1")
    builder = _build(folder, tmp_path_factory.mktemp("tfds"))
    source = builder.as_data_source(split="train")
    rows = [source[i] for i in range(len(source))]
    return folder, builder, {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


def test_build_and_read_back(built):
    folder, builder, data = built
    expected = _read(folder, "20_40")
    imu, label, recording = _windows(expected)
    assert len(data["imu"]) == expected.num_windows == 5 + 3  # 10 s -> 200 steps -> 5; ~7.6 s -> ~152 steps -> 3
    assert data["imu"].shape == (8, 40, 6) and data["imu"].dtype == np.float32
    assert data["label"].shape == (8, 40, 3) and data["label"].dtype == np.int64
    np.testing.assert_array_equal(data["imu"], imu)
    np.testing.assert_array_equal(data["label"], label)
    assert data["recording"].tolist() == recording.tolist() == [0] * 5 + [1] * 3
    meta = builder.info.metadata
    assert (meta["sampling_rate_hz"], meta["seq_len"], meta["num_windows"]) == (20, 40, 8)
    assert (meta["num_features"], meta["num_labels"], meta["missing_label"]) == (6, 3, -1)
    assert meta["feature_names"] == CHANNELS and meta["feature_units"] == ["m/s^2"] * 3 + ["rad/s"] * 3
    assert meta["label_columns"] == ["activity", "user", "place"]  # the union, in order of appearance
    assert meta["label_classes"] == {"activity": ["sit", "walk"], "user": ["1", "2"], "place": ["home"]}
    assert meta["source_dir"] == str(folder)
    assert meta["options"] == {"stride": 0, "max_gap_s": 1.0, "acc_unit": "m/s^2", "gyro_unit": "rad/s",
                               "timestamp_unit": "s", "columns": "", "label_columns": "", "ignore_columns": "",
                               "fingerprint": "stat"}
    assert meta["fingerprint_mode"] == "stat" and meta["source_fingerprint"] == rec.fingerprint(folder, mode="stat")
    assert [r["file"] for r in meta["recordings"]] == ["a.csv", "sub/b.csv"]
    assert [r["windows"] for r in meta["recordings"]] == [5, 3]
    assert [r["skipped_segments"] for r in meta["recordings"]] == [[], []]
    assert [r["segments"] for r in meta["recordings"]] == [1, 1]
    assert meta["recordings"][0]["raw_rate_hz"] == 50.0 and 40 < meta["recordings"][1]["raw_rate_hz"] < 60
    features = builder.info.features
    assert features["imu"].shape == (40, None) and features["label"].shape == (40, None)
    assert builder.info.disable_shuffling
    assert "timestamp" in builder.info.description  # README.md is the description


def test_a_build_whose_resampled_steps_spill_to_disk_is_the_same_and_leaves_no_spill(built, tmp_path, monkeypatch):
    folder, _, data = built
    monkeypatch.setattr(rec, "SPILL_AFTER_BYTES", 0)
    spilled = _build(folder, tmp_path)
    source = spilled.as_data_source(split="train")
    for name, values in data.items():
        np.testing.assert_array_equal(np.stack([np.asarray(source[i][name]) for i in range(len(source))]), values)
    assert not [p for p in tmp_path.rglob("*") if "resampled" in p.name]


def test_labels_of_the_build(built):
    _, _, data = built
    activity, user, place = (data["label"][..., j] for j in range(3))
    # a.csv: walk for 5 s, sit after: window 2 (4-6 s) holds the change; b.csv has no activity.
    assert activity[:, 0].tolist() == [1, 1, -1, 0, 0, -1, -1, -1]
    assert user[:, 0].tolist() == [0] * 5 + [1] * 3  # user is the same in window 2
    assert place[:, 0].tolist() == [-1] * 5 + [0] * 3
    assert (data["label"] == data["label"][:, :1]).all()  # one label per window and column


# ---------------------------------------------------------------------------------------
# Resampling.


def test_a_recording_at_the_target_rate_is_copied(tmp_path):
    t = np.arange(503) / 50
    x = np.random.default_rng(1).standard_normal((503, 6))
    testing.write_recording(tmp_path / "r.csv", t, x)
    imu, _, _ = _windows(_read(tmp_path, "50_10"))
    assert len(imu) == 50  # every window that fits: 503 steps
    np.testing.assert_array_equal(imu.reshape(-1, 6), x[:500].astype(np.float32))


def test_interpolation_of_an_irregular_recording(tmp_path):
    t = np.cumsum(np.random.default_rng(2).uniform(0.012, 0.028, 600))
    t -= t[0]
    x = _slow_signals(t)
    testing.write_recording(tmp_path / "r.csv", t, x)
    imu, _, _ = _windows(_read(tmp_path, "20_10"))
    raw, regular = rec.clock(t)
    assert not regular and raw == rec.raw_rate(t)
    grid = math.floor(t[-1] * raw + 1e-9) + 1  # interpolated onto t0 + k / raw, then low-passed to 20 Hz
    assert len(imu) == rec.output_length(grid, raw, 20) // 10
    expected = _slow_signals(np.arange(len(imu) * 10) / 20)
    np.testing.assert_allclose(imu.reshape(-1, 6), expected, atol=3e-3)


def _slow_signals(t: np.ndarray) -> np.ndarray:
    """Smooth channels (0.3-0.8 Hz): linear interpolation at ~50 Hz is within 1e-3 of them."""
    return np.stack([np.sin(2 * np.pi * (0.3 + 0.1 * j) * t + j) for j in range(6)], axis=1)


def test_a_gap_splits_the_recording(tmp_path):
    t = np.concatenate([np.arange(130) / 50, 10 + np.arange(110) / 50])  # 7.4 s pause
    t = t + np.random.default_rng(4).uniform(-0.002, 0.002, len(t))  # irregular: interpolated
    testing.write_recording(tmp_path / "r.csv", t)
    source = _read(tmp_path, "20_10")
    imu, _, _ = _windows(source)
    times = imu[..., 0].astype(np.float64)  # acc_x is the time
    assert np.allclose(np.diff(times, axis=1), 1 / 20, atol=5e-3)  # no window spans the pause (jitter: ~2e-3)
    assert len(imu) == 5 + 4 and times[5, 0] >= 9.99  # 130 samples at 50 Hz: 52 steps at 20 Hz; 110: 44
    assert source.metadata()["recordings"][0]["segments"] == 2
    one = _read(tmp_path, "20_10", max_gap_s=10.0)  # one irregular segment, interpolated over the pause
    raw = rec.raw_rate(t)
    assert one.num_windows == rec.output_length(math.floor((t[-1] - t[0]) * raw + 1e-9) + 1, raw, 20) // 10
    assert one.metadata()["recordings"][0]["segments"] == 1


def test_stride_makes_overlapping_windows(tmp_path):
    testing.write_recording(tmp_path / "r.csv", np.arange(100) / 20)  # 20 Hz, regular: copied, 100 steps
    imu, _, _ = _windows(_read(tmp_path, "20_10", stride=3))
    assert len(imu) == (100 - 10) // 3 + 1
    np.testing.assert_array_equal(imu[1, :7], imu[0, 3:])
    np.testing.assert_array_equal(imu[:, 0, 0], (np.arange(len(imu)) * 3 / 20).astype(np.float32))


def test_units(tmp_path):
    x = np.tile([1.0, -2.0, 0.5, 90.0, 180.0, -45.0], (60, 1))
    testing.write_recording(tmp_path / "r.csv", np.arange(60) / 20, x)
    imu, _, _ = _windows(_read(tmp_path, "20_10", acc_unit="g", gyro_unit="deg/s"))
    expected = [9.80665, -19.6133, 4.903325, math.pi / 2, math.pi, -math.pi / 4]
    np.testing.assert_allclose(imu.reshape(-1, 6), np.tile(expected, (imu.shape[0] * 10, 1)), rtol=1e-6)


def test_nine_features_with_magnetometer_in_every_recording(tmp_path):
    t = np.arange(60) / 20
    testing.write_recording(tmp_path / "a.csv", t, testing.recording_signals(t, 9))
    source = _read(tmp_path)
    assert source.num_features == 9 and _windows(source)[0].shape[2] == 9
    np.testing.assert_array_equal(_windows(source)[0][0, :, 6], (7 * t[:10] + 6).astype(np.float32))
    testing.write_recording(tmp_path / "b.csv", t)  # without mag: mag is dropped everywhere, and is no label
    source = _read(tmp_path)
    assert source.num_features == 6 and source.label_columns == []


def test_unlabelled_with_magnetometer_builds(tmp_path):
    t = np.arange(60) / 20
    testing.write_recording(tmp_path / "src" / "a.csv", t, testing.recording_signals(t, 9))
    builder = _build(tmp_path / "src", tmp_path / "tfds", "20_10")
    example_ = builder.as_data_source(split="train")[0]
    assert example_["imu"].shape == (10, 9) and example_["label"].shape == (10, 0)
    meta = builder.info.metadata
    assert (meta["num_features"], meta["num_labels"], meta["label_columns"], meta["label_classes"]) == (9, 0, [], {})
    assert meta["feature_units"][6:] == ["uT"] * 3


def test_parquet_reads_like_csv(tmp_path):
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    t = np.arange(80) / 40
    labels = {"activity": ["a"] * 40 + ["b"] * 40, "user": [3] * 80}
    testing.write_recording(tmp_path / "csv" / "r.csv", t, labels=labels)
    columns = {"timestamp": t, **{c: testing.recording_signals(t)[:, j] for j, c in enumerate(CHANNELS)}, **labels}
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table(columns), tmp_path / "pq" / "r.parquet")
    from_csv, from_parquet = _read(tmp_path / "csv"), _read(tmp_path / "pq")
    for a, b in zip(_windows(from_csv), _windows(from_parquet)):
        np.testing.assert_array_equal(a, b)
    assert from_parquet.label_classes == {"activity": ["a", "b"], "user": ["3"]}
    # pandas' integer labels with missing ones (float, NaN) and categoricals (dictionary)
    columns["user"] = np.where(np.arange(80) < 50, 3.0, np.nan)
    columns["activity"] = pa.array(labels["activity"]).dictionary_encode()
    pq.write_table(pa.table(columns), tmp_path / "pq" / "r.parquet")
    source = _read(tmp_path / "pq")
    assert source.label_classes == {"activity": ["a", "b"], "user": ["3"]}
    assert _windows(source)[1][:, 0].tolist() == [[0, 0], [0, 0], [1, -1], [1, -1]]


def test_upsampling_is_refused(tmp_path):
    testing.write_recording(tmp_path / "slow.csv", np.arange(100) / 20)  # 20 Hz
    with pytest.raises(ValueError, match=r"^recordings/50_10: .*slow\.csv row 2: sampled at 20 Hz .* below the 50 Hz"):
        _read(tmp_path, "50_10")
    assert _read(tmp_path, "20_10").num_windows == 10  # at its own rate


# ---------------------------------------------------------------------------------------
# Labels.


def test_label_classes_changes_and_missing_cells(tmp_path):
    n = 40  # 20 Hz, regular: copied, 4 windows of 10 (steps 0-9, 10-19, 20-29, 30-39)
    activity = ["walk"] * 15 + ["run"] * 25  # changes inside window 1
    user = [None if i == 25 else 10 for i in range(n)]  # an empty cell inside window 2
    session = [9] * 20 + [10] * 20  # integers: sorted numerically, not as strings
    testing.write_recording(tmp_path / "a.csv", np.arange(n) / 20, labels={"activity": activity, "user": user, "session": session})
    testing.write_recording(tmp_path / "b.csv", np.arange(n) / 20, labels={"activity": ["sit"] * n, "user": [2] * n})
    source = _read(tmp_path)
    assert source.label_columns == ["activity", "user", "session"]
    assert source.label_classes == {"activity": ["run", "sit", "walk"], "user": ["2", "10"], "session": ["9", "10"]}
    _, label, recording = _windows(source)
    assert recording.tolist() == [0] * 4 + [1] * 4
    assert label[:, 0].tolist() == [[2, 1, 0], [-1, 1, 0], [0, -1, 1], [0, 1, 1]] + [[1, 0, -1]] * 4
    assert (label == label[:, :1]).all()


def test_labels_at_interpolated_steps_are_the_nearest_samples(tmp_path):
    t = np.array([0.0, 0.04, 0.07, 0.11, 0.15, 0.19, 0.24, 0.26, 0.3, 0.34, 0.38, 0.41, 0.45, 0.5, 0.55])
    assert not rec.clock(t)[1]  # irregular: output step k is at t0 + k / 20
    _, rows = rec.resample(t, testing.recording_signals(t), 20)
    steps = np.arange(len(rows)) / 20
    assert rows.tolist() == [int(np.argmin(np.abs(t - s))) for s in steps]


def test_labels_of_a_regular_segment_are_the_nearest_samples():
    t = np.arange(20) / 50 + np.random.default_rng(5).uniform(-0.003, 0.003, 20)  # a jittered clock: regular
    out, rows = rec.resample(t, testing.recording_signals(t), 20)
    # step k lies at sample 2.5 k: 2.5 is a tie, the earlier sample
    assert len(out) == 8 and rows.tolist() == [0, 2, 5, 7, 10, 12, 15, 17]


# ---------------------------------------------------------------------------------------
# Configs.


def test_a_build_needs_a_folder(tmp_path):
    with pytest.raises(ValueError, match=r"recordings is built from your folder: .*config=Builder\.config_for"):
        tfds.builder("recordings", data_dir=tmp_path)


def test_config_names_key_folder_and_options(tmp_path):
    a, b = Builder.config_for("50_200", tmp_path / "a"), Builder.config_for("50_200", tmp_path / "b")
    assert a.name.startswith("50_200-") and a.name != b.name
    assert a.name == Builder.config_for("50_200", tmp_path / "a", stride=0, max_gap_s=1, acc_unit="m/s^2").name
    assert a.name == Builder.config_for("50_200", tmp_path / "a", stride=None).name  # None: the default
    for options in ({"stride": 100}, {"max_gap_s": 2.0}, {"acc_unit": "g"}, {"gyro_unit": "deg/s"},
                    {"timestamp_unit": "ms"}, {"columns": "ax:acc_x"}, {"label_columns": "activity"},
                    {"ignore_columns": "pressure"}, {"fingerprint": "content"}):
        assert Builder.config_for("50_200", tmp_path / "a", **options).name != a.name, options
    assert a.source_dir == str(tmp_path / "a") and (a.sampling_rate, a.seq_len) == (50, 200)
    assert dict(a.options) == Builder.SOURCE_OPTIONS


@pytest.mark.parametrize("options, message", [
    ({"acc_unit": "G"}, r"config\.dataset\.acc_unit must be 'm/s\^2' or 'g', got 'G'"),
    ({"gyro_unit": "deg"}, r"config\.dataset\.gyro_unit must be 'rad/s' or 'deg/s', got 'deg'"),
    ({"stride": -1}, r"config\.dataset\.stride must be a whole number of steps >= 0"),
    ({"stride": 2.5}, r"config\.dataset\.stride must be"),
    ({"max_gap_s": 0}, r"config\.dataset\.max_gap_s must be a number of seconds > 0, got 0"),
    ({"max_gap_s": "1"}, r"config\.dataset\.max_gap_s must be"),
    ({"strides": 1}, r"config\.dataset\.strides is not an option of recordings"),
    ({"max_gap_s": float("nan")}, r"config\.dataset\.max_gap_s must be a number of seconds > 0, got nan"),
    ({"timestamp_unit": "sec"}, r"config\.dataset\.timestamp_unit must be 's' or 'ms' or 'us' or 'ns', got 'sec'"),
    ({"fingerprint": "hash"}, r"config\.dataset\.fingerprint must be 'stat' or 'content', got 'hash'"),
    ({"columns": "ax=acc_x"}, r"config\.dataset\.columns must be 'name:contract_name' pairs"),
    ({"columns": "ax:accel_x"}, r"config\.dataset\.columns: 'accel_x' is not a column of the contract"),
    ({"columns": "ax:acc_x,bx:acc_x"}, r"config\.dataset\.columns names two columns 'acc_x'"),
    ({"label_columns": 3}, r"config\.dataset\.label_columns must be column names separated by commas"),
    ({"label_columns": "acc_x"}, r"config\.dataset\.label_columns: 'acc_x' is a channel of the contract"),
    ({"label_columns": "a", "ignore_columns": "a"}, r"'a' is in both config\.dataset\.label_columns and"),
    ({"ignore_columns": "gyro_z"}, r"config\.dataset\.ignore_columns: 'gyro_z' is a required column"),
])  # fmt: skip
def test_bad_options(tmp_path, options, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        Builder.config_for("50_200", tmp_path, **options)


# ---------------------------------------------------------------------------------------
# Errors.

HEADER = "timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,activity"
ROW = "{t},1,2,3,4,5,6,walk"
GOOD = [ROW.format(t=i / 20) for i in range(30)]

CSV_ERRORS = {
    "missing columns": ("timestamp,acc_x,acc_y,acc_z,gyro_x\n0,1,2,3,4\n", r": missing columns gyro_y, gyro_z"),
    "upper case": (HEADER.replace("timestamp", "Timestamp") + "\n", r": missing column timestamp \(names are lower case"),
    "not a number": ("\n".join([HEADER, *GOOD[:3], "", ROW.format(t="0.2").replace(",3,", ",x3,"), *GOOD[5:]]),
                     r" row 6: acc_z value 'x3' is not a number"),  # line 5 is blank
    "timestamp not a number": ("\n".join([HEADER, *GOOD[:2], ROW.format(t="soon")]), r" row 4: timestamp value 'soon'"),
    "empty value": ("\n".join([HEADER, *GOOD[:6], ROW.format(t=0.3).replace(",5,", ",,"), *GOOD[7:]]),
                    r" row 8: gyro_y is empty, NaN or infinite"),
    "NaN value": ("\n".join([HEADER, *GOOD[:6], ROW.format(t=0.3).replace(",5,", ",nan,")]), r" row 8: gyro_y is empty"),
    "empty timestamp": ("\n".join([HEADER, *GOOD[:6], ROW.format(t="")]), r" row 8: timestamp is empty"),
    "repeated timestamp": ("\n".join([HEADER, *GOOD[:9], ROW.format(t=0.4)]),
                           r" row 11: timestamp 0\.4 does not increase \(the row before has 0\.4\)"),
    "decreasing timestamp": ("\n".join([HEADER, *GOOD[:9], ROW.format(t=0.1), *GOOD[10:]]), r" row 11: timestamp 0\.1"),
    "too few fields": ("\n".join([HEADER, *GOOD[:3], "0.15,1,2"]), r" row 5: 3 fields, the header has 8"),
    "no header": ("\n".join(GOOD), r": no header row naming the columns timestamp, acc_x"),
    "empty file": ("", r": empty file"),
    "partial magnetometer": (HEADER + ",mag_x\n", r": has mag_x but not mag_y, mag_z"),
    "repeated column": (HEADER + ",acc_x\n", r": column 'acc_x' appears twice"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CSV_ERRORS))
def test_malformed_csv_names_file_and_row(tmp_path, case):
    text, message = CSV_ERRORS[case]
    testing.write_recording(tmp_path / "fine.csv", np.arange(40) / 20)
    (tmp_path / "z" / "bad.csv").parent.mkdir()
    (tmp_path / "z" / "bad.csv").write_text(text)
    with pytest.raises(ValueError, match=f"^recordings/20_10: {tmp_path}/z/bad\\.csv{message}") as error:
        _read(tmp_path)
    assert "\n" not in str(error.value)


def test_binary_and_foreign_files(tmp_path):
    (tmp_path / "a.csv").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=r"a\.csv: not a CSV text file \(binary content\); only \.csv and \.parquet"):
        _read(tmp_path)
    (tmp_path / "a.csv").unlink()
    (tmp_path / "b.parquet").write_text(HEADER + "\n")
    with pytest.raises(ValueError, match=r"b\.parquet: not a Parquet file"):
        _read(tmp_path)
    (tmp_path / "b.parquet").unlink()
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ValueError, match=r"c\.json: not a recording: only \.csv and \.parquet files are read"):
        _read(tmp_path)


def test_parquet_errors_name_the_data_row(tmp_path):
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    columns = {"timestamp": np.arange(30) / 20, **{c: np.ones(30) for c in CHANNELS}}
    columns["gyro_x"] = np.where(np.arange(30) == 4, np.nan, 1.0)
    pq.write_table(pa.table(columns), tmp_path / "r.parquet")
    with pytest.raises(ValueError, match=r"r\.parquet row 5: gyro_x is empty, NaN or infinite"):
        _read(tmp_path)
    columns["gyro_x"] = ["1"] * 6 + ["one"] + ["1"] * 23
    pq.write_table(pa.table(columns), tmp_path / "r.parquet")
    with pytest.raises(ValueError, match=r"r\.parquet row 7: gyro_x value 'one' is not a number"):
        _read(tmp_path)


def test_empty_folders_and_no_window(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"recordings/20_10: the folder .*nowhere does not exist"):
        _read(tmp_path / "nowhere")
    (tmp_path / ".hidden.csv").write_text(HEADER + "\n")
    with pytest.raises(ValueError, match=r"^recordings/20_10: .*: no recordings \(\.csv or \.parquet files\)"):
        _read(tmp_path)
    testing.write_recording(tmp_path / "short.csv", np.arange(15) / 20)  # 13 steps: no window of 40
    (tmp_path / "header_only.csv").write_text(HEADER + "\n")
    testing.write_recording(tmp_path / "one_row.csv", [0.0])
    with pytest.raises(ValueError, match=r"the recordings are shorter than one window \(40 steps at 20 Hz = 2 s"):
        _read(tmp_path, "20_40")
    assert [r.windows for r in _read(tmp_path, "20_10").recordings] == [0, 0, 1]  # short ones add none


def test_nothing_half_built_after_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(rec, "SPILL_AFTER_BYTES", 0)  # what a.csv spilled to disk goes too
    testing.write_recording(tmp_path / "src" / "a.csv", np.arange(100) / 20)  # 10 windows
    (tmp_path / "src" / "bad.csv").write_text("\n".join([HEADER, *GOOD[:5], ROW.format(t=0)]))
    with pytest.raises(ValueError, match=r"bad\.csv row 7: timestamp 0\.0 does not increase"):
        _build(tmp_path / "src", tmp_path / "tfds", "20_10")
    assert not (tmp_path / "tfds" / "recordings").exists()
    (tmp_path / "src" / "bad.csv").write_text("\n".join([HEADER, *GOOD]))  # fixed: builds
    builder = _build(tmp_path / "src", tmp_path / "tfds", "20_10")
    assert len(builder.as_data_source(split="train")) == 10 + 3
    assert not [p for p in tmp_path.rglob("*") if "resampled" in p.name]


# ---------------------------------------------------------------------------------------
# example.py


def test_example_recordings_build(tmp_path):
    paths = example.write_recordings(tmp_path / "ex", num_recordings=3, seconds=150, seed=1)
    assert [p.name for p in paths] == ["recording_00.csv", "recording_01.csv", "recording_02.csv"]
    source = _read(tmp_path / "ex", "50_200")
    meta = source.metadata()
    assert source.label_columns == ["activity", "user"]
    assert set(source.label_classes["activity"]) <= set(example.ACTIVITIES) and source.label_classes["user"] == ["1", "2"]
    assert [r["segments"] for r in meta["recordings"]] == [1, 2, 1]  # the second has a pause
    assert all(r["raw_rate_hz"] == 50.0 for r in meta["recordings"])
    _, label, _ = _windows(source)
    assert 100 < len(label) <= 3 * 150 / 4 and (label[:, 0, 0] == -1).any() and (label[:, 0, 0] >= 0).sum() > 90
    assert example.main([str(tmp_path / "ex")]) == 2  # not empty: refused
    assert example.main(["--num_recordings=1", "--seconds=5", str(tmp_path / "new")]) == 0
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["recording_00.csv"]
