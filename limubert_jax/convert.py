"""Weights between the reference PyTorch release and limubert_jax checkpoints.

    python -m limubert_jax.convert from-torch IN.pt OUT_DIR [--n-layers 4 --n-heads 4]
    python -m limubert_jax.convert to-torch CKPT_DIR OUT.pt

`from-torch` recognises a LIMU-BERT pretraining or GRU-classifier state dict by its keys,
infers the dimensions from the shapes, validates every key and shape and writes an Orbax
checkpoint with its model config. `to-torch` writes a state dict with exactly the reference
keys and shapes (the unused `fc` included), loadable with `load_state_dict(..., strict=True)`,
and `OUT.json` beside it with the config in the reference's field names.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from limubert_jax import checkpoint
from limubert_jax.errors import LimuBertError, run_cli
from limubert_jax.state_dict import (
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
    path = Path(path)
    if not path.is_file():
        raise LimuBertError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or damaged files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LimuBertError(f"{path}: not a readable PyTorch file ({reason[:200]})") from None
    if not isinstance(obj, dict):
        raise LimuBertError(f"{path}: not a state dict (the file holds a {type(obj).__name__})")
    state_dict: StateDict = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise LimuBertError(
                f"{path}: not a state dict (entry {key!r} is a {type(value).__name__}, not a tensor)"
            )
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
            tensor = tensor.float()
        state_dict[key] = tensor.numpy()
    return state_dict


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
    state_dict = load_torch_state_dict(in_path)
    kind = detect_kind(state_dict, source)
    if kind == LIMU_BERT:
        config = infer_limu_bert_config(
            state_dict, source, n_layers=n_layers, n_heads=n_heads, emb_norm=emb_norm
        )
    else:
        config = infer_gru_classifier_config(state_dict, source)
    validate_state_dict(state_dict, expected_shapes(kind, config), source)
    checkpoint.save_model(out_dir, state_dict_to_params(state_dict), config, overwrite=overwrite)
    return kind, config


def reference_json(kind: str, config) -> dict[str, Any]:
    """The model config in the field names of the reference's JSON config files."""
    return config.to_dict() if kind == LIMU_BERT else config.to_reference_json()


def to_torch(ckpt: str | os.PathLike, out_path: str | os.PathLike) -> tuple[str, Any]:
    """Writes a checkpoint as a reference PyTorch state dict `OUT.pt` plus `OUT.json`.

    Both files appear together, or neither does. Returns (kind, config).
    """
    torch = _import_torch()
    kind, config, params = checkpoint.load_model(ckpt)
    expected = expected_shapes(kind, config)
    state_dict = params_to_state_dict(params)
    validate_state_dict(state_dict, expected, str(ckpt))
    ordered = {key: torch.from_numpy(np.array(state_dict[key], order="C", copy=True)) for key in expected}

    out_path = Path(out_path)
    json_path = out_path.with_suffix(".json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staged = []
    try:
        for target in (out_path, json_path):
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
            os.close(fd)
            staged.append(tmp)
        torch.save(ordered, staged[0])
        Path(staged[1]).write_text(json.dumps(reference_json(kind, config), indent=2) + "\n")
        os.replace(staged[0], out_path)
        os.replace(staged[1], json_path)
    finally:
        for tmp in staged:
            if os.path.exists(tmp):
                os.remove(tmp)
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p = sub.add_parser("to-torch", help="checkpoint directory -> PyTorch state dict + JSON config")
    p.add_argument("checkpoint", help="checkpoint directory")
    p.add_argument("output", help="state dict to write (.pt); the config goes to the same name with .json")
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
        kind, config = to_torch(args.checkpoint, args.output)
        print(f"wrote {kind} state dict {args.output} and {Path(args.output).with_suffix('.json')}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
