"""hhar: Heterogeneity Human Activity Recognition (phones), windows as LIMU-BERT made them.

Raw files (UCI id 344, `Activity recognition exp/`): `Phones_accelerometer.csv` and
`Phones_gyroscope.csv`, header `Index,Arrival_Time,Creation_Time,x,y,z,User,Model,Device,gt`,
`Creation_Time` in nanoseconds, acc in m/s^2, gyro in rad/s.

The reference procedure (datasets/hhar/README.md), reproduced here as plain functions:

* Both files are walked in file order (rows are never re-sorted) in time bins of `window`
  (50 ms for `20_120`, 100 ms for `10_100`). The first time tag is the smaller of the two
  files' first `Creation_Time`.
* A bin takes, from each file, the consecutive unread rows whose `|Creation_Time - tag|` is
  below `window` (reading stops at the first row outside, which stays unread). The rows it
  looked at are consumed whether or not the bin is valid.
* A sensor's bin is usable when it has rows and they share one `User` and one `gt` (its
  `Model` is the one of its first row; `Device` is never looked at). The bin is valid when
  both sensors' bins are usable, agree on (User, Model, gt), and gt is not `null`.
* A valid bin is one step: mean x, y, z of the acc rows, then of the gyro rows (float64);
  the tag advances by `window`. `seq_len` consecutive valid steps make a window.
* An invalid bin drops the partial window and restarts the tag at the smaller
  `Creation_Time` of the two files' first unread rows. The walk ends when either file is
  exhausted (a partial window at the end is dropped).

Labels: the window's first step's User, Model and gt, as indices into fixed class lists
(USERS, MODELS, ACTIVITIES, below); the reference stores them per step, in columns
[user, model, activity]. Its steps are not required to share labels (see README.md).

The reference read the files with pandas, where `null` became NaN and such bins were dropped
only because NaN != NaN; here `null` is recognized explicitly. Rows are parsed in chunks
(numpy) so that the 1.2 GB of CSV are never held in memory at once.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import tqdm
from absl import logging
from etils import epath
from limubert_jax.datasets import common

ACC_FILE = "Phones_accelerometer.csv"
GYRO_FILE = "Phones_gyroscope.csv"
LAYOUT_DIR = "Activity recognition exp"  # the folder the archive extracts to
HEADER = ("Index", "Arrival_Time", "Creation_Time", "x", "y", "z", "User", "Model", "Device", "gt")
URL = "https://archive.ics.uci.edu/static/public/344/heterogeneity+activity+recognition.zip"

# Fixed class lists (the dataset's documentation): a label is the index of its name. They are
# sorted, so they agree with the reference's sorted-unique indices: its users are a..i, its
# models nexus4, s3, s3mini (samsungold has no gyroscope and never pairs; it sorts last) and
# its activities the six below.
USERS = ("a", "b", "c", "d", "e", "f", "g", "h", "i")
MODELS = ("nexus4", "s3", "s3mini", "samsungold")
ACTIVITIES = ("bike", "sit", "stairsdown", "stairsup", "stand", "walk")
NULL = -1  # gt code of `null` rows (no activity); such rows never form a step
_NULL_NAMES = ("null", "")  # pandas reads both as NaN

CHUNK_ROWS = 1 << 18  # rows parsed at a time
_PROGRESS_BYTES = 32 << 20  # show a progress bar for inputs larger than this

_ROW_DTYPE = np.dtype(
    [
        ("index", "f8"), ("arrival", "f8"), ("creation", "i8"),
        ("x", "f8"), ("y", "f8"), ("z", "f8"),
        ("user", "U32"), ("model", "U32"), ("device", "U32"), ("gt", "U32"),
    ]
)  # fmt: skip


# ---------------------------------------------------------------------------------------
# Reading: chunks of rows as numbers and label codes.


@dataclasses.dataclass
class Rows:
    """Parsed rows of a Phones_*.csv: times and label codes as lists, readings (3, n)."""

    time: list[int]  # Creation_Time, ns
    xyz: np.ndarray  # (3, n) float64
    user: list[int]  # index into USERS
    model: list[int]  # index into MODELS
    gt: list[int]  # index into ACTIVITIES, NULL for `null`


def _empty_rows() -> Rows:
    return Rows([], np.zeros((3, 0)), [], [], [])


def _check_line(fields: list[str]) -> str | None:
    """Why a split CSV line is not a valid row, or None."""
    if len(fields) != len(HEADER):
        return f"{len(fields)} fields, expected {len(HEADER)}"
    for name, kind, value in zip(HEADER, _ROW_DTYPE.descr, fields):
        try:
            {"f8": float, "i8": int, "U32": str}[kind[1].lstrip("<>|=")](value)
        except ValueError:
            return f"{name} is not a number: {value!r}"
    return None


def _malformed(path, lines: Sequence[str], first_line: int, error: Exception) -> ValueError:
    for k, line in enumerate(lines):
        if line.strip():
            reason = _check_line(line.rstrip("\r\n").split(","))
            if reason is not None:
                return ValueError(f"hhar: {path}, line {first_line + k}: malformed row ({reason}): {line.rstrip()!r}")
    return ValueError(f"hhar: {path}, lines {first_line}-{first_line + len(lines) - 1}: {error}")


def _codes(values: np.ndarray, names: Sequence[str], column: str, where) -> np.ndarray:
    """Class indices of `values` (strings); `null` / empty -> NULL for column gt."""
    uniques, inverse = np.unique(values, return_inverse=True)
    table = np.empty(len(uniques), np.int64)
    for k, name in enumerate(uniques.tolist()):
        if name in names:
            table[k] = names.index(name)
        elif column == "gt" and name in _NULL_NAMES:
            table[k] = NULL
        else:
            path, line = where(int(np.argmax(values == name)))
            raise ValueError(
                f"hhar: {path}, line {line}: unknown {column} {name!r} (expected one of {', '.join(names)})"
            )
    return table[inverse.reshape(-1)]


def parse_rows(lines: Sequence[str], path, first_line: int) -> Rows:
    """Parses CSV lines of a Phones_*.csv (no header; `first_line` is the 1-based line number
    of lines[0], for errors). Blank lines are skipped; a malformed row or an unknown User,
    Model or gt raises ValueError naming the file and line."""
    numbered = [k for k, line in enumerate(lines) if line.strip()]
    if not numbered:
        return _empty_rows()
    try:
        rec = np.loadtxt(lines, delimiter=",", dtype=_ROW_DTYPE, comments=None, ndmin=1)
    except ValueError as e:
        raise _malformed(path, lines, first_line, e) from e

    def where(row: int):
        return path, first_line + numbered[row]

    return Rows(
        time=rec["creation"].tolist(),
        xyz=np.stack([rec["x"], rec["y"], rec["z"]]),
        user=_codes(rec["user"], USERS, "User", where).tolist(),
        model=_codes(rec["model"], MODELS, "Model", where).tolist(),
        gt=_codes(rec["gt"], ACTIVITIES, "gt", where).tolist(),
    )


class SensorFile:
    """The rows of one Phones_*.csv, read in chunks and consumed in file order."""

    def __init__(self, path, *, chunk_rows: int = CHUNK_ROWS, progress: tqdm.tqdm | None = None):
        self.path = path
        self._chunk_rows = chunk_rows
        self._progress = progress
        self._file = epath.Path(path).open("r", encoding="utf-8")
        header = self._file.readline()
        fields = tuple(f.strip() for f in header.lstrip("\ufeff").rstrip("\r\n").split(","))
        if fields != HEADER:
            self._file.close()
            raise ValueError(f"hhar: {path}, line 1: expected the header {','.join(HEADER)}, found {header.rstrip()!r}")
        self._next_line = 2
        self._eof = False
        self.rows = _empty_rows()
        self.pos = 0  # first unread row of self.rows

    def close(self) -> None:
        self._file.close()

    def _load(self) -> bool:
        """Appends the next chunk of rows, dropping the rows before `pos` (pos becomes 0).
        False at the end of the file."""
        while not self._eof:
            lines = list(itertools.islice(self._file, self._chunk_rows))
            if not lines:
                self._eof = True
                self._file.close()
                break
            new = parse_rows(lines, self.path, self._next_line)
            self._next_line += len(lines)
            if self._progress is not None:
                self._progress.update(sum(map(len, lines)))
            if not new.time:
                continue
            old, keep = self.rows, self.pos
            self.rows = Rows(
                time=old.time[keep:] + new.time,
                xyz=np.concatenate([old.xyz[:, keep:], new.xyz], axis=1),
                user=old.user[keep:] + new.user,
                model=old.model[keep:] + new.model,
                gt=old.gt[keep:] + new.gt,
            )
            self.pos = 0
            return True
        return False

    def has_rows(self) -> bool:
        """Whether an unread row is left."""
        return self.pos < len(self.rows.time) or self._load()

    def next_time(self) -> int:
        """Creation_Time of the first unread row (call has_rows() first)."""
        return self.rows.time[self.pos]

    def take_bin(self, tag: int, window: int) -> tuple[np.ndarray, tuple[int, int, int]] | None:
        """Consumes the unread rows, from the first on, whose |Creation_Time - tag| < window.
        Returns (mean x, y, z; (user, model, gt) codes, model of the first row) when there are
        such rows and they share one user and one gt, else None."""
        i = self.pos
        time = self.rows.time
        while True:
            if i == len(time):
                before = self.pos
                if not self._load():
                    break
                i -= before
                time = self.rows.time
            if abs(time[i] - tag) < window:
                i += 1
            else:
                break
        start, self.pos = self.pos, i
        if i == start:
            return None
        rows = self.rows
        users, gts = rows.user[start:i], rows.gt[start:i]
        if users.count(users[0]) != len(users) or gts.count(gts[0]) != len(gts):
            return None
        return rows.xyz[:, start:i].mean(axis=1), (users[0], rows.model[start], gts[0])


# ---------------------------------------------------------------------------------------
# The paired-bin walk.


def iter_windows(
    acc_path, gyro_path, window_ns: int, seq_len: int, *, chunk_rows: int = CHUNK_ROWS
) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
    """The reference windows of a pair of files, in order: (imu [seq_len, 6] float64,
    {"user", "device_model", "activity": class index of the window's first step})."""
    for path in (acc_path, gyro_path):
        if not epath.Path(path).exists():
            raise FileNotFoundError(f"hhar: missing {path} (the raw layout needs {ACC_FILE} and {GYRO_FILE})")
    total = sum(epath.Path(p).stat().length for p in (acc_path, gyro_path))
    progress = tqdm.tqdm(
        total=total, unit="B", unit_scale=True, desc="hhar: pairing acc/gyro bins", disable=total < _PROGRESS_BYTES
    )
    acc = SensorFile(acc_path, chunk_rows=chunk_rows, progress=progress)
    gyro = SensorFile(gyro_path, chunk_rows=chunk_rows, progress=progress)
    num_windows = mixed = 0
    try:
        if not (acc.has_rows() and gyro.has_rows()):
            return
        tag = min(acc.next_time(), gyro.next_time())
        steps: list[np.ndarray] = []
        labels: list[tuple[int, int, int]] = []
        while acc.has_rows() and gyro.has_rows():
            a = acc.take_bin(tag, window_ns)
            g = gyro.take_bin(tag, window_ns)
            if a is not None and g is not None and a[1] == g[1] and a[1][2] != NULL:
                steps.append(np.concatenate([a[0], g[0]]))
                labels.append(a[1])
                tag += window_ns
                if len(steps) == seq_len:
                    user, model, gt = labels[0]
                    mixed += labels.count(labels[0]) != seq_len
                    num_windows += 1
                    yield np.stack(steps), {"user": user, "device_model": model, "activity": gt}
                    steps, labels = [], []
            else:
                steps, labels = [], []
                if not (acc.has_rows() and gyro.has_rows()):
                    break
                tag = min(acc.next_time(), gyro.next_time())
    finally:
        acc.close()
        gyro.close()
        progress.close()
    logging.info("hhar: %d windows of %d x %d ms from %s", num_windows, seq_len, window_ns // 1_000_000, acc_path)
    if mixed:
        logging.warning("hhar: %d windows hold steps of different labels (labelled by their first step)", mixed)


def preprocess(
    raw_dir, window_ms: int = 50, seq_len: int = 120, *, chunk_rows: int = CHUNK_ROWS
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All windows of the raw layout `raw_dir` (holding ACC_FILE and GYRO_FILE):
    imu [N, seq_len, 6] float64 (acc m/s^2, gyro rad/s) and labels {task: int64 [N]} for
    tasks user, device_model, activity."""
    raw_dir = epath.Path(raw_dir)
    imu, labels = [], {task: [] for task in ("user", "device_model", "activity")}
    for window, label in iter_windows(
        raw_dir / ACC_FILE, raw_dir / GYRO_FILE, window_ms * 1_000_000, seq_len, chunk_rows=chunk_rows
    ):
        imu.append(window)
        for task, value in label.items():
            labels[task].append(value)
    imu_array = np.stack(imu) if imu else np.zeros((0, seq_len, 6))
    return imu_array, {task: np.asarray(v, np.int64) for task, v in labels.items()}


# ---------------------------------------------------------------------------------------
# The TFDS builder.


class Builder(common.ImuBuilder):
    """DatasetBuilder for hhar (see the module docstring and README.md)."""

    BUILDER_CONFIGS = common.version_configs("HHAR phones, acc + gyro means of paired time bins,")
    MAX_RATE_HZ = 50  # the slowest phones' rate; faster ones are binned down to any rate up to it
    NUM_FEATURES = 6
    TASKS = {"user": USERS, "device_model": MODELS, "activity": ACTIVITIES}
    HOMEPAGE = "https://archive.ics.uci.edu/dataset/344/heterogeneity+activity+recognition"
    REQUIRED_FILES = (ACC_FILE, GYRO_FILE)
    ARCHIVES = ("heterogeneity+activity+recognition.zip", "Activity recognition exp.zip")
    URLS = (URL,)
    EXTRA_METADATA = {
        "reference_label_columns": ["user", "device_model", "activity"],
        "source": URL,
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Download heterogeneity+activity+recognition.zip from {HOMEPAGE} and pass the folder
    holding it, or the extracted `{LAYOUT_DIR}/` folder (with {ACC_FILE} and {GYRO_FILE}),
    as the manual directory: --config.dataset.manual_dir=DIR.
    """

    def windows(self, raw_dir: epath.Path) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
        config = self.builder_config
        yield from iter_windows(
            raw_dir / ACC_FILE, raw_dir / GYRO_FILE, 1_000_000_000 // config.sampling_rate, config.seq_len
        )
