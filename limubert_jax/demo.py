"""A two-minute tour that needs no download: checkpoint -> embeddings -> PyTorch and back.

    python -m limubert_jax.demo --workdir /tmp/limubert-demo

It initialises a `base_v1` LIMU-BERT (random weights: pretraining is the main job's work),
saves it as a checkpoint, embeds synthetic IMU windows it generates, exports the
checkpoint to a reference PyTorch state dict and, when PyTorch is installed, loads that
strictly into a PyTorch model written from the SPEC and compares the embeddings.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from limubert_jax import checkpoint, convert, embed, storage
from limubert_jax.errors import run_cli
from limubert_jax.model import MODEL_CONFIGS, LimuBertModel4Pretrain
from limubert_jax.normalization import normalize


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


def _main(argv: Sequence[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m limubert_jax.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/limubert-demo", help="where the demo writes its files")
    parser.add_argument("--num-windows", type=int, default=512, help="synthetic windows to embed")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    config = MODEL_CONFIGS["base_v1"]
    params = LimuBertModel4Pretrain(config).init_params(jax.random.key(0))
    ckpt = checkpoint.save_model(workdir / "checkpoint", params, config, overwrite=True)
    print(f"1. saved a base_v1 checkpoint (random init) to {ckpt}")

    windows = synthetic_windows(args.num_windows)
    storage.save_npy(workdir / "windows.npy", windows)
    # The demo's files are its own: a rerun replaces them.
    shape = embed.embed_file(ckpt, workdir / "windows.npy", workdir / "embeddings.npy", progress=False, overwrite=True)
    print(f"2. embedded {windows.shape} raw windows -> {workdir / 'embeddings.npy'} {shape}")

    pt_path = workdir / "limu_bert.pt"
    convert.to_torch(ckpt, pt_path, overwrite=True)
    print(f"3. exported {pt_path} and {pt_path.with_suffix('.json')}")
    try:
        import torch

        from limubert_jax.torch_reference import LIMUBertModel4Pretrain
    except ImportError:
        print("4. (install the [torch] extra to check the export in PyTorch)")
        return
    torch_model = LIMUBertModel4Pretrain(config).eval()
    torch_model.load_state_dict(torch.load(pt_path, weights_only=True), strict=True)
    with torch.no_grad():
        x = torch.from_numpy(normalize(windows[:64], config.feature_num))
        torch_embeddings = torch_model.transformer(x).numpy()
    diff = float(np.abs(torch_embeddings - np.load(workdir / "embeddings.npy")[:64]).max())
    print(f"4. PyTorch (strict load) reproduces the JAX embeddings: max abs difference {diff:.2e}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
