"""The reference's preprocessing shared by several datasets, as plain NumPy:
block-averaging down-sampling (`downsample`, `downsample_blocks`) and non-overlapping windows
(`cut_windows`). Installed as `limubert_jax.datasets.resampling`.
"""

from __future__ import annotations

import math

import numpy as np


def downsample(x: np.ndarray, raw_rate: float, target_rate: float, *, include_last: bool = False) -> np.ndarray:
    """The reference's block-averaging down-sampler: x [L, F] at `raw_rate` -> [L', F].

    With r = raw_rate / target_rate, output samples are means of consecutive blocks of
    floor(r) or floor(r) + 1 raw samples: a running remainder grows by r - floor(r) per
    block and, when it reaches 1, loses 1 and makes that block one sample longer (50 -> 20
    Hz: blocks 2, 3, 2, 3, ...). The reference stops when the next block would reach past
    the end: while `i + floor(r) + 1 < L` (UCI, MotionSense) or, with `include_last`,
    `<= L` (Shoaib). An integer r gives blocks of exactly r samples under the same stop rule.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"downsample: expected [samples, features], got shape {x.shape}")
    blocks = downsample_blocks(x.shape[0], raw_rate, target_rate, include_last=include_last)
    if not blocks:
        return np.zeros((0, x.shape[1]), dtype=np.float64)
    return np.stack([x[i : i + size].mean(axis=0) for i, size in blocks])


def downsample_blocks(length: int, raw_rate: float, target_rate: float, *,
                      include_last: bool = False) -> list[tuple[int, int]]:
    """(first sample, size) of each block `downsample` averages, for `length` raw samples."""
    ratio = raw_rate / target_rate
    if ratio < 1:
        raise ValueError(f"downsample: cannot go up from {raw_rate} Hz to {target_rate} Hz")
    base = math.floor(ratio)
    fraction = ratio - base
    blocks, i, remainder = [], 0, 0.0
    while (i + base + 1 <= length) if include_last else (i + base + 1 < length):
        size = base
        if fraction:
            remainder += fraction
            if remainder >= 1:
                remainder -= 1
                size = base + 1
        blocks.append((i, size))
        i += size
    return blocks


def cut_windows(x: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows: x [L, F] -> [floor(L / seq_len), seq_len, F]; the tail is dropped."""
    x = np.asarray(x)
    n = x.shape[0] // seq_len
    return x[: n * seq_len].reshape(n, seq_len, *x.shape[1:])
