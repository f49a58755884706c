"""LIMU-BERT embeddings of IMU windows (`limubert-embed`).

    limubert-embed --checkpoint=CKPT --input=X.npy --output=E.npy [--input_normalized] [--batch_size=1024] [--overwrite]

X is (N, S, F) raw readings (acc m/s^2, gyro rad/s, mag) normalized as the reference does
(docs/reference.md §1) unless `--input_normalized`; E is (N, S, hidden) float32. The input is
memory-mapped and the output written batch by batch into a memory-mapped file, so memory
stays bounded for N in the millions; E appears under its name only when complete. An
existing E, or one that appears while the command runs, is refused unless `--overwrite`;
E may never be X nor lie inside CKPT. X, E and CKPT may be object-store paths
(`gs://bucket/...`): objects cannot be memory-mapped, so a bucket X is read whole into
memory and a bucket E is assembled in memory, then written whole. CKPT may also name released
weights (`limu_bert_x`, `limu_bert:hhar`, ...: `limubert-fetch`), fetched on first use.

From Python: `load_encoder(CKPT_OR_NAME).embed(windows)`.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

import numpy as np
from absl import flags

from limubert_jax.export import released
from limubert_jax.io import checkpoint, storage
from limubert_jax.io.state_dict import CLASSIFIER_PIPELINE, LIMU_BERT
from limubert_jax.io.windows import open_windows
from limubert_jax.models.encoder import LimuBertConfig
from limubert_jax.models.inference import check_windows, embed_windows
from limubert_jax.runtime import cli
from limubert_jax.runtime.errors import LimuBertError


class TrainedEncoder:
    """A pretrained LIMU-BERT encoder, ready to embed: `load_encoder(NAME_OR_PATH).embed(windows)`."""

    def __init__(self, config: LimuBertConfig, params: dict, path: str = ""):
        self.config, self.params, self.path = config, params, path

    def embed(self, windows, *, normalized: bool = False, batch_size: int = 1024,
              progress: bool = False) -> np.ndarray:
        """Embeddings (N, S, hidden) float32 of windows (N, S, F): raw readings (acc m/s^2,
        gyro rad/s, then magnetometer; extra trailing features ignored), normalized as the
        reference does, or with `normalized` already normalized (exactly F features). S is
        at most the encoder's `config.seq_len`, or a multiple of it (encoded in pieces)."""
        return embed_windows(self.params, self.config, windows, normalized=normalized, batch_size=batch_size,
                             source=self.path or "windows", progress=progress)


def load_encoder(name_or_path: str | os.PathLike) -> TrainedEncoder:
    """The LIMU-BERT encoder of released weights by name (`limu_bert_x`, `limu_bert:hhar`, ...;
    downloaded and converted on first use: `limubert-fetch`), of a checkpoint folder, or of a
    pretraining workdir (its best step)."""
    path = released.resolve(name_or_path)
    kind, config, params = checkpoint.load_model(path)
    if kind != LIMU_BERT:
        raise LimuBertError(f"{name_or_path}: holds a {kind} model, not a LIMU-BERT encoder"
                            + ("; load it with load_classifier" if kind == CLASSIFIER_PIPELINE else ""))
    return TrainedEncoder(config, params, str(name_or_path))


def embed_file(
    checkpoint_path: str | os.PathLike,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    normalized: bool = False,
    batch_size: int = 1024,
    progress: bool = True,
    overwrite: bool = False,
) -> tuple[int, ...]:
    """Embeds the windows of an .npy file into another .npy file; returns the output shape.

    An existing output is an error unless `overwrite`, also one that appears while the
    command runs; an output that is the input, or lies inside the checkpoint, always is. A
    local output is staged beside its final name, its whole size reserved on disk first, and
    renamed into place only on success; an object is written whole once every window is
    embedded.
    """
    input_path = storage.as_path(input_path)
    checkpoint_path = released.resolve(checkpoint_path)
    output_path = storage.check_output_file(output_path, input_path, checkpoint_path, overwrite=overwrite)
    kind, config, params = checkpoint.load_model(checkpoint_path)
    if kind != LIMU_BERT:
        raise LimuBertError(f"{checkpoint_path}: is a {kind} checkpoint; embedding needs a LIMU-BERT one")
    windows = open_windows(input_path)
    check_windows(tuple(windows.shape), config, normalized=normalized, source=str(input_path))
    n, seq, _ = windows.shape
    shape = (n, seq, config.hidden)
    if not storage.is_local(output_path):
        out = embed_windows(params, config, windows, normalized=normalized, batch_size=batch_size,
                            source=str(input_path), progress=progress)
        storage.save_npy(output_path, out, replace=overwrite)
        return shape
    with storage.staged(output_path, replace=overwrite) as (staging,):
        out = np.lib.format.open_memmap(staging, mode="w+", dtype=np.float32, shape=shape)
        try:
            # open_memmap leaves a sparse file: without the reservation a full disk is a SIGBUS.
            storage.reserve(staging, staging.stat().st_size, what=output_path)
            embed_windows(
                params, config, windows, normalized=normalized, batch_size=batch_size,
                out=out, source=str(input_path), progress=progress,
            )
            out.flush()
        finally:
            del out  # unmap before the file is renamed or removed
    return shape


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("checkpoint", None, "LIMU-BERT checkpoint directory, a pretraining workdir, or released "
                        "weights by name (limu_bert_x, limu_bert:hhar, ...).",
                        required=True, flag_values=fv)
    flags.DEFINE_string("input", None, "Windows (N, S, F) as .npy.", required=True, flag_values=fv)
    flags.DEFINE_string("output", None, "Embeddings (N, S, hidden) .npy to write.", required=True, flag_values=fv)
    flags.DEFINE_bool("input_normalized", False, "The input is already normalized (docs/reference.md §1).",
                      flag_values=fv)
    flags.DEFINE_integer("batch_size", 1024, "Windows per compiled batch.", lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace an existing output file.", flag_values=fv)


def _run(fv: flags.FlagValues, args: list[str]) -> None:
    shape = embed_file(fv.checkpoint, fv.input, fv.output, normalized=fv.input_normalized,
                       batch_size=fv.batch_size, overwrite=fv.overwrite)
    print(f"wrote {fv.output} {shape}")  # the command's result: stdout (logs go to stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The command (`limubert-embed`); argv after the program name, None for sys.argv. Returns the exit status."""
    return cli.run_command(__doc__, define_flags, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
