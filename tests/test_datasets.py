"""TFDS builders in `datasets/` (installed as `limubert_jax.datasets`): built to array_record
in a temporary data_dir without TensorFlow, read back with `tfds.data_source`."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

import limubert_jax.datasets
import numpy as np
import pytest
import tensorflow_datasets as tfds
from limubert_jax.datasets import common, layout, resampling
from limubert_jax.datasets.imu_npy import imu_npy_dataset_builder as imu_npy
from limubert_jax.datasets.synthetic_imu import synthetic_imu_dataset_builder as synthetic

ROOT = Path(__file__).resolve().parents[1]


def _build(name: str, data_dir: Path, manual_dir: Path | None = None):
    builder = tfds.builder(name, data_dir=data_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(file_format="array_record", download_config=config)
    return tfds.data_source(name, split="train", data_dir=data_dir, download=False)


def _column(source, key: str) -> np.ndarray:
    return np.stack([np.asarray(r[key]) for r in source.__getitems__(list(range(len(source))))])


# ---------------------------------------------------------------------------------------
# Registration and packaging.


def test_registered_and_packaged():
    assert {"synthetic_imu", "imu_npy"} <= set(limubert_jax.datasets.registered_names())
    assert tfds.builder_cls("synthetic_imu") is synthetic.Builder
    assert tfds.builder_cls("imu_npy") is imu_npy.Builder
    # Every builder folder is a package listed in pyproject.toml (installed as
    # limubert_jax.datasets.<name>), mapped from the top-level datasets/ folder.
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"limubert_jax.datasets": "datasets", "limubert_jax.configs": "configs"}
    folders = {p.parent.name for p in (ROOT / "datasets").glob("*/*_dataset_builder.py")}
    assert {"synthetic_imu", "imu_npy"} <= folders
    for folder in folders:
        assert f"limubert_jax.datasets.{folder}" in setuptools["packages"], folder
        assert (ROOT / "datasets" / folder / "README.md").is_file(), folder
    assert not any(p == "datasets" or p.startswith("datasets.") for p in setuptools["packages"])


def test_the_wheel_holds_no_test_code_or_dummy_data(tmp_path):
    """Built as tests/test_cli.py builds it (setuptools, offline, no isolation), but from every
    file of the source folders, the committed dummy_data/ included: the builder tests, their
    helpers and the dummy raw files live in tests/ or are left out by pyproject.toml."""
    import shutil
    import subprocess
    import zipfile

    source = tmp_path / "src"
    for name in ("limubert_jax", "datasets", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    assert list(source.glob("datasets/*/dummy_data/*"))  # there to be left out
    script = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    build = subprocess.run([sys.executable, "-c", script, str(tmp_path / "dist")], cwd=source, capture_output=True,
                           text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "dist" / build.stdout.strip().splitlines()[-1]) as wheel:
        names = wheel.namelist()
    assert "limubert_jax/datasets/hhar/hhar_dataset_builder.py" in names
    test_code = [n for n in names if n.endswith(("_test.py", "/testing.py", "/make_dummy_data.py", "/conftest.py"))
                 or "/dummy_data/" in n or n.startswith("tests/")]
    assert test_code == []


# ---------------------------------------------------------------------------------------
# synthetic_imu


@pytest.fixture(scope="module")
def synthetic_20_120(tmp_path_factory):
    return _build("synthetic_imu/20_120", tmp_path_factory.mktemp("tfds"))


def test_synthetic_shapes_labels_metadata(synthetic_20_120):
    ds = synthetic_20_120
    assert len(ds) == 2400  # 10 users x 6 activities x 40 windows
    example = ds[0]
    assert example["imu"].shape == (120, 9) and example["imu"].dtype == np.float32
    info = ds.dataset_info
    assert info.features["activity"].names == list(synthetic.ACTIVITIES)
    assert info.features["user"].names == list(synthetic.USERS)
    assert info.features["imu"].shape == (120, 9)
    meta = info.metadata
    assert meta["sampling_rate_hz"] == 20 and meta["seq_len"] == 120
    assert meta["feature_names"] == list(common.FEATURE_NAMES)
    assert meta["feature_units"] == ["m/s^2"] * 3 + ["rad/s"] * 3 + ["uT"] * 3
    assert "tensorflow" not in sys.modules  # built and read without TensorFlow


def test_synthetic_order_and_determinism(synthetic_20_120):
    ds = synthetic_20_120
    i = np.arange(len(ds))
    # Source order: user, then activity, then time; one label pair per window.
    np.testing.assert_array_equal(_column(ds, "user"), i // 240)
    np.testing.assert_array_equal(_column(ds, "activity"), (i // 40) % 6)
    # The stored windows are exactly what a fresh generation gives (fixed seeds).
    imu, activity, user = synthetic.generate(20, 120, 40)
    np.testing.assert_array_equal(_column(ds, "imu"), imu)
    np.testing.assert_array_equal(activity, (i // 40) % 6)
    np.testing.assert_array_equal(user, i // 240)


def _dominant_hz(windows: np.ndarray, rate: float) -> float:
    norm = np.linalg.norm(windows[..., :3], axis=-1)
    spectrum = np.abs(np.fft.rfft(norm - norm.mean(axis=1, keepdims=True), axis=1)).mean(axis=0)
    return float(np.fft.rfftfreq(windows.shape[1], 1.0 / rate)[spectrum.argmax()])


def test_synthetic_is_physically_plausible():
    imu, activity, user = synthetic.generate(20, 120, 4)
    by = {name: imu[activity == k] for k, name in enumerate(synthetic.ACTIVITIES)}
    acc_norm = {k: np.linalg.norm(v[..., :3], axis=-1) for k, v in by.items()}
    gyro_norm = {k: np.linalg.norm(v[..., 3:6], axis=-1) for k, v in by.items()}
    for still in ("sit", "stand"):
        assert abs(acc_norm[still].mean() - 9.81) < 0.1 and acc_norm[still].std() < 0.3
        assert gyro_norm[still].mean() < 0.2
    for moving in ("walk", "stairs_up", "stairs_down", "run"):
        assert 9.0 < acc_norm[moving].mean() < 11.5 and acc_norm[moving].std() > 1.0
        assert gyro_norm[moving].mean() > 0.8
    assert acc_norm["run"].std() > 2 * acc_norm["walk"].std()
    assert 1.7 <= _dominant_hz(by["walk"], 20) <= 2.2
    assert 2.5 <= _dominant_hz(by["run"], 20) <= 3.1
    # Earth field magnitude (plus a small hard-iron offset), the same rotation as gravity:
    mag_norm = np.linalg.norm(imu[..., 6:], axis=-1)
    assert 25 < mag_norm.min() and mag_norm.max() < 65
    # sitting and standing hold the phone differently: gravity points elsewhere.
    for u in range(synthetic.NUM_USERS):
        g_sit = imu[(activity == 0) & (user == u), :, :3].mean(axis=(0, 1))
        g_stand = imu[(activity == 1) & (user == u), :, :3].mean(axis=(0, 1))
        cos = g_sit @ g_stand / np.linalg.norm(g_sit) / np.linalg.norm(g_stand)
        assert cos < 0.5, u


def test_synthetic_10_100_small(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic.Builder, "WINDOWS_PER_RECORDING", 2)
    ds = _build("synthetic_imu/10_100", tmp_path)
    assert len(ds) == 10 * 6 * 2
    assert ds[5]["imu"].shape == (100, 9) and ds[5]["imu"].dtype == np.float32
    assert ds.dataset_info.metadata["sampling_rate_hz"] == 10
    np.testing.assert_array_equal(_column(ds, "imu"), synthetic.generate(10, 100, 2)[0])


# ---------------------------------------------------------------------------------------
# imu_npy


def _write(directory: Path, version: str, data: np.ndarray, label: np.ndarray) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / f"data_{version}.npy", data)
    np.save(directory / f"label_{version}.npy", label)
    return directory


@pytest.mark.parametrize(
    "version,features,label_dtype", [("20_120", 6, np.float64), ("10_100", 9, np.int32)]
)
def test_imu_npy_roundtrip(tmp_path, version, features, label_dtype):
    rate, steps = common.VERSIONS[version]
    rng = np.random.default_rng(0)
    n = 23
    data = rng.normal(0, 5, (n, steps, features))  # float64 in, float32 out
    data[:, 0, 0] = np.arange(n)  # row order is visible
    label = np.stack(
        [np.repeat(np.arange(n)[:, None], steps, 1), rng.integers(0, 5, (n, steps))], -1
    ).astype(label_dtype)
    manual = _write(tmp_path / "npy", version, data, label)
    ds = _build(f"imu_npy/{version}", tmp_path / "tfds", manual)
    assert len(ds) == n
    assert ds[0]["imu"].shape == (steps, features) and ds[0]["imu"].dtype == np.float32
    assert ds[0]["label"].shape == (steps, 2) and ds[0]["label"].dtype == np.int64
    np.testing.assert_array_equal(_column(ds, "imu"), data.astype(np.float32))
    np.testing.assert_array_equal(_column(ds, "label"), label.astype(np.int64))
    meta = ds.dataset_info.metadata
    assert meta["sampling_rate_hz"] == rate and meta["seq_len"] == steps
    assert (meta["num_windows"], meta["num_features"], meta["num_labels"]) == (n, features, 2)
    assert meta["feature_names"] == list(common.FEATURE_NAMES[:features])
    assert meta["data_sha256"] == imu_npy.sha256(manual / f"data_{version}.npy")


def test_a_build_larger_than_the_shuffler_memory_spills_without_tensorflow(tmp_path, monkeypatch):
    """TFDS's writer spills examples past its in-memory limit (1 GB) to bucket files through
    tf.io.gfile; without TensorFlow (CI has none) `tfds_without_tensorflow` gives it etils.epath instead."""
    from tensorflow_datasets.core import shuffle

    assert importlib.util.find_spec("tensorflow") is None  # the condition this test is about
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 10_000)  # a few windows: the rest spills
    # imu_npy writes in bulk (`common.ChunkedSplitWriter`); the builders TFDS writes for go
    # through its shuffler, as imu_npy does where the bulk writer stands aside.
    monkeypatch.setattr(common.ChunkedSplitWriter, "_bulk_unavailable", lambda *a: "as TFDS writes other builds")
    rng = np.random.default_rng(0)
    data = rng.normal(size=(40, 120, 6))
    data[:, 0, 0] = np.arange(40)
    ds = _build("imu_npy/20_120", tmp_path / "tfds", _write(tmp_path / "npy", "20_120", data, np.zeros((40, 120, 1))))
    np.testing.assert_array_equal(_column(ds, "imu"), data.astype(np.float32))  # every window, in order
    assert not [p for p in (tmp_path / "tfds").rglob("*") if "incomplete" in p.name or "bucket" in p.name]


def test_ordered_keys_keep_the_order_and_spread_over_the_shuffler_buckets():
    """A disable_shuffling build is sorted per bucket in memory: keys 0, 1, 2, ... would put
    a whole corpus in TFDS's first bucket (all of it in memory at once)."""
    from tensorflow_datasets.core import shuffle

    n = 100_000
    keys = [common.ordered_key(i, n) for i in range(n)]
    assert keys == sorted(keys) and len(set(keys)) == n and keys[-1] < 1 << 128
    buckets = np.bincount([shuffle.get_bucket_number(k, shuffle.BUCKETS_NUMBER) for k in keys],
                          minlength=shuffle.BUCKETS_NUMBER)
    assert buckets.max() <= n // shuffle.BUCKETS_NUMBER + 1  # about 1/1000 of the corpus each


def test_imu_npy_extra_features_named(tmp_path):
    data, label = np.zeros((3, 120, 11)), np.zeros((3, 120, 1))
    ds = _build("imu_npy/20_120", tmp_path / "tfds", _write(tmp_path / "npy", "20_120", data, label))
    assert ds[2]["imu"].shape == (120, 11)
    assert ds.dataset_info.metadata["feature_names"][-2:] == ["feature_9", "feature_10"]


def test_imu_npy_without_a_label_file_is_unlabelled_windows(tmp_path):
    only_data = tmp_path / "only_data"
    only_data.mkdir()
    data = np.random.default_rng(0).normal(size=(4, 120, 6))
    np.save(only_data / "data_20_120.npy", data)
    ds = _build("imu_npy/20_120", tmp_path / "tfds", only_data)
    assert len(ds) == 4 and ds[3]["label"].shape == (120, 0)
    np.testing.assert_array_equal(_column(ds, "imu"), data.astype(np.float32))
    meta = ds.dataset_info.metadata
    assert (meta["num_labels"], meta["label_columns"], meta["label_sha256"]) == (0, [], None)


def _prepare_error(tmp_path, manual_dir):
    builder = tfds.builder("imu_npy/20_120", data_dir=tmp_path / "tfds")
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.download_and_prepare(file_format="array_record", download_config=config)


def test_imu_npy_missing_directory_and_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"manual directory .*nowhere.*data_20_120\.npy and label_20_120\.npy"):
        _prepare_error(tmp_path, missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        _prepare_error(tmp_path, empty)
    wrong_version = _write(tmp_path / "v10", "10_100", np.zeros((4, 100, 6)), np.zeros((4, 100, 1)))
    with pytest.raises(FileNotFoundError, match=r"missing data_20_120\.npy .*data_10_100\.npy"):
        _prepare_error(tmp_path, wrong_version)
    assert not (tmp_path / "tfds" / "imu_npy" / "20_120" / "1.0.0").exists()  # nothing half-built


@pytest.mark.parametrize(
    "data_shape,label_shape,match",
    [
        ((5, 120, 6), (4, 120, 2), "number of windows N"),
        ((5, 120, 6), (5, 100, 2), "window length S"),
        ((5, 100, 6), (5, 100, 2), "100 steps; version 20_120 needs 120"),
        ((5, 120), (5, 120, 2), "3 dims"),
    ],
)
def test_imu_npy_shape_errors(tmp_path, data_shape, label_shape, match):
    manual = _write(tmp_path / "npy", "20_120", np.zeros(data_shape), np.zeros(label_shape))
    with pytest.raises(ValueError, match=match):
        _prepare_error(tmp_path, manual)


def test_imu_npy_value_errors(tmp_path):
    data, label = np.zeros((5, 120, 6)), np.zeros((5, 120, 2))
    data[3, 7, 1] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf in window 3"):
        _prepare_error(tmp_path, _write(tmp_path / "a", "20_120", data, label))
    label[4, 0, 0] = 0.5
    with pytest.raises(ValueError, match="non-integer label in window 4"):
        _prepare_error(tmp_path, _write(tmp_path / "b", "20_120", np.zeros((5, 120, 6)), label))


# ---------------------------------------------------------------------------------------
# common: the shared preprocessing and raw-file handling.


def test_downsample_alternates_blocks_of_2_and_3_and_stops_like_the_reference():
    x = np.arange(20, dtype=np.float64)[:, None]
    # Blocks [0,1] [2,3,4] [5,6] [7,8,9] ... ; the remainder reaches 1 on every second block.
    assert resampling.downsample(x, 50, 20)[:, 0].tolist() == [0.5, 3.0, 5.5, 8.0, 10.5, 13.0, 15.5]
    # UCI/MotionSense stop while i + 3 < L (17 + 3 = 20 is not < 20); Shoaib while <= L.
    assert resampling.downsample(x, 50, 20, include_last=True)[:, 0].tolist()[-1] == 18.0
    assert resampling.downsample(x, 50, 10)[:, 0].tolist() == [2.0, 7.0, 12.0]  # r = 5
    assert resampling.downsample(x[:2], 50, 20).shape == (0, 1)
    with pytest.raises(ValueError, match="cannot go up"):
        resampling.downsample(x, 10, 20)


def test_cut_windows_drops_the_tail():
    x = np.arange(25 * 2).reshape(25, 2)
    windows = resampling.cut_windows(x, 8)
    assert windows.shape == (3, 8, 2) and windows[2, -1].tolist() == x[23].tolist()


def test_nested_archives_are_extracted_with_the_standard_library(tmp_path):
    import types
    import zipfile

    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("Deep/Raw/data.txt", "1 2 3\n")
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as z:
        z.write(inner, "top/inner.zip")
        z.writestr("../escape.txt", "x")  # a hostile member stays inside the target
    dl = types.SimpleNamespace(download_dir=tmp_path / "dl")
    (root,) = layout.extract_archives(dl, [outer])
    assert (root / "top" / "inner.zip").is_file() and not (tmp_path / "dl" / "escape.txt").exists()
    nested = layout.extract_archives(dl, layout.archives_below(root))
    assert layout.find_layout(nested[0], ("Raw/data.txt",)) == nested[0] / "Deep"
    assert layout.extract_archives(dl, [outer]) == [root]  # reused, not redone
    with pytest.raises(ValueError, match="not a zip or tar archive"):
        (tmp_path / "x.rar").write_bytes(b"Rar!")
        layout.extract_archive(tmp_path / "x.rar", tmp_path / "dl")


def test_an_explicit_manual_dir_is_never_replaced_by_a_download(tmp_path):
    """uci_hapt can download, but a given manual dir that is empty or unrelated is an error."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*does not exist or is empty"):
        _build("uci_hapt/20_120", tmp_path / "tfds", tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("unrelated")
    with pytest.raises(FileNotFoundError, match=r"incomplete: missing .*RawData"):
        _build("uci_hapt/20_120", tmp_path / "tfds", tmp_path / "other")
    assert not list((tmp_path / "tfds").rglob("*.array_record*"))
