"""wisdm: WISDM Smartphone and Smartwatch Activity and Biometrics Dataset (2019), phone acc + gyro.

Raw files (UCI id 507, `wisdm-dataset/`): `raw/phone/accel/data_<id>_accel_phone.txt` and
`raw/phone/gyro/data_<id>_gyro_phone.txt` for subjects 1600..1650, no header, one record per
line, `subject,activity,timestamp,x,y,z;` (activity a letter A..S without N, timestamp in
nanoseconds, acc m/s^2, gyro rad/s, 20 Hz). Not in the LIMU-BERT reference code, so the
pairing below is this builder's own rule, stated exactly:

* Records: a line may hold several `;`-terminated records (blank pieces are skipped); the
  final `;` may be missing. Fields are checked; a bad record names its file and line.
* Keys: a record's key is (subject, activity), both taken from the record itself.
* Pairing: every acc record is paired with the gyro record of the same key (from the
  subject's gyro file) nearest in time (a tie goes to the earlier one), if that gyro record is
  less than half a sample period (25 ms) away; otherwise the acc record is unpaired.
* Runs: consecutive acc records in file order form a run while each is paired, the key stays
  the same, the timestamp increases by more than 0 and at most 1.5 sample periods (75 ms),
  and the paired gyro record is later than the previous one (no gyro record is used twice
  within a run). Anything else ends the run.
* A run is [L, 6] (acc x, y, z, then the paired gyro x, y, z). `20_120`: cut into windows of
  120 (the tail is dropped). `10_100`: down-sampled 20 -> 10 Hz with the shared block rule
  (`resampling.downsample`: means of 2 samples, UCI/MotionSense stop rule), then cut into 100.

Order: subjects ascending, then acc file order. Labels: activity (index of its letter in
A..S without N, names below) and user (subject - 1600). Watch data and the older v1.1
release are not built.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import tqdm
from absl import logging
from etils import epath
from limubert_jax.datasets import common, resampling

ACC_DIR = "raw/phone/accel"
GYRO_DIR = "raw/phone/gyro"
LAYOUT_DIR = "wisdm-dataset"  # the folder the archive extracts to
URL = (
    "https://archive.ics.uci.edu/static/public/507/"
    "wisdm+smartphone+and+smartwatch+activity+and+biometrics+dataset.zip"
)

ACTIVITY_CODES = "ABCDEFGHIJKLMOPQRS"  # no N
ACTIVITIES = (
    "walking", "jogging", "stairs", "sitting", "standing", "typing", "teeth", "soup", "chips",
    "pasta", "drinking", "sandwich", "kicking", "catch", "dribbling", "writing", "clapping", "folding",
)  # fmt: skip
FIRST_SUBJECT, NUM_SUBJECTS = 1600, 51
USERS = tuple(str(FIRST_SUBJECT + k) for k in range(NUM_SUBJECTS))

RAW_RATE = 20  # Hz, the recording rate
PERIOD_NS = 1_000_000_000 // RAW_RATE
PAIR_TOLERANCE_NS = PERIOD_NS // 2  # pairs are strictly closer than this
MAX_STEP_NS = 3 * PERIOD_NS // 2  # a run continues over steps of at most this

_FILE_RE = re.compile(r"data_(\d+)_accel_phone\.txt")
_RECORD_DTYPE = np.dtype(
    [("subject", "i8"), ("activity", "U8"), ("time", "i8"), ("x", "f8"), ("y", "f8"), ("z", "f8")]
)


def acc_path(raw_dir, subject: int) -> epath.Path:
    return epath.Path(raw_dir) / ACC_DIR / f"data_{subject}_accel_phone.txt"


def gyro_path(raw_dir, subject: int) -> epath.Path:
    return epath.Path(raw_dir) / GYRO_DIR / f"data_{subject}_gyro_phone.txt"


# ---------------------------------------------------------------------------------------
# Reading.


def _check_record(fields: list[str]) -> str | None:
    """Why a record's fields are not valid, or None."""
    if len(fields) != 6:
        return f"{len(fields)} fields, expected 6 (subject,activity,timestamp,x,y,z)"
    names = ("subject", "activity", "timestamp", "x", "y", "z")
    for name, convert, value in zip(names, (int, str, int, float, float, float), fields):
        try:
            convert(value)
        except ValueError:
            return f"{name} is not a number: {value!r}"
    return None


def read_records(path) -> dict[str, np.ndarray]:
    """The records of one raw file, in file order: subject int64, activity (class index),
    time int64 (ns), xyz float64 [n, 3]. Raises ValueError naming the file and line of a
    malformed record, an unknown activity letter or a subject outside 1600..1650."""
    path = epath.Path(path)
    records, line_of = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        pieces = line.strip().split(";")
        for k, piece in enumerate(pieces):
            piece = piece.strip()
            if piece:
                records.append(piece)
                line_of.append(number)
            elif k < len(pieces) - 1 and line.strip():
                raise ValueError(f"wisdm: {path}, line {number}: empty record: {line.strip()!r}")
    if not records:
        return {
            "subject": np.zeros(0, np.int64), "activity": np.zeros(0, np.int64),
            "time": np.zeros(0, np.int64), "xyz": np.zeros((0, 3)),
        }  # fmt: skip
    try:
        rec = np.loadtxt(records, delimiter=",", dtype=_RECORD_DTYPE, comments=None, ndmin=1)
    except ValueError as e:
        for record, number in zip(records, line_of):
            reason = _check_record(record.split(","))
            if reason is not None:
                raise ValueError(f"wisdm: {path}, line {number}: malformed record ({reason}): {record!r}") from e
        raise ValueError(f"wisdm: {path}: {e}") from e
    letters, inverse = np.unique(rec["activity"], return_inverse=True)
    table = np.empty(len(letters), np.int64)
    for k, letter in enumerate(letters.tolist()):
        if len(letter) != 1 or letter not in ACTIVITY_CODES:
            number = line_of[int(np.argmax(rec["activity"] == letter))]
            raise ValueError(
                f"wisdm: {path}, line {number}: unknown activity {letter!r} "
                f"(expected one of {', '.join(ACTIVITY_CODES)})"
            )
        table[k] = ACTIVITY_CODES.index(letter)
    bad = (rec["subject"] < FIRST_SUBJECT) | (rec["subject"] >= FIRST_SUBJECT + NUM_SUBJECTS)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(
            f"wisdm: {path}, line {line_of[k]}: subject {rec['subject'][k]} outside "
            f"{FIRST_SUBJECT}..{FIRST_SUBJECT + NUM_SUBJECTS - 1}"
        )
    return {
        "subject": rec["subject"].astype(np.int64),
        "activity": table[inverse.reshape(-1)],
        "time": rec["time"].astype(np.int64),
        "xyz": np.stack([rec["x"], rec["y"], rec["z"]], axis=1),
    }


# ---------------------------------------------------------------------------------------
# Pairing acc with gyro, runs, windows.


def pair(acc: dict[str, np.ndarray], gyro: dict[str, np.ndarray]) -> np.ndarray:
    """For every acc record, the index (into gyro) of its pair, or -1 (rule: module doc)."""
    acc_key = acc["subject"] * 32 + acc["activity"]
    gyro_key = gyro["subject"] * 32 + gyro["activity"]
    partner = np.full(len(acc_key), -1, np.int64)
    for key in np.unique(acc_key):
        rows = np.flatnonzero(acc_key == key)
        candidates = np.flatnonzero(gyro_key == key)
        if not len(candidates):
            continue
        candidates = candidates[np.argsort(gyro["time"][candidates], kind="stable")]
        times = gyro["time"][candidates]
        t = acc["time"][rows]
        after = np.searchsorted(times, t)  # first candidate at or after t
        before = np.maximum(after - 1, 0)
        after = np.minimum(after, len(times) - 1)
        d_before, d_after = np.abs(t - times[before]), np.abs(times[after] - t)
        best = np.where(d_before <= d_after, before, after)
        close = np.minimum(d_before, d_after) < PAIR_TOLERANCE_NS
        partner[rows[close]] = candidates[best[close]]
    return partner


def runs(acc: dict[str, np.ndarray], gyro: dict[str, np.ndarray], partner: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of the runs of consecutive paired acc records (rule: module doc)."""
    paired = partner >= 0
    if not paired.any():
        return []
    step = np.diff(acc["time"])
    keep = (
        paired[1:] & paired[:-1]
        & (acc["subject"][1:] == acc["subject"][:-1]) & (acc["activity"][1:] == acc["activity"][:-1])
        & (step > 0) & (step <= MAX_STEP_NS)
        & (gyro["time"][partner[1:]] > gyro["time"][partner[:-1]])
    )  # fmt: skip
    # A run starts at every paired record that does not continue the previous one, and ends
    # before the next record that does not continue it.
    starts = np.flatnonzero(paired & np.concatenate([[True], ~keep]))
    breaks = np.concatenate([np.flatnonzero(~keep) + 1, [len(partner)]])
    ends = breaks[np.searchsorted(breaks, starts, side="right")]
    return list(zip(starts.tolist(), ends.tolist()))


def subject_windows(
    acc: dict[str, np.ndarray], gyro: dict[str, np.ndarray], sampling_rate: int, seq_len: int
) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
    """The windows of one subject's acc and gyro records, in acc file order:
    (imu [seq_len, 6] float64, {"activity", "user"})."""
    partner = pair(acc, gyro)
    for start, end in runs(acc, gyro, partner):
        run = np.concatenate([acc["xyz"][start:end], gyro["xyz"][partner[start:end]]], axis=1)
        if sampling_rate != RAW_RATE:
            run = resampling.downsample(run, RAW_RATE, sampling_rate)
        labels = {"activity": int(acc["activity"][start]), "user": int(acc["subject"][start]) - FIRST_SUBJECT}
        for window in resampling.cut_windows(run, seq_len):
            yield window, labels


def subjects(raw_dir) -> list[int]:
    """Subject ids of the phone accelerometer files under raw_dir, ascending. Raises
    FileNotFoundError if there are none, or if a subject's gyro file is missing."""
    raw_dir = epath.Path(raw_dir)
    folder = raw_dir / ACC_DIR
    found = []
    if folder.is_dir():
        found = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _FILE_RE.fullmatch(p.name)))
    if not found:
        raise FileNotFoundError(f"wisdm: no data_<id>_accel_phone.txt files in {folder}")
    for subject in found:
        if not gyro_path(raw_dir, subject).exists():
            raise FileNotFoundError(
                f"wisdm: missing {gyro_path(raw_dir, subject)} (beside {acc_path(raw_dir, subject)})"
            )
    return found


def iter_windows(raw_dir, sampling_rate: int = 20, seq_len: int = 120) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
    """Every window of the raw layout `raw_dir` (holding raw/phone/{accel,gyro}), in order."""
    ids = subjects(raw_dir)
    total = 0
    for subject in tqdm.tqdm(ids, desc="wisdm: subjects", unit="subject", disable=len(ids) < 8):
        count = 0
        for window, labels in subject_windows(
            read_records(acc_path(raw_dir, subject)), read_records(gyro_path(raw_dir, subject)), sampling_rate, seq_len
        ):
            count += 1
            yield window, labels
        if not count:
            logging.warning("wisdm: no windows from subject %d (acc and gyro never pair for long enough)", subject)
        total += count
    logging.info("wisdm: %d windows of %d steps at %d Hz from %d subjects", total, seq_len, sampling_rate, len(ids))


def preprocess(raw_dir, sampling_rate: int = 20, seq_len: int = 120) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All windows: imu [N, seq_len, 6] float64 (acc m/s^2, gyro rad/s), labels
    {"activity", "user": int64 [N]}."""
    imu, labels = [], {"activity": [], "user": []}
    for window, label in iter_windows(raw_dir, sampling_rate, seq_len):
        imu.append(window)
        for task in labels:
            labels[task].append(label[task])
    imu_array = np.stack(imu) if imu else np.zeros((0, seq_len, 6))
    return imu_array, {task: np.asarray(v, np.int64) for task, v in labels.items()}


# ---------------------------------------------------------------------------------------
# The TFDS builder.


class Builder(common.ImuBuilder):
    """DatasetBuilder for wisdm (see the module docstring and README.md)."""

    BUILDER_CONFIGS = common.version_configs("WISDM 2019 phone, acc + gyro paired by timestamp,")
    MAX_RATE_HZ = RAW_RATE
    NUM_FEATURES = 6
    TASKS = {"activity": ACTIVITIES, "user": USERS}
    HOMEPAGE = "https://archive.ics.uci.edu/dataset/507/wisdm+smartphone+and+smartwatch+activity+and+biometrics+dataset"
    REQUIRED_FILES = (ACC_DIR, GYRO_DIR)
    ARCHIVES = ("wisdm+smartphone+and+smartwatch+activity+and+biometrics+dataset.zip", "wisdm-dataset.zip")
    URLS = (URL,)
    EXTRA_METADATA = {
        "activity_codes": dict(zip(ACTIVITY_CODES, ACTIVITIES)),
        "pairing": (
            "nearest gyro record of the same subject and activity within 25 ms; runs of "
            "consecutive acc records with steps in (0, 75] ms and increasing gyro partners"
        ),
        "source": URL,
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Download wisdm+smartphone+and+smartwatch+activity+and+biometrics+dataset.zip from
    {HOMEPAGE} and pass the folder holding it (or wisdm-dataset.zip, or the extracted
    `{LAYOUT_DIR}/` folder with {ACC_DIR}/ and {GYRO_DIR}/) as the manual directory:
    --config.dataset.manual_dir=DIR.
    """

    def windows(self, raw_dir: epath.Path) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
        config = self.builder_config
        yield from iter_windows(raw_dir, config.sampling_rate, config.seq_len)
