"""uci_hapt: UCI HAPT (Smartphone-Based Recognition of Human Activities and Postural
Transitions, UCI repository id 341), windows made as the LIMU-BERT reference made them.

30 volunteers with a Samsung Galaxy S II on the waist; 50 Hz triaxial accelerometer (in g)
and gyroscope (rad/s). Raw layout (the archive holds it at its top, or one folder down):

* `RawData/acc_expNN_userUU.txt`, `RawData/gyro_expNN_userUU.txt`: one sample per line,
  three space-separated numbers, experiment NN, user UU (both two digits);
* `RawData/labels.txt`: one labelled segment per line, `exp user activity start end`
  (activity ids 1..12 as in `activity_labels.txt`; start/end are 1-based inclusive
  sample numbers).

Preprocessing (the reference's, see README.md beside this file):

1. Rows of `labels.txt` with activity 7..12 (postural transitions) are dropped.
2. For every remaining segment, acc * 9.80665 (g -> m/s^2) next to gyro (6 columns), the
   rows `[start, end)` taken as **0-based** indices. Quirk kept on purpose: `start`/`end` are
   1-based inclusive sample numbers, so this slice starts one sample late and ends one sample
   early; the reference arrays were made that way.
3. Down-sampled 50 Hz -> `sampling_rate` by block averaging (`resampling.downsample`, the
   reference's stop rule `i + floor(r) + 1 < L`), then cut into non-overlapping windows of
   `seq_len` steps (tail dropped); a segment needs more than `seq_len` down-sampled steps
   (L > S) to give any window.
4. Labels: `activity` = id - 1 (walking .. laying), `user` = id - 1. The reference subtracts
   the smallest label present instead, which is the same on the full dataset (activity 1 and
   user 1 are present); id - 1 keeps labels independent of which users are present.

Window order: recordings (acc files) in file-name order, which is experiment order (the
reference walked `RawData/` and was run on Windows, where the listing is in name order; its
label array has users in ascending order), and within one recording the rows of
`labels.txt` in file order. For the released `labels.txt`, which lists experiments in
ascending order, that is simply the row order of `labels.txt`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator

import numpy as np
from etils import epath
from limubert_jax.datasets import common, resampling

RAW_RATE = 50  # Hz
STANDARD_GRAVITY = 9.80665  # m/s^2 per g (the dataset's README and the reference)
ACTIVITIES = ("walking", "walking_upstairs", "walking_downstairs", "sitting", "standing", "laying")
NUM_ACTIVITY_IDS = 12  # ids 7..12 are postural transitions (dropped)
NUM_USERS = 30
USERS = tuple(str(u) for u in range(1, NUM_USERS + 1))  # label u - 1 is user u
RAW_DIR = "RawData"
LABELS_FILE = f"{RAW_DIR}/labels.txt"
ARCHIVE = "smartphone+based+recognition+of+human+activities+and+postural+transitions.zip"
URL = f"https://archive.ics.uci.edu/static/public/341/{ARCHIVE}"

_DESCRIPTION = __doc__

Segment = collections.namedtuple("Segment", "exp user activity start end")


# ---------------------------------------------------------------------------------------
# Raw files


def signal_name(sensor: str, exp: int, user: int) -> str:
    """`RawData/` file name of one recording, e.g. ('acc', 1, 1) -> 'acc_exp01_user01.txt'."""
    return f"{sensor}_exp{exp:02d}_user{user:02d}.txt"


def read_labels(path: os.PathLike | str) -> list[Segment]:
    """The rows of `labels.txt`, in file order; ValueError naming the file if malformed."""
    path = epath.Path(path)
    try:
        with path.open("r") as f:
            rows = np.loadtxt(f, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"uci_hapt: cannot parse {path}: {e}") from e
    if rows.size == 0:
        raise ValueError(f"uci_hapt: {path} holds no labelled segment")
    if rows.shape[1] != 5:
        raise ValueError(f"uci_hapt: {path} must have 5 columns (exp user activity start end), got {rows.shape[1]}")
    if not np.all(np.rint(rows) == rows):
        line = int(np.argmax((np.rint(rows) != rows).any(axis=1))) + 1
        raise ValueError(f"uci_hapt: {path} line {line}: non-integer values")
    segments = [Segment(*(int(v) for v in row)) for row in rows]
    for line, s in enumerate(segments, start=1):
        problem = None
        if not 1 <= s.user <= NUM_USERS:
            problem = f"user {s.user} is not in 1..{NUM_USERS}"
        elif not 1 <= s.activity <= NUM_ACTIVITY_IDS:
            problem = f"activity {s.activity} is not in 1..{NUM_ACTIVITY_IDS}"
        elif s.exp < 1 or not 0 <= s.start <= s.end:
            problem = f"bad experiment or sample range ({s.exp}, {s.start}, {s.end})"
        if problem:
            raise ValueError(f"uci_hapt: {path} line {line}: {problem}")
    return segments


def read_signal(path: os.PathLike | str) -> np.ndarray:
    """One raw acc/gyro file -> float64 [samples, 3]; FileNotFoundError or ValueError naming it."""
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"uci_hapt: missing raw file {path} (named by {LABELS_FILE})")
    try:
        with path.open("r") as f:
            x = np.loadtxt(f, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"uci_hapt: cannot parse {path}: {e}") from e
    if x.shape[1] != 3:
        raise ValueError(f"uci_hapt: {path} must have 3 columns (x y z), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"uci_hapt: {path} has NaN/Inf values")
    return x


def read_recording(raw_dir: os.PathLike | str, exp: int, user: int) -> np.ndarray:
    """acc (m/s^2) next to gyro (rad/s) of one experiment: float64 [samples, 6]."""
    raw = epath.Path(raw_dir) / RAW_DIR
    acc_path, gyro_path = raw / signal_name("acc", exp, user), raw / signal_name("gyro", exp, user)
    acc, gyro = read_signal(acc_path), read_signal(gyro_path)
    if acc.shape[0] != gyro.shape[0]:
        raise ValueError(
            f"uci_hapt: {acc_path} has {acc.shape[0]} samples but {gyro_path} has {gyro.shape[0]}; "
            "they must be the same recording"
        )
    return np.concatenate([acc * STANDARD_GRAVITY, gyro], axis=1)


# ---------------------------------------------------------------------------------------
# The reference preprocessing


def segment_windows(recording: np.ndarray, start: int, end: int, sampling_rate: int, seq_len: int) -> np.ndarray:
    """Windows [n, seq_len, F] of one labelled segment of a 50 Hz recording [samples, F].

    `start`/`end` are the numbers from labels.txt, used as the 0-based slice [start, end) as
    the reference did (see the module docstring). No window unless the down-sampled segment
    is longer than `seq_len`."""
    if end > recording.shape[0]:
        raise ValueError(f"uci_hapt: segment [{start}, {end}) runs past the recording's {recording.shape[0]} samples")
    x = resampling.downsample(recording[start:end], RAW_RATE, sampling_rate)
    if x.shape[0] <= seq_len:
        return np.zeros((0, seq_len, recording.shape[1]), dtype=np.float64)
    return resampling.cut_windows(x, seq_len)


def ordered_segments(segments: list[Segment]) -> list[Segment]:
    """The kept segments (activity 1..6) in reference order: recordings by file name, then
    labels.txt order within a recording."""
    kept = [s for s in segments if s.activity <= len(ACTIVITIES)]
    return sorted(kept, key=lambda s: signal_name("acc", s.exp, s.user))  # stable


def iter_segments(raw_dir: os.PathLike | str, sampling_rate: int, seq_len: int) -> Iterator[tuple[Segment, np.ndarray]]:
    """(segment, its windows [n, seq_len, 6] in physical units) in reference order; each
    recording is read once."""
    raw_dir = epath.Path(raw_dir)
    labels_path = raw_dir / LABELS_FILE
    if not labels_path.exists():
        raise FileNotFoundError(f"uci_hapt: missing {labels_path}")
    recording, current = None, None
    for segment in ordered_segments(read_labels(labels_path)):
        if current != (segment.exp, segment.user):
            current = (segment.exp, segment.user)
            recording = read_recording(raw_dir, *current)
        try:
            windows = segment_windows(recording, segment.start, segment.end, sampling_rate, seq_len)
        except ValueError as e:
            row = " ".join(map(str, segment))
            raise ValueError(f"{e} ({labels_path} row '{row}', {signal_name('acc', *current)})") from e
        yield segment, windows


def labels_of(segment: Segment) -> dict[str, int]:
    """0-based labels of a kept segment: activity id - 1, user id - 1."""
    return {"activity": segment.activity - 1, "user": segment.user - 1}


def preprocess(
    raw_dir: os.PathLike | str, sampling_rate: int, seq_len: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every window of the dataset: (imu float64 [N, seq_len, 6], {'activity', 'user': int64 [N]})."""
    data, labels = [], {"activity": [], "user": []}
    for segment, windows in iter_segments(raw_dir, sampling_rate, seq_len):
        data.append(windows)
        for task, value in labels_of(segment).items():
            labels[task].append(np.full(len(windows), value, dtype=np.int64))
    imu = np.concatenate(data) if data else np.zeros((0, seq_len, 6))
    return imu, {t: np.concatenate(v) if v else np.zeros(0, np.int64) for t, v in labels.items()}


# ---------------------------------------------------------------------------------------
# TFDS builder


class Builder(common.ImuBuilder):
    """DatasetBuilder for uci_hapt (see the module docstring and README.md)."""

    BUILDER_CONFIGS = common.version_configs("UCI HAPT waist smartphone, acc + gyro,")
    MAX_RATE_HZ = RAW_RATE
    NUM_FEATURES = 6
    TASKS = {"activity": ACTIVITIES, "user": USERS}
    HOMEPAGE = (
        "https://archive.ics.uci.edu/dataset/341/"
        "smartphone+based+recognition+of+human+activities+and+postural+transitions"
    )
    # RawData/ alone marks an incomplete copy (the error then names labels.txt, not a download).
    REQUIRED_FILES = (RAW_DIR, LABELS_FILE)
    ARCHIVES = (ARCHIVE, "HAPT Data Set.zip")
    URLS = (URL,)
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Without a manual directory the UCI archive is downloaded from {URL}.
    Otherwise pass a directory (--config.dataset.manual_dir=DIR) holding either the extracted
    dataset (a folder with RawData/labels.txt and RawData/acc_expNN_userUU.txt,
    RawData/gyro_expNN_userUU.txt; it may be a few folders down) or the archive itself
    ({ARCHIVE} or HAPT Data Set.zip).
    """
    EXTRA_METADATA = {
        "raw_sampling_rate_hz": RAW_RATE,
        "acc_scale_to_m_s2": STANDARD_GRAVITY,
        "labels": "activity = labels.txt activity id - 1 (ids 7..12 dropped); user = user id - 1",
        "reference_num_windows": {"20_120": 2088},
    }

    def windows(self, raw_dir: epath.Path) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
        config = self.builder_config
        for segment, windows in iter_segments(raw_dir, config.sampling_rate, config.seq_len):
            labels = labels_of(segment)
            for window in windows:
                yield window, labels
