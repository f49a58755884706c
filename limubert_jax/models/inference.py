"""Running the encoder over many windows: shape and finiteness checks, then fixed-size jitted
batches (`embed_windows`), as the `embed` command, the downstream tasks and the API use it."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from limubert_jax.data.normalization import normalize
from limubert_jax.models.encoder import LimuBertConfig, encode_windows, encoder_pieces
from limubert_jax.runtime.errors import LimuBertError, check_terminated


def check_windows(shape: tuple[int, ...], config: LimuBertConfig, *, normalized: bool, source: str) -> None:
    """Raises `LimuBertError` unless windows of `shape` fit the model.

    Windows of up to `seq_len` steps, or of a multiple of it (encoded in `seq_len`-step
    pieces, `encoder.encode_windows`). Raw windows may carry extra trailing features (the
    reference keeps the first F); normalized windows must have exactly F.
    """
    if len(shape) != 3:
        raise LimuBertError(f"{source}: expected windows of shape (N, S, F), got shape {shape}")
    _, seq, features = shape
    try:
        encoder_pieces(seq, config.seq_len)
    except ValueError:
        raise LimuBertError(f"{source}: shape {shape} has S={seq} time steps; the model takes 1..{config.seq_len}, "
                            f"or a multiple of {config.seq_len} (encoded in {config.seq_len}-step pieces)") from None
    if features < config.feature_num or (normalized and features != config.feature_num):
        need = f"exactly {config.feature_num}" if normalized else f"at least {config.feature_num}"
        raise LimuBertError(
            f"{source}: shape {shape} has F={features} features; the model was trained on "
            f"{config.feature_num}, so the input needs {need}"
        )


def check_finite(windows: np.ndarray, *, source: str, chunk: int = 16384, first: int = 0) -> None:
    """Raises `LimuBertError` naming the first window holding NaN or Inf, counted from `first`
    (the index of `windows[0]` in the input: a batch of a larger one).

    Scans in chunks (bounded memory on memory-mapped input) before any compute starts.
    """
    for start in range(0, len(windows), chunk):
        finite = np.isfinite(np.asarray(windows[start : start + chunk])).all(axis=(1, 2))
        if not finite.all():
            raise LimuBertError(f"{source}: window {first + start + int(np.argmin(finite))} contains NaN or Inf")


def check_finite_outputs(outputs: np.ndarray, windows: np.ndarray, *, what: str, source: str, first: int = 0) -> None:
    """Raises `LimuBertError` naming the first window whose `outputs` (one row per window,
    any trailing shape) hold NaN or Inf: finite readings can still overflow float32 inside
    the model (the normalization squares them), and a file of NaN results is worse than none."""
    finite = np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise LimuBertError(
            f"{source}: the {what} of window {first + bad} is not finite (NaN or Inf): input values too large "
            f"for float32 arithmetic (its largest magnitude is {float(np.abs(windows[bad]).max()):.3g}), or "
            "non-finite model weights"
        )


@functools.partial(jax.jit, static_argnames=("config", "normalized"))
def _encode(params, windows, *, config: LimuBertConfig, normalized: bool):
    x = windows.astype(jnp.float32)
    if not normalized:
        x = normalize(x, config.feature_num)
    return encode_windows(params["transformer"], x, config)


def embed_windows(
    params,
    config: LimuBertConfig,
    windows: np.ndarray,
    *,
    normalized: bool = False,
    batch_size: int = 1024,
    out: np.ndarray | None = None,
    source: str = "input",
    progress: bool = False,
) -> np.ndarray:
    """Encoder outputs for `windows` [N, S, F] -> [N, S, hidden] float32 (windows longer than
    the encoder's `seq_len`, a multiple of it, in `seq_len`-step pieces: `encode_windows`).

    Runs in fixed-size jitted batches (the last one padded, so one compilation serves all).
    `out` may be a preallocated (e.g. memory-mapped) array to fill. Non-finite input raises
    `LimuBertError` naming the first bad window, before any window is encoded; so does a
    non-finite embedding, as soon as its batch is done. Input of any byte order is read.
    """
    check_windows(tuple(windows.shape), config, normalized=normalized, source=source)
    n, seq, _ = windows.shape
    if out is None:
        out = np.empty((n, seq, config.hidden), np.float32)
    batch_size = max(1, min(batch_size, n))
    params = jax.device_put(params)  # once, not per batch
    check_finite(windows, source=source)
    # A context, so that an error closes the progress bar's line before it is reported.
    with tqdm(range(0, n, batch_size), desc="embed", unit="batch", disable=not progress) as starts:
        for start in starts:
            check_terminated()
            batch = np.asarray(windows[start : start + batch_size])
            if not batch.dtype.isnative:  # e.g. a big-endian .npy; JAX takes native byte order only
                batch = batch.astype(batch.dtype.newbyteorder("="))
            rows = len(batch)
            if rows < batch_size:
                batch = np.concatenate([batch, np.zeros((batch_size - rows,) + batch.shape[1:], batch.dtype)])
            encoded = np.asarray(_encode(params, batch, config=config, normalized=normalized)[:rows])
            check_finite_outputs(encoded, batch, what="embedding", source=source, first=start)
            out[start : start + rows] = encoded
    return out
