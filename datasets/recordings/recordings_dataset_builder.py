"""recordings: your own continuous IMU recordings (one CSV or Parquet file each), resampled to
a version's rate and cut into windows. README.md beside this file states the contract.

The whole folder is read and checked in `_split_generators`, before the first example is
written: `read_source` parses every file once (pyarrow), splits it at gaps, resamples each
segment (the reference's block averaging, `common.downsample`, on regularly sampled segments;
linear interpolation otherwise) and keeps the resampled segments; the windows are cut from
them as the examples are written.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from limubert_jax.datasets import common

TIMESTAMP = "timestamp"
ACC, GYRO, MAG = common.FEATURE_NAMES[0:3], common.FEATURE_NAMES[3:6], common.FEATURE_NAMES[6:9]
REQUIRED = (TIMESTAMP, *ACC, *GYRO)
EXTENSIONS = (".csv", ".parquet")
MISSING_LABEL = common.MISSING_LABEL
ACC_UNITS = {"m/s^2": 1.0, "g": 9.80665}  # factor to m/s^2
GYRO_UNITS = {"rad/s": 1.0, "deg/s": math.pi / 180}  # factor to rad/s
REGULAR = 0.1  # a segment is regular if every time step is within 10 % of its median
UPSAMPLE_TOLERANCE = 0.01  # a target rate up to 1 % above the raw rate is interpolated
RATE_SNAP = 1e-4  # a raw rate within 0.01 % of a whole number of Hz is that number
_HEAD_BYTES = 1 << 16
_INTEGER = re.compile(r"[+-]?\d+")


# ---------------------------------------------------------------------------------------
# Errors: `recordings/<version>: <file>[ row <n>]: <what>`.


@dataclasses.dataclass(frozen=True)
class _Where:
    version: str
    path: epath.Path

    def error(self, what: str, row: int | None = None) -> ValueError:
        return ValueError(f"recordings/{self.version}: {self.path}{'' if row is None else f' row {row}'}: {what}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _csv_records(path: epath.Path) -> Iterator[tuple[int, list[str]]]:
    """(line on which the record starts, fields) of every non-blank record after the header,
    as pyarrow counts data rows (blank lines skipped). Only for locating an error."""
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="") as f:
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
    """The recordings under `source_dir` (recursively; names starting with '.' are skipped):
    paths relative to it, '/'-separated, sorted. Another file or no recording is a ValueError;
    a missing folder a FileNotFoundError."""
    root = epath.Path(source_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"recordings/{version}: the folder {root} does not exist (config.dataset.manual_dir)")
    found: list[str] = []
    pending = [root]
    while pending:
        directory = pending.pop()
        for path in directory.iterdir():
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


def fingerprint(source_dir: epath.PathLike) -> str:
    """SHA-256 over every recording's path (relative), size and modification time: the
    input pipeline refuses a build whose folder has changed since (files added, removed or
    rewritten)."""
    root = epath.Path(source_dir)
    digest = hashlib.sha256()
    local = "://" not in os.fspath(root)
    for rel in find_recordings(root):
        if local:  # nanoseconds; epath's stat has whole seconds
            stat = os.stat(root / rel)
            size, mtime = stat.st_size, stat.st_mtime_ns
        else:
            stat = (root / rel).stat()
            size, mtime = stat.length, stat.mtime
        digest.update(json.dumps([rel, size, mtime]).encode())
    return digest.hexdigest()


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
    names = next(csv.reader([line]), [])
    if not any(n.strip() in REQUIRED for n in names):
        raise where.error(f"no header row naming the columns {', '.join(REQUIRED)} (first line: {line[:80]!r})")
    return names


def _parquet_header(path: epath.Path, where: _Where) -> list[str]:
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        with path.open("rb") as f:
            return list(pq.read_schema(f).names)
    except Exception as e:  # noqa: BLE001  (pyarrow raises several kinds for a bad file)
        raise where.error(f"not a Parquet file ({_one_line(str(e))})") from None


def _check_columns(raw: Sequence[str], where: _Where) -> list[str]:
    """The column names (stripped) of a header; errors for missing, unnamed, repeated columns
    and a partial magnetometer."""
    names = [n.strip() for n in raw]
    for i, name in enumerate(names):
        if not name:
            raise where.error(f"column {i + 1} has no name")
        if names.index(name) != i:
            raise where.error(f"column {name!r} appears twice")
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        lower = {n.lower(): n for n in names}
        hint = [f"{lower[m]!r}" for m in missing if m in lower]
        raise where.error(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
                          + (f" (names are lower case: found {', '.join(hint)})" if hint else "")
                          + f"; columns: {', '.join(names)}")
    mag = [n for n in MAG if n in names]
    if 0 < len(mag) < 3:
        raise where.error(f"has {', '.join(mag)} but not {', '.join(n for n in MAG if n not in mag)}: give all "
                          f"three magnetometer columns or none")
    return names


# ---------------------------------------------------------------------------------------
# Reading one file: timestamps, channels, label strings.


@dataclasses.dataclass
class _Table:
    t: np.ndarray  # (N,) float64 seconds
    x: np.ndarray  # (N, F) float64, physical units
    labels: dict[str, tuple[np.ndarray, list[str]]]  # column -> (codes (N,) int32, -1 missing; their values)


def _label_strings(column, name: str, where: _Where, row_of):
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
            raise where.error(f"label column {name!r}: {float(values[i])!r} is not an integer (label values are strings "
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


def _read_csv(path: epath.Path, raw: list[str], names: list[str], wanted: list[str], where: _Where):
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.csv as pacsv  # noqa: PLC0415

    numeric = set(REQUIRED) | set(MAG)
    raw_of = dict(zip(names, raw))
    types = {raw_of[n]: pa.float64() if n in numeric else pa.string() for n in wanted}
    options = pacsv.ConvertOptions(column_types=types, include_columns=[raw_of[n] for n in wanted],
                                   strings_can_be_null=False)
    try:
        with path.open("rb") as f:
            table = pacsv.read_csv(f, convert_options=options)
    except pa.ArrowInvalid as e:
        message = str(e)
        convert = re.search(r"In CSV column #(\d+): CSV conversion error to double: invalid value '(.*)'", message, re.S)
        if convert and int(convert.group(1)) < len(names):
            k = int(convert.group(1))
            for line, fields in _csv_records(path):
                if len(fields) == len(names) and _first_not_a_number([fields[k]]) == 0:
                    raise where.error(f"{names[k]} value {fields[k]!r} is not a number", line) from None
            raise where.error(f"{names[k]} value {convert.group(2)!r} is not a number") from None
        fields = re.search(r"Expected (\d+) columns, got (\d+)", message)
        if fields:
            for line, record in _csv_records(path):
                if len(record) != len(names):
                    raise where.error(f"{len(record)} fields, the header has {len(names)}", line) from None
        raise where.error(f"not a readable CSV file ({_one_line(message)})") from None
    table = table.rename_columns([names[raw.index(c)] for c in table.column_names])
    return table, lambda i: _csv_line(path, i)


def _read_parquet(path: epath.Path, wanted: list[str], where: _Where):
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        with path.open("rb") as f:
            table = pq.read_table(f, columns=wanted)
    except Exception as e:  # noqa: BLE001
        raise where.error(f"not a readable Parquet file ({_one_line(str(e))})") from None
    row_of = lambda i: i + 1  # noqa: E731  (the 1-based data row)
    columns = {}
    for name in table.column_names:
        column = table[name].combine_chunks()
        if name in REQUIRED or name in MAG:
            column = _parquet_numbers(column, name, where, row_of)
        columns[name] = column
    return pa.table(columns), row_of


def _parquet_numbers(column, name: str, where: _Where, row_of):
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.compute as pc  # noqa: PLC0415

    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.dictionary_decode(), kind.value_type
    if name == TIMESTAMP and pa.types.is_timestamp(kind):  # seconds since the epoch
        per_second = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[kind.unit]
        return pc.divide(column.cast(pa.int64()).cast(pa.float64()), per_second)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return column.cast(pa.float64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = column.to_pylist()
        bad = _first_not_a_number(values)
        if bad is not None:
            raise where.error(f"{name} value {values[bad]!r} is not a number", row_of(bad))
        return pa.array([_number(v) for v in values], pa.float64())
    raise where.error(f"column {name} has type {kind}; expected numbers")


def _read(path: epath.Path, rel: str, raw: list[str], names: list[str], features: Sequence[str],
          label_columns: Sequence[str], acc_unit: str, gyro_unit: str, where: _Where) -> tuple[_Table, Any]:
    wanted = [TIMESTAMP, *features, *(n for n in names if n in label_columns)]
    if _is_parquet(rel):
        table, row_of = _read_parquet(path, wanted, where)
    else:
        table, row_of = _read_csv(path, raw, names, wanted, where)
    t = table[TIMESTAMP].to_numpy(zero_copy_only=False).astype(np.float64)
    x = np.stack([table[n].to_numpy(zero_copy_only=False).astype(np.float64) for n in features], axis=1)
    bad = ~np.isfinite(t)
    if bad.any():
        raise where.error("timestamp is empty or not a finite number", row_of(int(np.argmax(bad))))
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.argmax(bad.any(axis=1)))
        column = features[int(np.argmax(bad[i]))]
        raise where.error(f"{column} is empty, NaN or infinite", row_of(i))
    bad = np.diff(t) <= 0
    if bad.any():
        i = int(np.argmax(bad)) + 1
        raise where.error(f"timestamp {float(t[i])!r} does not increase (the row before has {float(t[i - 1])!r}); "
                          f"timestamps must increase strictly", row_of(i))
    x[:, 0:3] *= ACC_UNITS[acc_unit]
    x[:, 3:6] *= GYRO_UNITS[gyro_unit]
    labels = {n: _encode(_label_strings(table[n], n, where, row_of)) for n in table.column_names if n in label_columns}
    return _Table(t, x, labels), row_of


# ---------------------------------------------------------------------------------------
# Resampling.


def _snap(rate: float) -> float:
    nearest = round(rate)
    return float(nearest) if nearest and abs(rate - nearest) <= RATE_SNAP * rate else float(rate)


def raw_rate(t: np.ndarray) -> float:
    """1 / the median time step of increasing timestamps (>= 2), in Hz; a rate within
    0.01 % of a whole number of Hz is that number (timestamps are rounded when written)."""
    return _snap(1.0 / float(np.median(np.diff(t))))


def is_regular(t: np.ndarray) -> bool:
    """Every time step within 10 % of the median step."""
    dt = np.diff(t)
    median = float(np.median(dt))
    return bool(np.all(np.abs(dt - median) <= REGULAR * median))


def resample(t: np.ndarray, x: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """One segment (timestamps t (N,) increasing, N >= 2; readings x (N, F)) at `rate` Hz:
    (readings (M, F) float64, the raw sample whose labels each output step takes (M,)).

    Regular segments (`is_regular`) at least as fast as `rate`: the reference's block
    averaging, `common.downsample(x, raw_rate(t), rate)`, each step labelled by its block's
    first sample. Otherwise linear interpolation of every channel at t[0] + k / rate (k =
    0, 1, ... while within the segment), each step labelled by the raw sample nearest in time
    (a tie: the earlier one). The caller refuses rates above the raw rate (by > 1 %)."""
    raw = raw_rate(t)
    if raw >= rate and is_regular(t):
        out = common.downsample(x, raw, rate)
        return out, np.asarray([start for start, _ in common.downsample_blocks(len(x), raw, rate)], np.int64)
    rel = t - t[0]
    steps = np.arange(math.floor(rel[-1] * rate + 1e-9) + 1) / rate
    out = np.stack([np.interp(steps, rel, x[:, c]) for c in range(x.shape[1])], axis=1)
    right = np.clip(np.searchsorted(rel, steps), 1, len(rel) - 1)
    left = right - 1
    nearest = np.where(steps - rel[left] <= rel[right] - steps, left, right)
    return out, nearest


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

    @property
    def num_windows(self) -> int:
        return sum(r.windows for r in self.recordings)

    def starts(self, length: int) -> range:
        return range(0, length - self.seq_len + 1, self.stride)

    def windows(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """(imu (S, F) float32, label (S, L) int64, recording index) of every window, in order:
        recordings, segments, windows in time order. A column whose label is missing at a step
        or not the same at every step is -1 at every step of the window."""
        for index, recording in enumerate(self.recordings):
            for imu, labels in recording.segments:
                for start in self.starts(len(imu)):
                    y = labels[start : start + self.seq_len]
                    first = y[0]
                    keep = (y == first).all(axis=0) & (first >= 0)
                    label = np.broadcast_to(np.where(keep, first, MISSING_LABEL).astype(np.int64), y.shape)
                    yield imu[start : start + self.seq_len], np.ascontiguousarray(label), index

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
            recordings=[
                {"file": r.file, "windows": r.windows,
                 "raw_rate_hz": None if r.raw_rate_hz is None else round(r.raw_rate_hz, 3), "segments": r.num_segments}
                for r in self.recordings
            ],
        )


def _class_names(values: set[str]) -> tuple[list[str], dict[str, int]]:
    """Sorted class names of a column (numerically if every value is an integer, then named
    by the integer) and the index of every value."""
    if values and all(_INTEGER.fullmatch(v) for v in values):
        numbers = sorted({int(v) for v in values})
        index = {n: i for i, n in enumerate(numbers)}
        return [str(n) for n in numbers], {v: index[int(v)] for v in values}
    names = sorted(values)
    return names, {v: i for i, v in enumerate(names)}


def read_source(source_dir: epath.PathLike, sampling_rate: int, seq_len: int, *, stride: int = 0,
                max_gap_s: float = 1.0, acc_unit: str = "m/s^2", gyro_unit: str = "rad/s") -> Source:
    """Reads and checks every recording under `source_dir` and resamples it to `sampling_rate`
    (see README.md). ValueError naming the file (and row) for any malformed input, for a rate
    above a segment's raw rate, and when the folder makes no window of `seq_len` steps."""
    version = f"{sampling_rate}_{seq_len}"
    root = epath.Path(source_dir)
    files = find_recordings(root, version)
    headers = []
    for rel in files:
        where = _Where(version, root / rel)
        raw = _parquet_header(root / rel, where) if _is_parquet(rel) else _csv_header(root / rel, where)
        headers.append((raw, _check_columns(raw, where)))
    use_mag = all(all(m in names for m in MAG) for _, names in headers)
    features = list(common.FEATURE_NAMES[: 9 if use_mag else 6])
    channels = {TIMESTAMP, *common.FEATURE_NAMES}
    label_columns = list(dict.fromkeys(n for _, names in headers for n in names if n not in channels))
    step = int(stride) or seq_len

    # (rel, segments [(imu, label codes (M, columns here))], raw rate, segment count, {column here: its values});
    # only the resampled steps are kept, the raw samples of one file at a time.
    parsed = []
    for rel, (raw, names) in zip(files, headers):
        where = _Where(version, root / rel)
        table, row_of = _read(root / rel, rel, raw, names, features, label_columns, acc_unit, gyro_unit, where)
        t, x = table.t, table.x
        dt = np.diff(t)
        cuts = np.flatnonzero(dt > max_gap_s) + 1
        bounds = list(zip([0, *cuts], [*cuts, len(t)])) if len(t) else []
        within = dt[dt <= max_gap_s]  # the time steps inside segments
        rate = _snap(1.0 / float(np.median(within))) if len(within) else None
        segments = []
        for a, b in bounds:
            ts = t[a:b]
            if len(ts) < 2 or (ts[-1] - ts[0]) * sampling_rate < seq_len - 1 - 1e-9:
                continue  # too short for a window at this rate, whatever its raw rate
            segment_rate = raw_rate(ts)
            if sampling_rate > segment_rate * (1 + UPSAMPLE_TOLERANCE):
                raise where.error(f"sampled at {segment_rate:.4g} Hz (the segment from this row on), below the "
                                  f"{sampling_rate} Hz of version {version}: recordings are never up-sampled; "
                                  f"choose a rate of at most {segment_rate:.4g} Hz", row_of(a))
            out, rows = resample(ts, x[a:b], sampling_rate)
            if len(out) >= seq_len:
                codes = np.stack([c[rows + a] for c, _ in table.labels.values()], axis=1) if table.labels else None
                segments.append((out.astype(np.float32), codes, float(ts[0])))
        parsed.append((rel, segments, rate, len(bounds), {c: v for c, (_, v) in table.labels.items()}))

    classes, lookup = {}, {}
    for column in label_columns:
        values = {v for *_, labels in parsed if column in labels for v in labels[column]}
        classes[column], lookup[column] = _class_names(values)
    recordings = []
    for rel, segments, rate, count, labels in parsed:
        # a file's code -> the class index; code -1 (no label) -> the last entry, -1
        luts = [np.asarray([lookup[c][v] for v in values] + [MISSING_LABEL], np.int32) for c, values in labels.items()]
        positions = [label_columns.index(c) for c in labels]
        kept = []
        for imu, codes, _ in segments:
            y = np.full((len(imu), len(label_columns)), MISSING_LABEL, np.int32)
            for k, (j, lut) in enumerate(zip(positions, luts)):
                y[:, j] = lut[codes[:, k]]
            kept.append((imu, y))
        recordings.append(Recording(rel, rate, count, kept, segment_starts_s=[first for *_, first in segments]))
    options = dict(stride=int(stride), max_gap_s=float(max_gap_s), acc_unit=acc_unit, gyro_unit=gyro_unit)
    source = Source(str(root), sampling_rate, seq_len, step, len(features), label_columns, classes, recordings,
                    options)
    for recording in recordings:
        recording.windows = sum(len(source.starts(len(imu))) for imu, _ in recording.segments)
    if source.num_windows == 0:
        raise ValueError(f"recordings/{version}: {root}: the recordings are shorter than one window ({seq_len} steps "
                         f"at {sampling_rate} Hz = {seq_len / sampling_rate:g} s without a pause over max_gap_s = "
                         f"{max_gap_s:g} s); choose a shorter window")
    return source


# ---------------------------------------------------------------------------------------
# The builder.


class Builder(common.RemovesFailedBuilds, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for recordings (see README.md)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # Every build is `Builder.config_for(version, source_dir, **options)` (a custom config; TFDS
    # accepts one when no listed config has its name): there is no default build.
    BUILDER_CONFIGS: list = []
    KEYED_BY_SOURCE = True  # the input pipeline builds config_for(version, manual_dir, **SOURCE_OPTIONS)
    # config.dataset fields that change what is built, with their defaults.
    SOURCE_OPTIONS = {"stride": 0, "max_gap_s": 1.0, "acc_unit": "m/s^2", "gyro_unit": "rad/s"}
    fingerprint = staticmethod(fingerprint)  # the input pipeline's check that a build is current
    # See common.py: pin TFDS's code/metadata paths to this folder (README.md).
    code_path = epath.Path(__file__)
    pkg_dir_path = code_path.parent
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put your recordings, one .csv or .parquet file each (columns timestamp, acc_x, acc_y, acc_z,
    gyro_x, gyro_y, gyro_z, optionally mag_x, mag_y, mag_z, and any label columns), in a folder and
    build `Builder.config_for(version, source_dir=DIR)` (or set `config.dataset.manual_dir = DIR`
    for the training job).
    """

    @classmethod
    def config_for(cls, version: str, source_dir, **options) -> common.SourceConfig:
        """The build of the recordings in `source_dir` at `version` (`<rate>_<steps>`) with
        `options` (SOURCE_OPTIONS; missing or None ones take their defaults), keyed by both.
        ValueError naming the config field for a bad option."""
        unknown = sorted(set(options) - set(cls.SOURCE_OPTIONS))
        if unknown:
            raise ValueError(f"config.dataset.{unknown[0]} is not an option of {cls.name} (its options: "
                             f"{', '.join(cls.SOURCE_OPTIONS)})")
        values = {k: cls.SOURCE_OPTIONS[k] if options.get(k) is None else options[k] for k in cls.SOURCE_OPTIONS}
        stride = values["stride"]
        if isinstance(stride, float) and stride.is_integer():
            stride = int(stride)
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 0:
            raise ValueError(f"config.dataset.stride must be a whole number of steps >= 0 (0: the window length), "
                             f"got {stride!r}")
        gap = values["max_gap_s"]
        if isinstance(gap, bool) or not isinstance(gap, (int, float, np.number)) or not math.isfinite(gap) or gap <= 0:
            raise ValueError(f"config.dataset.max_gap_s must be a number of seconds > 0, got {gap!r}")
        for field, units in (("acc_unit", ACC_UNITS), ("gyro_unit", GYRO_UNITS)):
            if values[field] not in units:
                raise ValueError(f"config.dataset.{field} must be {' or '.join(map(repr, units))}, "
                                 f"got {values[field]!r}")
        values.update(stride=int(stride), max_gap_s=float(gap))
        return common.source_config(cls.name, version, source_dir, values)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        if not isinstance(config, common.SourceConfig):
            raise ValueError(f"{self.name} is built from your folder: tfds.builder('{self.name}', "
                             f"config=Builder.config_for(version, source_dir=DIR))")
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "imu": tfds.features.Tensor(
                        shape=(config.seq_len, None), dtype=np.float32, encoding=tfds.features.Encoding.BYTES,
                        doc="IMU readings (S, F) in physical units: acc m/s^2, gyro rad/s, mag uT",
                    ),
                    "label": tfds.features.Tensor(
                        shape=(config.seq_len, None), dtype=np.int64, encoding=tfds.features.Encoding.BYTES,
                        doc="class index per step (S, L) of each label column (metadata label_columns), -1: none",
                    ),
                    "recording": tfds.features.Tensor(
                        shape=(), dtype=np.int64, doc="index into metadata `recordings`",
                    ),
                }
            ),
            disable_shuffling=True,  # recordings, segments and windows in order
            metadata=common.imu_metadata(config, 6),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        source = read_source(config.source_dir, config.sampling_rate, config.seq_len, **dict(config.options))
        self.info.metadata.update(common.imu_metadata(config, source.num_features))
        self.info.metadata.update(source.metadata(), source_fingerprint=fingerprint(config.source_dir))
        return {"train": self._generate_examples(source)}

    def _generate_examples(self, source: Source):
        for index, (imu, label, recording) in enumerate(source.windows()):
            yield common.ordered_key(index, source.num_windows), {"imu": imu, "label": label, "recording": recording}
