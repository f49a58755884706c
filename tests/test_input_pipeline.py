"""limubert_jax.data.loading and .input_pipeline: the reference split, the training stream
(epochs, shuffling, determinism, resume, process sharding) and the padded validation pass.

The data is an imu_npy dataset whose window i carries i in imu[:, 0, 0], so every batch
can be traced back to the original window indices."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import grain
import ml_collections
import numpy as np
import pytest
from limubert_jax.datasets.imu_npy import imu_npy_dataset_builder as imu_npy

from limubert_jax.data import input_pipeline as ip
from limubert_jax.data import loading
from limubert_jax.data.splits import pretrain_split

N, S, F = 203, 120, 6  # 162 train windows, 20 vali
BATCH = 16  # 10 steps per epoch, 2 train windows dropped per epoch


def _config(data_dir: Path, npy_dir: Path | None, **overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        dict(name="imu_npy", version="20_120", data_dir=str(data_dir), manual_dir=None if npy_dir is None else str(npy_dir),
             seed=3431, train_rate=0.8, vali_rate=0.1)
    )  # fmt: skip
    config.update(overrides)
    return config


def _write_npy(directory: Path, n: int = N, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 3.0, (n, S, F)).astype(np.float32)
    data[:, 0, 0] = np.arange(n)
    label = np.zeros((n, S, 2))
    np.save(directory / "data_20_120.npy", data)
    np.save(directory / "label_20_120.npy", label)
    return directory


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    return root / "tfds", _write_npy(root / "npy")


@pytest.fixture(scope="module")
def data(dirs):
    return loading.load_pretrain_data(_config(*dirs))


def _ids(batch: np.ndarray) -> np.ndarray:
    return batch[:, 0, 0].astype(np.int64)


def _take(iterator, k: int) -> list[np.ndarray]:
    return list(itertools.islice(iterator, k))


def test_split_is_the_reference_split(data):
    train, vali, _ = pretrain_split(N, 3431, 0.8, 0.1)
    np.testing.assert_array_equal(data.train_index, train)
    np.testing.assert_array_equal(data.vali_index, vali)
    assert (data.num_windows, data.seq_len, data.num_features) == (N, S, F)
    assert data.sampling_rate_hz == 20.0
    assert data.feature_names == ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
    # The views read the original windows.
    assert data.train[5][0, 0] == train[5] and data.train[5].dtype == np.float32
    np.testing.assert_array_equal(_ids(data.vali.read(np.arange(len(vali)))), vali)


def test_split_follows_config(dirs):
    other = loading.load_pretrain_data(_config(*dirs, seed=7, train_rate=0.5, vali_rate=0.25))
    train, vali, _ = pretrain_split(N, 7, 0.5, 0.25)
    np.testing.assert_array_equal(other.train_index, train)
    np.testing.assert_array_equal(other.vali_index, vali)


def test_epochs_cover_train_once_in_new_orders(data):
    steps = ip.steps_per_epoch(data, BATCH)
    assert steps == len(data.train) // BATCH == 10
    batches = _take(ip.train_batches(data, global_batch_size=BATCH, seed=0), 3 * steps)
    assert all(b.shape == (BATCH, S, F) and b.dtype == np.float32 for b in batches)
    train = set(data.train_index.tolist())
    orders = []
    for epoch in range(3):
        ids = np.concatenate([_ids(b) for b in batches[epoch * steps : (epoch + 1) * steps]])
        assert len(ids) == steps * BATCH and len(set(ids.tolist())) == len(ids)  # no repeats
        assert set(ids.tolist()) <= train
        orders.append(ids)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    # The rows are the stored windows, not just their ids.
    np.testing.assert_array_equal(batches[0][3], data.train[int(np.flatnonzero(data.train_index == _ids(batches[0])[3])[0])])


def test_deterministic_and_seeded(data):
    a = _take(ip.train_batches(data, global_batch_size=BATCH, seed=5), 12)
    b = _take(ip.train_batches(data, global_batch_size=BATCH, seed=5, num_threads=0), 12)
    c = _take(ip.train_batches(data, global_batch_size=BATCH, seed=6), 12)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_windows_kept_in_memory_give_the_same_stream_and_are_read_once(dirs, monkeypatch):
    data = loading.load_pretrain_data(_config(*dirs, window_store=False))  # read from the records
    assert not data.train.in_store
    kept = _take(ip.train_batches(data, global_batch_size=BATCH, seed=3), 25)
    monkeypatch.setattr(ip, "KEEP_IN_MEMORY_BYTES", 0)  # every epoch read from the records
    read_through = _take(ip.train_batches(data, global_batch_size=BATCH, seed=3), 25)
    for x, y in zip(kept, read_through):
        np.testing.assert_array_equal(x, y)

    class CountingView:
        def __init__(self, view):
            self.view, self.rows_read = view, 0

        def __len__(self):
            return len(self.view)

        def read(self, rows):
            self.rows_read += len(rows)
            return self.view.read(rows)

    source = CountingView(data.train)
    view = ip.RowsKeptOnRead(source, limit_bytes=len(data.train) * S * F * 4)
    everything = np.arange(len(data.train))
    np.testing.assert_array_equal(view.read(everything[::-1]), data.train.read(everything[::-1]))
    np.testing.assert_array_equal(view.read(everything[:7]), data.train.read(everything[:7]))
    assert source.rows_read == len(data.train)  # the second read came from memory
    too_small = ip.RowsKeptOnRead(CountingView(data.train), limit_bytes=len(data.train) * S * F * 4 - 1)
    too_small.read(everything[:3])
    too_small.read(everything[:3])
    assert too_small.view.rows_read == 6 and not too_small.enabled  # read through once each, nothing kept


@pytest.mark.parametrize("start", [1, 9, 10, 23])
def test_resume_at_start_step(data, start):
    stream = _take(ip.train_batches(data, global_batch_size=BATCH, seed=1), start + 4)
    resumed = _take(ip.train_batches(data, global_batch_size=BATCH, seed=1, start_step=start), 4)
    for x, y in zip(stream[start:], resumed):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("count", [2, 4])
def test_process_shards_partition_each_global_batch(data, count):
    whole = _take(ip.train_batches(data, global_batch_size=BATCH, seed=2), 12)
    shards = [
        _take(
            ip.train_batches(
                data, global_batch_size=BATCH, seed=2, start_step=0,
                shard_options=grain.sharding.ShardOptions(shard_index=i, shard_count=count),
            ),
            12,
        )
        for i in range(count)
    ]  # fmt: skip
    for step, batch in enumerate(whole):
        parts = [shard[step] for shard in shards]
        assert all(p.shape == (BATCH // count, S, F) for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), batch)


def test_default_sharding_is_this_process(data):
    import jax

    assert jax.process_count() == 1
    default = _take(ip.train_batches(data, global_batch_size=BATCH, seed=3), 3)
    explicit = _take(
        ip.train_batches(data, global_batch_size=BATCH, seed=3, shard_options=grain.sharding.NoSharding()), 3
    )
    for x, y in zip(default, explicit):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("batch,count", [(8, 1), (7, 1), (64, 1), (8, 2), (8, 4)])
def test_eval_batches_pad_and_weight(data, batch, count):
    vali = data.vali_index
    expected_batches = -(-len(vali) // batch)
    assert ip.num_eval_batches(data, batch) == expected_batches
    per_shard = [
        list(
            ip.eval_batches(
                data, global_batch_size=batch,
                shard_options=grain.sharding.ShardOptions(shard_index=i, shard_count=count),
            )
        )
        for i in range(count)
    ]  # fmt: skip
    raws, weights = [], []
    for b in range(expected_batches):
        for shard in per_shard:
            raw, weight = shard[b]
            assert raw.shape == (batch // count, S, F) and raw.dtype == np.float32
            assert weight.shape == (batch // count,) and weight.dtype == np.float32
            raws.append(raw)
            weights.append(weight)
    assert all(len(shard) == expected_batches for shard in per_shard)
    raw, weight = np.concatenate(raws), np.concatenate(weights)
    assert raw.shape[0] == expected_batches * batch
    np.testing.assert_array_equal(weight, (np.arange(len(weight)) < len(vali)).astype(np.float32))
    np.testing.assert_array_equal(_ids(raw[: len(vali)]), vali)  # in split order
    assert not raw[len(vali) :].any()  # padding is zeros
    # A fresh pass each call.
    assert len(list(ip.eval_batches(data, global_batch_size=batch))) == expected_batches


def test_batch_errors(data):
    with pytest.raises(ValueError, match=r"larger than the training split .*162 windows"):
        ip.train_batches(data, global_batch_size=163, seed=0)
    with pytest.raises(ValueError, match="larger than the training split"):
        ip.steps_per_epoch(data, 1000)
    with pytest.raises(ValueError, match="not divisible by the 3 JAX processes"):
        ip.train_batches(
            data, global_batch_size=BATCH, seed=0,
            shard_options=grain.sharding.ShardOptions(shard_index=0, shard_count=3),
        )  # fmt: skip
    with pytest.raises(ValueError, match="not divisible"):
        ip.eval_batches(
            data, global_batch_size=BATCH, shard_options=grain.sharding.ShardOptions(shard_index=0, shard_count=3)
        )
    with pytest.raises(ValueError, match=">= 1"):
        ip.train_batches(data, global_batch_size=0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        ip.train_batches(data, global_batch_size=BATCH, seed=-1)
    with pytest.raises(ValueError, match="start_step"):
        ip.train_batches(data, global_batch_size=BATCH, seed=0, start_step=-1)


def test_load_errors(tmp_path, dirs):
    data_dir, npy_dir = dirs
    with pytest.raises(ValueError, match=r"unknown dataset 'hhar_typo'; registered IMU datasets: .*imu_npy.*synthetic_imu"):
        loading.load_pretrain_data(_config(data_dir, npy_dir, name="hhar_typo"))
    # Any version; the folder must hold its arrays.
    with pytest.raises(FileNotFoundError, match=r"imu_npy/50_120: missing data_50_120\.npy in .*npy \(.npy files "
                       r"there: data_20_120\.npy, label_20_120\.npy\)"):
        loading.load_pretrain_data(_config(data_dir, npy_dir, version="50_120"))
    with pytest.raises(ValueError, match=r"version '50_1': expected <rate Hz>_<window steps>"):
        loading.load_pretrain_data(_config(data_dir, npy_dir, version="50_1"))
    # imu_npy is the user's folder: without one, the error says how to give it.
    with pytest.raises(ValueError, match=r"dataset 'imu_npy' is built from your files: set config\.dataset\.manual_dir"):
        loading.load_pretrain_data(_config(tmp_path / "fresh", None))
    with pytest.raises(ValueError, match=r"config\.dataset\.split_by must be one of window, recording, user, device; got 'rec'"):
        loading.load_pretrain_data(_config(data_dir, npy_dir, split_by="rec"))
    # Too few windows for the reference split.
    with pytest.raises(ValueError, match="too small"):
        loading.load_pretrain_data(_config(tmp_path / "tiny_tfds", _write_npy(tmp_path / "tiny", n=5)))


def test_prepared_imu_npy_reused_and_stale_build_refused(tmp_path, dirs, data, monkeypatch):
    data_dir, npy_dir = dirs
    builds = lambda: sorted(p.name for p in (data_dir / "imu_npy").iterdir() if p.name[0] != ".")  # noqa: E731
    (built,) = builds()
    assert built.startswith("20_120-")  # keyed by the folder
    # Already built from this folder: read again, not rebuilt.
    info_file = data_dir / "imu_npy" / built / "1.0.0" / "dataset_info.json"
    stamp = info_file.stat().st_mtime_ns
    again = loading.load_pretrain_data(_config(data_dir, npy_dir))
    np.testing.assert_array_equal(again.train_index, data.train_index)
    assert info_file.stat().st_mtime_ns == stamp and builds() == [built]
    # Another folder of the same version: its own build beside the first; both stay readable.
    other = loading.load_pretrain_data(_config(data_dir, _write_npy(tmp_path / "other", n=50, seed=1)))
    assert other.num_windows == 50 and len(builds()) == 2
    assert loading.load_pretrain_data(_config(data_dir, npy_dir)).num_windows == N
    # Files whose size and modification time are the build's are not hashed again; a file
    # touched since is hashed, and the same content is accepted.
    with monkeypatch.context() as patched:
        patched.setattr(imu_npy, "sha256", lambda path: pytest.fail(f"{path} hashed again"))
        assert loading.load_pretrain_data(_config(data_dir, npy_dir)).num_windows == N
    hashed = []
    monkeypatch.setattr(imu_npy, "sha256", lambda path, real=imu_npy.sha256: hashed.append(path) or real(path))
    os.utime(npy_dir / "data_20_120.npy")
    assert loading.load_pretrain_data(_config(data_dir, npy_dir)).num_windows == N and len(hashed) == 1
    # The first folder's files changed since its build: refused, naming the folder and the fix.
    changed = _write_npy(tmp_path / "changed")
    loading.load_pretrain_data(_config(data_dir, changed))
    _write_npy(changed, seed=1)
    with pytest.raises(ValueError, match=r"was built from .*changed.*differs.*delete .* or use another data_dir"):
        loading.load_pretrain_data(_config(data_dir, changed))
    # A source that is not there is an error, never an earlier build.
    with pytest.raises(ValueError, match=r"manual directory .*does/not/exist does not exist"):
        loading.load_pretrain_data(_config(data_dir, tmp_path / "does" / "not" / "exist"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty does not exist or is empty; it must hold data_20_120\.npy"):
        loading.load_pretrain_data(_config(data_dir, tmp_path / "empty"))


def test_config_as_dict_and_defaults(dirs):
    data_dir, npy_dir = dirs
    loaded = loading.load_pretrain_data({"name": "imu_npy", "data_dir": str(data_dir), "manual_dir": str(npy_dir)})
    np.testing.assert_array_equal(loaded.train_index, pretrain_split(N)[0])  # version, seed, rates default


def _write_labelled_npy(directory: Path, users: np.ndarray, n_features: int = F) -> Path:
    """Windows whose imu[:, 0, 0] is their index, with a `user` label column."""
    directory.mkdir(parents=True, exist_ok=True)
    data = np.zeros((len(users), S, n_features), np.float32)
    data[:, 0, 0] = np.arange(len(users))
    label = np.zeros((len(users), S, 2))
    label[:, :, 1] = users[:, None]
    np.save(directory / "data_20_120.npy", data)
    np.save(directory / "label_20_120.npy", label)
    (directory / "label_columns.json").write_text('["activity", "user"]')
    return directory


def test_split_by_user_keeps_each_user_in_one_split(tmp_path):
    users = np.repeat(np.arange(8), [10, 12, 9, 11, 10, 14, 8, 6])
    npy = _write_labelled_npy(tmp_path / "npy", users)
    loaded = loading.load_pretrain_data(_config(tmp_path / "tfds", npy, split_by="user"))
    np.testing.assert_array_equal(loaded.groups, users)
    train_users, vali_users = set(users[loaded.train_index]), set(users[loaded.vali_index])
    assert train_users and vali_users and not train_users & vali_users
    # The views read the split's windows.
    np.testing.assert_array_equal(_ids(loaded.train.read(np.arange(len(loaded.train)))), loaded.train_index)
    # A dataset without user labels says so.
    with pytest.raises(ValueError, match=r"split_by='user': imu_npy/20_120 has no user labels"):
        loading.load_pretrain_data(_config(tmp_path / "tfds", _write_npy(tmp_path / "plain"), split_by="user"))
    with pytest.raises(ValueError, match=r"split_by='recording': imu_npy/20_120 does not record which recording"):
        loading.load_pretrain_data(_config(tmp_path / "tfds", npy, split_by="recording"))


def test_merged_datasets_concatenate_their_own_splits(tmp_path):
    a = _write_npy(tmp_path / "a", n=60)
    b = _write_labelled_npy(tmp_path / "b", np.arange(40) % 4, n_features=9)
    merged = loading.load_pretrain_data(_config(tmp_path / "tfds", None, name="imu_npy+imu_npy", manual_dir=f"{a}+{b}"))
    assert merged.name == "imu_npy+imu_npy" and len(merged.sources) == 2
    # Each dataset split as it is alone, window ids offset by the datasets before it.
    for part, n, offset in zip(merged.sources, (60, 40), (0, 60)):
        assert part.num_windows == n
        np.testing.assert_array_equal(part.train_index, pretrain_split(n)[0])
    np.testing.assert_array_equal(merged.train_index, np.concatenate([pretrain_split(60)[0], pretrain_split(40)[0] + 60]))
    assert (merged.num_windows, merged.num_features, len(merged.train)) == (100, F, 48 + 32)
    # Reads (batched, across both parts) give each part's windows, cut to the shared channels.
    rows = np.array([50, 2, 70, 47, 48])
    batch = merged.train.read(rows)
    assert batch.shape == (5, S, F)
    expected = [merged.sources[0].train[r] if r < 48 else merged.sources[1].train[r - 48][:, :F] for r in rows]
    np.testing.assert_array_equal(batch, np.stack(expected))
    np.testing.assert_array_equal(merged.train[70], expected[2])
    assert next(ip.train_batches(merged, global_batch_size=16, seed=0)).shape == (16, S, F)
    assert merged.source().num_windows == 60 and merged.source("imu_npy") is merged.sources[0]
    with pytest.raises(ValueError, match=r"config\.dataset\.manual_dir: 1 folders for the 2 datasets"):
        loading.load_pretrain_data(_config(tmp_path / "tfds", a, name="imu_npy+synthetic_imu"))
    with pytest.raises(ValueError, match=r"merge datasets as a\+b\+c"):
        loading.load_pretrain_data(_config(tmp_path / "tfds", None, name="imu_npy+"))
    with pytest.raises(ValueError, match=r"a dataset appears twice"):
        loading.load_pretrain_data(_config(tmp_path / "tfds", None, name="imu_npy+imu_npy", manual_dir=f"{a}+{a}"))


def test_synthetic_imu_end_to_end(tmp_path, monkeypatch):
    from limubert_jax.datasets.synthetic_imu import synthetic_imu_dataset_builder as synthetic

    monkeypatch.setattr(synthetic.Builder, "WINDOWS_PER_RECORDING", 3)  # 180 windows
    loaded = loading.load_pretrain_data(
        ml_collections.ConfigDict(dict(name="synthetic_imu", version="20_120", data_dir=str(tmp_path), manual_dir=None,
                                       seed=3431, train_rate=0.8, vali_rate=0.1))
    )  # fmt: skip
    assert (loaded.num_windows, loaded.seq_len, loaded.num_features) == (180, 120, 9)
    assert loaded.sampling_rate_hz == 20.0 and loaded.feature_names[-1] == "mag_z"
    np.testing.assert_array_equal(loaded.train_index, pretrain_split(180)[0])
    batch = next(ip.train_batches(loaded, global_batch_size=32, seed=0))
    assert batch.shape == (32, 120, 9) and np.isfinite(batch).all()


def test_recordings_build_per_folder_split_by_recording_and_refuse_a_changed_folder(tmp_path):
    from limubert_jax.datasets.recordings import example

    folder = tmp_path / "recordings"
    example.write_recordings(folder, num_recordings=4, seconds=60.0)
    config = _config(tmp_path / "tfds", folder, name="recordings", version="20_80", split_by="recording")
    data = loading.load_pretrain_data(config)
    meta = data.info.metadata
    assert data.seq_len == 80 and data.sampling_rate_hz == 20.0 and meta["label_columns"] == ["activity", "user"]
    recording = np.repeat(np.arange(4), [r["windows"] for r in meta["recordings"]])
    np.testing.assert_array_equal(data.groups, recording)
    assert not set(recording[data.train_index]) & set(recording[data.vali_index])
    # Options are part of the build's key: another stride is another build beside the first.
    overlapping = loading.load_pretrain_data(_config(tmp_path / "tfds", folder, name="recordings", version="20_80",
                                                stride=40))
    assert overlapping.num_windows > data.num_windows
    assert len([p for p in (tmp_path / "tfds" / "recordings").iterdir() if p.name[0] != "."]) == 2
    # A recording rewritten since the build: refused, never read from the old build.
    path = sorted(folder.glob("*.csv"))[0]
    path.write_text(path.read_text().replace("\n", "\r\n", 1))
    with pytest.raises(ValueError, match=r"recordings/20_80 in .* was built from .*recordings.*, and its recordings "
                                         r"have changed since .*; delete .* to rebuild it, or use another data_dir"):
        loading.load_pretrain_data(config)


def test_two_builds_of_one_new_folder_at_once_wait_for_each_other(tmp_path):
    """Two `prepare_data` of one new folder into one data_dir used to race (the second ended
    in a 50-line FileExistsError). Both wait here while this test holds the build's lock, then
    one builds and the other reuses its build."""
    import subprocess
    import sys
    import time

    from conftest import child_env
    from limubert_jax.datasets.recordings import example

    folder, data_dir = tmp_path / "recordings", tmp_path / "tfds"
    example.write_recordings(folder, num_recordings=2, seconds=20.0)
    config = _config(data_dir, folder, name="recordings", version="20_40")
    builder = loading._builder("recordings", "20_40", str(data_dir), str(folder), config)
    command = [sys.executable, "-m", "limubert_jax.prepare_data", "--config=recordings:20_40",
               f"--config.dataset.manual_dir={folder}", f"--config.dataset.data_dir={data_dir}"]
    logs = [tmp_path / f"stderr{i}.txt" for i in range(2)]
    with loading.build_lock(builder):
        children = [subprocess.Popen(command, cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                                     stderr=log.open("w"), text=True) for log in logs]
        # Both must be waiting on the lock before it is released (their logs say so).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and all(c.poll() is None for c in children):
            if all("waiting for another process building recordings/20_40-" in log.read_text() for log in logs):
                break
            time.sleep(0.2)
        assert all(c.poll() is None for c in children), [log.read_text()[-2000:] for log in logs]
    results = [c.communicate(timeout=120)[0] for c in children]
    for child, out, log in zip(children, results, logs):
        assert child.returncode == 0, log.read_text()[-2000:]
        assert "recordings/20_40: " in out and "windows" in out
    described = [out[out.index("recordings/20_40: "):] for out in results]
    assert described[0] == described[1]  # the same build described twice (one of them also built it)
    assert len([p for p in (data_dir / "recordings").iterdir() if not p.name.startswith(".")]) == 1
