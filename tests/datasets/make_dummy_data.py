"""Writes the `dummy_data/` folders of the recorded-dataset builders: small raw files in each
dataset's own layout, generated here (deterministic: the same bytes on every run), never
downloaded. They are test data, kept beside each builder (`datasets/<name>/dummy_data/`, left
out of the wheel by pyproject.toml) and checked by make_dummy_data_test.py to be this script's
output, each folder under 1 MB.

    python tests/datasets/make_dummy_data.py             # all builders
    python tests/datasets/make_dummy_data.py hhar wisdm  # some

Each writer's comments say what the files hold; the builder tests rely on it (window counts,
labels, the layout's quirks).
"""

from __future__ import annotations

import math
import pathlib
import shutil
import sys
import tempfile

import numpy as np
from limubert_jax.datasets import common
from limubert_jax.datasets.hhar import hhar_dataset_builder as hhar
from limubert_jax.datasets.imu_npy import imu_npy_dataset_builder as imu_npy
from limubert_jax.datasets.motionsense import motionsense_dataset_builder as motionsense
from limubert_jax.datasets.shoaib import shoaib_dataset_builder as shoaib
from limubert_jax.datasets.uci_hapt import uci_hapt_dataset_builder as uci_hapt
from limubert_jax.datasets.wisdm import wisdm_dataset_builder as wisdm

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAX_BYTES = 1 << 20


def dummy_data_dir(name: str) -> pathlib.Path:
    """The committed dummy raw files of builder `name`."""
    return ROOT / "datasets" / name / "dummy_data"


# ---------------------------------------------------------------------------------------
# HHAR.

_HHAR_T0 = 1_424_696_631_913_248_572  # ns; the first Creation_Time of the real accelerometer file
_HHAR_ARRIVAL_LAG_MS = 1_995


def _hhar_rows(sensor: str, user: str, device: str, start_ns: int, plan, period_ms: float, seed: int):
    """CSV lines of one device and sensor: `plan` is [(gt or None for a gap, seconds)];
    periods of period_ms with a deterministic jitter of up to +-3.6 ms."""
    model = device.rsplit("_", 1)[0]
    lines, t, index, k = [], start_ns, 0, seed
    for gt, seconds in plan:
        end = t + int(seconds * 1e9)
        activity = hhar.ACTIVITIES.index(gt) if gt not in (None, "null") else 6
        while t < end:
            if gt is not None:
                phase = (t - _HHAR_T0) / 1e9 * (0.6 + 0.3 * activity) * 2 * math.pi
                if sensor == "acc":
                    x = 0.8 * activity * math.sin(phase)
                    y, z = 9.81 * math.cos(0.1 * activity), 1.5 * math.cos(phase + seed)
                else:
                    x = 0.2 * math.sin(phase + 1)
                    y, z = 0.05 * activity * math.cos(phase), 0.01 * (k % 7 - 3)
                arrival = t // 1_000_000 + _HHAR_ARRIVAL_LAG_MS
                lines.append(f"{index},{arrival},{t},{x:.6f},{y:.6f},{z:.6f},{user},{model},{device},{gt}\n")
                index += 1
            k = (k * 1_103_515_245 + 12_345) % (1 << 31)
            t += int((period_ms + 0.9 * (k % 9 - 4)) * 1e6)
        t = end
    return lines


def write_hhar(root: pathlib.Path) -> None:
    """A small HHAR layout: two users, paired phones with 'null' stretches and a gap, and a
    samsungold whose accelerometer has no gyroscope to pair with (around 25 Hz, jittered)."""
    user_a, user_b = _HHAR_T0, _HHAR_T0 + 3_600 * 10**9
    plan_a = [("stand", 21.0), ("null", 1.5), ("walk", 21.0)]
    devices = [  # (user, device, start, plan, acc period ms, gyro period ms or None)
        ("a", "nexus4_1", user_a, plan_a, 38.0, 40.0),
        ("a", "s3mini_1", user_a + 7_000_000, plan_a, 41.0, 39.0),
        ("a", "samsungold_1", user_a + 3_000_000, [("stand", 8.0)], 40.0, None),
        ("b", "nexus4_2", user_b, [("sit", 13.0), (None, 1.0), ("sit", 13.0)], 39.0, 40.0),
        ("b", "s3_1", user_b + 11_000_000, [("null", 0.5), ("bike", 31.0)], 40.0, 38.0),
    ]
    acc, gyro = [",".join(hhar.HEADER) + "\n"], [",".join(hhar.HEADER) + "\n"]
    for seed, (user, device, start, plan, acc_ms, gyro_ms) in enumerate(devices):
        acc += _hhar_rows("acc", user, device, start, plan, acc_ms, seed + 1)
        if gyro_ms is not None:
            gyro += _hhar_rows("gyro", user, device, start + 2_000_000, plan, gyro_ms, seed + 11)
    folder = pathlib.Path(root) / hhar.LAYOUT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hhar.ACC_FILE).write_text("".join(acc))
    (folder / hhar.GYRO_FILE).write_text("".join(gyro))


# ---------------------------------------------------------------------------------------
# MotionSense.

# (trial folder, user, acc samples, gyro samples). 610 samples give L = 243 at 20 Hz (2
# windows) and 121 at 10 Hz (1); ups_3/sub_1 has a longer acc file (3 acc windows at 20 Hz,
# truncated to the gyro's 2); 320 samples give 1 window at 20 Hz and none at 10 Hz; 300
# samples none (L = 119). 21 windows at 20_120, 10 at 10_100.
_MOTIONSENSE_RECORDINGS = (
    ("dws_1", 1, 610, 610),
    ("dws_1", 10, 610, 610),
    ("dws_11", 2, 610, 610),
    ("ups_3", 1, 910, 610),
    ("ups_3", 2, 610, 610),
    ("sit_5", 2, 610, 610),
    ("std_6", 1, 300, 300),
    ("std_6", 10, 610, 610),
    ("wlk_7", 2, 610, 610),
    ("wlk_7", 24, 610, 610),
    ("jog_9", 1, 610, 610),
    ("jog_9", 10, 320, 320),
)


def _motionsense_sensor(rng: np.random.RandomState, activity: int, n: int, gyro: bool) -> np.ndarray:
    """Front-pocket readings: acc (g) gravity along the thigh + gait, or gyro (rad/s)."""
    t = np.arange(n) / motionsense.RAW_RATE
    moving = motionsense.ACTIVITY_CODES[activity] in ("dws", "ups", "wlk", "jog")
    amplitude = (1.5 if motionsense.ACTIVITY_CODES[activity] == "jog" else 0.5) if moving else 0.01
    wave = np.sin(2 * np.pi * (1.7 + 0.15 * activity) * t)[:, None]
    if gyro:
        return amplitude * 2.0 * wave * [1.0, 0.3, 0.5] + rng.normal(0.0, 0.02, (n, 3))
    gravity = [0.0, -0.2, -0.98] if motionsense.ACTIVITY_CODES[activity] == "sit" else [0.0, -0.98, 0.2]
    return np.asarray(gravity) + amplitude * wave * [0.3, 1.0, 0.4] + rng.normal(0.0, 0.02, (n, 3))


def write_motionsense(root: pathlib.Path) -> None:
    """B_Accelerometer_data/ and C_Gyroscope_data/ with 12 small recordings (see above)."""
    rng = np.random.RandomState(2018)
    for trial, user, n_acc, n_gyro in _MOTIONSENSE_RECORDINGS:
        activity = motionsense.ACTIVITY_CODES.index(trial.split("_")[0])
        for folder, n, is_gyro in ((motionsense.ACC_DIR, n_acc, False), (motionsense.GYRO_DIR, n_gyro, True)):
            values = _motionsense_sensor(rng, activity, n, is_gyro)
            lines = [",x,y,z"] + [f"{i},{x:.5f},{y:.5f},{z:.5f}" for i, (x, y, z) in enumerate(values)]
            path = pathlib.Path(root) / folder / trial / f"sub_{user}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------
# Shoaib.

# (participant k, [(activity name as written, rows), ...]): walking is split in two runs
# around sitting (concatenated by the reference), participant 2 spells upstairs both ways,
# participant 10 sorts after 2 numerically (not lexicographically).
_SHOAIB_RECORDINGS = (
    (1, (("walking", 300), ("sitting", 310), ("walking", 210))),
    (2, (("upsatirs", 160), ("jogging", 510), ("upstairs", 150))),
    (10, (("downstairs", 310), ("standing", 60))),
)


def _shoaib_header() -> list[str]:
    """The two header rows in the real layout: position names at column indices 14 * i (the
    rest empty); the column names with an empty separator between blocks only, then
    `Activity_Label` at index 69. NUM_COLUMNS (70) fields each."""
    first, second = [], []
    for i, position in enumerate(("Left_pocket", "Right_pocket", "Wrist", "Upper_arm", "Belt")):
        if i:
            first.append("")
            second.append("")  # separator
        first += [position] + [""] * (shoaib.COLUMNS_PER_POSITION - 1)
        second += ["Time_Stamp", "Ax", "Ay", "Az", "Lx", "Ly", "Lz", "Gx", "Gy", "Gz", "Mx", "My", "Mz"]
    assert len(first) == len(second) == shoaib.ACTIVITY_COLUMN
    return [",".join(first + [""]), ",".join(second + ["Activity_Label"])]


def write_shoaib(root: pathlib.Path) -> None:
    """Writes DataSet/Participant_{1,2,10}.csv: small, deterministic, plausible recordings."""
    folder = pathlib.Path(root) / shoaib.DATASET_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for k, recordings in _SHOAIB_RECORDINGS:
        rng = np.random.default_rng([2014, k])
        lines = _shoaib_header()
        step = 0
        for name, count in recordings:
            moving = shoaib.activity_index(name) not in (1, 2)  # sitting, standing
            t = np.arange(count) / shoaib.RAW_RATE
            blocks = []  # per position: acc, linear acc (acc without gravity), gyro, mag
            for _ in shoaib.POSITIONS:
                gravity = rng.normal(0.0, 1.0, 3)
                gravity *= 9.81 / np.linalg.norm(gravity)
                swing = (2.5 if moving else 0.05) * np.sin(2 * np.pi * 1.8 * t[:, None] + rng.uniform(0, 6, 3))
                linear = swing + rng.normal(0, 0.1, (count, 3))
                gyro = (1.2 if moving else 0.02) * np.cos(2 * np.pi * 0.9 * t[:, None] + rng.uniform(0, 6, 3))
                mag = rng.uniform(-40, 40, 3) + rng.normal(0, 0.5, (count, 3))
                blocks.append((gravity + linear, linear, gyro, mag))
            for i in range(count):
                fields = []
                for p, (acc, linear, gyro, mag) in enumerate(blocks):
                    if p:
                        fields.append("")  # the separator between blocks (none after the belt block)
                    fields.append(f"{20 * (step + i)}")  # ms
                    fields += [f"{v:.2f}" for v in acc[i]] + [f"{v:.1f}" for v in linear[i]]
                    fields += [f"{v:.2f}" for v in gyro[i]] + [f"{v:.1f}" for v in mag[i]]
                lines.append(",".join(fields + [name]))  # the activity at index 69
            step += count
        (folder / f"Participant_{k}.csv").write_text("\n".join(lines) + "\n", encoding="ascii", newline="\n")


# ---------------------------------------------------------------------------------------
# UCI HAPT.

# (exp, user, [(activity, number of samples)]) per dummy recording: the labelled segments
# follow each other after 20 unlabelled samples. Transitions (7..12) are dropped; the
# segments of 320 and 301 samples (slices of 319 and 300) give L = 127 and L = 119 at 20 Hz:
# 1 and 0 windows (L > S is required).
_UCI_HAPT_RECORDINGS = (
    (1, 1, [(5, 1310), (7, 150), (4, 1220), (1, 320), (2, 301)]),
    (2, 1, [(6, 1300), (11, 160), (3, 700)]),
    (5, 3, [(2, 800), (1, 1300), (12, 140)]),
)
_UCI_HAPT_GAP, _UCI_HAPT_TAIL = 20, 25  # unlabelled samples before each segment, after the last


def _uci_hapt_signal(rng: np.random.RandomState, activity: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Plausible waist-phone readings: acc (g) gravity + gait oscillation, gyro (rad/s)."""
    t = np.arange(n) / uci_hapt.RAW_RATE
    lying = activity == 6
    gravity = np.array([0.0, 0.1, 1.0]) if lying else np.array([1.0, -0.1, 0.15])
    moving = activity in (1, 2, 3)
    step = 1.8 + 0.1 * activity
    acc = gravity + (0.3 if moving else 0.01) * np.sin(2 * np.pi * step * t + activity)[:, None] * [1.0, 0.4, 0.6]
    gyro = (0.8 if moving else 0.02) * np.cos(2 * np.pi * step / 2 * t)[:, None] * [0.3, 1.0, 0.5]
    return acc + rng.normal(0.0, 0.02, (n, 3)), gyro + rng.normal(0.0, 0.01, (n, 3))


def write_uci_hapt(root: pathlib.Path) -> None:
    """A small RawData/ layout (3 recordings, 21 windows at 20_120, 10 at 10_100)."""
    raw = pathlib.Path(root) / uci_hapt.RAW_DIR
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(341)
    rows = []
    for exp, user, segments in _UCI_HAPT_RECORDINGS:
        pieces, position = [], 0
        for activity, n in segments:
            pieces.append(_uci_hapt_signal(rng, 5, _UCI_HAPT_GAP))  # unlabelled, before each segment
            position += _UCI_HAPT_GAP
            pieces.append(_uci_hapt_signal(rng, activity, n))
            rows.append(f"{exp} {user} {activity} {position + 1} {position + n}")  # 1-based inclusive
            position += n
        pieces.append(_uci_hapt_signal(rng, 5, _UCI_HAPT_TAIL))
        acc, gyro = [a for a, _ in pieces], [g for _, g in pieces]
        for sensor, values in (("acc", acc), ("gyro", gyro)):
            lines = [" ".join(f"{v:.6f}" for v in row) for row in np.concatenate(values)]
            (raw / uci_hapt.signal_name(sensor, exp, user)).write_text("\n".join(lines) + "\n")
    (raw / "labels.txt").write_text("\n".join(rows) + "\n")


# ---------------------------------------------------------------------------------------
# WISDM.

_WISDM_T0 = 252_207_666_810_782  # ns; the first timestamp of the real data_1600_accel_phone.txt


def _wisdm_signal(sensor: str, activity: int, t: float, seed: int) -> tuple[float, float, float]:
    w = 2 * math.pi * (0.5 + 0.15 * activity)
    if sensor == "accel":
        return (1.2 * math.sin(w * t + seed), 9.5 + 0.8 * math.cos(2 * w * t), 0.3 * activity * math.sin(w * t / 2))
    return (0.4 * math.cos(w * t + seed), 0.05 * activity * math.sin(w * t), 0.02 * ((seed * 7 + int(t * 20)) % 5 - 2))


def _wisdm_lines(sensor: str, subject: int, plan, offset_ns: int, seed: int) -> list[str]:
    """Records of one subject and sensor: `plan` is [(activity letter, seconds, skipped sample
    numbers)], samples every 50.354 ms (plus a deterministic jitter of up to +-2 ms that does
    not accumulate) from _WISDM_T0 + offset, activities back to back."""
    lines, start, k = [], _WISDM_T0 + offset_ns, seed
    for letter, seconds, skipped in plan:
        activity = wisdm.ACTIVITY_CODES.index(letter)
        for n in range(int(seconds * wisdm.RAW_RATE)):
            k = (k * 1_103_515_245 + 12_345) % (1 << 31)
            t = start + n * 50_354_004 + (k % 9 - 4) * 500_000
            if n not in skipped:
                x, y, z = _wisdm_signal(sensor, activity, (t - _WISDM_T0) / 1e9, seed)
                lines.append(f"{subject},{letter},{t},{x:.7g},{y:.7g},{z:.7g};")
        start += int(seconds * wisdm.RAW_RATE) * 50_354_004
    return lines


def write_wisdm(root: pathlib.Path) -> None:
    """A small WISDM layout: two subjects, three activities each, acc and gyro with their own
    clocks (gyro 12 ms later), a run broken by missing acc samples, a stretch of gyro samples
    missing (unpaired acc), and one line holding two records."""
    layout = pathlib.Path(root) / wisdm.LAYOUT_DIR
    plans = {
        1600: [("A", 26.0, ()), ("D", 26.0, ()), ("M", 26.0, ())],
        1601: [("B", 26.0, ()), ("E", 26.0, range(200, 206)), ("S", 26.0, ())],
    }
    gyro_skips = {1600: {"D": range(300, 304)}, 1601: {}}
    for subject, plan in plans.items():
        acc = _wisdm_lines("accel", subject, plan, 0, subject)
        gyro_plan = [(a, s, gyro_skips[subject].get(a, ())) for a, s, _ in plan]
        gyro = _wisdm_lines("gyro", subject, gyro_plan, 12_000_000, subject + 1)
        if subject == 1601:
            acc[10:12] = [acc[10] + acc[11]]  # two records on one line
        for folder, name, lines in ((wisdm.ACC_DIR, "accel", acc), (wisdm.GYRO_DIR, "gyro", gyro)):
            path = layout / folder / f"data_{subject}_{name}_phone.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------
# eleme and huawei: the reference .npy layout, random (not real) data.

def write_npy(root: pathlib.Path, seed: int, num_features: int, num_labels: int,
                         num_windows: dict[str, int]) -> None:
    """Deterministic random data_/label_<version>.npy (float64, as the reference saves them)."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i, (version, (_, seq_len)) in enumerate(sorted(common.VERSIONS.items())):
        rng = np.random.default_rng([seed, i])
        n = num_windows[version]
        data = rng.normal(0.0, 1.0, (n, seq_len, num_features))
        data[:, :, :3] += rng.normal(0.0, 1.0, (n, 1, 3)) * 5.0  # a per-window gravity-like offset
        data = np.round(data, 4)
        label = np.repeat(rng.integers(0, 4, (n, 1, num_labels)), seq_len, axis=1).astype(np.float64)
        data_name, label_name = imu_npy.file_names(version)
        np.save(root / data_name, data, allow_pickle=False)
        np.save(root / label_name, label, allow_pickle=False)


def write_eleme(root: pathlib.Path) -> None:
    write_npy(root, seed=1851, num_features=9, num_labels=2, num_windows={"20_120": 24, "10_100": 10})


def write_huawei(root: pathlib.Path) -> None:
    """Deterministic random arrays (not real data): F = 6, L = 3."""
    write_npy(root, seed=2021, num_features=6, num_labels=3, num_windows={"20_120": 22, "10_100": 9})


# Builder name -> the function writing its dummy raw files into a folder.
WRITERS = {
    "eleme": write_eleme,
    "hhar": write_hhar,
    "huawei": write_huawei,
    "motionsense": write_motionsense,
    "shoaib": write_shoaib,
    "uci_hapt": write_uci_hapt,
    "wisdm": write_wisdm,
}


def folder_bytes(root: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def write(name: str, root: pathlib.Path) -> None:
    """Writes builder `name`'s dummy raw files into `root` (created), checking the size."""
    root.mkdir(parents=True, exist_ok=True)
    WRITERS[name](root)
    size = folder_bytes(root)
    if size > MAX_BYTES:
        raise ValueError(f"dummy data of {name} is {size} bytes, over {MAX_BYTES}")


def main(argv: list[str]) -> int:
    names = argv or sorted(WRITERS)
    unknown = sorted(set(names) - set(WRITERS))
    if unknown:
        print(f"no dummy-data writer for {', '.join(unknown)}; available: {', '.join(WRITERS)}", file=sys.stderr)
        return 2
    for name in names:
        target = dummy_data_dir(name)
        with tempfile.TemporaryDirectory() as tmp:
            staged = pathlib.Path(tmp) / "dummy_data"
            write(name, staged)  # complete before the committed folder is touched
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(staged, target)
        print(f"wrote {target} ({folder_bytes(target)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
