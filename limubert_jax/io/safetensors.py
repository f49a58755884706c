"""The safetensors file format with NumPy alone (no torch, no `safetensors` package).

A file is: an unsigned 64-bit little-endian header length N, N bytes of JSON (padded with
spaces to a multiple of 8) mapping each tensor name to {"dtype", "shape", "data_offsets":
[begin, end]} (offsets into the data that follows) and "__metadata__" to a str -> str map,
then the tensors' bytes, little-endian, C order, back to back.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def dumps(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file holding `tensors` (in their order) and `metadata`."""
    header: dict = {"__metadata__": {str(k): str(v) for k, v in (metadata or {}).items()}}
    chunks, offset = [], 0
    for name, array in tensors.items():
        array = np.asarray(array)
        native = array.dtype.newbyteorder("=")
        if native not in _NAMES:
            raise ValueError(f"safetensors: tensor {name!r} has dtype {array.dtype}, which the format lacks")
        data = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)).tobytes()
        header[name] = {"dtype": _NAMES[native], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def loads(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of the bytes of a safetensors file; ValueError if they are not one."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: shorter than its 8-byte header length")
    (size,) = struct.unpack("<Q", data[:8])
    if 8 + size > len(data):
        raise ValueError(f"not a safetensors file: a header of {size} bytes in {len(data)} bytes")
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError as e:
        raise ValueError(f"not a safetensors file: its header is not JSON ({e})") from None
    metadata = header.pop("__metadata__", None) or {}
    body = memoryview(data)[8 + size :]
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        if entry["dtype"] not in _DTYPES or not 0 <= begin <= end <= len(body):
            raise ValueError(f"not a safetensors file: entry {name!r} ({entry})")
        dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(body[begin:end], dtype).reshape(entry["shape"]).astype(dtype.newbyteorder("="))
    return tensors, metadata
