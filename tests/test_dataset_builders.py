"""Every IMU builder in `datasets/`: complete TFDS folder layout, and the main job pretraining
on the builder's dummy raw files through the config overrides a user would pass
(`--config.dataset.name/version/manual_dir`). Per-dataset preprocessing and builder tests are
in `tests/datasets/<name>_dataset_builder_test.py`, the dummy raw files' generator there too
(`make_dummy_data.py`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import limubert_jax.datasets
import numpy as np
import pytest

from limubert_jax import config_lib, tasks
from limubert_jax.data import loading
from limubert_jax.pretraining import trainer

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ("hhar", "motionsense", "uci_hapt", "shoaib", "wisdm", "eleme", "huawei")
# Builders made from raw files (dummy_data/ and a generator script); synthetic_imu generates
# its data and imu_npy reads the files the user names.
WITH_DUMMY_DATA = RECORDED


def test_every_dataset_config_names_a_registered_builder():
    registered = set(limubert_jax.datasets.registered_names())
    assert set(RECORDED) | {"synthetic_imu", "imu_npy"} <= registered
    for config_file in ("hhar", "motion", "uci", "shoaib", "wisdm", "eleme", "huawei", "quickstart", "npy", "recordings"):
        for version in ("20_120", "10_100", "50_200"):
            config = config_lib.sibling_config(str(ROOT / "configs" / f"{config_file}.py"), config_file).get_config(version)
            assert config.dataset.name in registered, config_file
            assert config.dataset.version == version


@pytest.mark.parametrize("name", RECORDED)
def test_builder_folder_has_the_tfds_layout(name):
    folder = ROOT / "datasets" / name
    for file_name in (f"{name}_dataset_builder.py", "checksums.tsv", "README.md", "CITATIONS.bib", "__init__.py"):
        assert (folder / file_name).is_file(), f"{folder / file_name} is missing"
    assert (ROOT / "tests" / "datasets" / f"{name}_dataset_builder_test.py").is_file()
    assert (folder / "dummy_data").is_dir()  # (tests/datasets/make_dummy_data_test.py checks what it holds)
    builder = limubert_jax.datasets.BUILDERS[name]
    assert Path(builder.pkg_dir_path) == folder
    assert builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert {c.name for c in builder.BUILDER_CONFIGS} == {"20_120", "10_100"}


@pytest.mark.slow
@pytest.mark.parametrize("name", WITH_DUMMY_DATA)
def test_main_job_pretrains_on_the_dummy_data(name, tmp_path):
    config = config_lib.sibling_config(str(ROOT / "tests" / "configs" / "test.py"), "test").get_config()
    config = config_lib.with_dataset(config, name, "20_120")
    config.dataset.manual_dir = str(ROOT / "datasets" / name / "dummy_data")
    config.dataset.data_dir = str(tmp_path / "tfds")
    config.train.batch_size = 8
    config.train.eval_batch_size = 8
    config.train.num_epochs = 1
    summary = tasks.run(config, tmp_path / "work")
    assert summary["steps"] >= 1
    records = [json.loads(line) for line in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
    assert records and all(np.isfinite([r["train_loss"], r["val_loss"]]).all() for r in records)


@pytest.mark.slow
def test_main_job_pretrains_on_merged_datasets(tmp_path):
    """`name=a+b` with one manual_dir per dataset: 6 and 9 channels merge to 6."""
    config = config_lib.sibling_config(str(ROOT / "tests" / "configs" / "test.py"), "test").get_config()
    config = config_lib.with_dataset(config, "uci_hapt+shoaib", "20_120")
    config.dataset.manual_dir = "+".join(str(ROOT / "datasets" / n / "dummy_data") for n in ("uci_hapt", "shoaib"))
    config.dataset.data_dir = str(tmp_path / "tfds")
    config.train.update(batch_size=8, eval_batch_size=8, num_epochs=1)
    data = loading.load_data(config)
    parts = data.sources
    assert [p.num_features for p in parts] == [6, 9] and data.num_features == 6
    assert len(data.train) == sum(len(p.train) for p in parts)
    summary = tasks.run(config, tmp_path / "work")
    assert summary["steps"] == len(data.train) // 8


def test_prepare_command_builds_and_describes_a_dataset(tmp_path):
    """`python -m limubert_jax.prepare_data` with the main job's config and overrides."""
    result = subprocess.run(
        [sys.executable, "-m", "limubert_jax.prepare_data", f"--config={ROOT / 'configs' / 'uci.py'}",
         f"--config.dataset.manual_dir={ROOT / 'datasets' / 'uci_hapt' / 'dummy_data'}",
         f"--config.dataset.data_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "uci_hapt/20_120:" in result.stdout and "activity (6 classes)" in result.stdout
    assert "dataset_info.json" not in result.stderr  # TFDS's note on a first build, filtered out
    assert (tmp_path / "uci_hapt" / "20_120").is_dir()


def test_prepare_command_names_the_missing_raw_file(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "B_Accelerometer_data").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "limubert_jax.prepare_data", f"--config={ROOT / 'configs' / 'motion.py'}",
         f"--config.dataset.manual_dir={tmp_path / 'raw'}", f"--config.dataset.data_dir={tmp_path / 'tfds'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "C_Gyroscope_data" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "tfds").rglob("*.array_record*"))


# Any version the raw data can make: the builders that resample recordings build it with the
# reference procedure at that rate and window length.
@pytest.mark.parametrize("name, version, features", [("motionsense", "25_50", 6), ("uci_hapt", "50_100", 6),
                                                     ("wisdm", "10_40", 6), ("shoaib", "50_128", 9),
                                                     ("hhar", "25_60", 6)])
def test_any_version_the_raw_data_can_make(name, version, features, tmp_path):
    from limubert_jax.data import loading

    rate, steps = (int(part) for part in version.split("_"))
    data = loading.load_pretrain_data({"name": name, "version": version, "data_dir": str(tmp_path),
                                              "manual_dir": str(ROOT / "datasets" / name / "dummy_data")})
    assert (data.version, data.seq_len, data.num_features, data.sampling_rate_hz) == (version, steps, features, rate)
    assert data.num_windows > 0 and np.isfinite(data.train[0]).all()
    assert (tmp_path / name / version).is_dir()
    config = config_lib.sibling_config(str(ROOT / "tests" / "configs" / "test.py"), "test").get_config(version)
    assert trainer.model_config_from(config).seq_len == steps  # the model's window length follows the version


@pytest.mark.parametrize("name, version, message", [
    ("motionsense", "100_120", r"cannot make version 100_120: its raw data is sampled at 50 Hz, and 100 Hz would "
                               r"need up-sampling"),
    ("wisdm", "25_100", r"sampled at 20 Hz"),
    ("uci_hapt", "20_1", r"version '20_1': expected <rate Hz>_<window steps> .* at least 2 steps"),
    ("motionsense", "fast", r"version 'fast': expected <rate Hz>_<window steps>"),
    ("imu_npy", "50_200", r"dataset 'imu_npy' is built from your files: set config\.dataset\.manual_dir=DIR"),
    ("eleme", "50_200", r"dataset 'eleme' has no version '50_200'; versions: 20_120, 10_100"),  # reference arrays only
])
def test_a_version_that_cannot_be_made_is_one_line(name, version, message, tmp_path):
    from limubert_jax.data import loading

    with pytest.raises(ValueError, match=message) as error:
        loading.load_pretrain_data({"name": name, "version": version, "data_dir": str(tmp_path)})
    assert "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_version_without_any_window_names_the_raw_data(tmp_path):
    from limubert_jax.data import loading

    raw = ROOT / "datasets" / "hhar" / "dummy_data"
    with pytest.raises(ValueError, match=r"hhar/40_60: the raw data in .* makes no window of 60 steps at 40 Hz"):
        loading.load_pretrain_data({"name": "hhar", "version": "40_60", "data_dir": str(tmp_path),
                                           "manual_dir": str(raw)})
    assert not list(tmp_path.glob("hhar/40_60/*/*.array_record*"))  # nothing half-built
