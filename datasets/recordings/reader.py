"""The reader of the `recordings` dataset (installed as `limubert_jax.datasets.recordings.reader`):
your own continuous IMU recordings (one CSV or Parquet file each), resampled to a version's
rate and cut into windows. README.md beside this file states the contract. The TFDS builder
(`recordings_dataset_builder`) writes what it reads; `limubert-predict` reads a folder with it
directly, without a build.

The whole folder is read and checked in `read_source` (the builder calls it in
`_split_generators`, before the first example is written): every file is parsed once
(pyarrow; a file per core at a time), split into segments at gaps and at rate changes, and each
segment is brought to the version's rate (`resample`: copied at its own rate, else an
anti-aliasing low-pass evaluated at the output steps); only the resampled segments are kept (in
memory, and past SPILL_AFTER_BYTES in the build's own folder), and the windows are cut from them
(`Source.windows`).
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import datetime
import functools
import hashlib
import io
import json
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from absl import logging
from etils import epath
from limubert_jax.datasets import common

TIMESTAMP = "timestamp"
ACC, GYRO, MAG = common.FEATURE_NAMES[0:3], common.FEATURE_NAMES[3:6], common.FEATURE_NAMES[6:9]
REQUIRED = (TIMESTAMP, *ACC, *GYRO)
CHANNELS = (TIMESTAMP, *common.FEATURE_NAMES)  # every name of the contract that is not a label
EXTENSIONS = (".csv", ".parquet")
MISSING_LABEL = common.MISSING_LABEL
ACC_UNITS = {"m/s^2": 1.0, "g": 9.80665}  # factor to m/s^2
GYRO_UNITS = {"rad/s": 1.0, "deg/s": math.pi / 180}  # factor to rad/s
TIMESTAMP_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}  # per second
_UNIT_WORDS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
FINGERPRINT_MODES = ("stat", "content")
# No IMU samples slower than 1 Hz (no version could use it) or faster than 10 kHz: a median
# step outside these is a timestamp unit mistake (milliseconds read as seconds gives <= 1 Hz
# for any rate up to 1 kHz).
PLAUSIBLE_RATE_HZ = (1.0, 10_000.0)
UPSAMPLE_TOLERANCE = 0.01  # a target rate up to 1 % above a raw rate is still made (a rate estimate is not exact)
RATE_SNAP = 1e-4  # a raw rate within 0.01 % of a whole number of Hz is that number
# Phone clocks: the sensor samples at a steady rate, the timestamps jitter around that grid. A
# segment whose timestamps all lie within this fraction of a step of their least-squares line
# is that grid; a dropped sample (half a step off the line around it) makes a segment irregular.
REGULAR_JITTER = 0.3
RATE_CHANGE = 0.2  # the median time step changing by more than 20 % starts a new segment
RATE_WINDOW = 31  # time steps in the running median that finds rate changes (robust to jitter)
# The anti-aliasing low-pass (README.md): a Kaiser-windowed sinc, cut-off at 0.45 x the slower of
# the two rates (90 % of the output's Nyquist frequency), reaching 16 output steps each side.
CUTOFF = 0.45
HALF_WIDTH_STEPS = 16
KAISER_BETA = 8.0
_STRIDED_PHASES = 16  # up to this many phases, each evenly spaced, the low-pass is a matrix product per phase
_SPARSE_WEIGHTS = 1 << 22  # weights in one sparse matrix of the low-pass (32 MB)
_STRIDED_OUTPUTS = 1 << 14  # outputs per matrix product (its partial sums: pieces x 16 k x F float64)
_PHASES = 4096  # output positions are rounded to 1/4096 of a raw step to share filter weights
READ_THREADS = 0  # files read at once; 0: one per core
PROGRESS_S = 10.0  # seconds between progress lines while a folder is read
SPILL_AFTER_BYTES = 1 << 28  # resampled steps kept in memory before `read_source(spill_dir=...)` writes them out
_LABEL_ROWS = 1 << 20  # steps whose label codes are indexed at once
MAX_LABEL_CLASSES = 100  # more distinct numbers in a column (without label_columns): a sensor
_HEAD_BYTES = 1 << 16
_INTEGER = re.compile(r"[+-]?\d+")

# The config.dataset fields that change what is built, with their defaults (every one a
# keyword argument of read_source of the same name and default).
SOURCE_OPTIONS = {
    "stride": 0,
    "max_gap_s": 1.0,
    "acc_unit": "m/s^2",
    "gyro_unit": "rad/s",
    "timestamp_unit": "s",
    "columns": "",
    "label_columns": "",
    "ignore_columns": "",
    "fingerprint": "stat",
}
OPTION_HELP = {
    "stride": "Steps between window starts; 0: the window length (no overlap).",
    "max_gap_s": "A pause between timestamps longer than this (seconds, > 0) splits a recording.",
    "acc_unit": "Unit of the accelerometer columns: 'm/s^2' or 'g' (x 9.80665).",
    "gyro_unit": "Unit of the gyroscope columns: 'rad/s' or 'deg/s' (x pi/180).",
    "timestamp_unit": "Unit of numeric timestamps: 's', 'ms', 'us' or 'ns' (ISO-8601 text is read as it is).",
    "columns": "Renames the files' columns to the contract's names: 'ax:acc_x,ay:acc_y,...'.",
    "label_columns": "The label columns, comma-separated; empty: every other column, refusing sensor-like ones.",
    "ignore_columns": "Columns to leave out, comma-separated.",
    "fingerprint": "How a changed folder is noticed: 'stat' (paths, sizes, modification times) or 'content' "
                   "(SHA-256 of every file).",
}


# ---------------------------------------------------------------------------------------
# Options.


def _names_option(value: Any, field: str) -> list[str]:
    """A list of column names given as 'a,b' or a sequence of strings."""
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(n, str) for n in value):
        names = [n.strip() for n in value]
        if any("," in n for n in names):
            raise ValueError(f"config.dataset.{field}: a column name with a comma cannot be given, got {value!r}")
    else:
        raise ValueError(f"config.dataset.{field} must be column names separated by commas, e.g. 'activity,user', "
                         f"got {value!r}")
    return list(dict.fromkeys(n for n in names if n))


def _mapping_option(value: Any) -> dict[str, str]:
    """`columns` as {file's name: contract's name}, given as 'ax:acc_x,ay:acc_y' or a dict."""
    field = "config.dataset.columns"
    if isinstance(value, str):
        pairs = []
        for item in (i.strip() for i in value.split(",")):
            if not item:
                continue
            parts = [p.strip() for p in item.split(":")]
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"{field} must be 'name:contract_name' pairs separated by commas, e.g. "
                                 f"'ax:acc_x,ay:acc_y', got {value!r}")
            pairs.append(tuple(parts))
    elif isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        pairs = [(k.strip(), v.strip()) for k, v in value.items()]
        if any(not k or not v or set(k + v) & {",", ":"} for k, v in pairs):
            raise ValueError(f"{field}: names must be non-empty and without ',' or ':', got {value!r}")
    else:
        raise ValueError(f"{field} must be a string 'name:contract_name,...' or a dict, got {value!r}")
    mapping: dict[str, str] = {}
    for source, target in pairs:
        if target not in CHANNELS:
            raise ValueError(f"{field}: {target!r} is not a column of the contract ({', '.join(CHANNELS)})")
        if source in mapping:
            raise ValueError(f"{field} renames {source!r} twice")
        mapping[source] = target
    targets = list(mapping.values())
    repeated = next((t for t in targets if targets.count(t) > 1), None)
    if repeated:
        raise ValueError(f"{field} names two columns {repeated!r}")
    return mapping


def check_options(**options) -> dict[str, Any]:
    """Every SOURCE_OPTIONS entry, checked and in its normal form (missing or None: the default;
    JSON-serializable). ValueError naming `config.dataset.<field>` for an unknown or bad one."""
    unknown = sorted(set(options) - set(SOURCE_OPTIONS))
    if unknown:
        raise ValueError(f"config.dataset.{unknown[0]} is not an option of recordings (its options: "
                         f"{', '.join(SOURCE_OPTIONS)})")
    values = {k: default if options.get(k) is None else options[k] for k, default in SOURCE_OPTIONS.items()}
    stride = values["stride"]
    if isinstance(stride, float) and stride.is_integer():
        stride = int(stride)
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 0:
        raise ValueError(f"config.dataset.stride must be a whole number of steps >= 0 (0: the window length), "
                         f"got {stride!r}")
    gap = values["max_gap_s"]
    if isinstance(gap, bool) or not isinstance(gap, (int, float, np.number)) or not math.isfinite(gap) or gap <= 0:
        raise ValueError(f"config.dataset.max_gap_s must be a number of seconds > 0, got {gap!r}")
    for field, units in (("acc_unit", ACC_UNITS), ("gyro_unit", GYRO_UNITS), ("timestamp_unit", TIMESTAMP_UNITS),
                         ("fingerprint", FINGERPRINT_MODES)):
        if not isinstance(values[field], str) or values[field] not in units:
            raise ValueError(f"config.dataset.{field} must be {' or '.join(map(repr, units))}, got {values[field]!r}")
    mapping = _mapping_option(values["columns"])
    labels = _names_option(values["label_columns"], "label_columns")
    ignored = _names_option(values["ignore_columns"], "ignore_columns")
    for name in labels:
        if name in CHANNELS:
            raise ValueError(f"config.dataset.label_columns: {name!r} is a channel of the contract, not a label")
        if name in ignored:
            raise ValueError(f"{name!r} is in both config.dataset.label_columns and config.dataset.ignore_columns")
    for name in ignored:
        if name in REQUIRED:
            raise ValueError(f"config.dataset.ignore_columns: {name!r} is a required column ({', '.join(REQUIRED)})")
    values.update(stride=int(stride), max_gap_s=float(gap), columns=",".join(f"{k}:{v}" for k, v in mapping.items()),
                  label_columns=",".join(labels), ignore_columns=",".join(ignored))
    return values


# ---------------------------------------------------------------------------------------
# Errors: `recordings/<version>: <file>[ row <n>]: <what>`.


@dataclasses.dataclass(frozen=True)
class _Where:
    version: str
    path: epath.Path

    def error(self, what: str, row: int | None = None) -> ValueError:
        return ValueError(f"recordings/{self.version}: {self.path}{'' if row is None else f' row {row}'}: {what}")


def _csv_records(path: epath.Path, errors: str = "replace") -> Iterator[tuple[int, list[str]]]:
    """(line on which the record starts, fields) of every non-blank record after the header,
    as pyarrow counts data rows (blank lines skipped). Only for locating an error."""
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", errors=errors, newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        line = reader.line_num
        for fields in reader:
            start, line = line + 1, reader.line_num
            if fields:
                yield start, fields


def _csv_line(path: epath.Path, index: int) -> int:
    """The line number (header = 1) of data row `index` (0-based) of a CSV file."""
    for i, (line, _) in enumerate(_csv_records(path)):
        if i == index:
            return line
    return index + 2  # (not found again: the file changed, or a quoting pyarrow reads otherwise)


# ---------------------------------------------------------------------------------------
# Files and headers.


def find_recordings(source_dir: epath.PathLike, version: str = "?") -> list[str]:
    """The recordings under `source_dir` (recursively, following folder links; names starting
    with '.' are skipped): paths relative to it, '/'-separated, sorted. Another file, no
    recording, or a folder link back into a folder already read (a loop) is a ValueError; a
    missing folder a FileNotFoundError."""
    root = epath.Path(source_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"recordings/{version}: the folder {root} does not exist (config.dataset.manual_dir)")
    local = "://" not in os.fspath(root)
    found: list[str] = []
    read: dict[str, str] = {}  # real path of each folder read -> its path relative to the root
    pending = [root]
    while pending:
        directory = pending.pop()
        if local:
            real, rel = os.path.realpath(directory), directory.relative_to(root).as_posix()
            if real in read:
                raise ValueError(f"recordings/{version}: {root}: the folder link {rel!r} leads to "
                                 f"{'the folder itself' if read[real] == '.' else repr(read[real])}, which is read "
                                 f"already (a loop or a second way in): remove the link")
            read[real] = rel
        for path in sorted(directory.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir():
                pending.append(path)
            else:
                found.append(path.relative_to(root).as_posix())
    found.sort()
    for rel in found:
        if not rel.lower().endswith(EXTENSIONS):
            raise _Where(version, root / rel).error(
                "not a recording: only .csv and .parquet files are read (move other files out of the folder, "
                "or start their names with '.')")
    if not found:
        raise ValueError(f"recordings/{version}: {root}: no recordings (.csv or .parquet files) in the folder")
    return found


def _fingerprint_of(root: epath.Path, files: Sequence[str], mode: str) -> str:
    digest = hashlib.sha256()
    local = "://" not in os.fspath(root)
    for rel in files:
        if mode == "content":
            content = hashlib.sha256()
            with (root / rel).open("rb") as f:
                while block := f.read(1 << 20):
                    content.update(block)
            digest.update(json.dumps([rel, content.hexdigest()]).encode())
            continue
        if local:  # nanoseconds; epath's stat has whole seconds
            stat = os.stat(root / rel)
            size, mtime = stat.st_size, stat.st_mtime_ns
        else:
            stat = (root / rel).stat()
            size, mtime = stat.length, stat.mtime
        digest.update(json.dumps([rel, size, mtime]).encode())
    return digest.hexdigest()


def fingerprint(source_dir: epath.PathLike, mode: str = "stat") -> str:
    """SHA-256 over every recording's path (relative) and, with `mode` 'stat', its size and
    modification time, or with 'content', the SHA-256 of its bytes (for file systems whose
    modification times cannot be trusted): the input pipeline refuses a build whose folder has
    changed since (files added, removed or rewritten); the build records its mode as metadata
    `fingerprint_mode`."""
    if mode not in FINGERPRINT_MODES:
        raise ValueError(f"config.dataset.fingerprint must be {' or '.join(map(repr, FINGERPRINT_MODES))}, "
                         f"got {mode!r}")
    return _fingerprint_of(epath.Path(source_dir), find_recordings(source_dir), mode)


def _is_parquet(rel: str) -> bool:
    return rel.lower().endswith(".parquet")


def _csv_header(path: epath.Path, where: _Where) -> list[str]:
    with path.open("rb") as f:
        head = f.read(_HEAD_BYTES)
    if not head.strip():
        raise where.error("empty file: a recording needs a header row (timestamp, acc_x, ...) and one row per sample")
    if b"\0" in head:
        raise where.error("not a CSV text file (binary content); only .csv and .parquet files are read")
    end = head.find(b"\n")
    if end < 0 and len(head) == _HEAD_BYTES:
        raise where.error(f"not a CSV file: no line break in its first {_HEAD_BYTES} bytes")
    try:
        line = (head if end < 0 else head[:end]).decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError:
        raise where.error("not a CSV text file (not UTF-8); only .csv and .parquet files are read") from None
    return next(csv.reader([line]), [])


def _parquet_header(path: epath.Path, where: _Where) -> list[str]:
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        with path.open("rb") as f:
            return list(pq.read_schema(f).names)
    except Exception as e:  # noqa: BLE001  (pyarrow raises several kinds for a bad file)
        raise where.error(f"not a Parquet file ({common.one_line(str(e))})") from None


def _check_columns(names: Sequence[str], where: _Where, renamed: bool, text: bool) -> list[str]:
    """The column names of a header (stripped, renamed by `columns`); errors for no header (a
    `text` file), missing, unnamed, repeated columns and a partial magnetometer."""
    names = list(names)
    if text and not any(n in REQUIRED for n in names):
        raise where.error(f"no header row naming the columns {', '.join(REQUIRED)} (first line: "
                          f"{','.join(names)[:80]!r}); other names: map them with config.dataset.columns="
                          f"'name:acc_x,...'")
    for i, name in enumerate(names):
        if not name:
            raise where.error(f"column {i + 1} has no name")
        if names.index(name) != i:
            raise where.error(f"column {name!r} appears twice" + (" (after config.dataset.columns)" if renamed else ""))
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        lower = {n.lower(): n for n in names}
        hint = [f"{lower[m]!r}" for m in missing if m in lower]
        raise where.error(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
                          + (f" (names are lower case: found {', '.join(hint)})" if hint else "")
                          + f"; columns: {', '.join(names)} (other names: map them with config.dataset.columns)")
    mag = [n for n in MAG if n in names]
    if 0 < len(mag) < 3:
        raise where.error(f"has {', '.join(mag)} but not {', '.join(n for n in MAG if n not in mag)}: give all "
                          f"three magnetometer columns or none")
    return names


# ---------------------------------------------------------------------------------------
# Reading one file: timestamps, channels, label strings.


@dataclasses.dataclass
class _Table:
    t: np.ndarray  # (N,) float64 seconds since the first timestamp
    origin_s: float  # the first timestamp, in seconds
    x: np.ndarray  # (N, F) float64, physical units
    labels: dict[str, tuple[np.ndarray, list[str]]]  # column -> (codes (N,) int32, -1 missing; their values)


def _sensor_like(name: str, detail: str, where: _Where) -> ValueError:
    return where.error(f"column {name!r} looks like a sensor channel, not a label ({detail}): name the label columns "
                       f"in config.dataset.label_columns, or leave this one out with config.dataset.ignore_columns")


def _label_strings(column, name: str, where: _Where, row_of, inferred: bool):
    """A label column as a pyarrow string array, nulls where there is no label."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.compute as pc  # noqa: PLC0415

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.dictionary_decode(), kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        strings = pc.utf8_trim_whitespace(column.cast(pa.string()))
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        strings = column.cast(pa.string())
    elif pa.types.is_floating(kind):  # integer labels with missing ones, as pandas writes them
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        known = np.isfinite(values)
        bad = known & (values != np.rint(values))
        if bad.any():
            i = int(np.argmax(bad))
            if inferred:
                raise _sensor_like(name, f"numbers such as {float(values[i])!r}", where)
            raise where.error(f"label column {name!r}: {float(values[i])!r} is not an integer (label values are "
                              f"strings "
                              f"or integers)", row_of(i))
        strings = pa.array(np.where(known, values, 0).astype(np.int64)).cast(pa.string())
        strings = pc.if_else(pa.array(known), strings, pa.scalar(None, pa.string()))
    else:
        raise where.error(f"label column {name!r} has type {kind}; label values must be strings or integers")
    return pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings)


def _encode(strings) -> tuple[np.ndarray, list[str]]:
    import pyarrow.compute as pc  # noqa: PLC0415

    encoded = pc.dictionary_encode(strings)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)
    return codes, [str(v) for v in encoded.dictionary.to_pylist()]


@functools.cache
def _null_values() -> frozenset[str]:
    """The cells pyarrow reads as null in a number column (then reported as empty / NaN)."""
    import pyarrow.csv as pacsv  # noqa: PLC0415

    return frozenset(pacsv.ConvertOptions().null_values)


def _number(value: str | None) -> float | None:
    """A cell as a number (None for a null cell); ValueError if it is not one."""
    if value is None or value.strip() in _null_values():
        return None
    if "_" in value:  # Python reads 1_000, pyarrow does not
        raise ValueError(value)
    return float(value)


def _first_not_a_number(values: Sequence[str | None]) -> int | None:
    for i, value in enumerate(values):
        try:
            _number(value)
        except ValueError:
            return i
    return None


def _iso_micros(value: str) -> int | None:
    """An ISO-8601 time as microseconds since 1970 (a time without zone taken as UTC: only
    differences matter), None if it is not one."""
    if not value or not value[0].isdigit() or "-" not in value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (moment - epoch) // datetime.timedelta(microseconds=1)


@dataclasses.dataclass
class _Times:
    values: np.ndarray  # (N,) int64 or float64 as written (ISO-8601: int64 microseconds)
    per_second: float  # values per second
    unit: str | None  # the timestamp_unit applied; None: the column carries its unit (ISO-8601, Parquet type)
    shown: Callable[[int], str]  # row i's timestamp as written, for messages


def _text_times(strings, unit: str, where: _Where, row_of) -> _Times:
    """A text timestamp column: integers (read exactly), decimal numbers, or ISO-8601 times."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.compute as pc  # noqa: PLC0415

    strings = pc.utf8_trim_whitespace(strings.combine_chunks() if isinstance(strings, pa.ChunkedArray) else strings)
    empty = pc.or_(pc.is_null(strings), pc.is_in(strings, value_set=pa.array(sorted(_null_values() | {""}))))
    empty = empty.to_numpy(zero_copy_only=False)
    if empty.any():
        raise where.error("timestamp is empty or not a finite number", row_of(int(np.argmax(empty))))
    # The cast to integers is only tried when the first timestamp is one: a failed cast costs
    # as much as reading the file.
    kinds = (pa.int64(), pa.float64()) if len(strings) and _INTEGER.fullmatch(strings[0].as_py()) else (pa.float64(),)
    for kind in kinds:
        try:
            values = pc.cast(strings, kind).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return _Times(values, TIMESTAMP_UNITS[unit], unit, lambda i, v=values: repr(v[i].item()))
    texts = strings.to_pylist()
    if _iso_micros(texts[0]) is None:
        bad = _first_not_a_number(texts)
        bad = 0 if bad is None else bad
        raise where.error(f"timestamp value {texts[bad]!r} is not a number (nor an ISO-8601 time)", row_of(bad))
    micros = []
    for i, text in enumerate(texts):
        value = _iso_micros(text)
        if value is None:
            raise where.error(f"timestamp value {text!r} is not an ISO-8601 time like the first row's "
                              f"{texts[0]!r}", row_of(i))
        micros.append(value)
    return _Times(np.asarray(micros, np.int64), 1e6, None, lambda i: repr(texts[i]))


def _parquet_times(column, unit: str, where: _Where, row_of) -> _Times:
    import pyarrow as pa  # noqa: PLC0415

    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.dictionary_decode(), kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _text_times(column.cast(pa.string()), unit, where, row_of)
    if column.null_count:
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        raise where.error("timestamp is empty or not a finite number", row_of(int(np.argmax(nulls))))
    if pa.types.is_timestamp(kind):  # since the epoch, in the type's unit
        values = column.cast(pa.int64()).to_numpy(zero_copy_only=False)
        return _Times(values, TIMESTAMP_UNITS[kind.unit], None, lambda i: repr(values[i].item()))
    if pa.types.is_integer(kind):
        values = column.cast(pa.int64()).to_numpy(zero_copy_only=False)
    elif pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    else:
        raise where.error(f"column timestamp has type {kind}; expected numbers, ISO-8601 text or a timestamp type")
    return _Times(values, TIMESTAMP_UNITS[unit], unit, lambda i: repr(values[i].item()))


def _read_csv(path: epath.Path, raw: list[str], names: list[str], wanted: list[str], where: _Where):
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.csv as pacsv  # noqa: PLC0415

    numeric = set(REQUIRED) - {TIMESTAMP} | set(MAG)
    raw_of = dict(zip(names, raw))
    types = {raw_of[n]: pa.float64() if n in numeric else pa.string() for n in wanted}
    options = pacsv.ConvertOptions(column_types=types, include_columns=[raw_of[n] for n in wanted],
                                   strings_can_be_null=False)
    try:
        with path.open("rb") as f:
            table = pacsv.read_csv(f, convert_options=options)
    except pa.ArrowInvalid as e:
        message = str(e)
        convert = re.search(r"In CSV column #(\d+): CSV conversion error to double: invalid value '(.*)'", message,
                            re.S)
        if convert and int(convert.group(1)) < len(names):
            k = int(convert.group(1))
            for line, fields in _csv_records(path):
                if len(fields) == len(names) and _first_not_a_number([fields[k]]) == 0:
                    raise where.error(f"{names[k]} value {fields[k]!r} is not a number", line) from None
            raise where.error(f"{names[k]} value {convert.group(2)!r} is not a number") from None
        if "invalid UTF8" in message:
            for line, fields in _csv_records(path, errors="surrogateescape"):
                for k, field in enumerate(fields):
                    if any("\udc80" <= c <= "\udcff" for c in field):
                        name = names[k] if k < len(names) else f"field {k + 1}"
                        raise where.error(f"{name} value {field.encode('utf-8', 'surrogateescape')!r} is not UTF-8 "
                                          f"text (save the file as UTF-8)", line) from None
            raise where.error("not UTF-8 text (save the file as UTF-8)") from None
        fields = re.search(r"Expected (\d+) columns, got (\d+)", message)
        if fields:
            for line, record in _csv_records(path):
                if len(record) != len(names):
                    raise where.error(f"{len(record)} fields, the header has {len(names)}", line) from None
        raise where.error(f"not a readable CSV file ({common.one_line(message)})") from None
    table = table.rename_columns([names[raw.index(c)] for c in table.column_names])
    return table, lambda i: _csv_line(path, i)


def _read_parquet(path: epath.Path, raw: list[str], names: list[str], wanted: list[str], where: _Where):
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    raw_of = dict(zip(names, raw))
    try:
        with path.open("rb") as f:
            table = pq.read_table(f, columns=[raw_of[n] for n in wanted])
    except Exception as e:  # noqa: BLE001
        raise where.error(f"not a readable Parquet file ({common.one_line(str(e))})") from None
    table = table.rename_columns([names[raw.index(c)] for c in table.column_names])
    row_of = lambda i: i + 1  # noqa: E731  (the 1-based data row)
    columns = {}
    for name in table.column_names:
        column = table[name].combine_chunks()
        if name in REQUIRED[1:] or name in MAG:
            column = _parquet_numbers(column, name, where, row_of)
        columns[name] = column
    return pa.table(columns), row_of


def _parquet_numbers(column, name: str, where: _Where, row_of):
    import pyarrow as pa  # noqa: PLC0415

    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.dictionary_decode(), kind.value_type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return column.cast(pa.float64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = column.to_pylist()
        bad = _first_not_a_number(values)
        if bad is not None:
            raise where.error(f"{name} value {values[bad]!r} is not a number", row_of(bad))
        return pa.array([_number(v) for v in values], pa.float64())
    raise where.error(f"column {name} has type {kind}; expected numbers")


def _check_rate(times: _Times, t: np.ndarray, where: _Where) -> None:
    """Refuses timestamps whose median step no IMU has: a wrong timestamp_unit, most often."""
    if len(t) < 2:
        return
    step = float(np.median(np.diff(t)))
    rate = 1.0 / step
    low, high = PLAUSIBLE_RATE_HZ
    if low <= rate <= high:
        return
    outside = f"outside the {low:g} Hz to {high / 1000:g} kHz of an IMU"
    if times.unit is None:
        raise where.error(f"timestamps step by a median {step:g} s: {rate:.3g} Hz, {outside}")
    written = step * times.per_second
    fits = [(abs(math.log(per_second / written / 100)), unit) for unit, per_second in TIMESTAMP_UNITS.items()
            if unit != times.unit and low <= per_second / written <= high]
    hint = ""
    if fits:
        unit = min(fits)[1]
        hint = f"; if they are {_UNIT_WORDS[unit]}, set config.dataset.timestamp_unit='{unit}'"
    raise where.error(f"timestamps step by a median {written:g} (in {times.unit}): {rate:.3g} Hz, {outside}"
                      f" (config.dataset.timestamp_unit='{times.unit}'){hint}")


def _read(path: epath.Path, rel: str, raw: list[str], names: list[str], features: Sequence[str],
          label_columns: Sequence[str], options: dict[str, Any], where: _Where) -> tuple[_Table, Any]:
    wanted = [TIMESTAMP, *features, *(n for n in names if n in label_columns)]
    if _is_parquet(rel):
        table, row_of = _read_parquet(path, raw, names, wanted, where)
        times = _parquet_times(table[TIMESTAMP].combine_chunks(), options["timestamp_unit"], where, row_of)
    else:
        table, row_of = _read_csv(path, raw, names, wanted, where)
        times = _text_times(table[TIMESTAMP], options["timestamp_unit"], where, row_of)
    x = np.empty((table.num_rows, len(features)))
    for j, name in enumerate(features):
        x[:, j] = table[name].to_numpy(zero_copy_only=False)
    values = times.values
    bad = ~np.isfinite(values)
    if bad.any():
        raise where.error("timestamp is empty or not a finite number", row_of(int(np.argmax(bad))))
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.argmax(bad.any(axis=1)))
        column = features[int(np.argmax(bad[i]))]
        raise where.error(f"{column} is empty, NaN or infinite", row_of(i))
    bad = np.diff(values) <= 0
    if bad.any():
        i = int(np.argmax(bad)) + 1
        raise where.error(f"timestamp {times.shown(i)} does not increase (the row before has {times.shown(i - 1)}); "
                          f"timestamps must increase strictly", row_of(i))
    # Differences before scaling: exact for integers (int64 nanoseconds since 1970 exceed float64's 53 bits).
    t = (values - values[0]).astype(np.float64) / times.per_second if len(values) else np.zeros(0)
    origin = float(values[0]) / times.per_second if len(values) else 0.0
    _check_rate(times, t, where)
    x[:, 0:3] *= ACC_UNITS[options["acc_unit"]]
    x[:, 3:6] *= GYRO_UNITS[options["gyro_unit"]]
    inferred = not options["label_columns"]
    labels = {n: _encode(_label_strings(table[n], n, where, row_of, inferred))
              for n in table.column_names if n in label_columns}
    return _Table(t, origin, x, labels), row_of


# ---------------------------------------------------------------------------------------
# Resampling.


def _snap(rate: float) -> float:
    nearest = round(rate)
    return float(nearest) if nearest and abs(rate - nearest) <= RATE_SNAP * rate else float(rate)


def raw_rate(t: np.ndarray) -> float:
    """1 / the median time step of increasing timestamps (>= 2), in Hz; a rate within
    0.01 % of a whole number of Hz is that number (timestamps are rounded when written)."""
    return _snap(1.0 / float(np.median(np.diff(t))))


def clock(t: np.ndarray) -> tuple[float, bool]:
    """(raw rate in Hz, regular) of a segment's increasing timestamps (>= 2). Regular: every
    timestamp within REGULAR_JITTER of a step of the least-squares line t = a + b i, the rate
    then 1 / b; else 1 / the median step. Both snapped to a whole number of Hz within 0.01 %."""
    t = np.asarray(t, np.float64)
    t = t - t[0]
    i = np.arange(len(t), dtype=np.float64) - (len(t) - 1) / 2
    mean = float(t.mean())
    slope = float(i @ (t - mean)) / float(i @ i)
    if slope > 0 and float(np.max(np.abs(t - mean - slope * i))) <= REGULAR_JITTER * slope:
        return _snap(1.0 / slope), True
    return raw_rate(t), False


def _running_median(values: np.ndarray, width: int) -> np.ndarray:
    """The median of the `width` (odd) values centred on each value, the ends repeated."""
    import scipy.ndimage  # noqa: PLC0415

    return scipy.ndimage.median_filter(np.asarray(values, np.float64), size=width, mode="nearest")


def rate_changes(t: np.ndarray) -> list[int]:
    """The samples (indices into t, increasing timestamps) at which the sampling rate changes:
    where the running median of RATE_WINDOW time steps moves by more than RATE_CHANGE from its
    value at the last change; pieces that end up with about the same median step, or with fewer
    than RATE_WINDOW steps, are joined again (jitter is no rate change)."""
    dt = np.diff(np.asarray(t, np.float64))
    if len(dt) < 2 * RATE_WINDOW:
        return []
    level = np.log(_running_median(dt, RATE_WINDOW))
    limit = math.log1p(RATE_CHANGE)
    cuts, start = [], 0
    while True:
        moved = np.abs(level[start:] - level[start]) > limit
        if not moved.any():
            break
        start += int(np.argmax(moved))
        cuts.append(start + 1)  # dt[start] is the first step at the new rate: sample start + 1 begins it
    if not cuts:
        return []
    edges = [0, *cuts, len(t)]
    pieces = [[a, b] for a, b in zip(edges[:-1], edges[1:])]
    joined = [pieces[0]]
    for a, b in pieces[1:]:
        last = joined[-1]
        if b - a <= RATE_WINDOW or last[1] - last[0] <= RATE_WINDOW:
            last[1] = b
            continue
        before, after = float(np.median(dt[last[0] : last[1] - 1])), float(np.median(dt[a : b - 1]))
        if abs(math.log(after / before)) <= limit:
            last[1] = b
        else:
            joined.append([a, b])
    return [a for a, _ in joined[1:]]


def _kaiser(u: np.ndarray) -> np.ndarray:
    inside = np.abs(u) < 1
    return np.where(inside, np.i0(KAISER_BETA * np.sqrt(np.where(inside, 1 - u * u, 0))) / np.i0(KAISER_BETA), 0.0)


def _extend(x: np.ndarray, count: int) -> np.ndarray:
    """x with `count` samples added at each end, each the point reflection of x about its end
    sample (repeated for a short x), so that a level or a slope carries on past the ends."""
    added = 0
    while added < count:
        m = min(count - added, len(x) - 1)
        if m == 0:
            return np.concatenate([np.repeat(x[:1], count - added, 0), x, np.repeat(x[-1:], count - added, 0)])
        x = np.concatenate([2 * x[:1] - x[m:0:-1], x, 2 * x[-1:] - x[-2 : -m - 2 : -1]])
        added += m
    return x


def lowpass_weights(phases: np.ndarray, raw: float, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(taps (K,), weights (P, K)): the low-pass evaluated at an output step that lies `phases`
    (P,) raw steps after a raw sample i, as weights of the raw samples i + taps; every row sums
    to 1 (gain 1 at 0 Hz). The kernel: sinc(2 fc tau) times a Kaiser window (beta KAISER_BETA)
    of half-length HALF_WIDTH_STEPS / min(raw, rate) seconds, fc = CUTOFF * min(raw, rate)."""
    slower = min(raw, rate)
    half_s = HALF_WIDTH_STEPS / slower
    reach = math.ceil(half_s * raw)
    taps = np.arange(-reach + 1, reach + 1)
    tau = (taps[None, :] - phases[:, None]) / raw
    weights = np.sinc(2 * CUTOFF * slower * tau) * _kaiser(tau / half_s)
    return taps, weights / weights.sum(axis=1, keepdims=True)


def _lowpass_at(grid: np.ndarray, positions: np.ndarray, raw: float, rate: float) -> np.ndarray:
    """The low-passed `grid` (N, F), sampled at `raw` Hz, at fractional sample `positions`."""
    base = np.floor(positions).astype(np.int64)
    phases, which = np.unique(np.round((positions - base) * _PHASES) / _PHASES, return_inverse=True)
    taps, weights = lowpass_weights(phases, raw, rate)
    reach = -int(taps[0]) + 1
    padded = _extend(grid, reach)
    out = np.empty((len(positions), grid.shape[1]))
    if len(phases) <= _STRIDED_PHASES:
        groups = [np.flatnonzero(which == j) for j in range(len(phases))]
        steps = [np.unique(np.diff(base[g])) for g in groups]
        if all(len(step) <= 1 for step in steps):  # a whole-number ratio of rates, or a ratio of small ones
            for j, (group, step) in enumerate(zip(groups, steps)):
                first = base[group[0]] + taps[0] + reach
                out[group] = _strided_filter(padded[first:], weights[j], int(step[0]) if len(step) else 1, len(group))
            return out
    _sparse_filter(padded, base + taps[0] + reach, weights, which, out)
    return out


def _strided_filter(samples: np.ndarray, weights: np.ndarray, step: int, count: int) -> np.ndarray:
    """(count, F): sum_k weights[k] samples[i step + k] for i < count, as matrix products: the
    samples cut into rows of `step`, the weights cut the same way (Q pieces); output i is the
    sum over q of piece q times row i + q. _STRIDED_OUTPUTS outputs at a time."""
    pieces = -(-len(weights) // step)
    kernel = np.zeros(pieces * step)
    kernel[: len(weights)] = weights
    kernel = kernel.reshape(pieces, step)
    features = samples.shape[1]
    out = np.zeros((count, features))
    for first in range(0, count, _STRIDED_OUTPUTS):
        n = min(_STRIDED_OUTPUTS, count - first)
        rows = n + pieces - 1
        cut = np.zeros((rows * step, features))
        available = samples[first * step : (first + rows) * step]
        cut[: len(available)] = available  # past the samples: weights of 0 only
        by_offset = cut.reshape(rows, step, features).transpose(1, 0, 2).reshape(step, rows * features)
        partial = (kernel @ by_offset).reshape(pieces, rows, features)
        for q in range(pieces):
            out[first : first + n] += partial[q, q : q + n]
    return out


def _sparse_filter(padded: np.ndarray, first: np.ndarray, weights: np.ndarray, which: np.ndarray,
                   out: np.ndarray) -> None:
    """out[m] = sum_k weights[which[m], k] padded[first[m] + k], a block of outputs at a time as
    a sparse matrix (a row of weights per output) times the samples."""
    import scipy.sparse  # noqa: PLC0415

    index = np.int32 if len(padded) < 2**31 - 1 else np.int64  # scipy's own choice: no copy in the matrix
    width = weights.shape[1]
    block = max(1, _SPARSE_WEIGHTS // width)
    for start in range(0, len(first), block):
        rows = first[start : start + block].astype(index)
        columns = (rows[:, None] + np.arange(width, dtype=index)[None, :]).ravel()
        indptr = np.arange(len(rows) + 1, dtype=index) * index(width)
        matrix = scipy.sparse.csr_matrix((weights[which[start : start + block]].ravel(), columns, indptr),
                                         shape=(len(rows), len(padded)))
        out[start : start + block] = matrix @ padded


def _nearest(t: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The index of the timestamp nearest each of `times` (a tie: the earlier one)."""
    right = np.clip(np.searchsorted(t, times), 1, len(t) - 1)
    left = right - 1
    return np.where(times - t[left] <= t[right] - times, left, right)


def output_length(num_samples: int, raw: float, rate: float) -> int:
    """Steps at `rate` Hz of `num_samples` samples at `raw` Hz, each sample covering one step
    (num_samples / raw seconds)."""
    return math.floor(num_samples * rate / raw + 1e-9)


def resample(t: np.ndarray, x: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """One segment (timestamps t (N,) increasing, N >= 2; readings x (N, F)) at `rate` Hz:
    (readings (M, F) float64, the raw sample whose labels each output step takes (M,)).

    A regular segment (`clock`) is its samples at its rate R; an irregular one is first
    interpolated linearly onto t[0] + k / R (k = 0 .. floor((t[-1] - t[0]) R)), R = 1 / its
    median step. At R == rate those samples are the output; else the output step k is the
    low-pass (`lowpass_weights`) at sample position k R / rate, M = floor(n rate / R) for n
    samples at R (point-reflected at the ends). Labels: the raw sample nearest the step in time
    (regular: by position; a tie: the earlier one). The caller refuses rates above R by > 1 %."""
    t = np.asarray(t, np.float64)
    t = t - t[0]
    x = np.asarray(x, np.float64)
    raw, regular = clock(t)
    if regular:
        grid = x
    else:
        steps = np.arange(math.floor(t[-1] * raw + 1e-9) + 1) / raw
        grid = np.stack([np.interp(steps, t, x[:, c]) for c in range(x.shape[1])], axis=1)
    positions = np.arange(output_length(len(grid), raw, rate)) * (raw / rate)
    out = grid[: len(positions)].copy() if raw == rate else _lowpass_at(grid, positions, raw, rate)
    if regular:
        rows = np.clip(np.ceil(positions - 0.5), 0, len(t) - 1).astype(np.int64)
    else:
        rows = _nearest(t, positions / raw)
    return out, rows


# ---------------------------------------------------------------------------------------
# The folder.


@dataclasses.dataclass
class Recording:
    """One file, resampled: its segments' readings (M, F) float32 and labels (M, L) int32
    (class indices in the folder's label columns, -1 = none)."""

    file: str  # relative to the folder
    raw_rate_hz: float | None
    num_segments: int
    segments: list[tuple[np.ndarray, np.ndarray]]
    windows: int = 0
    segment_starts_s: list[float] = dataclasses.field(default_factory=list)  # each segment's first timestamp
    # segments slower than the version's rate and long enough for a window: {row, rate_hz, seconds}
    skipped_segments: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Source:
    """A folder of recordings read for one version and options (`read_source`)."""

    source_dir: str
    sampling_rate: int
    seq_len: int
    stride: int  # >= 1
    num_features: int
    label_columns: list[str]
    label_classes: dict[str, list[str]]
    recordings: list[Recording]
    options: dict[str, Any]
    fingerprint: str = ""  # of the folder as read (`fingerprint(source_dir, options['fingerprint'])`)
    spill: _Spill | None = dataclasses.field(default=None, repr=False)  # where resampled steps past memory went

    def close(self) -> None:
        """Removes the resampled steps `read_source` spilled to files (the segments that were
        there can no longer be read)."""
        if self.spill is not None:
            self.spill.close()

    @property
    def num_windows(self) -> int:
        return sum(r.windows for r in self.recordings)

    def starts(self, length: int) -> range:
        return range(0, length - self.seq_len + 1, self.stride)

    def windows(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """(imu (S, F) float32, label (S, L) int64, recording index) of every window, in order:
        recordings, segments, windows in time order. A column whose label is missing at a step
        or not the same at every step is -1 at every step of the window (`window_chunks`)."""
        for chunk in self.window_chunks(WINDOWS_PER_CHUNK):
            for imu, label, index in zip(chunk["imu"], chunk["label"], chunk["recording"]):
                yield imu, label, int(index)

    def window_chunks(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        """The windows of `windows` in chunks of about `size` (at least `size`, but the last):
        `imu` float32 [k, S, F], `label` int64 [k, S, L], `recording` int64 [k]."""
        pending, count = [], 0
        for index, recording in enumerate(self.recordings):
            for imu, labels in recording.segments:
                starts = np.asarray(self.starts(len(imu)), np.int64)
                changes = _label_changes(labels) if len(starts) else None
                for first in range(0, len(starts), size):
                    pending.append(_segment_windows(imu, labels, changes, starts[first : first + size],
                                                    self.seq_len, index))
                    count += len(pending[-1]["recording"])
                    if count >= size:
                        yield _concatenate(pending)
                        pending, count = [], 0
        if pending:
            yield _concatenate(pending)

    def window_times(self) -> Iterator[tuple[int, float]]:
        """(recording index, start time in the recording's seconds) of every window, in the
        order of `windows`."""
        for index, recording in enumerate(self.recordings):
            for (imu, _), first in zip(recording.segments, recording.segment_starts_s):
                for start in self.starts(len(imu)):
                    yield index, first + start / self.sampling_rate

    def metadata(self) -> dict[str, Any]:
        return dict(
            num_windows=self.num_windows,
            num_features=self.num_features,
            num_labels=len(self.label_columns),
            label_columns=list(self.label_columns),
            label_classes={c: list(n) for c, n in self.label_classes.items()},
            missing_label=MISSING_LABEL,
            source_dir=self.source_dir,
            options=dict(self.options),
            fingerprint_mode=self.options.get("fingerprint", "stat"),
            recordings=[
                {"file": r.file, "windows": r.windows,
                 "raw_rate_hz": None if r.raw_rate_hz is None else round(r.raw_rate_hz, 3), "segments": r.num_segments,
                 "skipped_segments": [dict(s) for s in r.skipped_segments]}
                for r in self.recordings
            ],
        )

WINDOWS_PER_CHUNK = 4096  # windows cut at once by `Source.windows`


class _Spill:
    """Where `read_source` keeps resampled arrays: in memory up to SPILL_AFTER_BYTES in all, then
    as .npy files memory-mapped from a temporary folder made in `parent` (None: memory only)."""

    def __init__(self, parent: epath.PathLike | None):
        self._folder = None
        if parent is not None and "://" not in os.fspath(parent):
            self._folder = tempfile.TemporaryDirectory(prefix=".recordings-resampled-", dir=os.fspath(parent))
        self._in_memory = self._files = 0
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        with self._lock:
            to_file = self._folder is not None and self._in_memory + nbytes > SPILL_AFTER_BYTES
            self._in_memory += 0 if to_file else nbytes
            self._files += to_file
            name = f"{self._files}.npy"
        if not to_file:
            return np.empty(shape, dtype)
        return np.lib.format.open_memmap(os.path.join(self._folder.name, name), mode="w+", dtype=dtype, shape=shape)

    def keep(self, array: np.ndarray, dtype=None) -> np.ndarray:
        """`array` (cast to `dtype`) where it is kept."""
        kept = self.empty(array.shape, array.dtype if dtype is None else dtype)
        kept[...] = array
        return kept

    def close(self) -> None:
        if self._folder is not None:
            self._folder.cleanup()


def _label_changes(labels: np.ndarray) -> np.ndarray:
    """(M, L): how often each column of a segment's labels (M, L) changed up to each step."""
    return np.concatenate([np.zeros((1, labels.shape[1]), np.int64), np.cumsum(labels[1:] != labels[:-1], axis=0)])


def _segment_windows(imu: np.ndarray, labels: np.ndarray, changes: np.ndarray, starts: np.ndarray, seq_len: int,
                     recording: int) -> dict[str, np.ndarray]:
    """The windows of one segment (imu (M, F), labels (M, L), their `_label_changes`) at `starts`
    (evenly spaced): a label column not the same at every step of a window (or missing, -1) is
    -1 at every step of it."""
    first = labels[starts].astype(np.int64)
    # the same at every step: no change between the window's first and last step
    keep = (changes[starts + seq_len - 1] == changes[starts]) & (first >= 0)
    label = np.empty((len(starts), seq_len, labels.shape[1]), np.int64)
    label[...] = np.where(keep, first, MISSING_LABEL)[:, None, :]
    # The windows as a strided view of the segment, copied once (a gather by index is 5x slower).
    rows = np.asarray(imu)[starts[0] :] if len(starts) else np.asarray(imu)
    step = int(starts[1] - starts[0]) if len(starts) > 1 else 1
    windows = np.lib.stride_tricks.as_strided(rows, shape=(len(starts), seq_len, imu.shape[1]), writeable=False,
                                              strides=(step * rows.strides[0], *rows.strides))
    return {"imu": np.array(windows), "label": label, "recording": np.full(len(starts), recording, np.int64)}


def _concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _class_names(values: set[str]) -> tuple[list[str], dict[str, int]]:
    """Sorted class names of a column (numerically if every value is an integer, then named
    by the integer) and the index of every value."""
    if values and all(_INTEGER.fullmatch(v) for v in values):
        numbers = sorted({int(v) for v in values})
        index = {n: i for i, n in enumerate(numbers)}
        return [str(n) for n in numbers], {v: index[int(v)] for v in values}
    names = sorted(values)
    return names, {v: i for i, v in enumerate(names)}


def _is_number(value: str) -> bool:
    try:
        return _number(value) is not None
    except ValueError:
        return False


def _split(t: np.ndarray, max_gap_s: float) -> list[tuple[int, int]]:
    """(first, end) samples of each segment: split at steps over max_gap_s, then at rate changes."""
    if not len(t):
        return []
    cuts = np.flatnonzero(np.diff(t) > max_gap_s) + 1
    bounds = []
    for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(t)]):
        edges = [a, *(a + c for c in rate_changes(t[a:b])), b]
        bounds += zip(edges[:-1], edges[1:])
    return bounds


@dataclasses.dataclass
class _ReadFile:
    """One file read and resampled (`_read_file`): its segments [(imu (M, F) float32, label codes
    (M, columns it has) int32 or None, first timestamp)], raw rate, segment count, {column it has:
    its values}, skipped slow segments, and (where, row_of, first sample, rate) of every segment
    too slow for the version."""

    rel: str
    segments: list[tuple[np.ndarray, np.ndarray | None, float]]
    rate: float | None
    num_segments: int
    labels: dict[str, list[str]]
    skipped: list[dict[str, Any]]
    slow: list[tuple[_Where, Any, int, float]]
    rows: int  # raw samples read


def _release_parsed() -> None:
    """Hands the memory pyarrow kept from a parsed file back to the system (its allocator keeps
    freed pages for reuse: about 40 bytes a sample, per reading thread)."""
    import pyarrow as pa  # noqa: PLC0415

    pa.default_memory_pool().release_unused()


def _read_file(root: epath.Path, rel: str, raw: list[str], names: list[str], version: str, sampling_rate: int,
               seq_len: int, features: Sequence[str], label_columns: Sequence[str], options: dict[str, Any],
               spill: _Spill) -> _ReadFile:
    """Reads one recording and resamples its segments; only the resampled steps are kept."""
    where = _Where(version, root / rel)
    table, row_of = _read(root / rel, rel, raw, names, features, label_columns, options, where)
    _release_parsed()
    t, x = table.t, table.x
    dt = np.diff(t)
    within = dt[dt <= options["max_gap_s"]]  # the time steps inside segments
    rate = _snap(1.0 / float(np.median(within))) if len(within) else None
    bounds = _split(t, options["max_gap_s"])
    segments, skipped, slow = [], [], []
    for a, b in bounds:
        if b - a < 2:
            continue
        segment_rate, _ = clock(t[a:b])
        seconds = (b - a) / segment_rate
        if sampling_rate > segment_rate * (1 + UPSAMPLE_TOLERANCE):
            slow.append((where, row_of, a, segment_rate))
            if seconds * sampling_rate >= seq_len - 1e-9:  # it would have made a window
                skipped.append({"row": row_of(a), "rate_hz": round(segment_rate, 3), "seconds": round(seconds, 3)})
                logging.warning("recordings/%s: %s row %d: %g s sampled at %.4g Hz, below the %d Hz of the "
                                "version: skipped (recordings are never up-sampled)", version, root / rel,
                                skipped[-1]["row"], seconds, segment_rate, sampling_rate)
            continue
        if output_length(b - a, segment_rate, sampling_rate) < seq_len:
            continue  # too short for a window
        out, rows = resample(t[a:b], x[a:b], sampling_rate)
        if len(out) >= seq_len:
            codes = np.stack([c[rows + a] for c, _ in table.labels.values()], axis=1) if table.labels else None
            segments.append((spill.keep(out, np.float32), None if codes is None else spill.keep(codes),
                             table.origin_s + float(t[a])))
    return _ReadFile(rel, segments, rate, len(bounds), {c: v for c, (_, v) in table.labels.items()}, skipped, slow,
                     len(t))


def _read_files(root: epath.Path, files: Sequence[str], headers: Sequence[tuple[list[str], list[str]]],
                version: str, sampling_rate: int, seq_len: int, features: Sequence[str],
                label_columns: Sequence[str], options: dict[str, Any], spill: _Spill) -> list[_ReadFile]:
    """`_read_file` of every file, in order, READ_THREADS at a time (parsing, the low-pass and
    the spill's writes release the GIL); the first failing file in order raises, and the files
    not started then are not read. Logs progress every PROGRESS_S seconds."""
    threads = max(1, min(len(files), READ_THREADS or os.cpu_count() or 1))
    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="recordings-read")
    started = logged = time.monotonic()
    parsed, rows = [], 0
    try:
        futures = [pool.submit(_read_file, root, rel, raw, names, version, sampling_rate, seq_len, features,
                               label_columns, options, spill) for rel, (raw, names) in zip(files, headers)]
        for future in futures:
            parsed.append(future.result())
            rows += parsed[-1].rows
            if time.monotonic() - logged > PROGRESS_S and len(parsed) < len(files):
                logged = time.monotonic()
                rate = len(parsed) / (logged - started)
                logging.info("recordings/%s: %d of %d recordings read (%.2g M samples/s), %.0f s to go", version,
                             len(parsed), len(files), rows / (logged - started) / 1e6,
                             (len(files) - len(parsed)) / rate)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return parsed


def read_source(source_dir: epath.PathLike, sampling_rate: int, seq_len: int, *, stride: int = 0,
                max_gap_s: float = 1.0, acc_unit: str = "m/s^2", gyro_unit: str = "rad/s", timestamp_unit: str = "s",
                columns: str | dict = "", label_columns: str | Sequence[str] = "",
                ignore_columns: str | Sequence[str] = "", fingerprint: str = "stat",
                spill_dir: epath.PathLike | None = None) -> Source:
    """Reads and checks every recording under `source_dir` and resamples it to `sampling_rate`
    (see README.md); the options are SOURCE_OPTIONS (OPTION_HELP). ValueError naming the file
    (and row) for any malformed input, naming `config.dataset.<option>` for a bad option, when
    the folder changes while it is read, and when the folder makes no window of `seq_len` steps.

    Memory: READ_THREADS files' raw samples at a time, and the resampled steps of the folder;
    with `spill_dir` (a local folder), the resampled steps beyond SPILL_AFTER_BYTES go to
    memory-mapped files in a temporary folder inside it, removed by `Source.close()` (or when
    the Source is collected)."""
    options = check_options(stride=stride, max_gap_s=max_gap_s, acc_unit=acc_unit, gyro_unit=gyro_unit,
                            timestamp_unit=timestamp_unit, columns=columns, label_columns=label_columns,
                            ignore_columns=ignore_columns, fingerprint=fingerprint)
    version = f"{sampling_rate}_{seq_len}"
    root = epath.Path(source_dir)
    files = find_recordings(root, version)
    before = _fingerprint_of(root, files, options["fingerprint"])
    mapping = dict(item.split(":") for item in options["columns"].split(",") if item)
    wanted_labels = [n for n in options["label_columns"].split(",") if n]
    ignored = [n for n in options["ignore_columns"].split(",") if n]

    raws = []
    for rel in files:
        where = _Where(version, root / rel)
        raws.append(_parquet_header(root / rel, where) if _is_parquet(rel) else _csv_header(root / rel, where))
    present = {n.strip() for raw in raws for n in raw}
    for field, names in (("columns", mapping), ("label_columns", wanted_labels), ("ignore_columns", ignored)):
        absent = [n for n in names if n not in present]
        if absent:
            raise ValueError(f"recordings/{version}: {root}: config.dataset.{field} names {absent[0]!r}, a column "
                             f"no recording has (the first one's: {', '.join(n.strip() for n in raws[0])})")
    headers = []
    for rel, raw in zip(files, raws):
        names = [mapping.get(n.strip(), n.strip()) for n in raw]
        headers.append((raw, _check_columns(names, _Where(version, root / rel), bool(mapping), not _is_parquet(rel))))
    use_mag = all(all(m in names for m in MAG) for _, names in headers) and not set(MAG) & set(ignored)
    features = list(common.FEATURE_NAMES[: 9 if use_mag else 6])
    if wanted_labels:
        label_columns = wanted_labels
    else:
        label_columns = list(dict.fromkeys(n for _, names in headers for n in names
                                           if n not in CHANNELS and n not in ignored))
    step = options["stride"] or seq_len

    spill = _Spill(spill_dir)
    try:
        source = _resampled_source(root, files, headers, version, sampling_rate, seq_len, step, features,
                                   label_columns, bool(wanted_labels), options, before, spill)
    except BaseException:
        spill.close()
        raise
    return source


def _resampled_source(root: epath.Path, files: Sequence[str], headers: Sequence[tuple[list[str], list[str]]],
                      version: str, sampling_rate: int, seq_len: int, step: int, features: Sequence[str],
                      label_columns: list[str], labels_named: bool, options: dict[str, Any], before: str,
                      spill: _Spill) -> Source:
    """The rest of `read_source`: the files read, their labels indexed in the folder's classes."""
    parsed = _read_files(root, files, headers, version, sampling_rate, seq_len, features, label_columns, options,
                         spill)
    slow = [entry for p in parsed for entry in p.slow]
    classes, lookup = {}, {}
    for column in label_columns:
        values = {v for p in parsed if column in p.labels for v in p.labels[column]}
        if not labels_named and values and all(_is_number(v) for v in values):
            fractional = next((v for v in sorted(values) if not _INTEGER.fullmatch(v.strip())), None)
            if fractional is not None or len(values) > MAX_LABEL_CLASSES:
                first = next(p.rel for p in parsed if column in p.labels)
                detail = (f"numbers such as {fractional!r}" if fractional is not None
                          else f"{len(values)} distinct numbers, more than {MAX_LABEL_CLASSES}")
                raise _sensor_like(column, detail, _Where(version, root / first))
        classes[column], lookup[column] = _class_names(values)
    recordings = []
    for p in parsed:
        # a file's code -> the class index; code -1 (no label) -> the last entry, -1
        luts = [np.asarray([lookup[c][v] for v in values] + [MISSING_LABEL], np.int32)
                for c, values in p.labels.items()]
        positions = [label_columns.index(c) for c in p.labels]
        kept = []
        for imu, codes, _ in p.segments:
            y = spill.empty((len(imu), len(label_columns)), np.int32)
            for a in range(0, len(imu), _LABEL_ROWS):
                block = np.full((min(_LABEL_ROWS, len(imu) - a), len(label_columns)), MISSING_LABEL, np.int32)
                for k, (j, lut) in enumerate(zip(positions, luts)):
                    block[:, j] = lut[codes[a : a + len(block), k]]
                y[a : a + len(block)] = block
            kept.append((imu, y))
        recordings.append(Recording(p.rel, p.rate, p.num_segments, kept,
                                    segment_starts_s=[first for *_, first in p.segments], skipped_segments=p.skipped))
    after = _fingerprint_of(root, find_recordings(root, version), options["fingerprint"])
    if after != before:
        raise ValueError(f"recordings/{version}: {root}: the folder changed while it was read (a recording added, "
                         f"removed or rewritten); build again when it is complete")
    source = Source(str(root), sampling_rate, seq_len, step, len(features), label_columns, classes, recordings,
                    options, before, spill)
    for recording in recordings:
        recording.windows = sum(len(source.starts(len(imu))) for imu, _ in recording.segments)
    if source.num_windows == 0 and slow:
        where, row_of, first, rate = slow[0]
        fastest = max(r for *_, r in slow)
        raise where.error(f"sampled at {rate:.4g} Hz (the segment from this row on), below the {sampling_rate} Hz of "
                          f"version {version}, and no recording makes a window at {sampling_rate} Hz: recordings are "
                          f"never up-sampled; choose a rate of at most {fastest:.4g} Hz", row_of(first))
    if source.num_windows == 0:
        raise ValueError(f"recordings/{version}: {root}: the recordings are shorter than one window ({seq_len} steps "
                         f"at {sampling_rate} Hz = {seq_len / sampling_rate:g} s without a pause over max_gap_s = "
                         f"{options['max_gap_s']:g} s); choose a shorter window")
    return source
