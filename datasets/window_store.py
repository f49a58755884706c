"""The window store: a build's `imu` windows as one contiguous float32 array beside its records
(installed as `limubert_jax.datasets.window_store`).

A TFDS build keeps each window in its own array_record record, and reading one back costs a
record lookup and a Python decode: tens of microseconds, a few tens of thousands of windows per
second per process, where a training step on an accelerator consumes hundreds of thousands. The
store holds the same windows once more as `imu.windows.npy` in the build's own folder (the TFDS
version folder, beside `dataset_info.json`): an .npy array [N, S, F] float32 whose row i is
the `imu` feature of example i of the build's one split, in record order. Opened memory-mapped
(`open_store`), a batch of random rows is one NumPy gather, at the speed of memory once the page
cache holds the file.

Who writes it:
* the builders of users' folders (imu_npy, recordings) in the same pass that writes the
  records (`StoreWriter`), inside TFDS's temporary build folder, so the store appears with
  the build or not at all;
* for any other build (the reference datasets' builders, builds made before the store
  existed) `write_from_records` writes it once from the records, staged beside its final name
  and renamed into place when complete (`limubert_jax.data.loading` calls it the first time
  a build is opened for reading).

The TFDS build stays the dataset format: the store is derived from it, and deleting it only
makes the next run write it again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from etils import epath

STORE_NAME = "imu.windows.npy"
DTYPE = np.dtype("<f4")
WRITE_ROWS = 4096  # records decoded at a time by `write_from_records` (bounded memory)


def store_path(build_dir: os.PathLike | str) -> epath.Path:
    """Where the store of the build in `build_dir` (a TFDS version folder) lives."""
    return epath.Path(build_dir) / STORE_NAME


def _is_local(path: os.PathLike | str) -> bool:
    return "://" not in os.fspath(path)


class StoreWriter:
    """Writes a store of `num_windows` windows of `window_shape` (S, F), rows appended in order.

        with StoreWriter(store_path(build_dir), n, (120, 6)) as store:
            for chunk in chunks:      # [k, S, F] arrays, k >= 0
                store.append(chunk)

    The file is written sequentially through one open file (no memory map: a corpus of
    gigabytes never sits in memory); leaving the block without an exception checks that
    exactly `num_windows` rows were written, and an exception (or too few or too many rows)
    removes the file, so that no partial store is ever read."""

    def __init__(self, path: os.PathLike | str, num_windows: int, window_shape: Sequence[int]):
        self.path = epath.Path(path)
        if not _is_local(self.path):
            raise ValueError(f"a window store needs a local folder, not {self.path}")
        self.shape = (int(num_windows), *(int(d) for d in window_shape))
        if len(self.shape) != 3:
            raise ValueError(f"windows must be (S, F), got shape {tuple(window_shape)}")
        self.rows = 0
        self._file = None

    def __enter__(self) -> StoreWriter:
        self._file = open(self.path, "wb")  # noqa: SIM115  (closed in __exit__)
        np.lib.format.write_array_header_1_0(
            self._file, {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": self.shape})
        return self

    def append(self, windows: np.ndarray) -> None:
        """Appends [k, S, F] windows (any real dtype; stored as float32)."""
        windows = np.ascontiguousarray(windows, dtype=DTYPE)
        if windows.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path}: windows of shape {windows.shape[1:]}, the store holds {self.shape[1:]}")
        if self.rows + len(windows) > self.shape[0]:
            raise ValueError(f"{self.path}: more than the {self.shape[0]} windows it was opened for")
        self._file.write(memoryview(windows).cast("B"))
        self.rows += len(windows)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None and self.rows != self.shape[0]:
            os.unlink(self.path)
            raise ValueError(f"{self.path}: {self.rows} windows written, {self.shape[0]} expected")
        if exc_type is not None:
            os.unlink(self.path)


def open_store(build_dir: os.PathLike | str, num_windows: int, window_shape: Sequence[int] | None = None,
               ) -> np.ndarray | None:
    """The store of a build, memory-mapped read-only: [num_windows, S, F] float32; None where
    there is none (or the build is not on a local disk). A store that does not fit the build
    (row count, window shape, dtype) is a ValueError naming the file."""
    path = store_path(build_dir)
    if not _is_local(path) or not path.is_file():
        return None
    try:
        windows = np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable window store ({e}); delete it to have it written again") from None
    expected = (int(num_windows), *(() if window_shape is None else tuple(int(d) for d in window_shape)))
    if (windows.dtype != DTYPE or windows.ndim != 3 or windows.shape[: len(expected)] != expected
            or not windows.flags.c_contiguous):
        raise ValueError(f"{path}: a store of {windows.shape} {windows.dtype} windows, the build holds "
                         f"{expected[0]} windows{'' if window_shape is None else f' of {expected[1:]}'} float32; "
                         f"delete it to have it written again")
    return windows


def write_from_records(records: Iterable[list], build_dir: os.PathLike | str, num_windows: int, feature: str = "imu",
                       log: Callable[[str], None] | None = None) -> epath.Path:
    """Writes the store of an existing build from its records, read in batches (`records`: lists
    of decoded examples in record order, e.g. `loading.records_in_batches(source)`).

    Staged beside its final name and renamed into place when complete
    (`limubert_jax.io.storage.staged`); `log` gets a progress line with rate and ETA every
    ~10 s. Raises `LimuBertError` where the folder cannot be written (read-only, full)."""
    from limubert_jax.io import storage  # noqa: PLC0415

    path = store_path(build_dir)
    batches = iter(records)
    first = next(batches, None)
    if not first:
        raise ValueError(f"{path}: the build holds no windows")

    def stacked(batch: list) -> np.ndarray:
        return np.stack([np.asarray(r[feature], dtype=DTYPE) for r in batch])

    head = stacked(first)
    start = last = time.monotonic()
    with storage.staged(path) as (staging,), StoreWriter(staging, num_windows, head.shape[1:]) as writer:
        writer.append(head)
        for batch in batches:
            writer.append(stacked(batch))
            now = time.monotonic()
            if log is not None and now - last > 10.0:
                rate = writer.rows / (now - start)
                log(f"window store {path}: {writer.rows}/{num_windows} windows, {rate:,.0f}/s, "
                    f"ETA {(num_windows - writer.rows) / rate:.0f} s")
                last = now
    return path
