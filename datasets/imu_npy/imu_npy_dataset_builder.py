"""imu_npy: bring-your-own IMU windows in the reference's .npy layout.

The manual directory holds, for a version `V` (`<rate>_<steps>`: `20_120`, `10_100`, or any
other, e.g. `50_200`, through `Builder.config_for`):

* `data_V.npy`: (N, S, F) real numbers, IMU readings in physical units (acc m/s^2,
  gyro rad/s, mag as recorded; F = 6 or 9 for the released models);
* `label_V.npy`: (N, S, L) integer-valued labels (e.g. activity, user, ...), any real dtype;
  without it the windows are unlabelled (L = 0), for pretraining only.

S must be the version's window length (e.g. 120 or 100). The training job builds each folder
as its own config, `<version>-<key>` (`Builder.config_for`: the key hashes the folder's path),
so that several folders of one version live side by side in a data_dir. One example per window, in the row
order of the files (so the reference split indices apply): `imu` float32 (S, F) and `label`
int64 (S, L). F and L are read from the files; the feature shapes are (S, None) and the
metadata records `num_features`, `num_labels`, `feature_names`, the source directory and
the SHA-256 of both files (`Builder.check_current` uses them to refuse a stale build).

An optional `label_columns.json` beside the arrays names the L label columns (the tasks of
downstream training): a JSON list of L names, or an object from each column's name to its
class names (a list indexed by the label value) or null, e.g.
`{"activity": ["sit", "stand", "walk"], "user": null}`. The metadata records them as
`label_columns` and `label_classes`; without the file the columns are `label_0`, `label_1`, ...
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from limubert_jax.datasets import common

_DESCRIPTION = __doc__
_CHECK_ROWS = 4096  # windows validated per chunk (memory stays bounded for large files)
LABEL_COLUMNS_FILE = "label_columns.json"


def file_names(version: str) -> tuple[str, str]:
    """(data, label) file names for a version, e.g. ('data_20_120.npy', 'label_20_120.npy')."""
    return f"data_{version}.npy", f"label_{version}.npy"


def config_version(config) -> str:
    """`<rate>_<steps>` of a builder config: its name, without a source key."""
    return getattr(config, "window_version", config.name)


def sha256(path: os.PathLike | str) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_stat(path: os.PathLike | str) -> list[int]:
    """[size in bytes, modification time in ns] of a file: while both are unchanged the file is
    taken as unchanged, and its SHA-256 (seconds for a corpus of gigabytes) is not read again."""
    stat = os.stat(path)
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def row_chunks(array: np.ndarray, rows: int = _CHECK_ROWS, digest=None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, array[first : first + rows]) over an (N, ...) array opened by `_load`, read with
    plain file reads into one buffer that every chunk reuses: the pages of a memory map would
    stay mapped, counting toward the process's memory until it had the whole file. Other
    arrays (not memory-mapped in C order) are sliced.

    digest: a `hashlib` object fed the file's bytes as they are read (header, rows, anything
    after them), so that a complete pass leaves it with the file's hash; None for arrays that
    are not memory-mapped in C order (`streams_bytes`)."""
    if not streams_bytes(array):
        if digest is not None:
            raise ValueError("only a C-order memory-mapped .npy array can be hashed as it is read")
        for start in range(0, len(array), rows):
            yield start, np.asarray(array[start : start + rows])
        return
    buffer = np.empty((min(rows, len(array)), *array.shape[1:]), array.dtype)
    with open(array.filename, "rb") as f:
        header = f.read(array.offset)
        if digest is not None:
            digest.update(header)
        for start in range(0, len(array), rows):
            chunk = buffer[: min(rows, len(array) - start)]
            view = memoryview(chunk).cast("B")
            got = 0
            while got < len(view):
                n = f.readinto(view[got:])
                if not n:
                    raise ValueError(f"{array.filename} ends before its {len(array)} rows of {array.shape[1:]} "
                                     f"{array.dtype} (a truncated file?)")
                got += n
            if digest is not None:
                digest.update(view)
            yield start, chunk
        if digest is not None:
            while block := f.read(1 << 22):
                digest.update(block)


def streams_bytes(array: np.ndarray) -> bool:
    """Whether `row_chunks` reads `array` from its file (a C-order memory-mapped .npy array)."""
    return (isinstance(array, np.memmap) and array.flags.c_contiguous and array.size > 0
            and getattr(array, "filename", None) is not None and array.offset is not None)


def _load(path: epath.Path) -> np.ndarray:
    try:
        return np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"imu_npy: cannot read {path} as a .npy array: {e}") from e


def load_arrays(manual_dir: os.PathLike | str, version: str, seq_len: int,
                labels_required: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Opens and validates the manual files (memory-mapped). Raises FileNotFoundError for a
    missing directory or file, ValueError for bad shapes, dtypes or values. Without
    `labels_required`, a missing label file gives labels of shape (N, S, 0): unlabelled windows."""
    manual_dir = epath.Path(manual_dir)
    data_name, label_name = file_names(version)
    if not manual_dir.is_dir():
        raise FileNotFoundError(
            f"imu_npy/{version}: the manual directory {manual_dir} does not exist; it must hold "
            f"{data_name} and {label_name}"
        )
    unlabelled = not labels_required and not (manual_dir / label_name).is_file()
    for name in (data_name,) if unlabelled else (data_name, label_name):
        if not (manual_dir / name).is_file():
            present = sorted(p.name for p in manual_dir.iterdir() if p.name.endswith(".npy"))
            raise FileNotFoundError(
                f"imu_npy/{version}: missing {name} in {manual_dir} (.npy files there: "
                f"{', '.join(present) or 'none'})"
            )
    data = _load(manual_dir / data_name)
    if unlabelled:  # (a data file of the wrong rank is reported below)
        label = np.zeros((*data.shape[:2], 0) if data.ndim >= 2 else (0, 0, 0), np.int64)
    else:
        label = _load(manual_dir / label_name)
    for name, arr in ((data_name, data), (label_name, label)):
        if arr.ndim != 3:
            raise ValueError(f"imu_npy/{version}: {manual_dir / name} must be (N, S, ...) with 3 dims, "
                             f"got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"imu_npy/{version}: {manual_dir / name} has dtype {arr.dtype}; expected real numbers")
    if data.shape[:2] != label.shape[:2]:
        what = "number of windows N" if data.shape[0] != label.shape[0] else "window length S"
        raise ValueError(
            f"imu_npy/{version}: {data_name} {data.shape} and {label_name} {label.shape} in "
            f"{manual_dir} disagree on the {what}"
        )
    if data.shape[0] == 0 or data.shape[2] == 0 or (label.shape[2] == 0 and not unlabelled):
        raise ValueError(f"imu_npy/{version}: empty arrays in {manual_dir}: {data.shape}, {label.shape}")
    if data.shape[1] != seq_len:
        raise ValueError(
            f"imu_npy/{version}: windows in {manual_dir / data_name} have {data.shape[1]} steps; "
            f"version {version} needs {seq_len}"
        )
    # Integer arrays hold finite integers: only float ones are read.
    data_chunks = row_chunks(data) if data.dtype.kind == "f" else None
    label_chunks = row_chunks(label) if label.dtype.kind == "f" else None
    for start in range(0, data.shape[0], _CHECK_ROWS) if data_chunks or label_chunks else ():
        if data_chunks is not None:
            _, x = next(data_chunks)
            bad = ~np.isfinite(x).all(axis=(1, 2))
            if bad.any():
                raise ValueError(
                    f"imu_npy/{version}: {manual_dir / data_name} has NaN/Inf in window {start + int(np.argmax(bad))}"
                )
        if label_chunks is not None:
            _, y = next(label_chunks)
            bad = ~(np.isfinite(y) & (np.rint(y) == y)).all(axis=(1, 2))
            if bad.any():
                raise ValueError(
                    f"imu_npy/{version}: {manual_dir / label_name} has a non-integer label in window "
                    f"{start + int(np.argmax(bad))}"
                )
    return data, label


def label_columns(manual_dir: os.PathLike | str, label: np.ndarray) -> tuple[list[str], dict[str, list[str]]]:
    """(names of the L label columns, {column: class names} for the columns given them) from
    `label_columns.json` in `manual_dir` (see the module docstring), else (`label_<i>`, {}).
    label: the (N, S, L) labels, whose values must index the class names given."""
    num_labels = int(label.shape[2])
    path = epath.Path(manual_dir) / LABEL_COLUMNS_FILE
    if not path.is_file():
        return [f"label_{i}" for i in range(num_labels)], {}
    try:
        spec = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if isinstance(spec, dict):
        names, classes = list(spec), {k: v for k, v in spec.items() if v is not None}
    else:
        names, classes = spec, {}
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) and n.strip() for n in names)
        or len(set(names)) != len(names)
    ):
        raise ValueError(f"{path} must be a JSON list of distinct, non-empty strings (one name per label column), "
                         f"or an object from those names to class names or null")
    if len(names) != num_labels:
        raise ValueError(f"{path} names {len(names)} label columns, but the label file has {num_labels}")
    for column, class_names in classes.items():
        if (not isinstance(class_names, list) or not class_names
                or not all(isinstance(n, str) and n.strip() for n in class_names)
                or len(set(class_names)) != len(class_names)):
            raise ValueError(f"{path}: the classes of {column!r} must be a list of distinct, non-empty strings or null")
        index = names.index(column)
        bounds = [(chunk[:, :, index].min(), chunk[:, :, index].max()) for _, chunk in row_chunks(label)]
        low, high = int(min(b[0] for b in bounds)), int(max(b[1] for b in bounds))
        if low < 0 or high >= len(class_names):
            raise ValueError(f"{path}: {column!r} names {len(class_names)} classes, but its labels run from {low} "
                             f"to {high} (each label must index the names)")
    return names, classes


def feature_names(num_features: int) -> list[str]:
    """The reference names for the first 9 columns, `feature_<i>` beyond."""
    names = list(common.FEATURE_NAMES[:num_features])
    return names + [f"feature_{i}" for i in range(len(names), num_features)]


def feature_units(num_features: int) -> list[str]:
    units = list(common.FEATURE_UNITS[:num_features])
    units[6:9] = ["as recorded"] * len(units[6:9])  # magnetometer units are the source's
    return units + ["unknown"] * (num_features - len(units))


class Builder(common.UserFolderBuilder):
    """DatasetBuilder for imu_npy (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = common.version_configs("Windows from data_<version>.npy / label_<version>.npy,")
    LABELS_REQUIRED = False  # without label_<version>.npy: unlabelled windows, for pretraining
    # One build per folder (`config_for(version, source_dir)`, any `<rate>_<steps>` whose window
    # length the arrays have), so two folders of one version coexist in a data_dir; the listed
    # configs serve direct TFDS use. No SOURCE_OPTIONS: the arrays are final.
    # See common.py: pin TFDS's code/metadata paths to this folder.
    code_path = epath.Path(__file__)
    pkg_dir_path = code_path.parent
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put data_<version>.npy, (N, S, F) IMU windows, and label_<version>.npy, (N, S, L)
    integer labels, in a directory and pass it as the manual directory:
    `download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=DIR))`
    (or `config.dataset.manual_dir = DIR` for the training job).
    """

    def check_current(self, manual_dir: os.PathLike | str) -> None:
        """Refuses a build made from other arrays than those in `manual_dir` now: the build
        records both files' SHA-256, read again only where a file's size or modification time
        differs from the build's (a corpus of gigabytes hashes in seconds), and whether it had a
        label file."""
        meta = self.info.metadata or {}
        if "data_sha256" not in meta:
            return
        version = config_version(self.builder_config)
        what = f"{self.name}/{version} in {self.data_dir}"
        for file_name, key, stat_key in zip(file_names(version), ("data_sha256", "label_sha256"),
                                            ("data_stat", "label_stat")):
            path = os.path.join(manual_dir, file_name)
            if meta.get(key) is None:  # built without labels
                if os.path.isfile(path):
                    raise ValueError(f"{what} was built without {file_name}, and {path} exists now; delete "
                                     f"{self.data_dir} to rebuild it with its labels, or use another data_dir")
                continue
            if not os.path.isfile(path):  # never a silent fall-back to the earlier build
                raise ValueError(f"{path} does not exist; {what} was built from {meta.get('source_dir')!r}: point "
                                 f"the config at the files to train on")
            recorded_stat = meta.get(stat_key)  # older builds recorded none
            if recorded_stat is not None and file_stat(path) == list(recorded_stat):
                continue
            if sha256(path) != meta[key]:
                raise ValueError(f"{what} was built from {meta.get('source_dir')!r}, and {path} differs from the "
                                 f"file it was built from; delete {self.data_dir} to rebuild it, or use another "
                                 f"data_dir")

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "imu": common.imu_feature(config.seq_len, None, "IMU readings (S, F) in physical units"),
                    "label": tfds.features.Tensor(
                        shape=(config.seq_len, None),
                        dtype=np.int64,
                        encoding=tfds.features.Encoding.BYTES,
                        doc="labels (S, L), as in label_<version>.npy",
                    ),
                }
            ),
            disable_shuffling=True,  # keep the row order: reference split indices apply
            metadata=common.imu_metadata(config),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        try:
            manual_dir = dl_manager.manual_dir
        except (AssertionError, ValueError) as e:  # TFDS: missing or empty directory
            where = getattr(dl_manager, "_manual_dir", None)
            raise FileNotFoundError(
                f"imu_npy/{config_version(config)}: the manual directory {where} does not exist or is empty; "
                f"it must hold {' and '.join(file_names(config_version(config)))} (pass it with "
                "tfds.download.DownloadConfig(manual_dir=...), or config.dataset.manual_dir)"
            ) from e
        data, label = load_arrays(manual_dir, config_version(config), config.seq_len, self.LABELS_REQUIRED)
        data_name, label_name = file_names(config_version(config))
        labelled = (manual_dir / label_name).is_file()
        num_features, num_labels = int(data.shape[2]), int(label.shape[2])
        # Recorded in metadata.json with the prepared data; the SHA-256 once the pass that writes
        # the examples has read the files (`_examples`).
        self.info.metadata.update(
            num_windows=int(data.shape[0]),
            num_features=num_features,
            num_labels=num_labels,
            feature_names=feature_names(num_features),
            feature_units=feature_units(num_features),
            source_dir=os.fspath(manual_dir),
            data_sha256=None,
            label_sha256=None,
            data_stat=file_stat(manual_dir / data_name),
            label_stat=file_stat(manual_dir / label_name) if labelled else None,
        )
        columns, classes = label_columns(manual_dir, label)
        self.info.metadata["label_columns"] = columns
        if classes:
            self.info.metadata["label_classes"] = classes
        return {"train": self._examples(manual_dir, data, label if labelled else None)}

    def _examples(self, manual_dir: epath.Path, data: np.ndarray, label: np.ndarray | None) -> common.ExampleChunks:
        """The windows as chunks (`common.ExampleChunks`) of `imu` float32 [k, S, F] and `label` int64
        [k, S, L] (label None: L = 0), in row order. A pass reads the files once (`row_chunks`),
        hashing them as it goes: hashing them apart read the gigabytes of a corpus once more."""
        files = dict(zip(("data", "label"), file_names(config_version(self.builder_config))))
        arrays = {"data": data, "label": label} if label is not None else {"data": data}
        digests: dict[str, str] = {}  # of the last complete pass

        def chunks():
            hashes = {key: hashlib.sha256() for key, array in arrays.items() if streams_bytes(array)}
            readers = {key: row_chunks(array, common.CHUNK_WINDOWS, hashes.get(key)) for key, array in arrays.items()}
            for _, x in readers["data"]:
                if label is None:
                    y = np.zeros((len(x), data.shape[1], 0), np.int64)
                else:
                    _, y = next(readers["label"])
                    y = np.rint(y).astype(np.int64) if y.dtype.kind == "f" else y.astype(np.int64, copy=False)
                yield {"imu": np.asarray(x, np.float32), "label": y}
            for reader in readers.values():  # to its end: the bytes after the rows are hashed too
                for _ in reader:
                    pass
            digests.update({key: digest.hexdigest() for key, digest in hashes.items()})

        def finish():  # a pass that did not hash a file (not memory-mapped, cut short): hashed now
            self.info.metadata.update({f"{key}_sha256": digests.get(key) or sha256(manual_dir / files[key])
                                       for key in arrays})

        return common.ExampleChunks(int(data.shape[0]), chunks, finish)
