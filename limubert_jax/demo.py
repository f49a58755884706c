"""A two-minute tour that needs no download: checkpoint -> embeddings -> PyTorch and back (`limubert-demo`).

    limubert-demo [--workdir=/tmp/limubert-demo] [--num_windows=512]

It initialises a `base_v1` LIMU-BERT (random weights: pretraining is the main job's work),
saves it as a checkpoint, embeds synthetic IMU windows it generates, exports the
checkpoint to a reference PyTorch state dict and, when PyTorch is installed, converts that
back to a checkpoint and compares its embeddings with the first ones.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Sequence

import jax
import numpy as np
from absl import flags

from limubert_jax import convert, embed
from limubert_jax.data.synthetic import synthetic_windows
from limubert_jax.io import checkpoint, storage
from limubert_jax.models.encoder import MODEL_CONFIGS, LimuBertModel4Pretrain
from limubert_jax.runtime import cli


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("workdir", "/tmp/limubert-demo", "Where the demo writes its files (a directory or "
                        "gs://bucket/dir).", flag_values=fv)
    flags.DEFINE_integer("num_windows", 512, "Synthetic windows to embed.", lower_bound=1, flag_values=fv)


# The numbered steps are the tour itself, for the user: stdout (logs go to stderr).
def _run(fv: flags.FlagValues, args: list[str]) -> None:
    workdir = storage.as_path(fv.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    config = MODEL_CONFIGS["base_v1"]
    params = LimuBertModel4Pretrain(config).init_params(jax.random.key(0))
    ckpt = checkpoint.save_model(workdir / "checkpoint", params, config, overwrite=True)
    print(f"1. saved a base_v1 checkpoint (random init) to {ckpt}")

    windows = synthetic_windows(fv.num_windows)
    storage.save_npy(workdir / "windows.npy", windows)
    # The demo's files are its own: a rerun replaces them.
    shape = embed.embed_file(ckpt, workdir / "windows.npy", workdir / "embeddings.npy", progress=False, overwrite=True)
    print(f"2. embedded {windows.shape} raw windows -> {workdir / 'embeddings.npy'} {shape}")

    pt_path = workdir / "limu_bert.pt"
    convert.to_torch(ckpt, pt_path, overwrite=True)
    print(f"3. exported {pt_path} and {pt_path.with_suffix('.json')}")
    if importlib.util.find_spec("torch") is None:
        print("4. (install the [torch] extra to read the export back)")
        return
    back = workdir / "from-torch"
    convert.from_torch(pt_path, back, overwrite=True)
    embed.embed_file(back, workdir / "windows.npy", workdir / "embeddings-from-torch.npy", progress=False,
                     overwrite=True)
    diff = float(np.abs(storage.load_npy(workdir / "embeddings-from-torch.npy")
                        - storage.load_npy(workdir / "embeddings.npy")).max())
    print(f"4. read the PyTorch file back ({back}) and embedded again: max abs difference {diff:.2e}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command (`limubert-demo`); argv after the program name, None for sys.argv. Returns the exit status."""
    return cli.run_command(__doc__, define_flags, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
