"""PNG figures of results worth looking at."""

from __future__ import annotations

import io

import numpy as np
from etils import epath

from limubert_jax.io import storage

CHANNEL_NAMES = ("acc x", "acc y", "acc z", "gyro x", "gyro y", "gyro z", "mag x", "mag y", "mag z")


def _save(fig, path: epath.Path) -> epath.Path:
    """Writes the figure as a PNG, whole (`storage.write_bytes`: no half-written files)."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
    storage.write_bytes(path, png.getvalue())
    return path


def reconstruction_png(path, windows: np.ndarray, positions: np.ndarray, predictions: np.ndarray,
                       *, channels: int = 3, title: str = "") -> epath.Path:
    """Original vs reconstructed masked spans (`path` local or a bucket path).

    windows: [N, S, F] normalized originals; positions: [N, M] masked steps;
    predictions: [N, M, F] the model's reconstructions there. One row per window, one
    column per channel (the first `channels`); masked steps are shaded.
    """
    import matplotlib  # noqa: PLC0415  (seconds of start-up: only where a run plots)

    matplotlib.use("Agg")  # no display: before pyplot is imported
    import matplotlib.pyplot as plt  # noqa: PLC0415

    path = storage.as_path(path)
    n, seq, features = windows.shape
    channels = min(channels, features)
    fig, axes = plt.subplots(n, channels, figsize=(4.2 * channels, 2.0 * n), squeeze=False, sharex=True)
    t = np.arange(seq)
    for i in range(n):
        order = np.argsort(positions[i])
        pos, pred = positions[i][order], predictions[i][order]
        for c in range(channels):
            ax = axes[i, c]
            # One artist for all masked steps (one per step doubles the drawing time).
            ax.broken_barh([(p - 0.5, 1.0) for p in pos], (0, 1), transform=ax.get_xaxis_transform(),
                           color="tab:orange", alpha=0.15, linewidth=0)
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


def _pyplot():
    import matplotlib  # noqa: PLC0415  (seconds of start-up: only where a run plots)

    matplotlib.use("Agg")  # no display: before pyplot is imported
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def confusion_png(path, matrix, class_names, title: str = "") -> epath.Path:
    """Confusion matrix [C, C] (rows true, columns predicted) as a heat map.

    Colours are fractions of each true class (rows normalised; a row without examples stays
    0). With C <= 12 each cell also shows its count and row percentage.
    """
    plt = _pyplot()
    path = storage.as_path(path)
    matrix = np.asarray(matrix, dtype=np.int64)
    c = matrix.shape[0]
    if matrix.shape != (c, c) or len(class_names) != c:
        raise ValueError(
            f"confusion_png: need a square [C, C] matrix and C class names, got {matrix.shape} "
            f"and {len(class_names)} names"
        )
    totals = matrix.sum(axis=1, keepdims=True)
    fractions = np.divide(matrix, totals, out=np.zeros(matrix.shape, np.float64), where=totals > 0)
    size = max(3.5, 0.55 * c + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if c <= 12:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{matrix[i, j]}\n{100 * fractions[i, j]:.0f}%", ha="center", va="center",
                        fontsize=7, color="white" if fractions[i, j] > 0.5 else "black")
    ax.set_xticks(range(c), [str(name) for name in class_names], rotation=45, ha="right")
    ax.set_yticks(range(c), [str(name) for name in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "Confusion matrix")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def tsne_png(path, points: np.ndarray, labels: np.ndarray, class_names, title: str = "") -> epath.Path:
    """2-D embedding [N, 2] scattered, coloured by integer label [N], with a legend."""
    plt = _pyplot()
    path = storage.as_path(path)
    points = np.asarray(points)
    labels = np.asarray(labels).astype(np.int64)
    if points.ndim != 2 or points.shape[1] != 2 or labels.shape != (points.shape[0],):
        raise ValueError(f"tsne_png: need points [N, 2] and labels [N], got {points.shape} and {labels.shape}")
    c = len(class_names)
    if labels.size and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"tsne_png: labels must be in [0, {c}) for {c} class names")
    cmap = plt.get_cmap("tab10" if c <= 10 else "tab20")
    marker_size = float(np.clip(2000.0 / max(len(points), 1), 2.0, 25.0))
    fig, ax = plt.subplots(figsize=(7.0, 6.0))
    for k in range(c):
        chosen = labels == k
        if np.any(chosen):
            ax.scatter(points[chosen, 0], points[chosen, 1], s=marker_size, color=cmap(k % cmap.N),
                       label=f"{class_names[k]} ({int(chosen.sum())})", alpha=0.8, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=max(1.0, 30.0 / marker_size) ** 0.5,
              frameon=False)
    ax.set_title(title or "t-SNE of embeddings")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
