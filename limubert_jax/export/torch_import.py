"""Reference PyTorch state dicts into checkpoints (`limubert-convert from_torch`): the kind
(LIMU-BERT pretraining or GRU classifier) recognised by its keys, the dimensions inferred from
the shapes, every key, shape and value validated, then an Orbax checkpoint with its model
config. Reading the .pt file is `torch_export.load_torch_state_dict` (`weights_only=True`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from limubert_jax.export.torch_export import load_torch_state_dict
from limubert_jax.io import checkpoint, storage
from limubert_jax.io.model_card import model_card
from limubert_jax.io.state_dict import (
    LIMU_BERT,
    detect_kind,
    expected_shapes,
    infer_gru_classifier_config,
    infer_limu_bert_config,
    state_dict_to_params,
    validate_state_dict,
)
from limubert_jax.runtime.errors import LimuBertError


def from_torch(
    in_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    n_layers: int = 4,
    n_heads: int = 4,
    emb_norm: bool = True,
    overwrite: bool = False,
    card: str | None = None,
) -> tuple[str, Any]:
    """Converts a reference PyTorch state dict into a checkpoint directory, with its model
    card README.md (`card`, by default one naming the file it was converted from).

    Returns (kind, config). `n_layers`, `n_heads` and `emb_norm` apply to LIMU-BERT only:
    they are not recorded in the weights.
    """
    storage.check_not_input(out_dir, in_path)
    kind, config, params = read_torch(in_path, n_layers=n_layers, n_heads=n_heads, emb_norm=emb_norm)
    source = str(in_path)
    if card is None:
        what = "a LIMU-BERT encoder with its reconstruction head" if kind == LIMU_BERT else "a GRU classifier"
        card = model_card(kind, config, title=f"{storage.as_path(in_path).name}, converted", path=out_dir,
                          about=f"{what[0].upper()}{what[1:]}, converted from the PyTorch state dict {source} "
                                "(values unchanged).", source=source)
    checkpoint.save_model(out_dir, params, config, overwrite=overwrite, card=card)
    return kind, config


def read_torch(in_path: str | os.PathLike, *, n_layers: int = 4, n_heads: int = 4,
               emb_norm: bool = True) -> tuple[str, Any, dict]:
    """(kind, config, params) of a reference PyTorch state dict: `from_torch` without the
    writing (every key, shape and value checked)."""
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
    for key, array in state_dict.items():
        if not np.isfinite(array).all():
            raise LimuBertError(f"{source}: entry '{key}' holds NaN or Inf")
    return kind, config, state_dict_to_params(state_dict)
