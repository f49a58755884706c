"""LIMU-BERT embeddings of IMU windows.

    python -m limubert_jax.embed --checkpoint CKPT --input X.npy --output E.npy [--input-normalized]

X is (N, S, F) raw readings (acc m/s^2, gyro rad/s, mag) normalized as the reference does
(SPEC section 1) unless `--input-normalized`; E is (N, S, hidden) float32. The input is
memory-mapped and the output written batch by batch into a memory-mapped file, so memory
stays bounded for N in the millions; E appears under its name only when complete.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from limubert_jax import checkpoint
from limubert_jax.errors import LimuBertError, run_cli
from limubert_jax.model import LimuBertConfig, LimuBertModel4Pretrain
from limubert_jax.normalization import normalize
from limubert_jax.state_dict import LIMU_BERT


def check_windows(shape: tuple[int, ...], config: LimuBertConfig, *, normalized: bool, source: str) -> None:
    """Raises `LimuBertError` unless windows of `shape` fit the model.

    Raw windows may carry extra trailing features (the reference keeps the first F);
    normalized windows must have exactly F.
    """
    if len(shape) != 3:
        raise LimuBertError(f"{source}: expected windows of shape (N, S, F), got shape {shape}")
    _, seq, features = shape
    if not 1 <= seq <= config.seq_len:
        raise LimuBertError(f"{source}: shape {shape} has S={seq} time steps; the model takes 1..{config.seq_len}")
    if features < config.feature_num or (normalized and features != config.feature_num):
        need = f"exactly {config.feature_num}" if normalized else f"at least {config.feature_num}"
        raise LimuBertError(
            f"{source}: shape {shape} has F={features} features; the model was trained on "
            f"{config.feature_num}, so the input needs {need}"
        )


def check_finite(windows: np.ndarray, *, source: str, chunk: int = 16384) -> None:
    """Raises `LimuBertError` naming the first window holding NaN or Inf.

    Scans in chunks (bounded memory on memory-mapped input) before any compute starts.
    """
    for start in range(0, len(windows), chunk):
        finite = np.isfinite(np.asarray(windows[start : start + chunk])).all(axis=(1, 2))
        if not finite.all():
            raise LimuBertError(f"{source}: window {start + int(np.argmin(finite))} contains NaN or Inf")


@functools.partial(jax.jit, static_argnames=("config", "normalized"))
def _encode(params, windows, *, config: LimuBertConfig, normalized: bool):
    x = windows.astype(jnp.float32)
    if not normalized:
        x = normalize(x, config.feature_num)
    model = LimuBertModel4Pretrain(config)
    return model.apply({"params": params}, x, method=model.encode)


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
    """Encoder outputs for `windows` [N, S, F] -> [N, S, hidden] float32.

    Runs in fixed-size jitted batches (the last one padded, so one compilation serves all).
    `out` may be a preallocated (e.g. memory-mapped) array to fill. Non-finite input raises
    `LimuBertError` naming the first bad window, before any window is encoded.
    """
    check_windows(tuple(windows.shape), config, normalized=normalized, source=source)
    n, seq, _ = windows.shape
    if out is None:
        out = np.empty((n, seq, config.hidden), np.float32)
    batch_size = max(1, min(batch_size, n))
    params = jax.device_put(params)  # once, not per batch
    check_finite(windows, source=source)
    for start in tqdm(range(0, n, batch_size), desc="embed", unit="batch", disable=not progress):
        batch = np.asarray(windows[start : start + batch_size])
        rows = len(batch)
        if rows < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - rows,) + batch.shape[1:], batch.dtype)])
        encoded = _encode(params, batch, config=config, normalized=normalized)
        out[start : start + rows] = np.asarray(encoded[:rows])
    return out


def embed_file(
    checkpoint_path: str | os.PathLike,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    normalized: bool = False,
    batch_size: int = 1024,
    progress: bool = True,
) -> tuple[int, ...]:
    """Embeds the windows of an .npy file into another .npy file; returns the output shape.

    The output is staged beside its final name and renamed into place only on success.
    """
    kind, config, params = checkpoint.load_model(checkpoint_path)
    if kind != LIMU_BERT:
        raise LimuBertError(f"{checkpoint_path}: is a {kind} checkpoint; embedding needs a LIMU-BERT one")
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise LimuBertError(f"{input_path}: no such file")
    try:
        windows = np.load(input_path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise LimuBertError(f"{input_path}: not a readable .npy array ({e})") from None
    if not (np.issubdtype(windows.dtype, np.floating) or np.issubdtype(windows.dtype, np.integer)):
        raise LimuBertError(f"{input_path}: dtype {windows.dtype} is not numeric")
    check_windows(tuple(windows.shape), config, normalized=normalized, source=str(input_path))
    n, seq, _ = windows.shape
    shape = (n, seq, config.hidden)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{output_path.name}.tmp-", suffix=".npy", dir=output_path.parent)
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(staging, mode="w+", dtype=np.float32, shape=shape)
        embed_windows(
            params, config, windows, normalized=normalized, batch_size=batch_size,
            out=out, source=str(input_path), progress=progress,
        )
        out.flush()
        del out
        os.replace(staging, output_path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    return shape


def _main(argv: Sequence[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m limubert_jax.embed", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="LIMU-BERT checkpoint directory")
    parser.add_argument("--input", required=True, help="windows (N, S, F) as .npy")
    parser.add_argument("--output", required=True, help="embeddings (N, S, hidden) .npy to write")
    parser.add_argument("--input-normalized", action="store_true", help="input is already normalized (SPEC 1)")
    parser.add_argument("--batch-size", type=int, default=1024, help="windows per compiled batch")
    args = parser.parse_args(argv)
    shape = embed_file(
        args.checkpoint, args.input, args.output,
        normalized=args.input_normalized, batch_size=args.batch_size,
    )
    print(f"wrote {args.output} {shape}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
