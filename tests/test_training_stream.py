"""The training stream read from the window store equals the grain pipeline that defined it,
batch for batch: every split kind (window, user, recording), merged datasets, process shards,
resumed starts and epoch boundaries; and the store itself (written once, equal to the records,
refused when it does not fit its build, skipped where it cannot be written).

The reference stream here is the one the project shipped before the store: grain's
`MapDataset.range(n).shuffle(seed).batch(B, drop_remainder=True).repeat()`, each batch's
rows read from the build's records."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import grain
import ml_collections
import numpy as np
import pytest
from limubert_jax.datasets import window_store

from limubert_jax.data import input_pipeline as ip
from limubert_jax.data import loading

S, F = 120, 6


def _npy(folder: Path, n: int, users: np.ndarray | None = None, features: int = F) -> Path:
    """Windows whose imu[:, 0, 0] is their index (the rest noise), with a `user` label column."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    data = rng.normal(0.0, 2.0, (n, S, features)).astype(np.float32)
    data[:, 0, 0] = np.arange(n)
    label = np.zeros((n, S, 2))
    label[:, :, 1] = (np.arange(n) % 7 if users is None else users)[:, None]
    np.save(folder / "data_20_120.npy", data)
    np.save(folder / "label_20_120.npy", label)
    (folder / "label_columns.json").write_text('["activity", "user"]')
    return folder


def _config(data_dir: Path, manual_dir, **overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(dict(name="imu_npy", version="20_120", data_dir=str(data_dir),
                                            manual_dir=None if manual_dir is None else str(manual_dir)))
    config.update(overrides)
    return config


def _grain_stream(data, *, batch: int, seed: int, start_step: int = 0, shard: tuple[int, int] = (0, 1)):
    """The stream as grain defines it, rows read from the records."""
    index, count = shard
    local = batch // count
    ds = grain.MapDataset.range(len(data.train)).shuffle(seed=seed).batch(batch, drop_remainder=True).repeat()
    if start_step:
        ds = ds.slice(slice(start_step, None))
    ds = ds.map(lambda rows: data.train.read(rows[index * local : (index + 1) * local]))
    return (ds[i] for i in itertools.count())


def _same_stream(store_data, records_data, *, batch: int, seed: int, steps: int, start_step: int = 0,
                 shard: tuple[int, int] = (0, 1)) -> None:
    options = grain.sharding.ShardOptions(shard_index=shard[0], shard_count=shard[1])
    fast = ip.train_batches(store_data, global_batch_size=batch, seed=seed, start_step=start_step,
                            shard_options=options)
    reference = _grain_stream(records_data, batch=batch, seed=seed, start_step=start_step, shard=shard)
    for step, (got, want) in enumerate(itertools.islice(zip(fast, reference), steps)):
        assert got.shape == want.shape == (batch // shard[1], store_data.seq_len, store_data.num_features)
        np.testing.assert_array_equal(got, want, err_msg=f"step {start_step + step}")


@pytest.fixture(scope="module")
def window_split(tmp_path_factory):
    """(from the store, from the records) of one imu_npy build: 203 windows, 162 for training."""
    root = tmp_path_factory.mktemp("stream")
    npy = _npy(root / "npy", 203)
    store = loading.load_pretrain_data(_config(root / "tfds", npy))
    records = loading.load_pretrain_data(_config(root / "tfds", npy, window_store=False))
    assert store.train.in_store and not records.train.in_store
    return store, records


@pytest.mark.parametrize("start_step, shard", [(0, (0, 1)), (17, (0, 1)), (3, (1, 2)), (29, (3, 4))])
def test_the_stream_is_graines_batch_for_batch(window_split, start_step, shard):
    # 10 steps per epoch (batch 16, 2 windows dropped): 25 steps cross two or three epochs.
    _same_stream(*window_split, batch=16, seed=5, steps=25, start_step=start_step, shard=shard)


def test_blocks_and_threads_do_not_change_the_stream(window_split, monkeypatch):
    store, records = window_split
    monkeypatch.setattr(ip, "BLOCK_BYTES", 3 * 8 * S * F * 4)  # 3 steps per read: reads end mid-epoch
    _same_stream(store, records, batch=8, seed=2**32 - 1, steps=45)  # the seed wraps at the epoch boundary
    single = ip.train_batches(store, global_batch_size=8, seed=9, num_threads=0)
    threaded = ip.train_batches(store, global_batch_size=8, seed=9, num_threads=2, prefetch=3)
    for a, b in itertools.islice(zip(single, threaded), 45):
        np.testing.assert_array_equal(a, b)


def test_the_store_holds_the_records_windows_and_is_written_once(window_split):
    store, records = window_split
    for split in ("train", "vali"):
        rows = np.arange(len(getattr(store, split)))
        np.testing.assert_array_equal(getattr(store, split).read(rows), getattr(records, split).read(rows))
    path = Path(store.train.store.filename)
    assert path.name == window_store.STORE_NAME and (path.parent / "dataset_info.json").is_file()  # in the build
    before = os.stat(path).st_mtime_ns
    again = loading.load_pretrain_data(_config(store.data_dir, store.info.metadata["source_dir"]))
    assert again.train.in_store and os.stat(path).st_mtime_ns == before


def test_user_and_recording_splits_and_merged_datasets_stream_as_grain(tmp_path):
    users = np.repeat(np.arange(8), [20, 24, 18, 22, 20, 28, 16, 12])
    npy = _npy(tmp_path / "users", len(users), users)
    by_user = [loading.load_pretrain_data(_config(tmp_path / "tfds", npy, split_by="user", window_store=on))
               for on in (True, False)]
    _same_stream(*by_user, batch=8, seed=1, steps=30, start_step=4, shard=(1, 2))

    from limubert_jax.datasets.recordings import example

    folder = tmp_path / "recordings"
    example.write_recordings(folder, num_recordings=3, seconds=40.0)
    by_recording = [loading.load_pretrain_data(_config(tmp_path / "tfds", folder, name="recordings", version="20_40",
                                                       split_by="recording", window_store=on)) for on in (True, False)]
    assert by_recording[0].train.in_store
    _same_stream(*by_recording, batch=4, seed=3, steps=30)

    other = _npy(tmp_path / "nine", 70, features=9)
    merged = [loading.load_pretrain_data(_config(tmp_path / "tfds", f"{npy}+{other}", name="imu_npy+imu_npy",
                                                 window_store=on)) for on in (True, False)]
    assert merged[0].train.in_store and not merged[1].train.in_store
    _same_stream(*merged, batch=12, seed=0, steps=40, start_step=7, shard=(2, 3))


def test_a_store_that_does_not_fit_its_build_is_refused(tmp_path):
    npy = _npy(tmp_path / "npy", 40)
    data = loading.load_pretrain_data(_config(tmp_path / "tfds", npy))
    path = Path(data.train.store.filename)
    np.save(path, np.zeros((39, S, F), np.float32))
    with pytest.raises(ValueError, match=rf"{path}: a store of \(39, 120, 6\) float32 windows, the build holds 40 "
                                         r"windows of \(120, 6\) float32; delete it to have it written again"):
        loading.load_pretrain_data(_config(tmp_path / "tfds", npy))
    np.save(path, np.zeros((40, S, F), np.float32))
    with pytest.raises(ValueError, match=rf"{path} does not hold the windows of its build; delete it"):
        loading.load_pretrain_data(_config(tmp_path / "tfds", npy))
    path.unlink()  # deleted: written again from the records
    again = loading.load_pretrain_data(_config(tmp_path / "tfds", npy))
    records = loading.load_pretrain_data(_config(tmp_path / "tfds", npy, window_store=False))
    np.testing.assert_array_equal(again.train.read(np.arange(len(again.train))),
                                  records.train.read(np.arange(len(records.train))))


def test_a_folder_that_cannot_take_the_store_reads_the_records(tmp_path, monkeypatch):
    npy = _npy(tmp_path / "npy", 40)
    first = loading.load_pretrain_data(_config(tmp_path / "tfds", npy))
    Path(first.train.store.filename).unlink()

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(window_store, "write_from_records", read_only)
    data = loading.load_pretrain_data(_config(tmp_path / "tfds", npy))
    assert not data.train.in_store
    assert not any(p.name.startswith(".") or "windows" in p.name for p in Path(first.train.store.filename).parent.iterdir())
    np.testing.assert_array_equal(next(ip.train_batches(data, global_batch_size=8, seed=0)),
                                  next(ip.train_batches(first, global_batch_size=8, seed=0)))


def test_a_split_by_device_keeps_each_phone_model_in_one_split(tmp_path):
    """`split_by='device'` groups by HHAR's `device_model` (its dummy raw files: four models)."""
    dummy = Path(__file__).resolve().parents[1] / "datasets" / "hhar" / "dummy_data"
    data = loading.load_pretrain_data(_config(tmp_path / "tfds", dummy, name="hhar", split_by="device"))
    records = [r for batch in loading.records_in_batches(data.train.source) for r in batch]
    np.testing.assert_array_equal(data.groups, [int(r["device_model"]) for r in records])
    train, vali = set(data.groups[data.train_index]), set(data.groups[data.vali_index])
    assert train and vali and not train & vali
    with pytest.raises(ValueError, match=r"split_by='device': imu_npy/20_120 has no device labels \(a `device_model` "
                                         r"task\); split by user or window"):
        loading.load_pretrain_data(_config(tmp_path / "tfds", _npy(tmp_path / "npy", 30), split_by="device"))
