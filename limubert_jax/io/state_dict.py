"""Mapping between reference PyTorch state dicts and Flax parameter pytrees (docs/reference.md §8).

Flax modules here are named like the reference's PyTorch modules, so one rule converts
every tensor: a Flax `kernel<suffix>` [in, out] is PyTorch's `weight<suffix>` [out, in]
transposed; the position table `pos_embed` is PyTorch's `pos_embed.weight`; every other
leaf keeps its name. This module works on NumPy arrays and never imports torch.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from limubert_jax.models import registry
from limubert_jax.models.encoder import LimuBertConfig
from limubert_jax.models.recurrent import GRUClassifierConfig
from limubert_jax.runtime.errors import LimuBertError

LIMU_BERT = "limu_bert"
GRU_CLASSIFIER = "gru_classifier"
# A trained classifier run: normalization, encoder (or none), sub-windows, head (`models.pipeline`).
CLASSIFIER_PIPELINE = "classifier_pipeline"

StateDict = dict[str, np.ndarray]


def params_to_state_dict(params: Mapping[str, Any]) -> StateDict:
    """Flax params (nested dicts of arrays) -> flat PyTorch-named dict of NumPy arrays."""
    out: StateDict = {}

    def visit(tree, path):
        for name, value in tree.items():
            if isinstance(value, Mapping):
                visit(value, path + [name])
                continue
            array = np.asarray(value)
            if name.startswith("kernel"):
                out[".".join(path + ["weight" + name[len("kernel") :]])] = np.ascontiguousarray(array.T)
            elif name == "pos_embed":
                out[".".join(path + [name, "weight"])] = array
            else:
                out[".".join(path + [name])] = array

    visit(params, [])
    return out


def state_dict_to_params(state_dict: Mapping[str, np.ndarray]) -> dict:
    """Flat PyTorch-named dict of NumPy arrays -> nested Flax params (inverse of the above)."""
    params: dict = {}
    for key, array in state_dict.items():
        *path, name = key.split(".")
        array = np.asarray(array)
        if path and path[-1] == "pos_embed" and name == "weight":
            *path, name = path
        elif name.startswith("weight"):
            name = "kernel" + name[len("weight") :]
            array = np.ascontiguousarray(array.T)
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[name] = array
    return params


def limu_bert_shapes(cfg: LimuBertConfig) -> dict[str, tuple[int, ...]]:
    """Reference keys and shapes of `LIMUBertModel4Pretrain`, in the reference's order."""
    h, ff, f = cfg.hidden, cfg.hidden_ff, cfg.feature_num

    def linear(name, n_in, n_out):
        return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}

    def norm(name):
        return {f"{name}.gamma": (h,), f"{name}.beta": (h,)}

    shapes: dict[str, tuple[int, ...]] = {}
    shapes |= linear("transformer.embed.lin", f, h)
    shapes["transformer.embed.pos_embed.weight"] = (cfg.seq_len, h)
    shapes |= norm("transformer.embed.norm")
    for proj in ("q", "k", "v"):
        shapes |= linear(f"transformer.attn.proj_{proj}", h, h)
    shapes |= linear("transformer.proj", h, h)
    shapes |= norm("transformer.norm1")
    shapes |= linear("transformer.pwff.fc1", h, ff)
    shapes |= linear("transformer.pwff.fc2", ff, h)
    shapes |= norm("transformer.norm2")
    shapes |= linear("fc", h, h)
    shapes |= linear("linear", h, h)
    shapes |= norm("norm")
    shapes |= linear("decoder", h, f)
    return shapes


def gru_classifier_shapes(cfg: GRUClassifierConfig, cell: str = "gru") -> dict[str, tuple[int, ...]]:
    """Reference keys and shapes of `ClassifierGRU` (`ClassifierLSTM` with cell "lstm"), in
    the reference's order."""
    shapes: dict[str, tuple[int, ...]] = {}
    width = cfg.input_dim
    gates = {"gru": 3, "lstm": 4}[cell]
    for i, (hidden, layers) in enumerate(zip(cfg.rnn_hidden, cfg.rnn_layers)):
        for k in range(layers):
            n_in = width if k == 0 else hidden
            shapes[f"{cell}{i}.weight_ih_l{k}"] = (gates * hidden, n_in)
            shapes[f"{cell}{i}.weight_hh_l{k}"] = (gates * hidden, hidden)
            shapes[f"{cell}{i}.bias_ih_l{k}"] = (gates * hidden,)
            shapes[f"{cell}{i}.bias_hh_l{k}"] = (gates * hidden,)
        width = hidden
    for i, n_out in enumerate(cfg.linear_dims):
        shapes[f"lin{i}.weight"] = (n_out, width)
        shapes[f"lin{i}.bias"] = (n_out,)
        width = n_out
    return shapes


def pipeline_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a trained classifier (`models.pipeline`) with a recurrent head, as the
    standalone PyTorch `ClassifierPipeline` names them: `encoder.transformer.*` (when it has
    an encoder) and `head.*`."""
    if cfg.head not in registry.RECURRENT_HEADS:
        raise LimuBertError(f"the {cfg.head} head has no PyTorch version (recurrent heads only: gru_v1, gru_v2, "
                            "lstm_v1, rgru)")
    shapes = {}
    if cfg.encoder is not None:
        shapes = {f"encoder.{k}": v for k, v in limu_bert_shapes(cfg.encoder).items() if k.startswith("transformer.")}
    module = cfg.head_module()
    return shapes | {f"head.{k}": v for k, v in gru_classifier_shapes(module.config, module.cell).items()}


def expected_shapes(kind: str, cfg) -> dict[str, tuple[int, ...]]:
    """Reference keys and shapes for a model kind and its config."""
    if kind == CLASSIFIER_PIPELINE:
        return pipeline_shapes(cfg)
    return limu_bert_shapes(cfg) if kind == LIMU_BERT else gru_classifier_shapes(cfg)


def detect_kind(state_dict: Mapping[str, Any], source: str) -> str:
    """Tells a LIMU-BERT pretraining state dict from a GRU classifier one by its keys."""
    if "transformer.embed.lin.weight" in state_dict:
        return LIMU_BERT
    if "gru0.weight_ih_l0" in state_dict:
        return GRU_CLASSIFIER
    shown = ", ".join(sorted(state_dict)[:6]) or "no keys"
    raise LimuBertError(
        f"{source}: neither a LIMU-BERT state dict (no 'transformer.embed.lin.weight') nor a GRU "
        f"classifier (no 'gru0.weight_ih_l0'); keys found: {shown}"
    )


def _shape_of(state_dict, key, source, rank):
    if key not in state_dict:
        raise LimuBertError(f"{source}: missing key '{key}'")
    shape = tuple(np.shape(state_dict[key]))
    if len(shape) != rank:
        raise LimuBertError(f"{source}: '{key}' has shape {shape}, expected a {rank}-D tensor")
    return shape


def infer_limu_bert_config(
    state_dict: Mapping[str, Any],
    source: str,
    *,
    n_layers: int = 4,
    n_heads: int = 4,
    emb_norm: bool = True,
) -> LimuBertConfig:
    """Reads F, H, FF and S from the tensor shapes.

    The layer count, head count and `emb_norm` leave no trace in the weights (one shared
    block; heads are a reshape), so they come from the caller (reference defaults).
    """
    hidden, feature_num = _shape_of(state_dict, "transformer.embed.lin.weight", source, 2)
    hidden_ff, _ = _shape_of(state_dict, "transformer.pwff.fc1.weight", source, 2)
    seq_len, _ = _shape_of(state_dict, "transformer.embed.pos_embed.weight", source, 2)
    try:
        return LimuBertConfig(
            feature_num=feature_num, hidden=hidden, hidden_ff=hidden_ff,
            n_layers=n_layers, n_heads=n_heads, seq_len=seq_len, emb_norm=emb_norm,
        )
    except ValueError as e:
        raise LimuBertError(f"{source}: {e}") from None


def infer_gru_classifier_config(state_dict: Mapping[str, Any], source: str) -> GRUClassifierConfig:
    """Reads the GRU stack and linear layers from the keys (`gru<i>`, `_l<k>`, `lin<i>`) and shapes."""
    _, input_dim = _shape_of(state_dict, "gru0.weight_ih_l0", source, 2)
    rnn_hidden, rnn_layers = [], []
    while f"gru{len(rnn_hidden)}.weight_ih_l0" in state_dict:
        i = len(rnn_hidden)
        gates, _ = _shape_of(state_dict, f"gru{i}.weight_ih_l0", source, 2)
        layers = 1
        while f"gru{i}.weight_ih_l{layers}" in state_dict:
            layers += 1
        rnn_hidden.append(gates // 3)
        rnn_layers.append(layers)
    linear_dims = []
    while f"lin{len(linear_dims)}.weight" in state_dict:
        n_out, _ = _shape_of(state_dict, f"lin{len(linear_dims)}.weight", source, 2)
        linear_dims.append(n_out)
    if not linear_dims:
        raise LimuBertError(f"{source}: missing key 'lin0.weight' (the classifier's output layer)")
    return GRUClassifierConfig(
        input_dim=input_dim, rnn_hidden=tuple(rnn_hidden), rnn_layers=tuple(rnn_layers),
        linear_dims=tuple(linear_dims),
    )


def validate_state_dict(state_dict: Mapping[str, Any], expected: Mapping[str, tuple], source: str) -> None:
    """Raises `LimuBertError` naming the first missing, unexpected or mis-shaped key."""
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise LimuBertError(f"{source}: missing key(s): {', '.join(missing)}")
    unexpected = sorted(k for k in state_dict if k not in expected)
    if unexpected:
        raise LimuBertError(f"{source}: unexpected key(s): {', '.join(unexpected)}")
    for key, shape in expected.items():
        found = tuple(np.shape(state_dict[key]))
        if found != tuple(shape):
            raise LimuBertError(f"{source}: '{key}' has shape {found}, expected {tuple(shape)}")
        dtype = np.asarray(state_dict[key]).dtype
        if not np.issubdtype(dtype, np.floating):
            raise LimuBertError(f"{source}: '{key}' has dtype {dtype}, expected a floating-point tensor")
