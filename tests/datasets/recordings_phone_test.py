"""recordings as phones and loggers write them: windows up to the very end, the anti-aliasing
low-pass on jittered clocks, rate changes inside a file, timestamp units, renamed and extra
columns, and the folder checks (a change while reading, the content fingerprint, link loops,
non-UTF-8 bytes). Small CSV / Parquet files in tmp_path; no TFDS build."""

from __future__ import annotations

import datetime
import inspect
import logging
import math
import os
import pathlib

import numpy as np
import pytest
from limubert_jax.datasets import common
from limubert_jax.datasets.recordings import reader as rec
from limubert_jax.datasets.recordings.recordings_dataset_builder import Builder

import dataset_testing as testing

CHANNELS = list(common.FEATURE_NAMES[:6])


def _read(folder, version="20_10", **options):
    rate, steps = common.parse_version(version)
    return rec.read_source(folder, rate, steps, **options)


def _imu(source) -> np.ndarray:
    return np.stack([imu for imu, _, _ in source.windows()])


# ---------------------------------------------------------------------------------------
# Every window that fits; a recording at the target rate as it is.


@pytest.mark.parametrize("raw, seconds, version, windows", [
    (10, 10, "10_100", 1),  # 100 samples, 0.0 .. 9.9 s: one window of 100 steps
    (10, 10, "5_25", 2),  # 50 steps
    (100, 60, "20_40", 30),  # 1200 steps
    (50, 8, "20_40", 4),  # 2.5 samples a step: 160 steps
])  # fmt: skip
def test_k_windows_worth_of_samples_make_k_windows(tmp_path, raw, seconds, version, windows):
    testing.write_recording(tmp_path / "r.csv", np.arange(raw * seconds) / raw)
    assert _read(tmp_path, version).num_windows == windows


def test_stride_takes_every_start_that_fits(tmp_path):
    testing.write_recording(tmp_path / "r.csv", np.arange(100) / 10)
    source = _read(tmp_path, "10_20", stride=10)
    assert source.num_windows == 9  # starts 0, 10, ..., 80
    assert [start for _, start in source.window_times()] == [float(s) for s in range(9)]


def test_at_its_own_rate_nothing_is_averaged(tmp_path):
    x = np.random.default_rng(0).standard_normal((200, 6))
    testing.write_recording(tmp_path / "r.csv", np.arange(200) / 20 + np.random.default_rng(1).uniform(-0.004, 0.004, 200), x)
    imu = _imu(_read(tmp_path, "20_50"))  # a jittered clock at 20 Hz: regular, copied
    np.testing.assert_array_equal(imu.reshape(-1, 6), x.astype(np.float32))


# ---------------------------------------------------------------------------------------
# The anti-aliasing low-pass.


def _tone(frequency: float, raw: float, target: int, *, jitter_s: float = 0.0, seconds: float = 60.0) -> np.ndarray:
    """A tone of amplitude 1 sampled at `raw` Hz (the phone model: the sensor on a steady grid,
    its timestamps off by up to +-jitter_s), resampled to `target` Hz."""
    i = np.arange(int(raw * seconds))
    t = i / raw + np.random.default_rng(0).uniform(-jitter_s, jitter_s, len(i))
    out, _ = rec.resample(t, np.sin(2 * np.pi * frequency * i / raw)[:, None], target)
    return out[:, 0]


def test_a_tone_above_the_target_nyquist_is_removed_on_jittered_and_regular_clocks():
    regular = _tone(48, 100, 20)
    jittered = _tone(48, 100, 20, jitter_s=0.002)  # +-2 ms: block averaging / interpolation gave std 0.58
    assert len(regular) == len(jittered) == 1200
    assert regular.std() < 0.01 and jittered.std() < 0.01  # (block averaging: 0.135)
    assert abs(regular.std() - jittered.std()) < 0.01


@pytest.mark.parametrize("jitter_s", [0.0, 0.002])
def test_an_in_band_tone_passes_with_its_amplitude(jitter_s):
    out = _tone(1, 100, 20, jitter_s=jitter_s)
    expected = np.sin(2 * np.pi * np.arange(len(out)) / 20)
    np.testing.assert_allclose(out, expected, atol=0.02)  # edges included


def test_the_low_pass_response():
    def amplitude(frequency, raw=100, target=20):
        out = _tone(frequency, raw, target, seconds=20)
        return math.sqrt(2) * out[len(out) // 4 : -len(out) // 4].std()

    assert amplitude(5) == pytest.approx(1, abs=1e-3)
    assert amplitude(8) > 0.95  # 0.4 x the target rate: pass band
    assert amplitude(9) == pytest.approx(0.5, abs=0.02)  # the cut-off, 0.45 x the target rate
    assert amplitude(11) < 1e-3 and amplitude(23) < 1e-3 and amplitude(11, raw=50) < 1e-3  # stop band


def test_an_irregular_clock_is_interpolated_then_low_passed():
    rng = np.random.default_rng(3)
    t = np.cumsum(rng.uniform(0.006, 0.014, 4000))  # ~100 Hz, no grid
    raw, regular = rec.clock(t)
    assert not regular and 95 < raw < 105
    out, _ = rec.resample(t, np.stack([np.sin(2 * np.pi * 1 * t), np.sin(2 * np.pi * 40 * t)], axis=1), 20)
    np.testing.assert_allclose(out[:, 0], np.sin(2 * np.pi * (t[0] + np.arange(len(out)) / 20)), atol=0.01)
    assert out[:, 1].std() < 0.1  # (a 40 Hz tone: its remains from the interpolation's errors)


def _lowpass_one_output_at_a_time(grid, positions, raw, rate):
    """The low-pass written out per output step: its own weights (`lowpass_weights` at its
    phase) over the samples it reaches, the ends point-reflected (`_extend`)."""
    taps, _ = rec.lowpass_weights(np.zeros(1), raw, rate)
    reach = -int(taps[0]) + 1
    padded = rec._extend(grid, reach)
    out = np.empty((len(positions), grid.shape[1]))
    for m, position in enumerate(positions):
        base = math.floor(position)
        phase = np.round((position - base) * rec._PHASES) / rec._PHASES
        _, weights = rec.lowpass_weights(np.array([phase]), raw, rate)
        out[m] = weights[0] @ padded[base + taps + reach]
    return out


@pytest.mark.parametrize("raw", [100.0, 50.0, 128.0, 99.37, 20.5])  # phases: 1, 2, 5 (as matrix products), ~1 per output, 40
def test_the_low_pass_is_its_definition_at_every_output_step(raw, monkeypatch):
    monkeypatch.setattr(rec, "_STRIDED_OUTPUTS", 7)  # outputs in blocks, the last one short
    monkeypatch.setattr(rec, "_SPARSE_WEIGHTS", 1000)
    grid = np.random.default_rng(0).standard_normal((900, 3)).cumsum(axis=0)
    positions = np.arange(rec.output_length(len(grid), raw, 20)) * (raw / 20)
    np.testing.assert_allclose(rec._lowpass_at(grid, positions, raw, 20), _lowpass_one_output_at_a_time(
        grid, positions, raw, 20), rtol=0, atol=1e-12)


def test_the_running_median_is_the_median_of_each_window():
    values = np.random.default_rng(1).uniform(0.5, 1.5, 400)
    padded = np.pad(values, 3, mode="edge")
    expected = [np.median(padded[i : i + 7]) for i in range(len(values))]
    np.testing.assert_array_equal(rec._running_median(values, 7), expected)


# ---------------------------------------------------------------------------------------
# Rate changes inside a file.


def _two_rates(path: pathlib.Path) -> np.ndarray:
    """40 s at 100 Hz, then 60 s at 10 Hz: no step over 0.1 s (no gap)."""
    t = np.concatenate([np.arange(4000) / 100, 39.99 + np.arange(1, 601) / 10])
    testing.write_recording(path, t)
    return t


def test_a_rate_change_splits_the_file_and_the_slow_part_is_skipped_and_reported(tmp_path, caplog):
    t = _two_rates(tmp_path / "r.csv")
    assert rec.rate_changes(t) == [4000]
    with caplog.at_level(logging.WARNING):
        source = _read(tmp_path, "20_40")
    assert source.num_windows == 20  # 40 s at 20 Hz; the 10 Hz part is never up-sampled
    meta = source.metadata()["recordings"][0]
    assert meta["segments"] == 2
    assert meta["skipped_segments"] == [{"row": 4002, "rate_hz": 10.0, "seconds": 60.0}]
    assert any("r.csv row 4002: 60 s sampled at 10 Hz, below the 20 Hz" in r.getMessage() for r in caplog.records)
    imu = _imu(source)
    assert np.allclose(np.diff(imu[..., 0], axis=1), 1 / 20, atol=1e-4)  # acc_x is the time: 100 Hz data only

    both = _read(tmp_path, "10_100")  # at 10 Hz both parts are used, each on its own
    assert both.num_windows == 4 + 6 and both.metadata()["recordings"][0]["skipped_segments"] == []
    assert [start for _, start in both.window_times()][4] == pytest.approx(t[4000])


def test_jitter_is_no_rate_change():
    rng = np.random.default_rng(4)
    t = np.arange(20000) / 100 + rng.uniform(-0.002, 0.002, 20000)
    assert rec.rate_changes(t) == []
    walk = np.cumsum(np.clip(1 + 0.08 * rng.standard_normal(20000), 0.7, 1.3)) / 50  # example.py's jitter
    assert rec.rate_changes(walk) == []


def test_a_slow_file_beside_a_good_one_is_skipped_and_alone_it_is_an_error(tmp_path):
    testing.write_recording(tmp_path / "fast.csv", np.arange(200) / 50)
    testing.write_recording(tmp_path / "slow.csv", np.arange(200) / 10)
    source = _read(tmp_path, "20_40")
    assert [r.windows for r in source.recordings] == [2, 0]
    assert source.metadata()["recordings"][1]["skipped_segments"] == [{"row": 2, "rate_hz": 10.0, "seconds": 20.0}]
    (tmp_path / "fast.csv").unlink()
    with pytest.raises(ValueError, match=r"^recordings/20_40: \S*slow\.csv row 2: sampled at 10 Hz .*, and no "
                                         r"recording makes a window at 20 Hz: .* choose a rate of at most 10 Hz$"):
        _read(tmp_path, "20_40")


# ---------------------------------------------------------------------------------------
# Timestamp units.


def test_timestamp_units_read_like_seconds(tmp_path):
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    i = np.arange(300)
    seconds = 1_700_000_000 + i / 50
    testing.write_recording(tmp_path / "s" / "r.csv", seconds)
    expected = _read(tmp_path / "s", "50_100")
    x = np.stack([(j + 1) * seconds + j for j in range(6)], axis=1)
    ms = 1_700_000_000_000 + 20 * i
    ns = 1_700_000_000_000_000_000 + 20_000_000 * i  # above 2**53: read as int64
    testing.write_recording(tmp_path / "ms" / "r.csv", seconds, x, times=ms)
    testing.write_recording(tmp_path / "us" / "r.csv", seconds, x, times=ms * 1000)
    testing.write_recording(tmp_path / "ns" / "r.csv", seconds, x, times=ns)
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"timestamp": ns, **{c: x[:, j] for j, c in enumerate(CHANNELS)}}),
                   tmp_path / "pq" / "r.parquet")
    start = datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.timezone.utc)
    iso = [(start + datetime.timedelta(milliseconds=20 * int(k))).isoformat().replace("+00:00", "Z") for k in i]
    testing.write_recording(tmp_path / "iso" / "r.csv", seconds, x, times=iso)
    for folder, unit in (("ms", "ms"), ("us", "us"), ("ns", "ns"), ("pq", "ns"), ("iso", "ms")):  # iso: unit unused
        source = _read(tmp_path / folder, "50_100", timestamp_unit=unit)
        np.testing.assert_array_equal(_imu(source), _imu(expected), err_msg=folder)
        np.testing.assert_allclose(np.array(list(source.window_times())), np.array(list(expected.window_times())),
                                   rtol=0, atol=1e-6, err_msg=folder)


@pytest.mark.parametrize("times, unit, message", [
    (lambda i: 1_700_000_000_000 + 10 * i, "s",
     r"timestamps step by a median 10 \(in s\): 0\.1 Hz, outside the 1 Hz to 10 kHz of an IMU "
     r"\(config\.dataset\.timestamp_unit='s'\); if they are milliseconds, set config\.dataset\.timestamp_unit='ms'$"),
    (lambda i: 1_700_000_000_000_000_000 + 10_000_000 * i, "ms",
     r"timestamps step by a median 1e\+07 \(in ms\): 0\.0001 Hz, .* set config\.dataset\.timestamp_unit='ns'$"),
    (lambda i: np.round(i * 0.01, 2), "ms",
     r"timestamps step by a median 0\.01 \(in ms\): 1e\+05 Hz, .* if they are seconds, set .*timestamp_unit='s'$"),
])  # fmt: skip
def test_an_implausible_rate_names_the_timestamp_unit(tmp_path, times, unit, message):
    i = np.arange(300)
    testing.write_recording(tmp_path / "r.csv", i / 100, times=times(i))
    with pytest.raises(ValueError, match=r"^recordings/20_10: \S*r\.csv: " + message):
        _read(tmp_path, timestamp_unit=unit)


def test_timestamp_text_errors(tmp_path):
    i = np.arange(40)
    iso = [f"2024-01-01T00:00:{k / 20:06.3f}" for k in i]
    testing.write_recording(tmp_path / "r.csv", i / 20, times=iso[:5] + ["soon"] + iso[6:])
    with pytest.raises(ValueError, match=r"r\.csv row 7: timestamp value 'soon' is not an ISO-8601 time like"):
        _read(tmp_path)
    testing.write_recording(tmp_path / "r.csv", i / 20, times=iso[:5] + [iso[3]] + iso[6:])
    with pytest.raises(ValueError, match=r"r\.csv row 7: timestamp '2024-01-01T00:00:00\.150' does not increase"):
        _read(tmp_path)


# ---------------------------------------------------------------------------------------
# Columns: renamed, labels, ignored.

OTHER_NAMES = ["time", "ax", "ay", "az", "gx", "gy", "gz"]
MAPPING = "time:timestamp,ax:acc_x,ay:acc_y,az:acc_z,gx:gyro_x,gy:gyro_y,gz:gyro_z"


def test_columns_renames_the_files_columns(tmp_path):
    t = np.arange(100) / 20
    testing.write_recording(tmp_path / "contract" / "r.csv", t, labels={"activity": ["walk"] * 100})
    testing.write_recording(tmp_path / "other" / "r.csv", t, labels={"activity": ["walk"] * 100}, names=[*OTHER_NAMES, "activity"])
    expected = _read(tmp_path / "contract")
    for columns in (MAPPING, dict(item.split(":") for item in MAPPING.split(","))):
        source = _read(tmp_path / "other", columns=columns)
        np.testing.assert_array_equal(_imu(source), _imu(expected))
        assert source.label_columns == ["activity"] and source.options["columns"] == MAPPING
    assert Builder.config_for("20_10", tmp_path, columns=dict(item.split(":") for item in MAPPING.split(","))).name \
        == Builder.config_for("20_10", tmp_path, columns=MAPPING.replace(",", ", ")).name
    with pytest.raises(ValueError, match=r"^recordings/20_10: \S*other: config\.dataset\.columns names 'bx', a column "
                                         r"no recording has \(the first one's: time, ax"):
        _read(tmp_path / "other", columns=MAPPING + ",bx:mag_x")
    with pytest.raises(ValueError, match=r"r\.csv: no header row naming the columns timestamp, .*first line: 'time,ax,"
                                         r".*map them with config\.dataset\.columns='name:acc_x,\.\.\.'$"):
        _read(tmp_path / "other")
    testing.write_recording(tmp_path / "other" / "r.csv", t, names=["timestamp", *OTHER_NAMES[1:]])
    with pytest.raises(ValueError, match=r"r\.csv: missing columns acc_x, .*; columns: timestamp, ax, .* \(other names: "
                                         r"map them with config\.dataset\.columns\)$"):
        _read(tmp_path / "other")


def _with_pressure(path: pathlib.Path, n: int = 200) -> None:
    pressure = 1013.25 + np.round(np.random.default_rng(0).normal(0, 0.5, n), 2)
    testing.write_recording(path, np.arange(n) / 20, labels={"activity": ["walk"] * (n // 2) + ["sit"] * (n - n // 2),
                                            "pressure": pressure})


def test_a_sensor_like_column_is_no_label(tmp_path):
    _with_pressure(tmp_path / "r.csv")
    with pytest.raises(ValueError, match=r"^recordings/20_10: \S*r\.csv: column 'pressure' looks like a sensor channel, "
                                         r"not a label \(numbers such as '1012\.\d*'\): name the label columns in "
                                         r"config\.dataset\.label_columns, or leave this one out with "
                                         r"config\.dataset\.ignore_columns$"):
        _read(tmp_path)
    assert _read(tmp_path, ignore_columns="pressure").label_columns == ["activity"]
    source = _read(tmp_path, label_columns="activity")
    assert source.label_columns == ["activity"] and source.label_classes == {"activity": ["sit", "walk"]}
    assert _read(tmp_path, label_columns="pressure,activity").label_columns == ["pressure", "activity"]
    with pytest.raises(ValueError, match=r"config\.dataset\.label_columns names 'mood', a column no recording has"):
        _read(tmp_path, label_columns="activity,mood")
    with pytest.raises(ValueError, match=r"config\.dataset\.ignore_columns names 'temp', a column no recording has"):
        _read(tmp_path, ignore_columns="pressure,temp")


def test_many_distinct_integers_are_no_label_unless_named(tmp_path):
    testing.write_recording(tmp_path / "r.csv", np.arange(200) / 20, labels={"steps": np.arange(200) * 7})
    with pytest.raises(ValueError, match=r"column 'steps' looks like a sensor channel, not a label \(200 distinct "
                                         r"numbers, more than 100\)"):
        _read(tmp_path)
    assert len(_read(tmp_path, label_columns="steps").label_classes["steps"]) == 200
    testing.write_recording(tmp_path / "r.csv", np.arange(200) / 20, labels={"user": np.arange(200) // 2})  # 100 users: labels
    assert len(_read(tmp_path).label_classes["user"]) == 100


def test_a_parquet_float_column_with_fractions_is_no_label(tmp_path):
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    t = np.arange(100) / 20
    pq.write_table(pa.table({"timestamp": t, **{c: t for c in CHANNELS}, "temp": 20 + t / 10}), tmp_path / "r.parquet")
    with pytest.raises(ValueError, match=r"r\.parquet: column 'temp' looks like a sensor channel, not a label "
                                         r"\(numbers such as 20\.005\)"):
        _read(tmp_path)
    assert _read(tmp_path, ignore_columns="temp").label_columns == []


def test_ignoring_the_magnetometer_keeps_six_features(tmp_path):
    t = np.arange(100) / 20
    testing.write_recording(tmp_path / "r.csv", t, np.stack([t] * 9, axis=1))
    assert _read(tmp_path).num_features == 9
    assert _read(tmp_path, ignore_columns="mag_x,mag_y,mag_z").num_features == 6


# ---------------------------------------------------------------------------------------
# Options: one list, one check, read_source's keywords.


def test_every_option_has_help_and_is_a_keyword_of_read_source():
    assert set(rec.OPTION_HELP) == set(rec.SOURCE_OPTIONS) == set(Builder.SOURCE_OPTIONS)
    parameters = inspect.signature(rec.read_source).parameters
    assert {k: parameters[k].default for k in rec.SOURCE_OPTIONS} == rec.SOURCE_OPTIONS
    assert rec.check_options() == rec.SOURCE_OPTIONS
    assert rec.check_options(label_columns=["a", " b"], ignore_columns="c, d,", stride=4.0, max_gap_s=2) == {
        **rec.SOURCE_OPTIONS, "label_columns": "a,b", "ignore_columns": "c,d", "stride": 4, "max_gap_s": 2.0}


@pytest.mark.parametrize("gap", [float("nan"), float("inf"), 0.0, -1.0])
def test_read_source_checks_max_gap_s(tmp_path, gap):
    testing.write_recording(tmp_path / "r.csv", np.arange(100) / 20)
    with pytest.raises(ValueError, match=r"^config\.dataset\.max_gap_s must be a number of seconds > 0"):
        _read(tmp_path, max_gap_s=gap)


# ---------------------------------------------------------------------------------------
# Reading a folder: files on several threads, resampled steps spilled to disk.


def _labelled_folder(folder):
    for i, seconds in enumerate([30, 45, 20]):
        t = np.arange(100 * seconds) / 100 + 1000 * i
        activity = ["walk" if (k // 700) % 2 else "sit" for k in range(len(t))]
        testing.write_recording(folder / f"r{i}.csv", t, labels={"activity": activity, "user": [i] * len(t)})


def test_files_read_on_threads_and_spilled_to_disk_give_the_same_windows(tmp_path, monkeypatch):
    _labelled_folder(tmp_path / "src")
    monkeypatch.setattr(rec, "READ_THREADS", 1)
    alone = _read(tmp_path / "src", "20_40", stride=7)
    monkeypatch.setattr(rec, "READ_THREADS", 3)
    monkeypatch.setattr(rec, "SPILL_AFTER_BYTES", 30_000)  # some segments in memory, the rest on disk
    (tmp_path / "spill").mkdir()
    spilled = _read(tmp_path / "src", "20_40", stride=7, spill_dir=tmp_path / "spill")
    kinds = [type(a) for r in spilled.recordings for segment in r.segments for a in segment]
    assert np.memmap in kinds and np.ndarray in kinds
    assert spilled.metadata() == alone.metadata() and alone.num_windows > 100
    for a, b in zip(alone.window_chunks(50), spilled.window_chunks(50), strict=True):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    (folder,) = (tmp_path / "spill").iterdir()
    assert folder.name.startswith(".recordings-resampled-") and len(list(folder.iterdir())) > 2
    spilled.close()
    assert not any((tmp_path / "spill").iterdir())


def test_reading_a_folder_logs_its_progress(tmp_path, monkeypatch, caplog):
    _labelled_folder(tmp_path)
    monkeypatch.setattr(rec, "PROGRESS_S", -1.0)  # a line after every file but the last
    with caplog.at_level(logging.INFO):
        _read(tmp_path, "20_40")
    lines = [r.getMessage() for r in caplog.records if "recordings read" in r.getMessage()]
    assert [line.split(" (")[0] for line in lines] == [f"recordings/20_40: {k} of 3 recordings read" for k in (1, 2)]
    assert all(line.endswith(" s to go") and "M samples/s" in line for line in lines)


def test_the_first_bad_file_in_order_is_reported_and_nothing_spilled_stays(tmp_path, monkeypatch):
    _labelled_folder(tmp_path / "src")
    testing.write_recording(tmp_path / "src" / "r1.csv", np.r_[0.0, 0.1, 0.1])
    testing.write_recording(tmp_path / "src" / "r2.csv", np.r_[0.0, -1.0])  # also bad, and quicker to read
    monkeypatch.setattr(rec, "READ_THREADS", 3)
    monkeypatch.setattr(rec, "SPILL_AFTER_BYTES", 0)
    (tmp_path / "spill").mkdir()
    with pytest.raises(ValueError, match=r"r1\.csv row 4: timestamp 0\.1 does not increase"):
        _read(tmp_path / "src", "20_40", spill_dir=tmp_path / "spill")
    assert not any((tmp_path / "spill").iterdir())


# ---------------------------------------------------------------------------------------
# The folder: changed while read, content fingerprint, link loops; non-UTF-8 bytes.


def test_a_folder_changed_while_it_is_read_fails(tmp_path, monkeypatch):
    testing.write_recording(tmp_path / "a.csv", np.arange(100) / 20)
    testing.write_recording(tmp_path / "b.csv", np.arange(100) / 20)
    read = rec._read

    def read_and_write(*args, **kwargs):
        if not (tmp_path / "c.csv").exists():
            testing.write_recording(tmp_path / "c.csv", np.arange(100) / 20)  # another recording arrives meanwhile
        return read(*args, **kwargs)

    monkeypatch.setattr(rec, "_read", read_and_write)
    with pytest.raises(ValueError, match=r"^recordings/20_10: \S+: the folder changed while it was read \(a recording "
                                         r"added, removed or rewritten\); build again when it is complete$"):
        _read(tmp_path)
    monkeypatch.setattr(rec, "_read", read)
    source = _read(tmp_path, fingerprint="content")
    assert source.fingerprint == rec.fingerprint(tmp_path, mode="content") != rec.fingerprint(tmp_path)
    assert source.metadata()["fingerprint_mode"] == "content"


def test_the_content_fingerprint_sees_a_rewrite_that_keeps_size_and_time(tmp_path):
    path = testing.write_recording(tmp_path / "a.csv", np.arange(100) / 20)
    stat = os.stat(path)
    by_stat, by_content = rec.fingerprint(tmp_path), rec.fingerprint(tmp_path, mode="content")
    path.write_text(path.read_text().replace("0.05,", "0.07,", 1))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert rec.fingerprint(tmp_path, mode="stat") == by_stat
    assert rec.fingerprint(tmp_path, mode="content") != by_content
    with pytest.raises(ValueError, match=r"config\.dataset\.fingerprint must be 'stat' or 'content', got 'sha'"):
        rec.fingerprint(tmp_path, mode="sha")


def test_a_folder_link_loop_is_reported_short(tmp_path):
    testing.write_recording(tmp_path / "src" / "a" / "r.csv", np.arange(100) / 20)
    os.symlink(tmp_path / "src", tmp_path / "src" / "a" / "up")
    with pytest.raises(ValueError, match=r"^recordings/20_10: \S+src: the folder link 'a/up' leads to the folder "
                                         r"itself, which is read already \(a loop or a second way in\): remove the "
                                         r"link$") as error:
        _read(tmp_path / "src")
    assert len(str(error.value)) < 200 + len(str(tmp_path))
    (tmp_path / "src" / "a" / "up").unlink()
    os.symlink(tmp_path / "src" / "a", tmp_path / "src" / "b")  # a second way into a/
    with pytest.raises(ValueError, match=r"the folder link '(a|b)' leads to '(a|b)', which is read already"):
        _read(tmp_path / "src")


def test_a_byte_that_is_not_utf8_in_a_label_names_file_and_row(tmp_path):
    lines = ["timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,activity"]
    lines += [f"{i / 20},1,2,3,4,5,6,{'café' if i == 2 else 'walk'}" for i in range(40)]
    (tmp_path / "r.csv").write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(ValueError, match=r"^recordings/20_10: \S*r\.csv row 4: activity value b'caf\\xe9' is not "
                                         r"UTF-8 text \(save the file as UTF-8\)$"):
        _read(tmp_path)
