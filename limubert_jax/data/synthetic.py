"""Synthetic raw IMU windows for demos, benchmarks and tests: no download, any size."""

from __future__ import annotations

import numpy as np


def synthetic_windows(n: int, seq_len: int = 120, rate_hz: float = 20.0, seed: int = 0) -> np.ndarray:
    """Raw 6-axis windows [n, seq_len, 6]: gravity in a random device orientation plus a gait
    oscillation (acc m/s^2) and rotation rates (gyro rad/s), with sensor noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(seq_len) / rate_hz
    up = rng.normal(size=(n, 3))
    up /= np.linalg.norm(up, axis=1, keepdims=True)
    freq = rng.uniform(0.0, 2.5, size=(n, 1))  # 0 Hz: standing still; ~2 Hz: walking
    amp = rng.uniform(0.0, 4.0, size=(n, 1)) * (freq > 0.3)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    wave = np.sin(2 * np.pi * freq * t + phase)  # [n, S]
    acc = 9.8 * up[:, None, :] + amp[:, :, None] * wave[:, :, None] * up[:, None, :]
    gyro = 0.3 * amp[:, :, None] / 4.0 * np.cos(2 * np.pi * freq * t + phase)[:, :, None] * rng.normal(size=(n, 1, 3))
    x = np.concatenate([acc, gyro], axis=-1) + rng.normal(scale=0.05, size=(n, seq_len, 6))
    return x.astype(np.float32)
