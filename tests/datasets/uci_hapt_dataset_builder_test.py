"""uci_hapt: the reference preprocessing on tiny hand-made raw files, and the TFDS builder on
the committed dummy data."""

from __future__ import annotations

import pathlib
import shutil
import zipfile

import numpy as np
import pytest
from limubert_jax.datasets.uci_hapt import uci_hapt_dataset_builder as uci

import dataset_testing as testing

G = uci.STANDARD_GRAVITY


def _write_raw(root: pathlib.Path, recordings: dict, labels: list[str]) -> pathlib.Path:
    """RawData/ with acc/gyro files {(exp, user): (acc rows, gyro rows)} and labels.txt lines."""
    raw = root / "RawData"
    raw.mkdir(parents=True)
    for (exp, user), (acc, gyro) in recordings.items():
        for sensor, rows in (("acc", acc), ("gyro", gyro)):
            text = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in rows)
            (raw / uci.signal_name(sensor, exp, user)).write_text(text)
    (raw / "labels.txt").write_text("".join(line + "\n" for line in labels))
    return root


def _ramp(n: int, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """acc row k = (k, 2k, -k) + offset (g); gyro row k = (k / 10, 0, 1) (rad/s)."""
    k = np.arange(n, dtype=np.float64) + offset
    return np.stack([k, 2 * k, -k], 1), np.stack([k / 10, np.zeros(n), np.ones(n)], 1)


def _expected(means: list[list[float]]) -> np.ndarray:
    """Windows of down-sampled ramp values m (the mean sample index of each block)."""
    m = np.asarray(means, dtype=np.float64)[..., None]
    return np.concatenate([m * G, 2 * m * G, -m * G, m / 10, 0 * m, 1 + 0 * m], axis=-1)


# ---------------------------------------------------------------------------------------
# Preprocessing pieces


def test_downsampled_segment_uses_alternating_blocks_and_the_stop_rule():
    x = np.arange(40, dtype=np.float64)[:, None]
    # [3, 16): 13 samples 3..15 -> blocks [3,4] [5,6,7] [8,9] [10,11,12]; the next block of 3
    # would need i + 3 < 13 at i = 10: stop (sample 15 and 13, 14 unused).
    assert uci.segment_windows(x, 3, 16, 20, 2)[..., 0].tolist() == [[3.5, 6.0], [8.5, 11.0]]
    assert uci.segment_windows(x, 3, 16, 20, 3)[..., 0].tolist() == [[3.5, 6.0, 8.5]]  # tail dropped
    # 14 samples 3..16: one more block [13, 14] (10 + 3 < 14).
    assert uci.segment_windows(x, 3, 17, 20, 1)[..., 0].tolist() == [[3.5], [6.0], [8.5], [11.0], [13.5]]
    assert uci.segment_windows(x, 3, 17, 20, 4)[..., 0].tolist() == [[3.5, 6.0, 8.5, 11.0]]
    # 10 Hz: blocks of 5 while i + 6 < L: [0..4] [5..9], not [10..14] of 13 samples.
    assert uci.segment_windows(x, 0, 13, 10, 1)[..., 0].tolist() == [[2.0], [7.0]]


def test_a_segment_needs_more_than_seq_len_steps():
    x = np.arange(40, dtype=np.float64)[:, None]
    assert uci.segment_windows(x, 3, 16, 20, 4).shape == (0, 4, 1)  # L = 4 = S: no window
    assert uci.segment_windows(x, 3, 16, 20, 3).shape == (1, 3, 1)


def test_preprocess_slices_filters_scales_and_orders(tmp_path):
    root = _write_raw(
        tmp_path,
        {(1, 1): _ramp(40), (10, 5): _ramp(20, offset=100.0)},
        [
            "10 5 3 1 12",  # listed first, but recording exp10 comes after exp01 (file-name order)
            "1 1 1 1 9",  # rows [1, 9): 1..8 at 25 Hz -> blocks [1,2] [3,4] [5,6]: L = 3 > 2
            "1 1 7 9 20",  # postural transition: dropped
            "1 1 4 20 27",  # rows 20..26 -> L = 2, not > 2: no window
            "1 1 6 27 40",  # rows 27..39 -> L = 5 -> 2 windows, tail dropped
            "1 1 12 5 30",  # dropped
        ],
    )
    imu, labels = uci.preprocess(root, 25, 2)
    np.testing.assert_allclose(
        imu,
        _expected([[1.5, 3.5], [27.5, 29.5], [31.5, 33.5], [101.5, 103.5], [105.5, 107.5]]),
        rtol=1e-12,
    )
    # The quirk: "1 1 1 1 9" is samples 1..9 (1-based, inclusive) = rows 0..8, but the
    # reference (and this builder) uses rows 1..8; row 0 would make the first mean 1.0.
    assert labels["activity"].tolist() == [0, 5, 5, 2, 2]  # walking, laying, laying, downstairs
    assert labels["user"].tolist() == [0, 0, 0, 4, 4]  # user id - 1 (user 1 absent elsewhere too)


def test_labels_are_id_minus_one_whatever_users_are_present(tmp_path):
    root = _write_raw(tmp_path, {(7, 4): _ramp(30)}, ["7 4 5 0 30"])
    _, labels = uci.preprocess(root, 25, 4)
    assert labels["activity"].tolist() == [4, 4, 4]  # standing
    assert labels["user"].tolist() == [3, 3, 3]  # not 0, as min-subtraction would give


def test_ordered_segments_keeps_labels_order_within_a_recording():
    s = uci.Segment
    rows = [s(2, 1, 5, 50, 90), s(1, 1, 4, 70, 99), s(2, 1, 1, 10, 40), s(1, 1, 8, 1, 5), s(1, 1, 2, 5, 60)]
    assert uci.ordered_segments(rows) == [rows[1], rows[4], rows[0], rows[2]]


def test_read_errors_name_the_file(tmp_path):
    root = _write_raw(tmp_path / "a", {(1, 1): _ramp(30)}, ["1 1 5 0 30"])
    (root / "RawData" / "gyro_exp01_user01.txt").unlink()
    with pytest.raises(FileNotFoundError, match="gyro_exp01_user01.txt"):
        uci.preprocess(root, 25, 2)

    root = _write_raw(tmp_path / "b", {(1, 1): _ramp(30)}, ["1 1 5 0 30"])
    (root / "RawData" / "acc_exp01_user01.txt").write_text("0.1 0.2 0.3\n0.1 oops 0.3\n")
    with pytest.raises(ValueError, match="acc_exp01_user01.txt"):
        uci.preprocess(root, 25, 2)

    root = _write_raw(tmp_path / "c", {(1, 1): _ramp(30)}, ["1 1 5 0"])
    with pytest.raises(ValueError, match=r"labels\.txt.*5 columns"):
        uci.preprocess(root, 25, 2)

    root = _write_raw(tmp_path / "d", {(1, 1): _ramp(30)}, ["1 31 5 0 30"])
    with pytest.raises(ValueError, match=r"labels\.txt line 1: user 31"):
        uci.preprocess(root, 25, 2)

    root = _write_raw(tmp_path / "e", {(1, 1): (_ramp(30)[0], _ramp(29)[1])}, ["1 1 5 0 20"])
    with pytest.raises(ValueError, match="gyro_exp01_user01.txt has 29"):
        uci.preprocess(root, 25, 2)

    root = _write_raw(tmp_path / "f", {(1, 1): _ramp(30)}, ["1 1 5 10 31"])
    with pytest.raises(ValueError, match="runs past"):
        uci.preprocess(root, 25, 2)


# ---------------------------------------------------------------------------------------
# The TFDS builder on the committed dummy data

# Windows per kept dummy segment at 20_120 (labels.txt order): standing 4, sitting 4,
# walking 1, upstairs 0 (L = 119), laying 4, downstairs 2, upstairs 2, walking 4.
_DUMMY_ACTIVITY_20_120 = [4] * 4 + [3] * 4 + [0] + [5] * 4 + [2] * 2 + [1] * 2 + [0] * 4
_DUMMY_USER_20_120 = [0] * 15 + [2] * 6


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return testing.build_versions("uci_hapt", tmp_path_factory)


@pytest.mark.parametrize("version, count", [("20_120", 21), ("10_100", 10)])
def test_build_matches_preprocess(built, version, count):
    builder, data = built[version]
    rate, seq_len = builder.builder_config.sampling_rate, builder.builder_config.seq_len
    assert data["imu"].shape == (count, seq_len, 6) and data["imu"].dtype == np.float32
    imu, labels = uci.preprocess(testing.dummy_data_dir("uci_hapt"), rate, seq_len)
    np.testing.assert_array_equal(data["imu"], imu.astype(np.float32))
    for task in ("activity", "user"):
        np.testing.assert_array_equal(data[task], labels[task])
    assert builder.info.splits["train"].num_examples == count


def test_window_order_is_the_reference_order(built):
    _, data = built["20_120"]
    assert data["activity"].tolist() == _DUMMY_ACTIVITY_20_120
    assert data["user"].tolist() == _DUMMY_USER_20_120


def test_features_and_metadata(built):
    builder, _ = built["20_120"]
    features = builder.info.features
    assert features["activity"].names == list(uci.ACTIVITIES) and features["activity"].num_classes == 6
    assert features["user"].names == [str(u) for u in range(1, 31)] and features["user"].num_classes == 30
    assert builder.info.supervised_keys == ("imu", "activity")
    meta = builder.info.metadata
    assert meta["sampling_rate_hz"] == 20 and meta["seq_len"] == 120
    assert meta["feature_names"] == ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
    assert meta["feature_units"] == ["m/s^2"] * 3 + ["rad/s"] * 3
    assert meta["tasks"]["activity"] == list(uci.ACTIVITIES)
    assert meta["raw_sampling_rate_hz"] == 50
    assert "Reyes-Ortiz" in builder.info.citation
    assert built["10_100"][0].info.metadata["sampling_rate_hz"] == 10


def test_checksums_file_registers_the_official_url(built):
    builder, _ = built["20_120"]
    (info,) = [builder.url_infos[u] for u in uci.Builder.URLS]
    assert info.size == 79596192 and len(info.checksum) == 64


def test_builds_from_the_archive(built, tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    dummy = pathlib.Path(testing.dummy_data_dir("uci_hapt"))
    with zipfile.ZipFile(manual / "HAPT Data Set.zip", "w") as z:
        for path in sorted(dummy.rglob("*")):
            z.write(path, path.relative_to(dummy).as_posix())
    _, source = testing.build("uci_hapt", "10_100", tmp_path / "tfds", manual)
    data = testing.read_all(source)
    np.testing.assert_array_equal(data["imu"], built["10_100"][1]["imu"])


def test_incomplete_manual_dir_names_the_missing_file(tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(pathlib.Path(testing.dummy_data_dir("uci_hapt")), manual)
    (manual / "RawData" / "labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"RawData/labels\.txt"):
        testing.build("uci_hapt", "20_120", tmp_path / "tfds", manual)

    shutil.copy(pathlib.Path(testing.dummy_data_dir("uci_hapt")) / "RawData" / "labels.txt", manual / "RawData")
    (manual / "RawData" / "gyro_exp05_user03.txt").unlink()
    with pytest.raises(FileNotFoundError, match="gyro_exp05_user03.txt"):
        testing.build("uci_hapt", "20_120", tmp_path / "tfds2", manual)


def test_malformed_raw_file_is_named(tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(pathlib.Path(testing.dummy_data_dir("uci_hapt")), manual)
    (manual / "RawData" / "acc_exp02_user01.txt").write_text("1.0 2.0\n")
    with pytest.raises(ValueError, match="acc_exp02_user01.txt"):
        testing.build("uci_hapt", "20_120", tmp_path / "tfds", manual)
