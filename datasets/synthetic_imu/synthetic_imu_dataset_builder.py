"""synthetic_imu: deterministic, physically plausible IMU windows generated locally.

A phone sits in each user's trouser pocket (a per-user mounting rotation of the device
against the thigh). For every (user, activity) pair one continuous recording is simulated
at 5x the output rate and block-averaged down (as the reference down-samples real data),
then cut into non-overlapping windows:

* accelerometer (m/s^2): specific force, i.e. gravity (+9.81 up) plus the body's linear
  acceleration, seen through the thigh's pitch and the mounting rotation. Gait has a step
  frequency (vertical and forward acceleration, with a harmonic) and a stride frequency
  (thigh swing, lateral sway) and drifts slowly in cadence and amplitude;
* gyroscope (rad/s): the angular velocity of that same rotation (thigh pitch rate and the
  body's turning rate), plus a per-user bias;
* magnetometer (uT): a per-user earth field (horizontal 18-28, vertical 30-45) rotated by
  the heading, the thigh pitch and the mounting, plus a per-user hard-iron offset;
* white sensor noise on every channel.

Still activities differ by thigh angle (sitting: thigh horizontal; standing: vertical) and
carry small postural sway; walking (~1.75-2.05 steps/s), stairs up (slower, thigh raised
higher), stairs down (sharper landing harmonics) and running (~2.6-3 steps/s, large
amplitudes) differ by cadence, amplitudes and swing. One window has one activity and one
user. Windows are ordered by user, then activity, then time.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from limubert_jax.datasets import common

ACTIVITIES = ("sit", "stand", "walk", "stairs_up", "stairs_down", "run")
NUM_USERS = 10
USERS = tuple(f"user_{u:02d}" for u in range(NUM_USERS))
SEED = 3431
GRAVITY = 9.81
OVERSAMPLE = 5  # simulate at 5x the output rate, then average blocks of 5

# Gait of the dynamic activities. cadence: steps/s range; theta0 / swing: thigh mean angle
# from vertical and swing amplitude (rad); vert / fwd / lat: body acceleration amplitudes
# (m/s^2) at the step (vertical, forward) and stride (lateral) frequency; harm / harm_phase:
# the vertical second harmonic (push-off or landing impact).
_GAIT = {
    "walk": dict(cadence=(1.75, 2.05), theta0=0.10, swing=0.45, vert=2.5, fwd=1.3, lat=0.6, harm=0.35, harm_phase=0.5),
    "stairs_up": dict(cadence=(1.40, 1.70), theta0=0.45, swing=0.55, vert=3.0, fwd=0.8, lat=0.5, harm=0.50,
                      harm_phase=-1.2),
    "stairs_down": dict(cadence=(1.75, 2.10), theta0=0.20, swing=0.35, vert=4.0, fwd=0.9, lat=0.7, harm=0.75,
                        harm_phase=2.0),
    "run": dict(cadence=(2.60, 3.00), theta0=0.30, swing=0.65, vert=9.0, fwd=3.0, lat=1.2, harm=0.45, harm_phase=0.9),
}  # fmt: skip

ACC_NOISE, GYRO_NOISE, MAG_NOISE = 0.04, 0.004, 0.3  # white noise std per sample

_DESCRIPTION = __doc__


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix R_z(c) R_y(b) R_x(a) for angles (a, b, c)."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _user_params(user: int) -> dict:
    """Per-user constants: phone mounting, posture, gait scale, earth field, sensor offsets."""
    rng = np.random.default_rng([SEED, 1, user])
    # Thigh frame (x forward, y left, z along the thigh) -> device frame: the phone's long
    # axis (device y) along the thigh, screen (device z) facing forward.
    mount = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    flips = [np.diag([1.0, 1.0, 1.0]), np.diag([-1.0, -1.0, 1.0]), np.diag([-1.0, 1.0, -1.0])]
    mount = flips[rng.integers(len(flips))] @ _rotation(rng.normal(0.0, 0.2, 3)) @ mount
    return dict(
        mount=mount,
        theta_sit=rng.uniform(1.25, 1.65),
        theta_stand=rng.uniform(-0.08, 0.12),
        cadence=rng.uniform(0.94, 1.06),
        amplitude=rng.uniform(0.85, 1.15),
        field=np.array([0.0, rng.uniform(18.0, 28.0), -rng.uniform(30.0, 45.0)]),  # (E, N, Up)
        hard_iron=rng.normal(0.0, 4.0, 3),
        acc_bias=rng.normal(0.0, 0.05, 3),
        gyro_bias=rng.normal(0.0, 0.01, 3),
    )


def _smooth(rng: np.random.Generator, t: np.ndarray, periods: tuple[float, ...]) -> np.ndarray:
    """Slow, zero-mean, unit-scale variation: a sum of sinusoids with random phases."""
    out = np.zeros_like(t)
    for period in periods:
        period = period * rng.uniform(0.8, 1.25)
        out += np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    return out / np.sqrt(len(periods) / 2)


def _recording(user: int, activity: int, rate: int, num_samples: int) -> np.ndarray:
    """One continuous recording, (num_samples, 9) float64 at `rate` Hz."""
    p = _user_params(user)
    rng = np.random.default_rng([SEED, 2, rate, user, activity])
    name = ACTIVITIES[activity]
    hi_rate = rate * OVERSAMPLE
    t = np.arange(num_samples * OVERSAMPLE) / hi_rate + rng.uniform(0, 100)

    if name in _GAIT:
        g = _GAIT[name]
        cadence = rng.uniform(*g["cadence"]) * p["cadence"]
        freq = cadence * (1 + 0.03 * _smooth(rng, t, (9.0, 23.0, 51.0)))  # steps/s
        step = 2 * np.pi * np.cumsum(freq) / hi_rate + rng.uniform(0, 2 * np.pi)
        stride = step / 2  # one stride = two steps, one swing of this thigh
        k = p["amplitude"] * rng.uniform(0.95, 1.05) * (1 + 0.06 * _smooth(rng, t, (7.0, 17.0)))
        theta = g["theta0"] + g["swing"] * k * (np.sin(stride) + 0.15 * np.sin(2 * stride + 0.8))
        acc = np.stack(
            [
                g["fwd"] * k * np.sin(step + 1.2),
                g["lat"] * k * np.sin(stride + 0.3),
                g["vert"] * k * (np.sin(step) + g["harm"] * np.sin(2 * step + g["harm_phase"])),
            ],
            axis=-1,
        )
        heading = rng.uniform(0, 2 * np.pi) + 0.8 * _smooth(rng, t, (13.0, 31.0, 67.0))
    else:  # still: posture, sway, fidgeting
        base = p["theta_sit"] if name == "sit" else p["theta_stand"]
        sway = 0.015 * np.sin(2 * np.pi * rng.uniform(0.2, 0.4) * t + rng.uniform(0, 2 * np.pi))
        theta = base + 0.03 * _smooth(rng, t, (3.0, 11.0, 37.0)) + (sway if name == "stand" else 0.0)
        acc = 0.05 * np.stack([_smooth(rng, t, (0.7, 1.3, 2.9)) for _ in range(3)], axis=-1)
        heading = rng.uniform(0, 2 * np.pi) + 0.05 * _smooth(rng, t, (5.0, 19.0))

    theta_rate = np.gradient(theta, 1.0 / hi_rate)
    heading_rate = np.gradient(heading, 1.0 / hi_rate)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    cos_h, sin_h = np.cos(heading), np.sin(heading)

    def body_to_thigh(v):  # R_y(theta)^T v: the thigh pitched forward by theta
        return np.stack([cos_t * v[..., 0] - sin_t * v[..., 2], v[..., 1], sin_t * v[..., 0] + cos_t * v[..., 2]], -1)

    specific_force = acc + np.array([0.0, 0.0, GRAVITY])  # what an accelerometer measures
    b_field = p["field"]
    field_body = np.stack(  # R_z(heading)^T field: the world seen from the turned body
        [cos_h * b_field[0] + sin_h * b_field[1], -sin_h * b_field[0] + cos_h * b_field[1],
         np.full_like(t, b_field[2])],
        axis=-1,
    )
    omega_body = np.stack([np.zeros_like(t), theta_rate, heading_rate], axis=-1)  # pitch + yaw rates

    mount = p["mount"]
    sensors = [body_to_thigh(v) @ mount.T for v in (specific_force, omega_body, field_body)]
    hi = np.concatenate(sensors, axis=-1)
    lo = hi.reshape(num_samples, OVERSAMPLE, 9).mean(axis=1)  # block average, like the reference

    lo[:, 0:3] += p["acc_bias"] + rng.normal(0.0, ACC_NOISE, (num_samples, 3))
    lo[:, 3:6] += p["gyro_bias"] + rng.normal(0.0, GYRO_NOISE, (num_samples, 3))
    lo[:, 6:9] += p["hard_iron"] + rng.normal(0.0, MAG_NOISE, (num_samples, 3))
    return lo


def generate(
    sampling_rate: int, seq_len: int, windows_per_recording: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All windows in dataset order: imu (N, seq_len, 9) float32, activity (N,), user (N,).

    N = NUM_USERS * len(ACTIVITIES) * windows_per_recording; ordered by user, activity,
    then time within the recording. Deterministic (fixed seeds).
    """
    imu, activity, user = [], [], []
    for u in range(NUM_USERS):
        for a in range(len(ACTIVITIES)):
            rec = _recording(u, a, sampling_rate, windows_per_recording * seq_len)
            imu.append(rec.reshape(windows_per_recording, seq_len, 9))
            activity += [a] * windows_per_recording
            user += [u] * windows_per_recording
    return (
        np.concatenate(imu).astype(np.float32),
        np.asarray(activity, np.int64),
        np.asarray(user, np.int64),
    )


class Builder(common.RemovesFailedBuilds, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for synthetic_imu (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = common.version_configs("Synthetic pocket-phone IMU windows,")
    # See common.py: pin TFDS's code/metadata paths to this folder.
    code_path = epath.Path(__file__)
    pkg_dir_path = code_path.parent

    # One recording per (user, activity), cut into this many windows: 10 users x 6 activities
    # x 40 = 2,400 windows. Tests may lower it to build a smaller dataset.
    WINDOWS_PER_RECORDING = 40

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "imu": common.imu_feature(config.seq_len, 9,
                                              "acc (m/s^2) x/y/z, gyro (rad/s) x/y/z, mag (uT) x/y/z"),
                    "activity": tfds.features.ClassLabel(names=ACTIVITIES),
                    "user": tfds.features.ClassLabel(names=USERS),
                }
            ),
            supervised_keys=("imu", "activity"),
            disable_shuffling=True,  # keep the generation order: reference split indices apply
            metadata=common.imu_metadata(
                config, activities=list(ACTIVITIES), users=list(USERS), seed=SEED
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        config = self.builder_config
        imu, activity, user = generate(config.sampling_rate, config.seq_len, self.WINDOWS_PER_RECORDING)
        for i in range(imu.shape[0]):
            yield i, {"imu": imu[i], "activity": int(activity[i]), "user": int(user[i])}
