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
