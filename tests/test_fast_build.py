"""The bulk writer of the users' folder builders (`common.ChunkedSplitWriter`): its records are
TFDS's own bytes, a build equals TFDS's one-example-at-a-time build of the same folder (records,
dataset_info, metadata), the window store holds the records' windows, and a failed build leaves
nothing behind."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import limubert_jax.datasets  # noqa: F401  (registers the builders)
import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordReader
from limubert_jax.datasets import common, window_store
from limubert_jax.datasets.imu_npy import imu_npy_dataset_builder as imu_npy
from limubert_jax.datasets.recordings import example, reader
from limubert_jax.datasets.recordings import recordings_dataset_builder as recordings
from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.proto import tf_example_pb2

N, S, F = 45, 120, 6


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(common, "CHUNK_WINDOWS", 8)  # several chunks, and shards that end inside one


def _npy(directory: Path, label: np.ndarray | None, data_dtype=np.float64) -> Path:
    directory.mkdir(parents=True)
    data = np.random.default_rng(0).normal(0, 5, (N, S, F)).astype(data_dtype)
    data[:, 0, 0] = np.arange(N)  # the row order is visible
    np.save(directory / "data_20_120.npy", data)
    if label is not None:
        np.save(directory / "label_20_120.npy", label)
    return directory


def _build(name: str, config, data_dir: Path, manual_dir: Path | None = None, *, tfds_writer: bool = False,
           **download):
    """Builds `config` into data_dir, in bulk or (tfds_writer) through TFDS's own writer."""
    with pytest.MonkeyPatch.context() as patched:
        if tfds_writer:
            patched.setattr(common.ChunkedSplitWriter, "_bulk_unavailable", lambda *a: "TFDS's writer, to compare")
        builder = tfds.builder(name, config=config, data_dir=data_dir, file_format="array_record")
        builder.download_and_prepare(file_format="array_record", download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, **download))
    return builder


def _records(builder) -> list[bytes]:
    """The serialized examples of the build's shards, in order."""
    paths = sorted(Path(builder.data_dir).glob(f"{builder.name}-train.array_record-*"))
    assert len(paths) == len(builder.info.splits["train"].shard_lengths)
    out = []
    for path in paths:
        records = ArrayRecordReader(str(path))
        out += records.read_all()
        records.close()
    return out


def _decoded(builder) -> dict[str, np.ndarray]:
    source = builder.as_data_source(split="train")
    examples = source.__getitems__(list(range(len(source))))
    return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}


def _check_tfds_bytes(builder, examples: dict[str, np.ndarray]) -> None:
    """Each record is TFDS's serialization of the example (deterministic: map entries in key
    order; TFDS's own order varies from process to process), and parses to TFDS's proto."""
    features = builder.info.features
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    records = _records(builder)
    assert len(records) == len(next(iter(examples.values())))
    for i, record in enumerate(records):
        proto = serializer.get_tf_example(features.encode_example({k: v[i] for k, v in examples.items()}))
        assert record == proto.SerializeToString(deterministic=True), i
        assert tf_example_pb2.Example.FromString(record) == tf_example_pb2.Example.FromString(
            proto.SerializeToString()), i


def _check_same_build(fast, slow) -> None:
    """Two builds of one source: the same examples, split info and metadata."""
    assert [tf_example_pb2.Example.FromString(r) for r in _records(fast)] == [
        tf_example_pb2.Example.FromString(r) for r in _records(slow)]
    for name, split in (("fast", fast.info.splits["train"]), ("slow", slow.info.splits["train"])):
        assert split.num_examples == sum(split.shard_lengths), name
    a, b = fast.info.splits["train"], slow.info.splits["train"]
    assert (a.num_examples, a.shard_lengths, a.num_bytes) == (b.num_examples, b.shard_lengths, b.num_bytes)
    assert dict(fast.info.metadata) == dict(slow.info.metadata)
    assert list(fast.info.metadata) == list(slow.info.metadata)  # metadata.json in the same order
    assert fast.info.features.to_json() == slow.info.features.to_json()


def _check_store(builder, decoded: dict[str, np.ndarray]) -> None:
    store = window_store.open_store(builder.data_dir, len(decoded["imu"]), decoded["imu"].shape[1:])
    assert store is not None
    np.testing.assert_array_equal(store, decoded["imu"])


@pytest.mark.parametrize("labels", ["int", "float", "none"])
def test_imu_npy_records_are_tfds_bytes_and_the_build_is_tfds_build(tmp_path, labels):
    rng = np.random.default_rng(1)
    label = {"int": rng.integers(-1, 5, (N, S, 2)).astype(np.int32),
             "float": rng.integers(0, 3, (N, S, 1)).astype(np.float32), "none": None}[labels]
    npy = _npy(tmp_path / "npy", label)
    config = imu_npy.Builder.config_for("20_120", source_dir=npy)
    switch = sys.getswitchinterval()
    fast = _build("imu_npy", config, tmp_path / "fast", npy, num_shards=3)
    assert sys.getswitchinterval() == switch  # set for the build only
    slow = _build("imu_npy", config, tmp_path / "slow", npy, num_shards=3, tfds_writer=True)
    decoded = _decoded(fast)
    data = np.load(npy / "data_20_120.npy")
    expected_label = np.zeros((N, S, 0), np.int64) if label is None else np.rint(label).astype(np.int64)
    np.testing.assert_array_equal(decoded["imu"], data.astype(np.float32))
    np.testing.assert_array_equal(decoded["label"], expected_label)
    assert decoded["imu"].dtype == np.float32 and decoded["label"].dtype == np.int64
    _check_tfds_bytes(fast, {"imu": data.astype(np.float32), "label": expected_label})
    _check_same_build(fast, slow)
    _check_store(fast, decoded)
    assert fast.info.splits["train"].shard_lengths == [15, 15, 15]
    meta = fast.info.metadata
    assert meta["data_sha256"] == imu_npy.sha256(npy / "data_20_120.npy")
    assert meta["label_sha256"] == (None if label is None else imu_npy.sha256(npy / "label_20_120.npy"))
    assert meta["data_stat"] == imu_npy.file_stat(npy / "data_20_120.npy") and meta["num_windows"] == N


def test_recordings_records_are_tfds_bytes_and_the_build_is_tfds_build(tmp_path):
    folder = tmp_path / "recordings"
    example.write_recordings(folder, num_recordings=3, seconds=120.0)
    config = recordings.Builder.config_for("20_40", source_dir=folder, stride=13)
    fast = _build("recordings", config, tmp_path / "fast")
    slow = _build("recordings", config, tmp_path / "slow", tfds_writer=True)
    windows = list(reader.read_source(folder, 20, 40, stride=13).windows())
    expected = {"imu": np.stack([w[0] for w in windows]), "label": np.stack([w[1] for w in windows]),
                "recording": np.array([w[2] for w in windows], np.int64)}
    assert (expected["label"] == -1).any() and len(set(expected["recording"])) == 3  # windows across label changes
    decoded = _decoded(fast)
    for key, values in expected.items():
        np.testing.assert_array_equal(decoded[key], values, err_msg=key)
    _check_tfds_bytes(fast, expected)
    _check_same_build(fast, slow)
    _check_store(fast, decoded)
    assert fast.info.metadata["source_fingerprint"] == reader.fingerprint(folder)


def _windows_one_by_one(source) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """The recordings' windows cut one at a time, the rule written out: every `stride` steps of
    every segment, a label column the same known class at every step of the window, else -1."""
    windows = []
    for index, recording in enumerate(source.recordings):
        for imu, labels in recording.segments:
            for start in range(0, len(imu) - source.seq_len + 1, source.stride):
                y = labels[start : start + source.seq_len]
                keep = (y == y[0]).all(axis=0) & (y[0] >= 0)
                windows.append((imu[start : start + source.seq_len],
                                np.broadcast_to(np.where(keep, y[0], -1).astype(np.int64), y.shape), index))
    return windows


def test_recording_chunks_cut_the_windows_of_source_windows():
    """Labels missing (-1) or changing inside a window, segments too short for one, several chunks."""
    rng = np.random.default_rng(3)
    segments = []
    for length in (70, 9, 130, 40):
        labels = np.repeat(rng.integers(-1, 3, (length // 5 + 1, 2)), 5, axis=0)[:length].astype(np.int32)
        segments.append((rng.normal(size=(length, F)).astype(np.float32), labels))
    source = reader.Source("folder", 20, 10, 3, F, ["activity", "user"], {}, [
        reader.Recording("a.csv", 20.0, 2, segments[:2]), reader.Recording("b.csv", 20.0, 2, segments[2:])], {})
    for recording in source.recordings:
        recording.windows = sum(len(source.starts(len(imu))) for imu, _ in recording.segments)
    chunks = list(source.window_chunks(common.CHUNK_WINDOWS))
    assert len(chunks) > 2 and all(len(c["recording"]) >= common.CHUNK_WINDOWS for c in chunks[:-1])
    got = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
    windows = _windows_one_by_one(source)
    assert len(got["imu"]) == len(windows) == source.num_windows
    np.testing.assert_array_equal(got["imu"], np.stack([w[0] for w in windows]))
    np.testing.assert_array_equal(got["label"], np.stack([w[1] for w in windows]))
    np.testing.assert_array_equal(got["recording"], [w[2] for w in windows])
    assert (got["label"] == -1).any() and (got["label"] >= 0).any()
    # `Source.windows` is the same windows one by one.
    for (imu, label, index), (want_imu, want_label, want_index) in zip(source.windows(), windows, strict=True):
        np.testing.assert_array_equal(imu, want_imu)
        np.testing.assert_array_equal(label, want_label)
        assert index == want_index and label.dtype == np.int64 and label.flags.c_contiguous


def test_integers_of_every_varint_length_in_one_chunk_are_tfds_bytes():
    features = tfds.features.FeaturesDict({  # not in name order: records are
        "recording": tfds.features.Tensor(shape=(), dtype=np.int64),
        "imu": common.imu_feature(3, None, ""),
        "label": tfds.features.Tensor(shape=(3, None), dtype=np.int64, encoding=tfds.features.Encoding.BYTES),
    })
    rng = np.random.default_rng(2)
    values = np.array([0, 1, 127, 128, 127, 300, 16_383, 16_384, 2**31, 2**35, 2**62, 2**63 - 1, -1, -(2**63), 5, 5],
                      np.int64)
    chunk = {"imu": rng.normal(size=(len(values), 3, 2)).astype(np.float32),
             "label": rng.integers(-5, 5, (len(values), 3, 0)), "recording": values}
    encoder = common.ExampleEncoder(features)
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    for i, record in enumerate(encoder.encode(chunk)):
        proto = serializer.get_tf_example(features.encode_example({k: v[i] for k, v in chunk.items()}))
        assert record == proto.SerializeToString(deterministic=True), values[i]
    assert encoder.mismatch(features, chunk) is None
    with pytest.raises(ValueError, match=r"feature 'imu': a chunk of \(16, 3, 2\) float64, the feature holds "
                                         r"\(3, None\) float32"):
        encoder.encode({**chunk, "imu": chunk["imu"].astype(np.float64)})
    assert "ClassLabel" in common.ExampleEncoder.unsupported(tfds.features.FeaturesDict(
        {"activity": tfds.features.ClassLabel(num_classes=3)}))


def _leftovers(data_dir: Path) -> list[str]:
    """What is in data_dir but TFDS's bookkeeping, made before a build starts: its download
    manager's empty folders and the builder's default config (`imu_npy/.config`)."""
    tfds_own = {"downloads", "downloads/extracted", "imu_npy", "imu_npy/.config", "imu_npy/.config/metadata.json"}
    return sorted({p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")} - tfds_own)


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    npy = _npy(tmp_path / "npy", np.zeros((N, S, 1), np.int64))
    config = imu_npy.Builder.config_for("20_120", source_dir=npy)
    original = imu_npy.Builder._examples

    def failing(self, *args):  # the source fails after 3 chunks, some of them written
        examples = original(self, *args)

        def chunks():
            for i, chunk in enumerate(examples.chunks()):
                if i == 3:
                    assert list((tmp_path / "tfds").rglob(window_store.STORE_NAME))  # a partial store, and shards
                    assert list((tmp_path / "tfds").rglob("imu_npy-train.array_record-*"))
                    raise OSError("the disk holding the source went away")
                yield chunk

        return common.ExampleChunks(examples.num_examples, chunks, examples.finish)

    threads = threading.active_count()
    with monkeypatch.context() as patched:
        patched.setattr(imu_npy.Builder, "_examples", failing)
        with pytest.raises(OSError, match="the disk holding the source went away"):
            _build("imu_npy", config, tmp_path / "tfds", npy, num_shards=2)
    assert _leftovers(tmp_path / "tfds") == []  # no shards, no window store, no folders
    # The writer thread failing (a full disk) fails the build the same way.
    with monkeypatch.context() as patched:
        patched.setattr(common._ShardWriter, "_open_next", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError, match="disk full"):
            _build("imu_npy", config, tmp_path / "tfds", npy)
    assert _leftovers(tmp_path / "tfds") == []
    assert threading.active_count() == threads  # the writer threads ended
    # The announced count is checked.
    monkeypatch.setattr(imu_npy.Builder, "_examples", lambda self, *args: common.ExampleChunks(
        N + 1, original(self, *args).chunks))
    with pytest.raises(ValueError, match=rf"imu_npy/20_120-\w+: the source gave {N} examples, it announced {N + 1}"):
        _build("imu_npy", config, tmp_path / "tfds", npy)
    assert _leftovers(tmp_path / "tfds") == []


def test_builds_tfds_writes_itself_keep_their_metadata(tmp_path, monkeypatch):
    """A serializer that disagrees with TFDS's, or max_examples_per_split: TFDS writes the
    examples, from the same chunks, and the source's hashes are still recorded."""
    npy = _npy(tmp_path / "npy", np.ones((N, S, 1), np.float64))
    config = imu_npy.Builder.config_for("20_120", source_dir=npy)
    with monkeypatch.context() as patched:
        patched.setattr(common.ExampleEncoder, "mismatch", lambda *a: "its bytes differ (a test)")
        built = _build("imu_npy", config, tmp_path / "a", npy)
    np.testing.assert_array_equal(_decoded(built)["imu"], np.load(npy / "data_20_120.npy").astype(np.float32))
    assert built.info.metadata["data_sha256"] == imu_npy.sha256(npy / "data_20_120.npy")
    assert window_store.open_store(built.data_dir, N) is None  # written on first read instead
    capped = _build("imu_npy", config, tmp_path / "b", npy, max_examples_per_split=10)
    assert capped.info.splits["train"].num_examples == 10
    assert capped.info.metadata["label_sha256"] == imu_npy.sha256(npy / "label_20_120.npy")
