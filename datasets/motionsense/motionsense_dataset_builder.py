"""motionsense: MotionSense (iPhone 6s in the front trouser pocket, 24 users, 6 activities),
windows made as the LIMU-BERT reference made them.

Raw layout (the motion-sense GitHub repository, `data/B_Accelerometer_data.zip` and
`data/C_Gyroscope_data.zip`; each zip may hold its folder twice, `B_Accelerometer_data/
B_Accelerometer_data/...`):

* `B_Accelerometer_data/<act>_<trial>/sub_<u>.csv`: accelerometer (g), 50 Hz;
* `C_Gyroscope_data/<act>_<trial>/sub_<u>.csv`: gyroscope (rad/s), 50 Hz;

CSV with a header row, then `index,x,y,z` per sample. `<act>` is dws, ups, sit, std, wlk or
jog (trials: dws 1, 2, 11; ups 3, 4, 12; sit 5, 13; std 6, 14; wlk 7, 8, 15; jog 9, 16),
`<u>` the user 1..24.

Preprocessing (the reference's, see README.md beside this file), per trial and user:

1. acc and gyro files are each down-sampled 50 Hz -> `sampling_rate` by block averaging
   (`resampling.downsample`, stop rule `i + floor(r) + 1 < L`) and cut into non-overlapping
   windows of `seq_len` steps (tail dropped); a file needs more than `seq_len` down-sampled
   steps (L > S) to give any window.
2. The acc and gyro windows of the same trial and user are paired, truncated to the shorter
   count; acc * 9.8 (g -> m/s^2, the reference's factor, not 9.80665).
3. Labels: `activity` from the folder prefix, dws 0, ups 1, sit 2, std 3, wlk 4, jog 5
   (downstairs, upstairs, sitting, standing, walking, jogging); `user` = u - 1.

Order: trial folders in sorted name order (`dws_1, dws_11, dws_2, jog_16, jog_9, sit_13,
...`), and within a folder the files in sorted name order (`sub_1, sub_10, ..., sub_19,
sub_2, sub_20, ...`). The reference walked the folders in file-system order; it was run on
Windows (its paths are `D:\\...`), where a directory listing comes in this sorted order, so
sorted order is both deterministic and the reference's most likely order.

Deviation: the reference down-sampled and windowed all acc files and all gyro files as two
separate lists and paired them by position, which silently mispairs recordings if a file
gives windows for one sensor and none for the other. Here recordings are paired by
(trial, user), and one gives windows only when both its files have L > S. A recording that
exists for one sensor only is an error (FileNotFoundError naming the missing file).
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np
from etils import epath
from limubert_jax.datasets import common, layout, resampling

RAW_RATE = 50  # Hz
ACC_SCALE = 9.8  # g -> m/s^2 as the reference does
ACTIVITY_CODES = ("dws", "ups", "sit", "std", "wlk", "jog")  # label = index
ACTIVITIES = ("downstairs", "upstairs", "sitting", "standing", "walking", "jogging")
NUM_USERS = 24
USERS = tuple(str(u) for u in range(1, NUM_USERS + 1))  # label u - 1 is sub_<u>
ACC_DIR, GYRO_DIR = "B_Accelerometer_data", "C_Gyroscope_data"
ARCHIVE_NAMES = {ACC_DIR: f"{ACC_DIR}.zip", GYRO_DIR: f"{GYRO_DIR}.zip"}
URLS = tuple(f"https://github.com/mmalekzadeh/motion-sense/raw/master/data/{a}" for a in ARCHIVE_NAMES.values())

_TRIAL_RE = re.compile(r"(dws|ups|sit|std|wlk|jog)_(\d+)")
_FILE_RE = re.compile(r"sub_(\d+)\.csv")

_DESCRIPTION = __doc__

Recording = collections.namedtuple("Recording", "trial file activity user")
SensorDirs = collections.namedtuple("SensorDirs", "acc gyro")  # the folders holding <act>_<trial>/


# ---------------------------------------------------------------------------------------
# Raw files


def _trial_dirs(folder: epath.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and _TRIAL_RE.fullmatch(p.name))


def sensor_dir(parent: os.PathLike | str, name: str) -> epath.Path:
    """`parent/name`, or `parent/name/name` when the archive doubled the folder."""
    folder = epath.Path(parent) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"motionsense: missing {folder}")
    inner = folder / name
    if not _trial_dirs(folder) and inner.is_dir():
        return inner
    return folder


def sensor_dirs(raw: os.PathLike | str | SensorDirs) -> SensorDirs:
    """The acc and gyro folders of a raw root holding both folders (or `SensorDirs` as is)."""
    if isinstance(raw, SensorDirs):
        return SensorDirs(epath.Path(raw.acc), epath.Path(raw.gyro))
    return SensorDirs(sensor_dir(raw, ACC_DIR), sensor_dir(raw, GYRO_DIR))


def list_recordings(dirs: SensorDirs) -> list[Recording]:
    """Every (trial folder, file) of either sensor, in sorted trial then file name order.
    FileNotFoundError naming the file if one sensor lacks it (or if there is no file at all);
    ValueError for a user outside 1..24."""
    names = {}
    for folder in dirs:
        for trial in _trial_dirs(folder):
            for p in (folder / trial).iterdir():
                if p.is_file() and _FILE_RE.fullmatch(p.name):
                    names[(trial, p.name)] = None
    if not names:
        raise FileNotFoundError(
            f"motionsense: no <act>_<trial>/sub_<u>.csv files in {dirs.acc} or {dirs.gyro}"
        )
    out = []
    for trial, file in sorted(names):
        for folder in dirs:
            if not (folder / trial / file).is_file():
                raise FileNotFoundError(f"motionsense: missing {folder / trial / file} (the other sensor has it)")
        user = int(_FILE_RE.fullmatch(file).group(1))
        if not 1 <= user <= NUM_USERS:
            raise ValueError(f"motionsense: {dirs.acc / trial / file}: user {user} is not in 1..{NUM_USERS}")
        activity = ACTIVITY_CODES.index(_TRIAL_RE.fullmatch(trial).group(1))
        out.append(Recording(trial, file, activity, user))
    return out


def read_sensor_csv(path: os.PathLike | str) -> np.ndarray:
    """One sensor file (header row, then index,x,y,z) -> float64 [samples, 3]; ValueError naming it."""
    path = epath.Path(path)
    try:
        with path.open("r") as f:
            table = np.loadtxt(f, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"motionsense: cannot parse {path}: {e}") from e
    if table.shape[0] and table.shape[1] != 4:
        raise ValueError(f"motionsense: {path} must have 4 columns (index, x, y, z), got {table.shape[1]}")
    if not np.isfinite(table).all():
        raise ValueError(f"motionsense: {path} has NaN/Inf values")
    return table[:, 1:4] if table.shape[0] else np.zeros((0, 3))


# ---------------------------------------------------------------------------------------
# The reference preprocessing


def sensor_windows(x: np.ndarray, sampling_rate: int, seq_len: int) -> np.ndarray:
    """One 50 Hz sensor file [samples, 3] -> windows [n, seq_len, 3]; none unless L > S."""
    down = resampling.downsample(x, RAW_RATE, sampling_rate)
    if down.shape[0] <= seq_len:
        return np.zeros((0, seq_len, x.shape[1]), dtype=np.float64)
    return resampling.cut_windows(down, seq_len)


def pair_windows(acc: np.ndarray, gyro: np.ndarray) -> np.ndarray:
    """acc windows (g) and gyro windows (rad/s) of one recording -> [n, S, 6], acc * 9.8,
    truncated to the shorter count."""
    n = min(len(acc), len(gyro))
    return np.concatenate([acc[:n] * ACC_SCALE, gyro[:n]], axis=-1)


def iter_recordings(
    raw: os.PathLike | str | SensorDirs, sampling_rate: int, seq_len: int
) -> Iterator[tuple[Recording, np.ndarray]]:
    """(recording, its windows [n, seq_len, 6] in physical units) in the documented order."""
    dirs = sensor_dirs(raw)
    for rec in list_recordings(dirs):
        acc = sensor_windows(read_sensor_csv(dirs.acc / rec.trial / rec.file), sampling_rate, seq_len)
        gyro = sensor_windows(read_sensor_csv(dirs.gyro / rec.trial / rec.file), sampling_rate, seq_len)
        yield rec, pair_windows(acc, gyro)


def labels_of(rec: Recording) -> dict[str, int]:
    return {"activity": rec.activity, "user": rec.user - 1}


def preprocess(
    raw: os.PathLike | str | SensorDirs, sampling_rate: int, seq_len: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every window: (imu float64 [N, seq_len, 6], {'activity', 'user': int64 [N]})."""
    data, labels = [], {"activity": [], "user": []}
    for rec, windows in iter_recordings(raw, sampling_rate, seq_len):
        data.append(windows)
        for task, value in labels_of(rec).items():
            labels[task].append(np.full(len(windows), value, dtype=np.int64))
    return np.concatenate(data), {t: np.concatenate(v) for t, v in labels.items()}


# ---------------------------------------------------------------------------------------
# TFDS builder


class Builder(common.ImuBuilder):
    """DatasetBuilder for motionsense (see the module docstring and README.md)."""

    BUILDER_CONFIGS = common.version_configs("MotionSense front-pocket iPhone 6s, acc + gyro,")
    MAX_RATE_HZ = RAW_RATE
    NUM_FEATURES = 6
    TASKS = {"activity": ACTIVITIES, "user": USERS}
    HOMEPAGE = "https://github.com/mmalekzadeh/motion-sense"
    REQUIRED_FILES = (ACC_DIR, GYRO_DIR)
    ARCHIVES = tuple(ARCHIVE_NAMES.values())
    URLS = URLS
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Without a manual directory the two zips are downloaded from the motion-sense repository
    ({', '.join(URLS)}). Otherwise pass a directory (--config.dataset.manual_dir=DIR) holding
    either the extracted folders {ACC_DIR}/ and {GYRO_DIR}/ (with <act>_<trial>/sub_<u>.csv
    inside, possibly doubled: {ACC_DIR}/{ACC_DIR}/...) or the archives {ARCHIVE_NAMES[ACC_DIR]} and
    {ARCHIVE_NAMES[GYRO_DIR]}.
    """
    EXTRA_METADATA = {
        "raw_sampling_rate_hz": RAW_RATE,
        "acc_scale_to_m_s2": ACC_SCALE,
        "activity_codes": list(ACTIVITY_CODES),
        "labels": "activity = index of the trial folder prefix in activity_codes; user = sub_<u> - 1",
        "reference_num_windows": {"20_120": 4534},
    }

    def windows(self, raw_dir) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
        """`raw_dir`: a folder holding both sensor folders, or `SensorDirs` (from archives)."""
        config = self.builder_config
        for rec, windows in iter_recordings(raw_dir, config.sampling_rate, config.seq_len):
            labels = labels_of(rec)
            for window in windows:
                yield window, labels

    def _from_archives(self, dl_manager, archives: list[epath.Path], what: str) -> SensorDirs:
        """Each zip holds one sensor folder, so they extract to different roots: find each
        folder on its own (the base class looks for one root holding both)."""
        roots = layout.extract_archives(dl_manager, archives)
        return locate_sensor_dirs(roots, what)


def locate_sensor_dirs(roots: Sequence[os.PathLike | str], what: str) -> SensorDirs:
    """The acc and gyro folders below any of `roots` (extracted archives); FileNotFoundError
    naming the archive whose folder is missing."""
    found = {}
    for name in (ACC_DIR, GYRO_DIR):
        for root in roots:
            parent = layout.find_layout(epath.Path(root), (name,))
            if parent is not None:
                found[name] = sensor_dir(parent, name)
                break
        else:
            raise FileNotFoundError(
                f"motionsense: {what} does not hold {name}/ (extracted from {ARCHIVE_NAMES[name]}); "
                f"the raw layout needs both {ACC_DIR}/ and {GYRO_DIR}/"
            )
    return SensorDirs(found[ACC_DIR], found[GYRO_DIR])
