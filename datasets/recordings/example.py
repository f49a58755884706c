"""Writes synthetic recordings in the `recordings` layout, to try the builder on.

    python -m limubert_jax.datasets.recordings.example DIR [--num_recordings=6] [--seconds=600] [--seed=0]

One CSV file per recording at about 50 Hz (every other recording with jittered timestamps, and
the second one with a 3 s pause: a gap), columns timestamp (Unix seconds), acc_x..z (m/s^2),
gyro_x..z (rad/s) and two label columns: `activity` (sit, stand, walk, run; changing every
30-120 s, so that some windows hold a change) and `user` (an integer, two recordings each).
The signals depend on the activity (posture: the direction of gravity; movement: the frequency
and amplitude of acc and gyro), so a classifier can learn them. DIR must be new or empty. Then:

    python -m limubert_jax.main --config=configs/recordings.py:50_200 --config.dataset.manual_dir=DIR ...
"""

from __future__ import annotations

import pathlib
import sys
from typing import Sequence

import numpy as np
from absl import flags

RATE_HZ = 50.0
GRAVITY = 9.80665
# activity -> (gravity direction (x, y, z), movement frequency Hz, acc amplitude m/s^2, gyro amplitude rad/s)
ACTIVITIES = {
    "sit": ((0.0, 0.7071, 0.7071), 0.25, 0.05, 0.02),
    "stand": ((0.0, 0.0, 1.0), 0.3, 0.1, 0.04),
    "walk": ((0.0, 0.1, 0.995), 1.8, 2.0, 0.8),
    "run": ((0.0, 0.2, 0.98), 2.8, 5.0, 2.0),
}


def _activities(rng: np.random.Generator, seconds: float) -> list[tuple[float, str]]:
    """(start time, activity) spans: 30-120 s each, no activity twice in a row."""
    names = list(ACTIVITIES)
    spans, start, last = [], 0.0, None
    while start < seconds:
        name = rng.choice([n for n in names if n != last])
        spans.append((start, str(name)))
        start, last = start + rng.uniform(30, 120), name
    return spans


def recording(rng: np.random.Generator, seconds: float, *, jitter: bool, gap_at: float | None = None,
              t0: float = 1_700_000_000.0) -> dict[str, np.ndarray]:
    """One synthetic recording's columns (timestamp, acc, gyro, activity)."""
    n = int(seconds * RATE_HZ)
    dt = np.full(n, 1 / RATE_HZ)
    if jitter:
        dt *= np.clip(1 + 0.08 * rng.standard_normal(n), 0.7, 1.3)
    if gap_at is not None:
        dt[int(gap_at * RATE_HZ)] += 3.0  # a pause longer than max_gap_s
    t = np.concatenate([[0.0], np.cumsum(dt[:-1])])
    spans = _activities(rng, float(t[-1]) + 1)
    starts = np.array([s for s, _ in spans])
    activity = np.array([a for _, a in spans])[np.searchsorted(starts, t, side="right") - 1]
    params = [ACTIVITIES[a] for a in activity]
    gravity = np.array([p[0] for p in params]) * GRAVITY
    freq = np.array([p[1] for p in params]) * rng.uniform(0.9, 1.1)  # this person's pace
    acc_amp = np.array([p[2] for p in params])[:, None] * rng.uniform(0.85, 1.15, 3)
    gyro_amp = np.array([p[3] for p in params])[:, None] * rng.uniform(0.85, 1.15, 3)
    phase = 2 * np.pi * np.cumsum(freq * dt)[:, None]  # continuous through activity changes
    acc = gravity + acc_amp * (np.sin(phase + rng.uniform(0, 2 * np.pi, 3))
                               + 0.3 * np.sin(2 * phase + rng.uniform(0, 2 * np.pi, 3)))
    gyro = gyro_amp * np.sin(phase + rng.uniform(0, 2 * np.pi, 3))
    acc += 0.05 * rng.standard_normal(acc.shape)
    gyro += 0.01 * rng.standard_normal(gyro.shape)
    columns = {"timestamp": np.round(t0 + t, 3)}
    columns.update({f"acc_{a}": np.round(acc[:, i], 4) for i, a in enumerate("xyz")})
    columns.update({f"gyro_{a}": np.round(gyro[:, i], 4) for i, a in enumerate("xyz")})
    columns["activity"] = activity
    return columns


def write_recordings(directory, num_recordings: int = 6, seconds: float = 600.0, seed: int = 0) -> list[pathlib.Path]:
    """Writes `num_recordings` CSV recordings of `seconds` each into `directory` (created; it
    must be new or empty: FileExistsError otherwise) and returns their paths."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.csv as pacsv  # noqa: PLC0415

    directory = pathlib.Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"{directory} exists and is not an empty folder; give a new or empty one")
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num_recordings):
        columns = recording(rng, seconds, jitter=i % 2 == 0, gap_at=seconds / 2 if i == 1 else None,
                            t0=1_700_000_000.0 + 7200 * i)
        columns["user"] = np.full(len(columns["timestamp"]), i // 2 + 1)
        path = directory / f"recording_{i:02d}.csv"
        pacsv.write_csv(pa.table(columns), path, pacsv.WriteOptions(quoting_style="needed"))
        paths.append(path)
    return paths


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_integer("num_recordings", 6, "Recordings (files) to write.", lower_bound=1, flag_values=fv)
    flags.DEFINE_float("seconds", 600.0, "Length of each recording in seconds.", lower_bound=1.0, flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Random seed.", flag_values=fv)


def _run(fv: flags.FlagValues, args: list[str]) -> None:
    from limubert_jax.runtime.errors import LimuBertError  # noqa: PLC0415

    try:
        paths = write_recordings(args[0], fv.num_recordings, fv.seconds, fv.seed)
    except (FileExistsError, OSError) as e:
        raise LimuBertError(str(e)) from None
    print(f"wrote {len(paths)} recordings of {fv.seconds:g} s at ~{RATE_HZ:g} Hz (labels: activity "
          f"{', '.join(ACTIVITIES)}; user) to {args[0]}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command; argv after the program name, None for sys.argv. Returns the exit status."""
    from limubert_jax.runtime import cli  # noqa: PLC0415

    return cli.run_command(__doc__, define_flags, _run, argv, positional=("DIR",))


if __name__ == "__main__":
    sys.exit(main())
