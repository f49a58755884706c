"""Datasets from disk to split windows: the TFDS builder of `config.dataset` prepared when
needed (array_record, no TensorFlow; one build at a time per data_dir, `build_lock`; a build
from the user's files refused once they have changed), its `train` split opened as a data
source (random access) and cut with the reference split (`limubert_jax.data.splits`, seed
3431, 80/10/10) into random-access `train` and `vali` views of the raw `imu` windows
(`WindowView`; `MergedView` for merged datasets 'a+b').

`load_pretrain_data(config.dataset)` returns them as a `PretrainData`; `load_data(config)` is
the same for a run's config, its errors one `LimuBertError`. Batches are cut from the views by
`limubert_jax.data.input_pipeline`. Windows stay raw (physical units).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from etils import epath

from limubert_jax.data import splits
from limubert_jax.runtime.errors import LimuBertError

SPLIT = "train"  # every builder keeps all windows in one split, in source order
FEATURE = "imu"
DEFAULT_VERSION = "20_120"


READ_ROWS = 4096  # records read at once by a pass over a whole data source (`records_in_batches`)


def read_records(source: Sequence, keys: Sequence[int]) -> list:
    """Records `keys` of a data source: one batched lookup where it has one (array_record's
    `__getitems__`), else one by one."""
    getitems = getattr(source, "__getitems__", None)
    return getitems(keys) if getitems is not None else [source[k] for k in keys]


def records_in_batches(source: Sequence, rows: int = READ_ROWS) -> Iterator[list]:
    """Every record of a data source, in order, `rows` at a time (batched reads, bounded memory)."""
    for start in range(0, len(source), rows):
        yield read_records(source, list(range(start, min(start + rows, len(source)))))


class WindowView(Sequence):
    """Random access to one feature of selected examples of a data source.

    `view[i]` is feature `feature` of example `indices[i]` of `source`; `view.read(rows)`
    reads several at once into one stacked float32 array. With `store` (the build's window
    store, [N, S, F] float32 memory-mapped: `window_store`), the `imu` windows are gathered
    from it instead of decoded from their records: the same values, at memory speed.
    """

    def __init__(self, source: Sequence, indices: np.ndarray, feature: str = FEATURE, store: np.ndarray | None = None):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.feature = feature
        self.store = store if feature == FEATURE else None

    @property
    def in_store(self) -> bool:
        """Whether reads gather from a window store (rather than decode records)."""
        return self.store is not None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int) -> np.ndarray:
        if self.store is not None:
            return np.array(self.store[self.indices[i]])
        return np.asarray(self.source[int(self.indices[i])][self.feature], dtype=np.float32)

    def read(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows `rows` of this view, stacked: [len(rows), S, F] float32."""
        keys = self.indices[np.asarray(rows, dtype=np.int64)]
        if self.store is not None:
            return self.store[keys]  # fancy indexing: a copy in memory, never a view of the file
        records = read_records(self.source, [int(k) for k in keys])
        return np.stack([np.asarray(r[self.feature], dtype=np.float32) for r in records])

    def __repr__(self) -> str:
        return f"WindowView({len(self)} windows, feature={self.feature!r}{', from its store' if self.in_store else ''})"


class MergedView(Sequence):
    """Several `WindowView`s one after the other, each cut to its first `num_features`
    channels (merged pretraining); `indices` are positions in the merged dataset."""

    def __init__(self, parts: Sequence[WindowView], offsets: Sequence[int], num_features: int):
        self.parts, self.num_features = list(parts), int(num_features)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])  # row where each part begins
        self.indices = np.concatenate([p.indices + o for p, o in zip(self.parts, offsets)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def in_store(self) -> bool:
        return all(p.in_store for p in self.parts)

    def __getitem__(self, i: int) -> np.ndarray:
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[part][int(i) - int(self.starts[part])][:, : self.num_features]

    def read(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        out = None
        for p in np.unique(part):  # one batched read per part, rows put back in order
            where = np.flatnonzero(part == p)
            block = self.parts[p].read(rows[where] - self.starts[p])[..., : self.num_features]
            if out is None:
                out = np.empty((len(rows), *block.shape[1:]), np.float32)
            out[where] = block
        return out

    def __repr__(self) -> str:
        return f"MergedView({len(self)} windows from {len(self.parts)} datasets, {self.num_features} features)"


@dataclasses.dataclass(frozen=True)
class PretrainData:
    """The pretraining data of one dataset version, split as the reference splits it.

    train / vali: random-access views of the raw `imu` windows of the reference train and
    validation splits (`train.indices` / `vali.indices` are the original window indices, in
    split order). info: the TFDS `DatasetInfo` (metadata: sampling rate, feature names, ...).
    """

    name: str
    version: str
    train: WindowView
    vali: WindowView
    num_windows: int
    seq_len: int
    num_features: int
    sampling_rate_hz: float | None
    feature_names: tuple[str, ...] | None
    info: Any
    data_dir: str | None = None
    # Split groups, one id per window (config.dataset.split_by 'recording' / 'user'); None: by window.
    groups: np.ndarray | None = None
    split_by: str = "window"
    # Merged pretraining (name 'a+b'): the datasets, each loaded and split as it is alone.
    sources: tuple[PretrainData, ...] = ()

    @property
    def train_index(self) -> np.ndarray:
        return self.train.indices

    def source(self, name: str | None = None) -> PretrainData:
        """One dataset of a merged one, by name (None: the first); this one if not merged."""
        if not self.sources:
            if name not in (None, self.name):
                raise ValueError(f"config.downstream.dataset={name!r}, but the dataset is {self.name!r} "
                                 f"(a choice among merged datasets a+b)")
            return self
        names = [s.name for s in self.sources]
        if name is None:
            return self.sources[0]
        if name not in names:
            raise ValueError(f"config.downstream.dataset={name!r} is not one of the merged datasets "
                             f"{', '.join(names)}")
        return self.sources[names.index(name)]

    @property
    def vali_index(self) -> np.ndarray:
        return self.vali.indices


def _field(config: Any, name: str, default: Any = None) -> Any:
    """config.name for a ConfigDict, dict or attribute object; `default` if absent or None."""
    if isinstance(config, dict) or hasattr(config, "get"):
        value = config.get(name, default)
    else:
        value = getattr(config, name, default)
    return default if value is None else value


def registered_datasets() -> list[str]:
    """Names of the IMU dataset builders (`limubert_jax.datasets`), sorted."""
    import limubert_jax.datasets  # registers the builders with TFDS  # noqa: PLC0415

    return limubert_jax.datasets.registered_names()


def _builder(name: str, version: str, data_dir: str | None, manual_dir: str | None = None, dataset_config: Any = None):
    import tensorflow_datasets as tfds  # noqa: PLC0415

    import limubert_jax.datasets  # noqa: PLC0415
    from limubert_jax.datasets import common  # noqa: PLC0415

    builders = limubert_jax.datasets.BUILDERS
    if name not in builders:
        raise ValueError(
            f"unknown dataset {name!r}; registered IMU datasets: {', '.join(sorted(builders))}"
        )
    builder_cls = builders[name]
    if issubclass(builder_cls, common.UserFolderBuilder) and builder_cls.KEYED_BY_SOURCE:
        if manual_dir is None:
            raise ValueError(f"dataset {name!r} is built from your files: set config.dataset.manual_dir=DIR "
                             f"(see datasets/{name}/README.md)")
        options = {k: _field(dataset_config or {}, k, default) for k, default in builder_cls.SOURCE_OPTIONS.items()}
        config = builder_cls.config_for(version, source_dir=manual_dir, **options)
        return tfds.builder(name, config=config, data_dir=data_dir, file_format="array_record")
    versions = [c.name for c in (builder_cls.BUILDER_CONFIGS or [])]
    if versions and version not in versions:
        if issubclass(builder_cls, common.ImuBuilder):  # any <rate>_<steps> its raw data can make
            return tfds.builder(name, config=builder_cls.config_for(version), data_dir=data_dir,
                                file_format="array_record")
        raise ValueError(
            f"dataset {name!r} has no version {version!r}; versions: {', '.join(versions)}"
        )
    return tfds.builder(f"{name}/{version}", data_dir=data_dir, file_format="array_record")


# Seconds between the log lines of a build waiting for another one.
BUILD_WAIT_LOG_S = 30.0


@contextlib.contextmanager
def build_lock(builder) -> Iterator[None]:
    """Held while `builder`'s version is built in its data_dir, so that two builds of it at
    once (two `prepare_data`, two main jobs on one new folder) do not race: TFDS would let
    the second fail on the first's folders. The lock is a file in the data_dir's top folder,
    outside the build, so a failed build leaves nothing in its own folder; the operating
    system releases it when its holder dies. Object-store data_dirs have no such lock."""
    root = os.fspath(builder.data_dir_root)
    if "://" in root:
        yield
        return
    import filelock  # noqa: PLC0415
    from absl import logging  # noqa: PLC0415

    name = builder.info.full_name.replace("/", "-")
    os.makedirs(root, exist_ok=True)
    lock = filelock.FileLock(os.path.join(root, f".{name}.build-lock"))
    start, timeout = time.monotonic(), 0.0
    while True:
        try:
            lock.acquire(timeout=timeout)
            break
        except filelock.Timeout:
            logging.info("waiting for another process building %s in %s (%.0f s so far)", builder.info.full_name,
                         root, time.monotonic() - start)
            timeout = BUILD_WAIT_LOG_S
    try:
        yield
    finally:
        lock.release()


def _prepare(builder, manual_dir: str | None, rebuild: Callable[[], Any]):
    """download_and_prepare (array_record) unless already prepared; process 0 goes first.
    Returns the builder to read: `rebuild()`'s when another process built the data meanwhile
    (a builder made before the data existed does not hold its recorded metadata)."""
    import jax  # noqa: PLC0415
    import tensorflow_datasets as tfds  # noqa: PLC0415

    def prepare():
        nonlocal builder
        if builder.is_prepared():
            return
        with build_lock(builder):
            if builder.is_prepared():  # built by the process this one waited for
                builder = rebuild()
                return
            # Without manual_dir a manual-files builder looks in TFDS's default
            # <data_dir>/downloads/manual and names what is missing.
            download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
            builder.download_and_prepare(file_format="array_record", download_config=download_config)

    if jax.process_count() == 1:
        prepare()
        return builder
    # With a shared data_dir only process 0 writes; with per-host disks every host must.
    from jax.experimental import multihost_utils  # noqa: PLC0415

    if jax.process_index() == 0:
        prepare()
    multihost_utils.sync_global_devices(f"limubert_jax.data.loading.prepare:{builder.name}")
    if jax.process_index() != 0:
        prepare()
    return builder


SPLIT_BY = ("window", "recording", "user", "device")  # config.dataset.split_by
# The label whose values are the groups of split_by 'user' / 'device' (a ClassLabel task, or a
# column of the npy layout's `label`): the person, or the phone or watch model (HHAR's).
GROUP_LABELS = {"user": "user", "device": "device_model"}


def load_pretrain_data(dataset_config: Any) -> PretrainData:
    """Prepares (if needed) and opens a dataset version, split as the reference splits it.

    dataset_config (an ml_collections ConfigDict, a dict or any object with attributes):
    `name` (TFDS builder; 'a+b' merges datasets), `version` ('20_120'), `data_dir` (None:
    TFDS's default), `manual_dir` (TFDS manual directory: raw files or archives, or the user's
    folder for imu_npy / recordings; 'dir_a+dir_b' for merged datasets), `seed` (3431),
    `train_rate` (0.8), `vali_rate` (0.1), `split_by` ('window'; 'recording' or 'user': no
    group in two splits) and the source options of imu_npy / recordings (`stride`, ...).
    Raises ValueError for an unknown dataset or version, a user-folder dataset without
    `manual_dir`, a stale imu_npy build, or too few windows (or groups) to split.
    """
    name = _field(dataset_config, "name")
    if not name:
        raise ValueError(f"config.dataset.name is not set; registered IMU datasets: {registered_datasets()}")
    if "+" in name:
        return _load_merged(dataset_config, name)
    version = str(_field(dataset_config, "version", DEFAULT_VERSION))
    data_dir = _field(dataset_config, "data_dir")
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    manual_dir = _field(dataset_config, "manual_dir")
    manual_dir = os.fspath(manual_dir) if manual_dir is not None else None
    seed = int(_field(dataset_config, "seed", splits.REFERENCE_SEED))
    train_rate = float(_field(dataset_config, "train_rate", splits.TRAIN_RATE))
    vali_rate = float(_field(dataset_config, "vali_rate", splits.VALI_RATE))
    split_by = str(_field(dataset_config, "split_by", "window"))
    if split_by not in SPLIT_BY:
        raise ValueError(f"config.dataset.split_by must be one of {', '.join(SPLIT_BY)}; got {split_by!r}")

    if manual_dir is not None and not epath.Path(manual_dir).expanduser().is_dir():
        raise ValueError(f"the manual directory {manual_dir} does not exist (config.dataset.manual_dir)")
    builder = _builder(name, version, data_dir, manual_dir, dataset_config)
    if manual_dir is not None and builder.is_prepared():
        from limubert_jax.datasets import common  # noqa: PLC0415

        if isinstance(builder, common.UserFolderBuilder):  # built from the user's files: still those?
            builder.check_current(manual_dir)
    builder = _prepare(builder, manual_dir, lambda: _builder(name, version, data_dir, manual_dir, dataset_config))
    file_format = getattr(builder.info, "file_format", None)
    if file_format is not None and getattr(file_format, "value", file_format) != "array_record":
        raise ValueError(
            f"{name}/{version} in {builder.data_dir} was prepared as {file_format}, not array_record; "
            "delete it to rebuild it, or use another data_dir"
        )
    source = builder.as_data_source(split=SPLIT)
    info = getattr(source, "dataset_info", builder.info)
    num_windows = len(source)
    groups = split_groups(source, info, split_by, f"{name}/{version}")
    train_index, vali_index, _ = splits.window_split(num_windows, seed, train_rate, vali_rate, groups)
    first = WindowView(source, train_index)[0]  # from its record
    if first.ndim != 2:
        raise ValueError(f"{name}/{version}: `{FEATURE}` must be (S, F) per window, got {first.shape}")
    store = _window_store(builder, source, first, train_index[0], bool(_field(dataset_config, "window_store", True)))
    train = WindowView(source, train_index, store=store)
    meta = dict(info.metadata or {})
    rate = meta.get("sampling_rate_hz", getattr(builder.builder_config, "sampling_rate", None))
    names = meta.get("feature_names")
    return PretrainData(
        name=name,
        version=version,
        train=train,
        vali=WindowView(source, vali_index, store=store),
        num_windows=num_windows,
        seq_len=int(first.shape[0]),
        num_features=int(first.shape[1]),
        sampling_rate_hz=None if rate is None else float(rate),
        feature_names=None if names is None else tuple(names),
        info=info,
        data_dir=data_dir,
        groups=groups,
        split_by=split_by,
    )


def _window_store(builder, source: Sequence, first: np.ndarray, first_key: int, enabled: bool) -> np.ndarray | None:
    """The build's window store (`window_store`), memory-mapped: written from the records the
    first time a build without one is opened (one pass; one process at a time, `build_lock`).
    None where it is turned off (`config.dataset.window_store=False`), the build is not on a
    local disk, or its folder cannot be written (a log line says so): reads then decode the
    records. A store that disagrees with its build is a ValueError naming it."""
    from absl import logging  # noqa: PLC0415

    from limubert_jax.datasets import window_store  # noqa: PLC0415

    build_dir = os.fspath(builder.data_dir)
    if not enabled or "://" in build_dir:
        return None
    store = window_store.open_store(build_dir, len(source), first.shape)
    if store is None:
        with build_lock(builder):
            store = window_store.open_store(build_dir, len(source), first.shape)  # written meanwhile?
            if store is None:
                logging.info("writing the window store of %s (%d windows, once)", build_dir, len(source))
                try:
                    window_store.write_from_records(records_in_batches(source), build_dir, len(source),
                                                    log=logging.info)
                except (LimuBertError, OSError) as e:
                    logging.warning("no window store for %s (%s): reading its records instead, more slowly",
                                    build_dir, e)
                    return None
                store = window_store.open_store(build_dir, len(source), first.shape)
    if not np.array_equal(store[first_key], first):
        raise ValueError(f"{window_store.store_path(build_dir)} does not hold the windows of its build; delete it "
                         f"to have it written again")
    return store


def split_groups(source: Sequence, info: Any, split_by: str, what: str) -> np.ndarray | None:
    """One split-group id per window for `split_by` 'recording', 'user' or 'device' (None for
    'window').

    Recordings come from the builder's metadata (`recordings`: windows per recording, in
    order); users and devices from the `user` / `device_model` task (`GROUP_LABELS`: a
    ClassLabel, or a column of that name in the npy layout's `label`), one pass over the
    windows. ValueError when the dataset has no such ids.
    """
    if split_by == "window":
        return None
    meta = dict(info.metadata or {})
    if split_by == "recording":
        recordings = meta.get("recordings")
        if not recordings:
            raise ValueError(f"config.dataset.split_by='recording': {what} does not record which recording each "
                             f"window comes from (the recordings builder does); split by 'user' or 'window'")
        groups = np.repeat(np.arange(len(recordings)), [int(r["windows"]) for r in recordings])
        if len(groups) != len(source):
            raise ValueError(f"{what}: its metadata lists {len(groups)} windows in recordings, the data has "
                             f"{len(source)}; delete the build to rebuild it")
        return groups
    columns = [str(c) for c in meta.get("label_columns") or ()]
    label = GROUP_LABELS[split_by]
    if label in info.features:
        group = lambda records: [int(r[label]) for r in records]  # noqa: E731
    elif label in columns:
        column = columns.index(label)
        group = lambda records: [int(np.asarray(r["label"])[0, column]) for r in records]  # noqa: E731
    else:
        others = [by for by, name in GROUP_LABELS.items() if name in info.features or name in columns]
        others += ["recording"] if meta.get("recordings") else []
        raise ValueError(f"config.dataset.split_by='{split_by}': {what} has no {split_by} labels (a `{label}` task); "
                         f"split by {' or '.join(others + ['window'])}")
    groups = np.asarray([g for records in records_in_batches(source) for g in group(records)], np.int64)
    if (groups < 0).any():
        raise ValueError(f"config.dataset.split_by='{split_by}': {np.count_nonzero(groups < 0)} windows of {what} "
                         f"have no {split_by} label")
    return groups


def _load_merged(dataset_config: Any, name: str) -> PretrainData:
    """Merged pretraining: every dataset of 'a+b+...' loaded and split as it is alone, the
    training and validation windows concatenated, cut to the channels they all have."""
    names = name.split("+")
    if not all(names):
        raise ValueError(f"config.dataset.name={name!r}: merge datasets as a+b+c")
    config = _as_dict(dataset_config)
    manual = config.get("manual_dir")
    manual_dirs = [None] * len(names) if manual is None else [m or None for m in os.fspath(manual).split("+")]
    if len(manual_dirs) != len(names):
        raise ValueError(f"config.dataset.manual_dir: {len(manual_dirs)} folders for the {len(names)} datasets of "
                         f"{name} (give one per dataset, joined by '+', empty for a dataset's default)")
    if len(set(zip(names, manual_dirs))) != len(names):
        raise ValueError(f"config.dataset.name={name!r}: a dataset appears twice (with the same manual_dir)")
    parts = []
    for part_name, part_manual in zip(names, manual_dirs):
        try:
            parts.append(load_pretrain_data({**config, "name": part_name, "manual_dir": part_manual}))
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"{part_name} (of {name}): {e}") from None
    for part in parts[1:]:
        if (part.seq_len, part.sampling_rate_hz) != (parts[0].seq_len, parts[0].sampling_rate_hz):
            raise ValueError(f"{name}: {part.name} has {part.seq_len}-step windows at {part.sampling_rate_hz:g} Hz, "
                             f"{parts[0].name} {parts[0].seq_len} at {parts[0].sampling_rate_hz:g} Hz")
    num_features = min(p.num_features for p in parts)
    offsets = np.cumsum([0] + [p.num_windows for p in parts])[:-1]
    first = parts[0]
    return PretrainData(
        name=name,
        version=first.version,
        train=MergedView([p.train for p in parts], offsets, num_features),
        vali=MergedView([p.vali for p in parts], offsets, num_features),
        num_windows=sum(p.num_windows for p in parts),
        seq_len=first.seq_len,
        num_features=num_features,
        sampling_rate_hz=first.sampling_rate_hz,
        feature_names=None if first.feature_names is None else first.feature_names[:num_features],
        info=first.info,
        data_dir=first.data_dir,
        sources=tuple(parts),
    )


def _as_dict(config: Any) -> dict:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, dict):
        return dict(config)
    return dict(vars(config))


def load_data(config: Any) -> PretrainData:
    """The dataset of a run's `config.dataset`, prepared on first use; a missing or bad
    dataset is a `LimuBertError` naming the dataset and what is wrong."""
    try:
        return load_pretrain_data(config.dataset)
    except (ValueError, FileNotFoundError) as e:
        raise LimuBertError(f"config.dataset ({config.dataset.name}/{config.dataset.version}): {e}") from None
