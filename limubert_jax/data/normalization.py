"""Per-window input normalization of the reference (docs/reference.md §1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

GRAVITY = 9.8  # m/s^2; the reference divides accelerometer readings by this constant.
# Quirk: the reference code scales unit-norm magnetometer readings by 1.0 (the paper says 2).
MAG_GAMMA = 1.0
MAG_EPS = 1e-5  # added to the magnetometer's per-step norm before dividing by it
# The constants above by name, for runtimes that reimplement `normalize` (PyTorch, ONNX files).
CONSTANTS = {"gravity": GRAVITY, "mag_gamma": MAG_GAMMA, "mag_eps": MAG_EPS}


def normalize(x, feature_num: int, mag_gamma: float = MAG_GAMMA):
    """Normalizes raw readings the way the reference does before masking.

    x: [..., S, F_raw] with F_raw >= feature_num; columns 0-2 accelerometer (m/s^2),
    3-5 gyroscope (rad/s), 6-8 magnetometer. Returns [..., S, feature_num] of the same
    array type (NumPy in, NumPy out; JAX in, JAX out): only the first `feature_num`
    features are kept, acceleration is in g, and with 9 features the magnetometer is
    scaled to `mag_gamma` times unit norm per time step.
    """
    xp = jnp if isinstance(x, jax.Array) else np
    if x.shape[-1] < feature_num:
        raise ValueError(f"need at least {feature_num} features, got shape {tuple(x.shape)}")
    x = x[..., :feature_num]
    parts = [x]
    if feature_num >= 6:
        parts = [x[..., :3] / GRAVITY, x[..., 3:]]
    if feature_num == 9:
        mag = x[..., 6:9]
        mag_norm = xp.sqrt(xp.sum(mag * mag, axis=-1, keepdims=True))
        parts = [parts[0], x[..., 3:6], mag / (mag_norm + MAG_EPS) * mag_gamma]
    return xp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
