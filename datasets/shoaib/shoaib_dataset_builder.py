"""shoaib: smartphones at five body positions (Shoaib et al., Sensors 2014), reference windows.

Raw layout (the extracted RAR archive): `DataSet/Participant_<k>.csv`, k = 1..10, 50 Hz. Each
file has two header rows, then one row per time step of 70 columns: for each of 5 body
positions (left pocket, right pocket, wrist, upper arm, belt) a block of 13 columns (time
stamp, acc xyz, linear acc xyz, gyro xyz, mag xyz) starting at column index 14 * i (0-based);
an empty separator column follows each of the first four blocks only. The belt block ends at
index 68 and is followed directly by the activity name at index 69, the last column (the
reference reads it as `iloc[:, -1]`). Trailing empty fields after it (a 71st column, or
more) are tolerated and ignored, but not required.

Reference preprocessing (README.md beside this file), per participant file:

* participants in ascending k (numeric: 1, 2, ..., 10); user label k - 1;
* within a file, for each activity in label order (walking, sitting, standing, jogging,
  biking, upstairs, downstairs), for each position in column order: ALL rows of that
  activity, in file order, concatenated (not split into contiguous runs), columns acc xyz,
  gyro xyz, mag xyz (9 features; the linear-acceleration and time columns are not used),
  converted to float32 as the reference does, down-sampled 50 Hz -> the version's rate with
  the shared block-averaging rule (Shoaib variant: `include_last=True`), cut into
  non-overlapping windows (the tail is dropped);
* labels: activity, position (0..4 in the order above), user.

Deviation from the reference: rows whose activity is spelled `upsatirs` are upstairs here;
the reference maps every unknown name to 0 and so folds them into walking. Any other
unknown activity name stops the build (the reference would silently call it walking).
Units are the files' own (Android): acc m/s^2, gyro rad/s, mag uT; nothing is converted.
"""

from __future__ import annotations

import csv
import os
import pathlib
import re
import shutil
import subprocess
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from limubert_jax.datasets import common, layout, resampling

RAW_RATE = 50  # Hz
ACTIVITIES = ("walking", "sitting", "standing", "jogging", "biking", "upstairs", "downstairs")
ACTIVITY_TYPOS = {"upsatirs": "upstairs"}  # spellings found in the files -> the activity meant
POSITIONS = ("left_pocket", "right_pocket", "wrist", "upper_arm", "belt")
NUM_PARTICIPANTS = 10
USERS = tuple(f"participant_{k}" for k in range(1, NUM_PARTICIPANTS + 1))

HEADER_ROWS = 2
COLUMNS_PER_POSITION = 13  # one position block: time, acc xyz, linear acc xyz, gyro xyz, mag xyz
POSITION_STRIDE = COLUMNS_PER_POSITION + 1  # block i starts at column index 14 * i (13 + a separator)
NUM_SEPARATORS = len(POSITIONS) - 1  # empty columns between blocks (none after the belt block)
SENSOR_OFFSETS = (1, 2, 3, 7, 8, 9, 10, 11, 12)  # acc xyz, gyro xyz, mag xyz within a position block
ACTIVITY_COLUMN = len(POSITIONS) * COLUMNS_PER_POSITION + NUM_SEPARATORS  # 0-based: 69, right after the belt block
NUM_COLUMNS = ACTIVITY_COLUMN + 1  # 70; only empty fields may follow
_LAYOUT = (
    f"{len(POSITIONS)} position blocks of {COLUMNS_PER_POSITION}, {NUM_SEPARATORS} separators, activity"
)

DATASET_DIR = "DataSet"
ARCHIVE = "sensors-activity-recognition-dataset-shoaib.rar"
RAR_TOOLS = ("unrar", "rar", "7z", "7za", "bsdtar")
_PARTICIPANT_FILE = re.compile(r"Participant_(\d+)\.csv")
_ACTIVITY_INDEX = {name: i for i, name in enumerate(ACTIVITIES)}
_ACTIVITY_INDEX.update({typo: _ACTIVITY_INDEX[name] for typo, name in ACTIVITY_TYPOS.items()})


def sensor_columns(position: int) -> list[int]:
    """0-based CSV columns of acc xyz, gyro xyz, mag xyz of a position (0..4)."""
    return [position * POSITION_STRIDE + offset for offset in SENSOR_OFFSETS]


_ALL_SENSOR_COLUMNS = [c for p in range(len(POSITIONS)) for c in sensor_columns(p)]


def participant_files(dataset_dir: os.PathLike | str) -> list[tuple[int, epath.Path]]:
    """(k, path) of every `Participant_<k>.csv` in `dataset_dir`, in ascending k."""
    dataset_dir = epath.Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"shoaib: {dataset_dir} does not exist (it must hold Participant_<k>.csv files)")
    found = []
    for path in dataset_dir.iterdir():
        match = _PARTICIPANT_FILE.fullmatch(path.name)
        if match and path.is_file():
            k = int(match.group(1))
            if not 1 <= k <= NUM_PARTICIPANTS:
                raise ValueError(f"shoaib: {path}: participant {k} is outside 1..{NUM_PARTICIPANTS}")
            found.append((k, path))
    if not found:
        raise FileNotFoundError(f"shoaib: no Participant_<k>.csv file in {dataset_dir}")
    missing = sorted(set(range(1, NUM_PARTICIPANTS + 1)) - {k for k, _ in found})
    if missing:
        logging.warning("shoaib: %s has no file for participants %s", dataset_dir, missing)
    return sorted(found)


def activity_index(name: str) -> int | None:
    """The activity label of a name in the files (typos mapped, case and spaces ignored), or None."""
    return _ACTIVITY_INDEX.get(name.strip().lower())


def read_participant(path: os.PathLike | str) -> tuple[np.ndarray, np.ndarray]:
    """One participant file -> (sensors float32 [R, 5, 9], activity int64 [R]), rows in file order.

    sensors[r, p] holds acc xyz, gyro xyz, mag xyz of position p; the activity is column
    ACTIVITY_COLUMN (0-based 69, the 70th). Empty fields after it are ignored. Raises ValueError
    naming the file and row (1-based line number) for a row with fewer than NUM_COLUMNS columns
    or a non-empty field after the activity, and also the (1-based) column for an unknown
    activity or a value that is not a finite number.
    """
    path = epath.Path(path)
    values, activities, lines = [], [], []
    with open(os.fspath(path), encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            if reader.line_num <= HEADER_ROWS or not any(field.strip() for field in row):
                continue
            if len(row) < NUM_COLUMNS:
                raise ValueError(
                    f"shoaib: {path}, row {reader.line_num}: {len(row)} columns, "
                    f"{NUM_COLUMNS} expected ({_LAYOUT})"
                )
            extra = [(c, field) for c, field in enumerate(row[NUM_COLUMNS:], NUM_COLUMNS) if field.strip()]
            if extra:
                column, field = extra[0]
                raise ValueError(
                    f"shoaib: {path}, row {reader.line_num}: {len(row)} columns, "
                    f"{NUM_COLUMNS} expected ({_LAYOUT}); only empty fields may follow the activity, "
                    f"but column {column + 1} holds {field!r}"
                )
            name = row[ACTIVITY_COLUMN]
            activity = activity_index(name)
            if activity is None:
                raise ValueError(
                    f"shoaib: {path}, row {reader.line_num}, column {ACTIVITY_COLUMN + 1}: unknown activity "
                    f"{name!r} (known: {', '.join(ACTIVITIES)}, and the typo {', '.join(ACTIVITY_TYPOS)})"
                )
            values.append([row[c] for c in _ALL_SENSOR_COLUMNS])
            activities.append(activity)
            lines.append(reader.line_num)
    try:
        sensors = np.array(values, dtype=np.float64).reshape(len(values), len(POSITIONS), len(SENSOR_OFFSETS))
        bad = ~np.isfinite(sensors).all(axis=(1, 2))
    except ValueError:
        bad = None
    if bad is None or bad.any():
        _raise_bad_value(path, values, lines)
    return sensors.astype(np.float32), np.asarray(activities, dtype=np.int64)


def _raise_bad_value(path: epath.Path, values: list[list[str]], lines: list[int]):
    for fields, line in zip(values, lines):
        for column, text in zip(_ALL_SENSOR_COLUMNS, fields):
            try:
                ok = np.isfinite(float(text))
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"shoaib: {path}, row {line}, column {column + 1}: {text!r} is not a finite number"
                )
    raise AssertionError("unreachable: no bad value found")  # pragma: no cover


def participant_windows(
    sensors: np.ndarray, activity: np.ndarray, user: int, sampling_rate: int, seq_len: int
) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
    """Windows of one participant in reference order: activity, then position, then time."""
    for a in range(len(ACTIVITIES)):
        rows = sensors[activity == a]  # every row of the activity, concatenated in file order
        if not len(rows):
            continue
        for p in range(len(POSITIONS)):
            down = resampling.downsample(
                np.ascontiguousarray(rows[:, p, :]), RAW_RATE, sampling_rate, include_last=True
            )
            for window in resampling.cut_windows(down, seq_len):
                yield window, {"activity": a, "position": p, "user": user}


def shoaib_windows(
    dataset_dir: os.PathLike | str, sampling_rate: int, seq_len: int
) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
    """Every window of the `Participant_<k>.csv` files in `dataset_dir`, in reference order
    (participants by ascending k), as (imu [seq_len, 9] float32, {activity, position, user})."""
    for k, path in participant_files(dataset_dir):
        sensors, activity = read_participant(path)
        yield from participant_windows(sensors, activity, k - 1, sampling_rate, seq_len)


# ---------------------------------------------------------------------------------------
# The RAR archive, when a tool to extract it is installed.


def find_rar_tool() -> str | None:
    """Path of the first of RAR_TOOLS on PATH, or None."""
    for tool in RAR_TOOLS:
        found = shutil.which(tool)
        if found:
            return found
    return None


def _rar_command(tool: str, archive: str, target: str) -> list[str]:
    name = pathlib.Path(tool).name
    if name.startswith(("unrar", "rar")):
        return [tool, "x", "-o+", "-idq", archive, target + os.sep]
    if name.startswith("7z"):
        return [tool, "x", "-y", f"-o{target}", archive]
    return [tool, "-xf", archive, "-C", target]  # bsdtar


def extract_rar(archive: epath.Path, target: epath.Path) -> epath.Path:
    """Extracts `archive` into `target` (reused if already complete) with a RAR tool from PATH;
    returns the directory holding `DataSet/Participant_1.csv`."""
    required = (f"{DATASET_DIR}/Participant_1.csv",)
    if target.is_dir():
        found = layout.find_layout(target, required)
        if found is not None:
            return found
    tool = find_rar_tool()
    if tool is None:
        raise FileNotFoundError(
            f"shoaib: {archive} is a RAR archive, which TFDS cannot extract, and none of "
            f"{', '.join(RAR_TOOLS)} is on PATH. Extract it yourself (`unrar x {archive.name}` or "
            f"`7z x {archive.name}`) and pass the folder holding {DATASET_DIR}/ as "
            "--config.dataset.manual_dir."
        )
    staging = target.parent / (target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    command = _rar_command(tool, os.fspath(archive), os.fspath(staging))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ValueError(
            f"shoaib: extracting {archive} with `{' '.join(command)}` failed "
            f"(exit {result.returncode}): {result.stderr.strip()[-500:]}"
        )
    if layout.find_layout(staging, required) is None:
        raise FileNotFoundError(f"shoaib: the archive {archive} does not hold {required[0]}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return layout.find_layout(target, required)


# ---------------------------------------------------------------------------------------


class Builder(common.ImuBuilder):
    """DatasetBuilder for shoaib (see the module docstring)."""

    BUILDER_CONFIGS = common.version_configs("Shoaib et al. (2014), 5 body positions, acc + gyro + mag,")
    MAX_RATE_HZ = RAW_RATE
    NUM_FEATURES = 9
    TASKS = {"activity": ACTIVITIES, "position": POSITIONS, "user": USERS}
    HOMEPAGE = "https://www.utwente.nl/en/eemcs/ps/research/dataset/"
    REQUIRED_FILES = (f"{DATASET_DIR}/Participant_1.csv",)
    ARCHIVES = ()  # the RAR archive is handled here (extract_rar), not by TFDS
    URLS = ()  # no automatic download
    EXTRA_METADATA = {
        "raw_sampling_rate_hz": RAW_RATE,
        "positions": list(POSITIONS),
        "label_order": ["activity", "position", "user"],
        "deviations": "activity 'upsatirs' is upstairs (the reference folds it into walking)",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Download {ARCHIVE} from the University of Twente Pervasive Systems datasets page
    (https://www.utwente.nl/en/eemcs/ps/research/dataset/, "Sensors Activity Recognition
    Dataset" by Shoaib et al.) and extract it: `unrar x {ARCHIVE}` or `7z x {ARCHIVE}`
    (TFDS cannot extract RAR). Pass the folder that holds {DATASET_DIR}/Participant_1.csv ...
    Participant_10.csv as --config.dataset.manual_dir=DIR (TFDS: DownloadConfig(manual_dir=DIR)).
    If unrar, rar, 7z, 7za or bsdtar is on PATH, the manual directory may instead hold the
    .rar itself; it is then extracted under the TFDS download directory.
    """

    def raw_dir(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
        try:
            manual = epath.Path(dl_manager.manual_dir)
        except AssertionError:  # TFDS: missing or empty; the base class says so
            manual = None
        if manual is not None and layout.find_layout(manual, self.REQUIRED_FILES) is None:
            archive = _find_archive(manual)
            if archive is not None:
                return extract_rar(archive, epath.Path(dl_manager.download_dir) / "extracted" / "shoaib_rar")
        return super().raw_dir(dl_manager)

    def windows(self, raw_dir: epath.Path) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
        config = self.builder_config
        yield from shoaib_windows(raw_dir / DATASET_DIR, config.sampling_rate, config.seq_len)


def _find_archive(manual: epath.Path) -> epath.Path | None:
    """The Shoaib RAR in the manual directory: its official name, else a single *.rar."""
    if (manual / ARCHIVE).is_file():
        return manual / ARCHIVE
    rars = sorted(p for p in manual.iterdir() if p.is_file() and p.name.lower().endswith(".rar"))
    return rars[0] if len(rars) == 1 else None
