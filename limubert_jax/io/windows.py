"""IMU window files: the one reader of the .npy arrays that `limubert-embed` and
`limubert-predict` take, memory-mapped so that millions of windows stay on disk."""

from __future__ import annotations

import os

import numpy as np

from limubert_jax.io import storage
from limubert_jax.runtime.errors import LimuBertError


def open_windows(input_path: str | os.PathLike, *, command: str = "embed") -> np.ndarray:
    """The windows of an .npy file, memory-mapped (an object: read into memory);
    `LimuBertError` for anything else, naming `command` where it says what the command takes."""
    input_path = storage.as_path(input_path)
    if not input_path.is_file():
        raise LimuBertError(f"{input_path}: no such file")
    size = os.path.getsize(input_path) if storage.is_local(input_path) else input_path.stat().length
    if size == 0:
        raise LimuBertError(f"{input_path}: is empty (0 bytes), not an .npy array")
    try:
        windows = storage.load_npy(input_path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise LimuBertError(f"{input_path}: not a readable .npy array ({e})") from None
    if not isinstance(windows, np.ndarray):  # np.load opens a zip of arrays as an NpzFile
        names = ", ".join(windows.files[:5])
        windows.close()
        raise LimuBertError(
            f"{input_path}: is an .npz archive (arrays: {names}); {command} takes one .npy array "
            "(np.save the windows array)"
        )
    if not (np.issubdtype(windows.dtype, np.floating) or np.issubdtype(windows.dtype, np.integer)):
        raise LimuBertError(f"{input_path}: dtype {windows.dtype} is not numeric")
    return windows
