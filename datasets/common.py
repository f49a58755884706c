"""Pieces shared by the IMU dataset builders (installed as `limubert_jax.datasets.common`).

Every builder here produces one example per window with `imu` float32 (S, F) in physical
units (accelerometer m/s^2, gyroscope rad/s, magnetometer uT) and its labels, in the order
of the source, so that the reference split indices (`limubert_jax.data.splits`) apply. The
builder configs are the reference versions: `20_120` (20 Hz, 120-step windows) and
`10_100` (10 Hz, 100-step windows).

Builders of recorded datasets subclass `ImuBuilder` (below): it declares the features from
class attributes, finds the raw files (manual directory, archive or download: `layout`) and
turns `windows()` into examples. Builders made from a folder the user names subclass
`UserFolderBuilder`: one build per folder, a check that a build is still of the folder's
files, and the split written in bulk with its window store (`ChunkedSplitWriter`: a corpus
of millions of windows in seconds, where TFDS writes an example at a time). The reference
preprocessing they share is in `resampling`.

Every builder class pins `code_path` / `pkg_dir_path` to its own folder (`ImuBuilder` does it
for its subclasses): TFDS infers them through `importlib_resources`, which it no longer
installs on Python >= 3.9 (tensorflow/datasets#11212), and from the package path, which is
wrong for this folder once an editable install maps it to `limubert_jax.datasets`.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import inspect
import itertools
import json
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from limubert_jax.datasets import layout, window_store
from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.core.utils import shard_utils
from tensorflow_datasets.core.utils.lazy_imports_utils import array_record_module


def ordered_key(index: int, total: int) -> int:
    """The example key of window `index` of `total` for a `disable_shuffling` build.

    TFDS writes such a build in the order of its keys, spilling examples past 1 GB to 1,000
    bucket files by key range (the top of a 128-bit key space) and sorting each bucket in
    memory when it writes the array_record files. Keys 0, 1, 2, ... all fall in the first
    bucket, so a corpus larger than that limit would be sorted in memory whole; keys spread
    evenly over the space keep the order and fill the buckets evenly (about 1/1000 of the
    corpus in memory at a time).
    """
    return index * ((1 << 128) // max(int(total), 1))


# The reference's feature layout (docs/reference.md §1): acc 0-2, gyro 3-5, mag 6-8.
FEATURE_NAMES = (
    "acc_x", "acc_y", "acc_z",
    "gyro_x", "gyro_y", "gyro_z",
    "mag_x", "mag_y", "mag_z",
)  # fmt: skip
FEATURE_UNITS = ("m/s^2",) * 3 + ("rad/s",) * 3 + ("uT",) * 3

# A label value meaning "no label" (an empty cell of a recording, a window whose label changes
# inside it); classes are >= 0, so it is never one. Builders write it, the downstream protocol
# drops the sub-windows that hold it.
MISSING_LABEL = -1

# version name -> (sampling rate in Hz, steps per window)
VERSIONS = {"20_120": (20, 120), "10_100": (10, 100)}


@dataclasses.dataclass(eq=False)
class ImuConfig(tfds.core.BuilderConfig):
    """A reference version: windows of `seq_len` steps sampled at `sampling_rate` Hz."""

    sampling_rate: int = 20
    seq_len: int = 120


@dataclasses.dataclass(eq=False)
class SourceConfig(ImuConfig):
    """A version built from one user folder (imu_npy, recordings): its name is
    `<version>-<key>`, the key a hash of the folder and `options`, so that two folders (or
    one folder read with other options) are two builds side by side in one data_dir."""

    source_dir: str = ""
    options: tuple[tuple[str, Any], ...] = ()  # (name, value) pairs that change what is built

    @property
    def window_version(self) -> str:
        """`<rate>_<steps>` without the source key (the config name has it)."""
        return f"{self.sampling_rate}_{self.seq_len}"


def source_config(builder_name: str, version: str, source_dir: os.PathLike | str, options: dict[str, Any] | None = None,
                  ) -> SourceConfig:
    """The `SourceConfig` of `version` built from `source_dir` (resolved to an absolute path,
    or kept as a URI such as gs://...) with `options`."""
    rate, steps = parse_version(version)
    source = os.fspath(source_dir)
    if "://" not in source:
        source = os.path.abspath(os.path.expanduser(source))
    options = tuple(sorted((options or {}).items()))
    key = hashlib.sha256(json.dumps([source, options]).encode()).hexdigest()[:10]
    shown = ", ".join(f"{k}={v}" for k, v in options)
    return SourceConfig(
        name=f"{version}-{key}",
        description=f"{builder_name} from {source} at {rate} Hz, {steps}-step windows ({steps / rate:g} s)"
        + (f"; {shown}" if shown else "") + ".",
        sampling_rate=rate, seq_len=steps, source_dir=source, options=options,
    )


def parse_version(version: str) -> tuple[int, int]:
    """'50_200' -> (50 Hz, 200 steps); a ValueError says what a version must look like."""
    match = re.fullmatch(r"(\d+)_(\d+)", str(version))
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 2:
        raise ValueError(f"version {version!r}: expected <rate Hz>_<window steps> with a rate of at least 1 Hz "
                         f"and at least 2 steps, e.g. 20_120 or 50_200")
    return int(match.group(1)), int(match.group(2))


def version_configs(description: str) -> list[ImuConfig]:
    """One `ImuConfig` per reference version (`20_120`, `10_100`)."""
    return [
        ImuConfig(
            name=name,
            description=f"{description} {rate} Hz, {steps}-step windows ({steps / rate:g} s).",
            sampling_rate=rate,
            seq_len=steps,
        )
        for name, (rate, steps) in VERSIONS.items()
    ]


def imu_feature(seq_len: int, num_features: int | None, doc: str) -> tfds.features.Tensor:
    """The `imu` feature every builder declares: (seq_len, num_features) float32 windows in
    physical units (None: the build's own channel count), stored as raw bytes (fast to decode,
    no TensorFlow)."""
    return tfds.features.Tensor(shape=(seq_len, num_features), dtype=np.float32,
                                encoding=tfds.features.Encoding.BYTES, doc=doc)


def imu_metadata(config: ImuConfig, num_features: int = 9, **extra) -> tfds.core.MetadataDict:
    """The metadata every IMU builder records (read back by the input pipeline).

    Stored in `metadata.json` beside the prepared data and restored with the dataset info:
    `sampling_rate_hz`, `seq_len`, `feature_names`, `feature_units` (of the first
    `num_features` reference channels), plus `extra`.
    """
    return tfds.core.MetadataDict(
        sampling_rate_hz=config.sampling_rate,
        seq_len=config.seq_len,
        feature_names=list(FEATURE_NAMES[:num_features]),
        feature_units=list(FEATURE_UNITS[:num_features]),
        **extra,
    )


# ---------------------------------------------------------------------------------------
# Base classes.


def pin_to_own_folder(cls) -> None:
    """Points a builder class's `code_path` / `pkg_dir_path` at the file defining it (see
    the module doc): TFDS then reads that folder's README.md, CITATIONS.bib, checksums.tsv."""
    cls.code_path = epath.Path(inspect.getfile(cls))
    cls.pkg_dir_path = cls.code_path.parent


class RemovesFailedBuilds:
    """Builder mixin: after a failed `download_and_prepare`, the folders of this build that
    the call created are gone. TFDS removes its incomplete folder but leaves
    `<name>/<config>/` behind, empty; only empty folders this call made are removed."""

    def download_and_prepare(self, *args, **kwargs):
        config_dir = epath.Path(self.data_dir).parent
        created = [d for d in (config_dir, config_dir.parent) if not d.exists()]
        try:
            return super().download_and_prepare(*args, **kwargs)
        except BaseException:
            for directory in created:  # innermost first
                if directory.is_dir() and not any(directory.iterdir()):
                    directory.rmdir()
            raise


class ImuBuilder(RemovesFailedBuilds, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the recorded-dataset builders: one `train` split of windows in source order.

    A subclass sets the class attributes below, `BUILDER_CONFIGS` (`version_configs`),
    `MANUAL_DOWNLOAD_INSTRUCTIONS`, and implements `windows(raw_dir)`; README.md and
    CITATIONS.bib beside it give the description and citation.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    NUM_FEATURES: int = 6  # channels of `imu`, the first of FEATURE_NAMES
    TASKS: dict[str, tuple[str, ...]] = {}  # task -> class names; a label is the index of its name
    SUPERVISED_TASK: str = "activity"  # the (imu, label) pair of `as_supervised`
    HOMEPAGE: str | None = None
    REQUIRED_FILES: tuple[str, ...] = ()  # paths the raw layout must hold, relative to its root
    ARCHIVES: tuple[str, ...] = ()  # archive names accepted in the manual directory
    URLS: tuple[str, ...] = ()  # official download URLs (checksums.tsv); empty: manual only
    EXTRA_METADATA: dict[str, Any] = {}
    # The highest rate a version may ask for (the raw data's); any `<rate>_<steps>` up to it
    # is built by the same procedure. None: only the BUILDER_CONFIGS versions.
    MAX_RATE_HZ: float | None = None

    @classmethod
    def config_for(cls, version: str) -> ImuConfig:
        """The builder config of `version`: a listed one, or any `<rate>_<steps>` the raw
        data can make (ValueError naming the limit otherwise)."""
        listed = {c.name: c for c in cls.BUILDER_CONFIGS}
        if version in listed:
            return listed[version]
        if cls.MAX_RATE_HZ is None:
            raise ValueError(f"dataset {cls.name!r} has no version {version!r}; versions: {', '.join(listed)}")
        rate, steps = parse_version(version)
        if rate > cls.MAX_RATE_HZ:
            raise ValueError(f"dataset {cls.name!r} cannot make version {version}: its raw data is sampled at "
                             f"{cls.MAX_RATE_HZ:g} Hz, and {rate} Hz would need up-sampling")
        return ImuConfig(name=version, description=f"{cls.name} at {rate} Hz, {steps}-step windows "
                         f"({steps / rate:g} s).", sampling_rate=rate, seq_len=steps)

    def __init_subclass__(cls, **kwargs):
        pin_to_own_folder(cls)  # before TFDS registers the class
        super().__init_subclass__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        units = ", ".join(f"{n} ({u})" for n, u in zip(FEATURE_NAMES, FEATURE_UNITS[: self.NUM_FEATURES]))
        features = {
            "imu": imu_feature(config.seq_len, self.NUM_FEATURES, units),
        }
        features.update({task: tfds.features.ClassLabel(names=list(names)) for task, names in self.TASKS.items()})
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("imu", self.SUPERVISED_TASK),
            homepage=self.HOMEPAGE,
            disable_shuffling=True,  # keep the source order: the reference split indices apply
            metadata=imu_metadata(
                config, self.NUM_FEATURES, tasks={t: list(n) for t, n in self.TASKS.items()}, **self.EXTRA_METADATA
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {"train": self._generate_examples(self.raw_dir(dl_manager))}

    def _generate_examples(self, raw_dir: epath.Path):
        config = self.builder_config
        key = -1
        for key, (imu, labels) in enumerate(self.windows(raw_dir)):
            if imu.shape != (config.seq_len, self.NUM_FEATURES):
                raise ValueError(f"{self.name}/{config.name}: window {key} has shape {imu.shape}")
            yield key, {"imu": np.asarray(imu, np.float32), **{t: int(labels[t]) for t in self.TASKS}}
        if key < 0:  # TFDS would only say that no examples were yielded
            raise ValueError(f"{self.name}/{config.name}: the raw data in {raw_dir} makes no window of "
                             f"{config.seq_len} steps at {config.sampling_rate} Hz (recordings too short, or "
                             f"sampled too sparsely for this rate)")

    @abc.abstractmethod
    def windows(self, raw_dir: epath.Path) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
        """(imu [S, F] in physical units, {task: label index}) per window, in reference order."""

    def raw_dir(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
        """The root of the raw layout (the directory holding every REQUIRED_FILES path).

        Looked for in the manual directory (extracted, possibly a few folders down, or as
        one of ARCHIVES there, nested archives included); without one, downloaded from
        URLS. A manual directory given explicitly is never replaced by a download. Raises
        FileNotFoundError naming what is missing.
        """
        manual = layout.manual_dir_or_none(dl_manager)
        if manual is not None:
            found = layout.find_layout(manual, self.REQUIRED_FILES)
            if found is not None:
                return found
            archives = [manual / a for a in self.ARCHIVES if (manual / a).is_file()]
            if archives:
                return self._from_archives(dl_manager, archives, f"the archive {archives[0]}")
            partial = layout.best_partial(manual, self.REQUIRED_FILES)
            # TFDS's default manual dir (<download_dir>/manual) is shared by all datasets: only
            # there may an unrelated content fall through to the download.
            default = manual == epath.Path(dl_manager.download_dir) / "manual"
            if partial is not None or not self.URLS or not default:
                root = partial or manual
                raise FileNotFoundError(
                    f"{self.name}: the manual directory {manual} is incomplete: missing "
                    f"{root / layout.missing(root, self.REQUIRED_FILES)[0]} (the raw layout needs "
                    f"{', '.join(self.REQUIRED_FILES)}"
                    + (f"; or put one of the archives {', '.join(self.ARCHIVES)} there" if self.ARCHIVES else "")
                    + f"). {one_line(self.MANUAL_DOWNLOAD_INSTRUCTIONS)}"
                )
        configured = getattr(dl_manager, "_manual_dir", None)
        explicit = configured is not None and epath.Path(configured) != epath.Path(dl_manager.download_dir) / "manual"
        if not self.URLS or explicit:
            raise FileNotFoundError(
                f"{self.name}: the manual directory {configured} does not "
                f"exist or is empty (pass --config.dataset.manual_dir=DIR). "
                f"{one_line(self.MANUAL_DOWNLOAD_INSTRUCTIONS)}"
            )
        downloaded = dl_manager.download(list(self.URLS))
        return self._from_archives(dl_manager, [epath.Path(p) for p in downloaded], "the download")

    def _from_archives(self, dl_manager, archives: list[epath.Path], what: str) -> epath.Path:
        roots = layout.extract_archives(dl_manager, archives)
        for _ in range(3):  # archives inside archives (HHAR ships a zip in its zip)
            for root in roots:
                found = layout.find_layout(root, self.REQUIRED_FILES)
                if found is not None:
                    return found
            inner = [p for root in roots for p in layout.archives_below(root)]
            if not inner:
                break
            roots = roots + layout.extract_archives(dl_manager, inner)
        raise FileNotFoundError(
            f"{self.name}: {what} does not hold the expected layout: missing "
            f"{layout.missing(roots[0], self.REQUIRED_FILES)[0]} under {roots[0]}"
        )


# ---------------------------------------------------------------------------------------
# Writing a split in bulk (`ChunkedSplitWriter`).

CHUNK_WINDOWS = 8192  # examples serialized at a time: ~32 MB of records for 120 x 6 windows


@dataclasses.dataclass(frozen=True)
class ExampleChunks:
    """A split as chunks of consecutive examples (what `ChunkedSplitWriter` builders return
    from `_split_generators`).

    `chunks()` starts a pass over the examples: each chunk is a dict from feature name to the
    values of its k examples stacked ([k, *shape], the feature's dtype; a chunk's arrays may be
    reused by the next one). `num_examples` in all. `finish()` runs once the split is written,
    whichever way it was (metadata a full pass computes, e.g. the SHA-256 of the source files);
    `close()` once writing ends, written or failed (what the chunks read from, e.g. temporary
    files, released). Iterating the object gives TFDS's (key, example) pairs one example at a
    time (`ordered_key`).
    """

    num_examples: int
    chunks: Callable[[], Iterator[dict[str, np.ndarray]]]
    finish: Callable[[], None] = lambda: None
    close: Callable[[], None] = lambda: None

    def __iter__(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        index = 0
        for chunk in self.chunks():
            for i in range(_chunk_length(chunk)):
                yield ordered_key(index, self.num_examples), {name: values[i] for name, values in chunk.items()}
                index += 1


def _chunk_length(chunk: dict[str, np.ndarray]) -> int:
    lengths = {name: len(values) for name, values in chunk.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"a chunk of examples whose features have different lengths: {lengths}")
    return next(iter(lengths.values()))


def _varint(value: int) -> bytes:
    """The protobuf varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes of the varint of each int64 (negative ones take 10, as uint64)."""
    values = values.view(np.uint64)
    lengths = np.ones(values.shape, np.int64)
    for shift in range(7, 64, 7):
        lengths += (values >> np.uint64(shift)) != 0
    return lengths


_BYTES, _INT64 = "bytes", "int64"
# int64 values whose varints take 1 to 10 bytes (negative ones 10): `ExampleEncoder.mismatch` checks them.
_PROBE_INTS = (0, 127, 128, 16_384, 2**31, 2**62, -1)


class ExampleEncoder:
    """Serializes chunks of examples to TFDS's records (tf.train.Example protos), a chunk at once.

    A record holds exactly the bytes of TFDS's own serialization of the example
    (`ExampleSerializer(features.get_serialized_info())` of `features.encode_example(example)`)
    with the features in name order, as the proto's deterministic serialization writes them
    (TFDS's follows the order of upb's hash table, seeded per process: the same example
    serializes in another order in another process, and parses to the same proto either
    way). `mismatch` checks that against TFDS's serializer before a build is written.

    The records of a chunk share one byte layout, but for the varints of integer features: a
    NumPy matrix [k, record bytes] holds a run of records of the same layout, the constant bytes
    broadcast and the values copied in. Features (`unsupported` says why others are not):
    `tfds.features.Tensor`s stored as raw bytes (`Encoding.BYTES`, at most one unknown
    dimension), and int64 scalars.
    """

    def __init__(self, features: tfds.features.FeaturesDict):
        reason = self.unsupported(features)
        if reason is not None:
            raise ValueError(reason)
        self._fields = [(name, _BYTES if _encoding(feature) == "bytes" else _INT64, feature)
                        for name, feature in sorted(features.items())]
        self._layouts: dict[tuple[int, ...], list[tuple[np.ndarray, str]]] = {}
        self._buffer = np.empty(0, np.uint8)

    @staticmethod
    def unsupported(features: tfds.features.FeaturesDict) -> str | None:
        """Why `features` cannot be written in bulk, or None."""
        for name, feature in features.items():
            if type(feature) is not tfds.features.Tensor:
                return f"feature {name!r} is a {type(feature).__name__}"
            if feature.get_serialized_info().optional:
                return f"feature {name!r} is optional"
            if _encoding(feature) == "bytes" and list(feature.shape).count(None) <= 1:
                continue
            if _encoding(feature) in ("", "none") and feature.shape == () and feature.np_dtype == np.int64:
                continue
            return f"feature {name!r} ({feature.shape} {feature.np_dtype}, encoding {_encoding(feature)!r})"
        return None

    def encode(self, chunk: dict[str, np.ndarray]) -> list[bytes]:
        """The records of a chunk of k examples ({feature: [k, *shape] array}), in order."""
        count = _chunk_length(chunk)
        if not count:
            return []
        payloads, ints = {}, {}
        for name, kind, feature in self._fields:
            if name not in chunk:
                raise ValueError(f"a chunk of examples without feature {name!r} (it has {', '.join(chunk)})")
            values = chunk[name]
            if values.dtype != feature.np_dtype or len(values.shape) != len(feature.shape) + 1 or any(
                    want is not None and got != want for got, want in zip(values.shape[1:], feature.shape)):
                raise ValueError(f"feature {name!r}: a chunk of {values.shape} {values.dtype}, the feature holds "
                                 f"{feature.shape} {np.dtype(feature.np_dtype)}")
            if kind == _BYTES:
                size = int(np.prod(values.shape[1:], dtype=np.int64))
                payloads[name] = np.ascontiguousarray(values).reshape(count, size).view(np.uint8)
            else:
                ints[name] = np.ascontiguousarray(values, np.int64)
        int_names = list(ints)
        # varint bytes of each record's integers: a new layout wherever one changes
        widths = np.stack([_varint_lengths(ints[n]) for n in int_names], 1) if ints else np.zeros((count, 0), int)
        changes = np.flatnonzero((widths[1:] != widths[:-1]).any(axis=1)) + 1
        records: list[bytes] = []
        for start, stop in zip([0, *changes.tolist()], [*changes.tolist(), count]):
            run_widths = dict(zip(int_names, widths[start].tolist()))
            sizes = tuple(payloads[n].shape[1] if kind == _BYTES else run_widths[n] for n, kind, _ in self._fields)
            layout_ = self._layout(sizes)
            record_bytes = sum(len(head) for head, _ in layout_) + sum(sizes)
            matrix = self._matrix(stop - start, record_bytes)
            offset = 0
            for (head, name), size in zip(layout_, sizes):
                matrix[:, offset : offset + len(head)] = head
                offset += len(head)
                if name in payloads:
                    matrix[:, offset : offset + size] = payloads[name][start:stop]
                else:
                    values = ints[name][start:stop].view(np.uint64)
                    for byte in range(size):  # little-endian groups of 7 bits, the last without 0x80
                        group = (values >> np.uint64(7 * byte)) & np.uint64(0x7F)
                        matrix[:, offset + byte] = group | np.uint64(0x80 if byte < size - 1 else 0)
                offset += size
            records += [row.tobytes() for row in matrix]
        return records

    def _matrix(self, rows: int, columns: int) -> np.ndarray:
        """A [rows, columns] uint8 buffer, reused by the next call (a fresh one per chunk cost
        page faults: a tenth of the build's time)."""
        if self._buffer.size < rows * columns:
            self._buffer = np.empty(rows * columns, np.uint8)
        return self._buffer[: rows * columns].reshape(rows, columns)

    def record_bytes(self, chunk: dict[str, np.ndarray]) -> int:
        """The size of the first record of `chunk` (integers of 1-byte varints: a lower bound)."""
        first = {name: values[:1] for name, values in chunk.items()}
        for name, kind, _ in self._fields:
            if kind == _INT64:
                first[name] = np.zeros(1, np.int64)
        return len(self.encode(first)[0])

    def mismatch(self, features: tfds.features.FeaturesDict, chunk: dict[str, np.ndarray]) -> str | None:
        """None where `encode` gives TFDS's bytes for the first and last examples of `chunk`
        and for the first with integers of every varint length; else what differs."""
        serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
        count = _chunk_length(chunk)
        rows = [0, count - 1] + [0] * len(_PROBE_INTS)
        probe = {name: np.array(values[rows]) for name, values in chunk.items()}
        for name, kind, _ in self._fields:
            if kind == _INT64:
                probe[name][2:] = _PROBE_INTS
        ours = self.encode(probe)
        for i, record in enumerate(ours):
            example = {name: values[i] for name, values in probe.items()}
            tfds_record = serializer.get_tf_example(features.encode_example(example)).SerializeToString(
                deterministic=True)
            if record != tfds_record:
                shown = {name: (v.shape, v.dtype) if v.ndim else v for name, v in example.items()}
                return (f"its bytes of the example {shown} differ from TFDS's ({len(record)} bytes, TFDS "
                        f"{len(tfds_record)})")
        return None

    def _layout(self, sizes: tuple[int, ...]) -> list[tuple[np.ndarray, str]]:
        """(constant bytes before the feature's value, feature name) per feature, for values of
        `sizes` bytes: Example{features=1: Features{feature=1: map entry{key=1, value=2: Feature{
        bytes_list=1 | int64_list=3: {value=1}}}}}, all length-delimited."""
        if sizes not in self._layouts:
            heads = []
            for (name, kind, _), size in zip(self._fields, sizes):
                value_head = b"\x0a" + _varint(size)
                feature_head = (b"\x0a" if kind == _BYTES else b"\x1a") + _varint(len(value_head) + size) + value_head
                key = name.encode()
                entry = b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(feature_head) + size) + feature_head
                heads.append(b"\x0a" + _varint(len(entry) + size) + entry)
            features_bytes = sum(len(h) for h in heads) + sum(sizes)
            heads[0] = b"\x0a" + _varint(features_bytes) + heads[0]
            self._layouts[sizes] = [(np.frombuffer(h, np.uint8), name) for h, (name, _, _) in zip(heads, self._fields)]
        return self._layouts[sizes]


def _encoding(feature: tfds.features.Tensor) -> str:
    return str(feature.to_json_content().encoding)


class _DropBehind:
    """Drops a file's pages from the page cache once they are written (`__call__` after each
    write): a corpus of gigabytes written through the page cache fills it, and where memory is
    costly to get (a virtual machine's fresh pages: 6 GB written in 15.7 s through the page
    cache, in 3.3 s with its pages dropped as they were written, on 2 cores) the writes wait
    for it. A no-op where the OS has no `posix_fadvise`."""

    def __init__(self, path: os.PathLike | str):
        self._fd = os.open(path, os.O_RDONLY) if hasattr(os, "posix_fadvise") else None

    def __call__(self) -> None:
        # DONTNEED starts the writeback of dirty pages and drops those already written back:
        # called per chunk, the file holds about one chunk of pages.
        if self._fd is not None:
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        if self._fd is not None:
            self()
            os.close(self._fd)
            self._fd = None


class _ShardWriter:
    """Writes records in order into array_record shard files, `lengths[i]` records into `paths[i]`."""

    def __init__(self, paths: Sequence[epath.Path], lengths: Sequence[int], options: str):
        self._shards = list(zip(paths, lengths))
        self._options = options
        self._next = 0  # the shard to open next
        self._left = 0  # records the open shard still takes
        self._writer = self._drop = None
        self.num_bytes = 0

    def write(self, records: list[bytes]) -> None:
        start = 0
        while start < len(records):
            if not self._left:
                self._open_next(len(records) - start)
            part = records[start : start + self._left]
            write = self._writer.write
            for record in part:
                write(record)
            self.num_bytes += sum(map(len, part))
            self._left -= len(part)
            start += len(part)
        if self._drop is not None:
            self._drop()

    def _open_next(self, pending: int) -> None:
        self._close_open()
        if self._next == len(self._shards):
            total = sum(n for _, n in self._shards)
            raise ValueError(f"{pending} records beyond the {total} of the split's {len(self._shards)} shards")
        path, self._left = self._shards[self._next]
        self._next += 1
        self._writer = array_record_module.ArrayRecordWriter(os.fspath(path), self._options)
        if not self._writer.ok():
            raise OSError(f"cannot write {path}")
        self._drop = _DropBehind(path)

    def _close_open(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            ok = writer.ok()
            writer.close()
            self._drop.close()
            if not ok:
                raise OSError(f"writing {self._shards[self._next - 1][0]} failed")

    def close(self, check: bool = True) -> None:
        """Closes the open shard; with `check`, every shard must have had its records (without,
        after a failure, nothing is raised)."""
        try:
            self._close_open()
        except Exception:
            if check:
                raise
        if check and (self._left or self._next != len(self._shards)):
            missing = self._left + sum(n for _, n in self._shards[self._next :])
            raise ValueError(f"{missing} records short of the split's {sum(n for _, n in self._shards)}")


_DONE = object()
# Python's thread switch interval while a split is written. The writer thread holds the GIL
# through each record it writes (array_record's binding keeps it), and the thread reading and
# serializing the next chunk gives it up for every NumPy copy, file read and hash update: at
# the default 5 ms it waited that long each time to get it back (the build ran at half speed).
SWITCH_INTERVAL_S = 1e-3


@contextlib.contextmanager
def _switch_interval(seconds: float) -> Iterator[None]:
    """Python's thread switch interval at most `seconds` inside the block (restored after)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, seconds))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class _Worker:
    """Runs `work(item)` on a thread for each `put` item, in order, with at most `depth` items
    waiting (bounded memory). Its error is raised by the next `put` or by `join`; the items
    after it are dropped, never blocking `put`."""

    def __init__(self, work: Callable[[Any], None], depth: int = 2, name: str = "worker"):
        self._work = work
        self._queue: queue.Queue = queue.Queue(depth)
        self._error: BaseException | None = None
        self._dropping = False  # after a failure elsewhere: the waiting items are dropped
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            if self._error is None and not self._dropping:
                try:
                    self._work(item)
                except BaseException as e:  # noqa: BLE001  (raised again in the producing thread)
                    self._error = e

    def put(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def join(self, check: bool = True) -> None:
        """Waits for the items put so far; with `check`, raises the work's error. Without (the
        producer failed), the items still waiting are dropped."""
        self._dropping = self._dropping or not check
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
        if check and self._error is not None:
            raise self._error


class ChunkedSplitWriter:
    """Builder mixin (before `tfds.core.GeneratorBasedBuilder`): writes the one `train` split
    that `_split_generators` returns as `ExampleChunks` straight to array_record shards, a
    chunk of examples at a time, and the build's window store (`window_store`: its `imu`
    feature) in the same pass.

    TFDS writes a split one example at a time (encode, serialize, shuffle, write): 20,000
    windows/s at best on 2 cores, a few thousand once its shuffler spills past 1 GB. Here a
    chunk is serialized at once (`ExampleEncoder`: TFDS's bytes), and a thread writes its
    records while the next chunk is read and serialized: a few chunks in memory at a time
    (120 x 6 windows: 2 M in ~15 s, 150 MB). The shards are TFDS's (names, number: its `ShardConfig` for the split's
    size, records in order) in TFDS's temporary build folder, and the returned `SplitInfo`
    makes TFDS write the build's dataset_info.json, and rename the folder, as for its own
    writer; a failure leaves the folder to TFDS, which deletes it.

    Builds TFDS writes itself, one example at a time from the same `ExampleChunks` (logged):
    other file formats than array_record, `max_examples_per_split`, a data_dir not on a local
    disk, features `ExampleEncoder` cannot serialize, or a serializer that disagrees with
    this TFDS version's (`ExampleEncoder.mismatch`).
    """

    # array_record writer options. One record per chunk (`group_size:1`, TFDS's own, which
    # grain's reader asks for) reads an example at random without decoding its neighbours.
    # Uncompressed: 4 us a record to write where TFDS's default (zstd) takes 10, on the thread
    # that holds the GIL; zstd's records of 120 x 6 random floats with an int64 label column
    # were 28 % smaller (the labels compress; snappy: 18 %, 15 % slower build), reads as fast.
    RECORD_OPTIONS = "group_size:1,uncompressed"
    STORE_FEATURE = "imu"  # the feature written to the window store (where the builder has it)

    def _generate_examples(self, examples: ExampleChunks):
        """TFDS's one-example-at-a-time view of the split (TFDS requires the method)."""
        yield from examples

    def _generate_splits(self, dl_manager, download_config):
        splits = self._split_generators(dl_manager)
        chunked = [s for s in splits.values() if isinstance(s, ExampleChunks)] if isinstance(splits, dict) else []
        try:
            infos = self._write_splits(splits, dl_manager, download_config)
            for split in chunked:
                split.finish()
            return infos
        finally:
            for split in chunked:
                split.close()

    def _write_splits(self, splits, dl_manager, download_config) -> list:
        """The splits written, in bulk where possible (else by TFDS's writer); their infos."""
        examples = splits.get("train") if isinstance(splits, dict) and list(splits) == ["train"] else None
        reason = self._bulk_unavailable(examples, download_config)
        if reason is None:
            chunks = iter(examples.chunks())
            first = next(chunks, None)
            if first is None:
                raise ValueError(f"{self.name}/{self.builder_config.name}: the source gave no examples")
            encoder = ExampleEncoder(self.info.features)
            reason = encoder.mismatch(self.info.features, first)
            if reason is not None:
                reason = f"the bulk serializer disagrees with tensorflow_datasets {tfds.__version__}: {reason}"
                getattr(chunks, "close", lambda: None)()
        if reason is None:
            infos = [self._write_train_split(examples, encoder, first, chunks, download_config)]
        else:
            logging.info("%s/%s: TFDS writes the examples one at a time (%s)", self.name, self.builder_config.name,
                         reason)
            self._split_generators = lambda dl_manager: splits  # TFDS's writer asks for them: the same splits
            try:
                infos = super()._generate_splits(dl_manager, download_config)
            finally:
                del self._split_generators
        return infos

    def _bulk_unavailable(self, examples: ExampleChunks | None, download_config) -> str | None:
        if not isinstance(examples, ExampleChunks):
            return "not one train split of ExampleChunks"
        if self.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
            return f"file format {self.info.file_format.value}"
        if download_config.max_examples_per_split is not None:
            return f"max_examples_per_split={download_config.max_examples_per_split}"
        if "://" in os.fspath(self.data_dir):
            return f"{self.data_dir} is not on a local disk"
        return ExampleEncoder.unsupported(self.info.features)

    def _write_train_split(self, examples: ExampleChunks, encoder: ExampleEncoder, first: dict[str, np.ndarray],
                           rest: Iterator[dict[str, np.ndarray]], download_config) -> tfds.core.SplitInfo:
        """Writes the chunks `first`, then `rest`, into the shards of the `train` split, and the
        window store; returns the split's info."""
        total, what = examples.num_examples, f"{self.name}/{self.builder_config.name}"
        template = self._get_filename_template(split_name="train")
        num_shards = download_config.get_shard_config().get_number_shards(total * encoder.record_bytes(first), total)
        lengths = np.diff([0, *shard_utils.get_shard_boundaries(total, num_shards)]).tolist()
        shards = _ShardWriter(template.sharded_filepaths(num_shards), lengths, self.RECORD_OPTIONS)
        stored = self.STORE_FEATURE if self.STORE_FEATURE in first else None
        worker = _Worker(shards.write, name=f"{what} records")
        written, started = 0, time.monotonic()
        logged = started
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(_switch_interval(SWITCH_INTERVAL_S))
                if stored:
                    store = stack.enter_context(window_store.StoreWriter(
                        window_store.store_path(self.data_dir), total, first[stored].shape[1:]))
                    drop_store = stack.enter_context(contextlib.closing(_DropBehind(store.path)))
                for chunk in itertools.chain([first], rest):
                    count = _chunk_length(chunk)
                    if written + count > total:
                        raise ValueError(f"{what}: the source gave more than the {total} examples it announced")
                    worker.put(encoder.encode(chunk))  # written by the worker while the next chunk is read
                    if stored:
                        store.append(chunk[stored])
                        drop_store()
                    written += count
                    if time.monotonic() - logged > 10.0:
                        logged = time.monotonic()
                        rate = written / (logged - started)
                        logging.info("%s: %d of %d examples written, %.0f/s, %.0f s to go", what, written, total,
                                     rate, (total - written) / rate)
                if written != total:
                    raise ValueError(f"{what}: the source gave {written} examples, it announced {total}")
                worker.join()
            shards.close()
        except BaseException:
            worker.join(check=False)
            shards.close(check=False)
            raise  # TFDS deletes its temporary build folder
        logging.info("%s: %d examples written in %d shards, %.0f/s", what, total, num_shards,
                     total / max(time.monotonic() - started, 1e-9))
        return tfds.core.SplitInfo(name="train", shard_lengths=lengths, num_bytes=shards.num_bytes,
                                   filename_template=template)


class UserFolderBuilder(RemovesFailedBuilds, ChunkedSplitWriter, tfds.core.GeneratorBasedBuilder,
                        skip_registration=True):
    """Base of the builders made from files in a folder the user names (imu_npy and the
    reference .npy datasets built on it, eleme and huawei; recordings): a build records what
    it was made from, and `check_current(manual_dir)` refuses to serve it once the folder
    holds other files. The input pipeline calls it on every prepared build it opens with a
    manual directory, so that a changed folder is never trained on from an old build.

    With `KEYED_BY_SOURCE`, each folder (and each value of `SOURCE_OPTIONS`) is a build of its
    own, `config_for(version, source_dir, **options)` (a `SourceConfig`), so that several
    live side by side in one data_dir; without it the builder's listed versions are built.
    """

    # The input pipeline builds `config_for(version, source_dir=manual_dir, **options)`, its
    # options the config.dataset fields named in SOURCE_OPTIONS (with their defaults).
    KEYED_BY_SOURCE: bool = True
    SOURCE_OPTIONS: dict[str, Any] = {}

    @classmethod
    def config_for(cls, version: str, source_dir, **options) -> SourceConfig:
        """The build of the files in `source_dir` at `version` with `options`, keyed by both."""
        unknown = sorted(set(options) - set(cls.SOURCE_OPTIONS))
        if unknown:
            raise ValueError(f"{cls.name} has no option {unknown[0]!r}")
        return source_config(cls.name, version, source_dir, options)

    @abc.abstractmethod
    def check_current(self, manual_dir: os.PathLike | str) -> None:
        """Raises ValueError, naming the build and what to do, when this prepared build was made
        from other files than those in `manual_dir` now (added, removed or rewritten)."""


def one_line(text: str) -> str:
    """`text` with its line breaks and runs of spaces as single spaces (for one-line errors)."""
    return " ".join(text.split())
