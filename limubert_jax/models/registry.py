"""The classifier registry: every head (over LIMU-BERT embeddings) and baseline (over raw
windows) by its reference name, built for given sizes and initialised as one program."""

from __future__ import annotations

import dataclasses
import operator
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from limubert_jax.models.heads import (
    DCNN,
    AttnClassifier,
    AttnConfig,
    CNN1DClassifier,
    CNN1DConfig,
    CNN2DClassifier,
    CNN2DConfig,
    DCNNConfig,
    DeepSense,
    DeepSenseConfig,
)
from limubert_jax.models.recurrent import GRUClassifier, GRUClassifierConfig, LSTMClassifier, gru_v2
from limubert_jax.runtime.xla_options import compile_once

HEADS = ("gru_v1", "gru_v2", "lstm_v1", "cnn1_v1", "cnn2_v1", "attn_v1")  # over LIMU-BERT embeddings
BASELINES = ("dcnn", "deepsense", "rgru")  # over raw normalized IMU windows
# The recurrent classifiers (PyTorch's GRU/LSTM equations): the ones with PyTorch, ONNX and TFLite exports.
RECURRENT_HEADS = ("gru_v1", "gru_v2", "rgru", "lstm_v1")


def _released_gru(num_classes: int, input_dim: int, seq_len: int) -> GRUClassifierConfig:
    # gru_v2 exactly as released; seq_len is informational there (it sizes init_params' dummy).
    return dataclasses.replace(gru_v2(num_classes, input_dim), seq_len=seq_len)


def _gru_v1(num_classes: int, input_dim: int, seq_len: int) -> nn.Module:
    # classifier.json's gru_v1 is gru_v2 with "dropout": false.
    return GRUClassifier(dataclasses.replace(_released_gru(num_classes, input_dim, seq_len), dropout=0.0))


def _gru_v2(num_classes: int, input_dim: int, seq_len: int) -> nn.Module:
    return GRUClassifier(_released_gru(num_classes, input_dim, seq_len))


def _lstm_v1(num_classes: int, input_dim: int, seq_len: int) -> nn.Module:
    # classifier.json's lstm_v1 has gru_v2's widths, layers and dropout.
    return LSTMClassifier(_released_gru(num_classes, input_dim, seq_len))


def _rgru(num_classes: int, input_dim: int, seq_len: int) -> nn.Module:
    # R-GRU = the LIMU-GRU classifier (gru_v2) trained on raw windows instead of embeddings.
    return GRUClassifier(_released_gru(num_classes, input_dim, seq_len))


_BUILDERS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "gru_v1": _gru_v1,
    "gru_v2": _gru_v2,
    "lstm_v1": _lstm_v1,
    "cnn1_v1": lambda c, d, t: CNN1DClassifier(CNN1DConfig(c, t, d)),
    "cnn2_v1": lambda c, d, t: CNN2DClassifier(CNN2DConfig(c, t, d)),
    "attn_v1": lambda c, d, t: AttnClassifier(AttnConfig(c, t, d)),
    "dcnn": lambda c, d, t: DCNN(DCNNConfig.reference(c, t, d)),
    "deepsense": lambda c, d, t: DeepSense(DeepSenseConfig.reference(c, t, d)),
    "rgru": _rgru,
}
assert tuple(_BUILDERS) == HEADS + BASELINES


def make_classifier(name: str, *, num_classes: int, input_dim: int, seq_len: int) -> nn.Module:
    """The classifier `name` (one of HEADS + BASELINES) for windows [B, seq_len, input_dim].

    Its `apply({"params": p}, x, train=bool, rngs={"dropout": key})` maps x [B, T, D] float32 to
    logits [B, num_classes]; dropout (where the architecture has it) only with train=True.
    Raises ValueError for an unknown name or sizes the architecture cannot take.
    """
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown classifier {name!r}; available: heads {', '.join(HEADS)}; "
            f"baselines {', '.join(BASELINES)}"
        )
    sizes = {"num_classes": num_classes, "input_dim": input_dim, "seq_len": seq_len}
    for field, value in sizes.items():
        try:
            sizes[field] = operator.index(value)  # ints, NumPy ints; not floats or bools
        except TypeError:
            sizes[field] = 0
        if isinstance(value, bool) or sizes[field] < 1:
            raise ValueError(f"make_classifier({name!r}): {field} must be a positive int, got {value!r}")
    return _BUILDERS[name](sizes["num_classes"], sizes["input_dim"], sizes["seq_len"])


def init_classifier(module: nn.Module, rng: jax.Array, *, seq_len: int, input_dim: int) -> dict:
    """Initial parameters of `module` (from `make_classifier`) as a plain pytree.

    Initialisation traces the model once on a dummy window [1, seq_len, input_dim], compiled
    as one program: run eagerly, each parameter's random draws compile separately (seconds).
    The program runs once on a few thousand numbers, so it is compiled without LLVM's
    optimisations (a third of the compile time).
    """

    def init(key):
        return module.init(key, jnp.zeros((1, seq_len, input_dim), jnp.float32), train=False)["params"]

    return compile_once(init)(rng)
