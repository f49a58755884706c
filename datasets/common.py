"""Pieces shared by the IMU dataset builders (installed as `limubert_jax.datasets.common`).

Every builder here produces one example per window with `imu` float32 (S, F) in physical
units (accelerometer m/s^2, gyroscope rad/s, magnetometer uT) and its labels, in the order
of the source, so that the reference split indices (`limubert_jax.splits`) apply. The
builder configs are the reference versions: `20_120` (20 Hz, 120-step windows) and
`10_100` (10 Hz, 100-step windows).

Each builder class also sets `code_path = epath.Path(__file__)` and
`pkg_dir_path = code_path.parent`: TFDS infers them through `importlib_resources`, which it
no longer installs on Python >= 3.9 (tensorflow/datasets#11212), and from the package path,
which is wrong for this folder once an editable install maps it to `limubert_jax.datasets`.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

# The reference's feature layout (SPEC section 1): acc 0-2, gyro 3-5, mag 6-8.
FEATURE_NAMES = (
    "acc_x", "acc_y", "acc_z",
    "gyro_x", "gyro_y", "gyro_z",
    "mag_x", "mag_y", "mag_z",
)  # fmt: skip
FEATURE_UNITS = ("m/s^2",) * 3 + ("rad/s",) * 3 + ("uT",) * 3

# version name -> (sampling rate in Hz, steps per window)
VERSIONS = {"20_120": (20, 120), "10_100": (10, 100)}


@dataclasses.dataclass(eq=False)
class ImuConfig(tfds.core.BuilderConfig):
    """A reference version: windows of `seq_len` steps sampled at `sampling_rate` Hz."""

    sampling_rate: int = 20
    seq_len: int = 120


def version_configs(description: str) -> list[ImuConfig]:
    """One `ImuConfig` per reference version (`20_120`, `10_100`)."""
    return [
        ImuConfig(
            name=name,
            description=f"{description} {rate} Hz, {steps}-step windows ({steps / rate:g} s).",
            sampling_rate=rate,
            seq_len=steps,
        )
        for name, (rate, steps) in VERSIONS.items()
    ]


def imu_metadata(config: ImuConfig, **extra) -> tfds.core.MetadataDict:
    """The metadata every IMU builder records (read back by the input pipeline).

    Stored in `metadata.json` beside the prepared data and restored with the dataset info:
    `sampling_rate_hz`, `seq_len`, `feature_names`, `feature_units`, plus `extra`.
    """
    return tfds.core.MetadataDict(
        sampling_rate_hz=config.sampling_rate,
        seq_len=config.seq_len,
        feature_names=list(FEATURE_NAMES),
        feature_units=list(FEATURE_UNITS),
        **extra,
    )
