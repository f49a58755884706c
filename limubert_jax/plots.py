"""PNG figures of results worth looking at."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

CHANNEL_NAMES = ("acc x", "acc y", "acc z", "gyro x", "gyro y", "gyro z", "mag x", "mag y", "mag z")


def _save(fig, path: Path) -> Path:
    """Writes the figure beside `path` and renames it into place (no half-written PNGs)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def reconstruction_png(path, windows: np.ndarray, positions: np.ndarray, predictions: np.ndarray,
                       *, channels: int = 3, title: str = "") -> Path:
    """Original vs reconstructed masked spans.

    windows: [N, S, F] normalized originals; positions: [N, M] masked steps;
    predictions: [N, M, F] the model's reconstructions there. One row per window, one
    column per channel (the first `channels`); masked steps are shaded.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    n, seq, features = windows.shape
    channels = min(channels, features)
    fig, axes = plt.subplots(n, channels, figsize=(4.2 * channels, 2.0 * n), squeeze=False, sharex=True)
    t = np.arange(seq)
    for i in range(n):
        order = np.argsort(positions[i])
        pos, pred = positions[i][order], predictions[i][order]
        for c in range(channels):
            ax = axes[i, c]
            for p in pos:
                ax.axvspan(p - 0.5, p + 0.5, color="tab:orange", alpha=0.15, linewidth=0)
            ax.plot(t, windows[i, :, c], color="tab:blue", linewidth=1.0, label="original")
            ax.plot(pos, pred[:, c], "x", color="tab:red", markersize=4, label="reconstruction")
            if i == 0:
                ax.set_title(CHANNEL_NAMES[c] if c < len(CHANNEL_NAMES) else f"channel {c}")
            if c == 0:
                ax.set_ylabel(f"window {i}")
    axes[0, 0].legend(loc="upper right", fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("time step")
    fig.suptitle(f"Masked-span reconstruction ({title})" if title else "Masked-span reconstruction")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
