"""Models in and out of limubert_jax (`limubert-convert`): the reference PyTorch release,
PyTorch without JAX, ONNX and TFLite.

    limubert-convert from_torch IN.pt OUT_DIR [--n_layers=4 --n_heads=4 --noemb_norm] [--overwrite]
    limubert-convert to_torch CKPT_OR_RUN OUT.pt [--format=pt|safetensors] [--overwrite]
    limubert-convert to_onnx CKPT_OR_RUN OUT.onnx [--overwrite]
    limubert-convert to_tflite RUN_DIR OUT.tflite [--batch=1] [--overwrite]

`from_torch` recognises a LIMU-BERT pretraining or GRU-classifier state dict by its keys,
infers the dimensions from the shapes, validates every key, shape and value and writes an
Orbax checkpoint with its model config. `to_torch` writes a LIMU-BERT or GRU-classifier
checkpoint as a state dict with exactly the reference keys and shapes (the unused `fc`
included), loadable with `load_state_dict(..., strict=True)`, and its sidecar `OUT.json` (OUT
with its suffix replaced by .json) with the config in the reference's field names; a trained
classifier run (RUN_DIR, or its model/) as the state dict and config of the standalone
`limubert_jax/export/limubert_torch.py` pipeline. `--format=safetensors` (or an OUT ending in
.safetensors) writes one .safetensors file instead, config in its metadata, without needing
torch. An OUT ending in .json is refused, since the sidecar would overwrite it. `to_onnx`
writes the encoder of a LIMU-BERT checkpoint, or a whole classifier run, as an ONNX graph
taking raw readings (normalization inside, dynamic batch); `to_tflite` a classifier run as a
TFLite file of fixed batch `--batch`. Existing outputs are refused unless `--overwrite`,
which replaces only a checkpoint directory (from_torch) or the files the command writes;
so are outputs that appear while the command runs (another run writing them). An output
inside what the command reads (a checkpoint or run directory), or one holding IN, is
refused, `--overwrite` or not.
Every path may be an object-store path (`gs://bucket/...`). Extras: `[torch]` for .pt files,
`[onnx]`, `[tflite]`.
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import flags

from limubert_jax.export.torch_export import (  # noqa: F401  (the API: limubert_jax.convert.to_torch etc.)
    FORMATS,
    check_outputs,
    file_format,
    load_torch_state_dict,
    reference_json,
    sidecar_path,
    to_torch,
)
from limubert_jax.export.torch_import import from_torch
from limubert_jax.runtime import cli


# Flags and the commands that take them.
_COMMAND_FLAGS = {"n_layers": ("from_torch",), "n_heads": ("from_torch",), "emb_norm": ("from_torch",),
                  "format": ("to_torch",), "batch": ("to_tflite",)}
COMMANDS = ("from_torch", "to_torch", "to_onnx", "to_tflite")


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_integer("n_layers", 4, "from_torch, LIMU-BERT: block repeats (not stored in the weights).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("n_heads", 4, "from_torch, LIMU-BERT: attention heads (not stored in the weights).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("emb_norm", True, "from_torch, LIMU-BERT: the model normalizes its embedding "
                      "(--noemb_norm for one trained with emb_norm false).", flag_values=fv)
    flags.DEFINE_enum("format", None, list(FORMATS), "to_torch: pt (state dict + .json sidecar, needs torch) or "
                      "safetensors (one file, config in its metadata); default: by OUT's suffix.", flag_values=fv)
    flags.DEFINE_integer("batch", 1, "to_tflite: the file's fixed batch size (windows per call).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace existing outputs: a checkpoint directory holding exactly "
                      "model_config.json, params/ and its README.md (from_torch), the files the command writes (to_*).",
                      flag_values=fv)


def _run(fv: flags.FlagValues, args: list[str]) -> None:
    command, source, target = args
    given = [f"--{name}" for name, commands in _COMMAND_FLAGS.items() if fv[name].present and command not in commands]
    if given:
        owners = sorted({c for name in given for c in _COMMAND_FLAGS[name[2:]]})
        raise cli.UsageError(f"{', '.join(given)}: for {' and '.join(owners)} only, not {command}")
    # The results are the command's output for the user: stdout (logs go to stderr).
    if command == "from_torch":
        kind, config = from_torch(source, target, n_layers=fv.n_layers, n_heads=fv.n_heads,
                                  emb_norm=fv.emb_norm, overwrite=fv.overwrite)
        print(f"wrote {kind} checkpoint {target} ({config})")
    elif command == "to_torch":
        kind, _ = to_torch(source, target, overwrite=fv.overwrite, format=fv.format)
        if file_format(target, fv.format) == "safetensors":
            print(f"wrote {kind} safetensors {target}")
        else:
            print(f"wrote {kind} state dict {target} and {sidecar_path(target)}")
    elif command == "to_onnx":
        from limubert_jax.export import onnx_export  # noqa: PLC0415  (the onnx extra: only for its command)

        summary = onnx_export.export_onnx(source, target, overwrite=fv.overwrite)
        print(f"wrote {summary['kind']} ONNX model {target} ({summary['bytes']:,} bytes; inputs {summary['inputs']}, "
              f"outputs {summary['outputs']})")
    else:
        from limubert_jax.export import tflite_export  # noqa: PLC0415  (the tflite extra: only for its command)

        summary = tflite_export.export_tflite(source, target, batch=fv.batch, overwrite=fv.overwrite)
        print(f"wrote TFLite model {target} ({summary['bytes']:,} bytes; inputs {summary['inputs']}, "
              f"outputs {summary['outputs']})")


def main(argv: Sequence[str] | None = None) -> int:
    """The command (`limubert-convert`); argv after the program name, None for sys.argv. Returns the exit status."""
    return cli.run_command(__doc__, define_flags, _run, argv, positional=(COMMANDS, "IN", "OUT"))


if __name__ == "__main__":
    sys.exit(main())
