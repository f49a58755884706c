"""Weights between the reference PyTorch release and limubert_jax checkpoints (`limubert-convert`).

    limubert-convert from_torch IN.pt OUT_DIR [--n_layers=4 --n_heads=4 --noemb_norm] [--overwrite]
    limubert-convert to_torch CKPT_DIR OUT.pt [--overwrite]

`from_torch` recognises a LIMU-BERT pretraining or GRU-classifier state dict by its keys,
infers the dimensions from the shapes, validates every key, shape and value and writes an
Orbax checkpoint with its model config. `to_torch` writes a state dict with exactly the
reference keys and shapes (the unused `fc` included), loadable with
`load_state_dict(..., strict=True)`, and its sidecar `OUT.json` (OUT with its suffix
replaced by .json) with the config in the reference's field names; an OUT ending in .json
is refused, since the sidecar would overwrite it. Existing outputs are refused unless
`--overwrite`, which replaces only a checkpoint directory (from_torch) or the two files
(to_torch). Every path may be an object-store path (`gs://bucket/...`).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import sys
from typing import Any, Sequence

import numpy as np
from absl import flags
from etils import epath

from limubert_jax.io import checkpoint, storage
from limubert_jax.io.state_dict import (
    LIMU_BERT,
    StateDict,
    detect_kind,
    expected_shapes,
    infer_gru_classifier_config,
    infer_limu_bert_config,
    params_to_state_dict,
    state_dict_to_params,
    validate_state_dict,
)
from limubert_jax.runtime import cli
from limubert_jax.runtime.errors import LimuBertError


def _import_torch():
    try:
        import torch
    except ImportError:
        raise LimuBertError(
            "PyTorch is needed for this: pip install 'limubert-jax[torch]'"
        ) from None
    return torch


def load_torch_state_dict(path: str | os.PathLike) -> StateDict:
    """Reads a PyTorch state dict file (`weights_only=True`) as NumPy arrays."""
    torch = _import_torch()
    path = storage.as_path(path)
    if not path.is_file():
        raise LimuBertError(f"{path}: no such file")
    try:
        with path.open("rb") as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise LimuBertError(f"{path}: not a readable PyTorch file ({_first_line(e)})") from None
        # Torch's own message goes on to suggest weights_only=False, i.e. running the code.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it references {found.group(1)})" if found else ""
        raise LimuBertError(
            f"{path}: refused: the file holds code or objects that are not plain tensors{what}; "
            "it was loaded with weights_only=True, which runs none of it, and a state dict needs nothing else"
        ) from None
    except Exception as e:  # torch raises many types for foreign or damaged files
        raise LimuBertError(f"{path}: not a readable PyTorch file ({_first_line(e)})") from None
    if not isinstance(obj, dict):
        raise LimuBertError(f"{path}: not a state dict (the file holds a {type(obj).__name__})")
    state_dict: StateDict = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise LimuBertError(
                f"{path}: not a state dict (entry {key!r} is a {type(value).__name__}, not a tensor)"
            )
        if value.layout != torch.strided:
            raise LimuBertError(
                f"{path}: entry {key!r} is a sparse tensor ({value.layout}); model weights are dense tensors"
            )
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
            tensor = tensor.float()
        try:
            state_dict[key] = tensor.numpy()
        except (TypeError, RuntimeError) as e:  # quantized or otherwise NumPy-less tensors
            raise LimuBertError(f"{path}: entry {key!r} is not a plain tensor ({_first_line(e)})") from None
    return state_dict


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def from_torch(
    in_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    n_layers: int = 4,
    n_heads: int = 4,
    emb_norm: bool = True,
    overwrite: bool = False,
) -> tuple[str, Any]:
    """Converts a reference PyTorch state dict into a checkpoint directory.

    Returns (kind, config). `n_layers`, `n_heads` and `emb_norm` apply to LIMU-BERT only:
    they are not recorded in the weights.
    """
    source = str(in_path)
    storage.check_not_input(out_dir, in_path)
    state_dict = load_torch_state_dict(in_path)
    kind = detect_kind(state_dict, source)
    if kind == LIMU_BERT:
        config = infer_limu_bert_config(
            state_dict, source, n_layers=n_layers, n_heads=n_heads, emb_norm=emb_norm
        )
    else:
        config = infer_gru_classifier_config(state_dict, source)
    validate_state_dict(state_dict, expected_shapes(kind, config), source)
    for key, array in state_dict.items():
        if not np.isfinite(array).all():
            raise LimuBertError(f"{source}: entry '{key}' holds NaN or Inf")
    checkpoint.save_model(out_dir, state_dict_to_params(state_dict), config, overwrite=overwrite)
    return kind, config


def reference_json(kind: str, config) -> dict[str, Any]:
    """The model config in the field names of the reference's JSON config files."""
    return config.to_dict() if kind == LIMU_BERT else config.to_reference_json()


def sidecar_path(out_path: str | os.PathLike) -> epath.Path:
    """Where `to_torch` writes the config beside the state dict OUT: OUT with its suffix
    replaced by `.json` (`uci.pt` -> `uci.json`, `uci` -> `uci.json`)."""
    return storage.as_path(out_path).with_suffix(".json")


def check_outputs(ckpt: str | os.PathLike, out_path: str | os.PathLike, *, overwrite: bool = False) -> epath.Path:
    """Raises `LimuBertError` unless `to_torch` may write OUT and its sidecar; returns the sidecar."""
    out_path = storage.as_path(out_path)
    if out_path.suffix.lower() == ".json":
        raise LimuBertError(
            f"{out_path}: ends in .json, so its config sidecar (OUT with its suffix replaced by "
            f".json) would overwrite it; name the state dict e.g. {out_path.with_suffix('.pt')}"
        )
    json_path = sidecar_path(out_path)
    for target in (out_path, json_path):
        storage.check_not_input(target, ckpt, storage.as_path(ckpt) / checkpoint.CONFIG_FILE)
        if target.is_dir():
            raise LimuBertError(f"{target}: is a directory")
        if target.exists() and not overwrite:
            raise LimuBertError(f"{target}: already exists (pass --overwrite to replace it)")
    return json_path


def to_torch(ckpt: str | os.PathLike, out_path: str | os.PathLike, *, overwrite: bool = False) -> tuple[str, Any]:
    """Writes a checkpoint as a reference PyTorch state dict `OUT` plus its sidecar
    `sidecar_path(OUT)` (the config), refusing existing files unless `overwrite`.

    Both files appear together, or neither does. Returns (kind, config).
    """
    torch = _import_torch()
    json_path = check_outputs(ckpt, out_path, overwrite=overwrite)
    kind, config, params = checkpoint.load_model(ckpt)
    expected = expected_shapes(kind, config)
    state_dict = params_to_state_dict(params)
    validate_state_dict(state_dict, expected, str(ckpt))
    ordered = {key: torch.from_numpy(np.array(state_dict[key], order="C", copy=True)) for key in expected}
    state_bytes = io.BytesIO()  # a state dict is megabytes: serialized in memory, then written
    torch.save(ordered, state_bytes)
    text = json.dumps(reference_json(kind, config), indent=2) + "\n"
    storage.write_together({out_path: state_bytes.getvalue(), json_path: text.encode("utf-8")})
    return kind, config


_FROM_TORCH_ONLY = ("n_layers", "n_heads", "emb_norm")


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_integer("n_layers", 4, "from_torch, LIMU-BERT: block repeats (not stored in the weights).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("n_heads", 4, "from_torch, LIMU-BERT: attention heads (not stored in the weights).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("emb_norm", True, "from_torch, LIMU-BERT: the model normalizes its embedding "
                      "(--noemb_norm for one trained with emb_norm false).", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace existing outputs: a checkpoint directory holding exactly "
                      "model_config.json and params/ (from_torch), a state dict and its .json (to_torch).",
                      flag_values=fv)


def _run(fv: flags.FlagValues, args: list[str]) -> None:
    command, source, target = args
    # The results are the command's output for the user: stdout (logs go to stderr).
    if command == "from_torch":
        kind, config = from_torch(source, target, n_layers=fv.n_layers, n_heads=fv.n_heads,
                                  emb_norm=fv.emb_norm, overwrite=fv.overwrite)
        print(f"wrote {kind} checkpoint {target} ({config})")
        return
    given = [f"--{name}" for name in _FROM_TORCH_ONLY if fv[name].present]
    if given:
        raise cli.UsageError(f"{', '.join(given)}: for from_torch only (to_torch reads the config from the checkpoint)")
    kind, config = to_torch(source, target, overwrite=fv.overwrite)
    print(f"wrote {kind} state dict {target} and {sidecar_path(target)}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command (`limubert-convert`); argv after the program name, None for sys.argv. Returns the exit status."""
    return cli.run_command(__doc__, define_flags, _run, argv, positional=(("from_torch", "to_torch"), "IN", "OUT"))


if __name__ == "__main__":
    sys.exit(main())
