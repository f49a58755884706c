"""Weights between the reference PyTorch release and limubert_jax checkpoints.

    python -m limubert_jax.convert from-torch IN.pt OUT_DIR [--n-layers 4 --n-heads 4] [--overwrite]
    python -m limubert_jax.convert to-torch CKPT_DIR OUT.pt [--overwrite]

`from-torch` recognises a LIMU-BERT pretraining or GRU-classifier state dict by its keys,
infers the dimensions from the shapes, validates every key, shape and value and writes an
Orbax checkpoint with its model config. `to-torch` writes a state dict with exactly the
reference keys and shapes (the unused `fc` included), loadable with
`load_state_dict(..., strict=True)`, and its sidecar `OUT.json` (OUT with its suffix
replaced by .json) with the config in the reference's field names; an OUT ending in .json
is refused, since the sidecar would overwrite it. Existing outputs are refused unless
`--overwrite`, which replaces only a checkpoint directory (from-torch) or the two files
(to-torch). Every path may be an object-store path (`gs://bucket/...`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
from typing import Any, Sequence

import numpy as np
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
from limubert_jax.runtime.errors import LimuBertError, run_cli


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
    """Where `to-torch` writes the config beside the state dict OUT: OUT with its suffix
    replaced by `.json` (`uci.pt` -> `uci.json`, `uci` -> `uci.json`)."""
    return storage.as_path(out_path).with_suffix(".json")


def check_outputs(ckpt: str | os.PathLike, out_path: str | os.PathLike, *, overwrite: bool = False) -> epath.Path:
    """Raises `LimuBertError` unless `to-torch` may write OUT and its sidecar; returns the sidecar."""
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m limubert_jax.convert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("from-torch", help="PyTorch state dict -> checkpoint directory")
    p.add_argument("input", help="reference state dict (.pt)")
    p.add_argument("output", help="checkpoint directory to write")
    p.add_argument("--n-layers", type=int, default=4, help="LIMU-BERT block repeats (not stored in weights)")
    p.add_argument("--n-heads", type=int, default=4, help="LIMU-BERT attention heads (not stored in weights)")
    p.add_argument("--no-emb-norm", action="store_true", help="the model was trained with emb_norm false")
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing checkpoint directory (one holding exactly model_config.json and params/)",
    )
    p = sub.add_parser("to-torch", help="checkpoint directory -> PyTorch state dict + JSON config")
    p.add_argument("checkpoint", help="checkpoint directory")
    p.add_argument(
        "output",
        help="state dict to write (e.g. OUT.pt); the config goes beside it with .json in place of its "
        "suffix (OUT.json), so OUT may not end in .json",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing state dict and its .json")
    return parser


def _main(argv: Sequence[str] | None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "from-torch":
        kind, config = from_torch(
            args.input, args.output, n_layers=args.n_layers, n_heads=args.n_heads,
            emb_norm=not args.no_emb_norm, overwrite=args.overwrite,
        )
        print(f"wrote {kind} checkpoint {args.output} ({config})")
    else:
        kind, config = to_torch(args.checkpoint, args.output, overwrite=args.overwrite)
        print(f"wrote {kind} state dict {args.output} and {sidecar_path(args.output)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
