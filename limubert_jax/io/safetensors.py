"""The safetensors file format with NumPy, through the `safetensors` package (no torch).

A file is: an unsigned 64-bit little-endian header length N, N bytes of JSON (padded with
spaces to a multiple of 8) mapping each tensor name to {"dtype", "shape", "data_offsets"}
and "__metadata__" to a str -> str map, then the tensors' bytes, little-endian, C order.
The package writes the tensors sorted by dtype alignment, then name, not in the given order.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors import numpy as safetensors_numpy


def dumps(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file holding `tensors` and `metadata`."""
    # The package reads each array's memory as it lies: a strided view must be copied first.
    arrays = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
    # No metadata is None, not {}: the package (0.8) writes a malformed header for an empty
    # tensor dict with an empty metadata map.
    text = {str(k): str(v) for k, v in (metadata or {}).items()} or None
    try:
        return safetensors_numpy.save(arrays, metadata=text)
    except (SafetensorError, ValueError, KeyError) as e:
        raise ValueError(f"safetensors: cannot write these tensors ({e})") from None


def loads(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of the bytes of a safetensors file; ValueError if they are not one."""
    try:
        tensors = safetensors_numpy.load(bytes(data))
    except SafetensorError as e:
        raise ValueError(f"not a safetensors file: {e}") from None
    # The package's in-memory reader returns the tensors only; the metadata is the header's
    # "__metadata__" entry, and the header was just validated by that read.
    (size,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    return tensors, metadata
