"""A trained classifier as one model from raw readings to activities: normalization (docs/reference.md §1),
the encoder when the method has one, sub-windows, the head, and the window's answer.

What the downstream protocol trains (docs/reference.md §7) only works on inputs prepared exactly as in
training: raw windows of `seq_len` steps, normalized, encoded whole (the encoder sees the
whole window, as in `classify`; an encoder shorter than the windows, e.g. LIMU-BERT-X's 20
steps, sees each of its `encoder.seq_len`-step pieces: `encoder.encode_windows`), then cut
into `merge`-step sub-windows, each classified on its own. A `ClassifierPipelineConfig`
records every one of those choices, so that the saved run (`save`) needs nothing else to
predict.

Parameters: {"encoder": {"transformer": ...}} (LIMU-BERT's encoder; absent for a baseline on
raw windows) and {"head": ...} (a `registry` classifier). Aggregation of a window: the mean
of its sub-windows' class probabilities (softmax of each sub-window's logits), then argmax.

Shapes: B windows, S steps (`seq_len`), F raw features (>= `feature_num`), K = S // merge
sub-windows, C classes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from limubert_jax.data import normalization
from limubert_jax.data.normalization import normalize
from limubert_jax.models import encoder as encoder_lib
from limubert_jax.models import registry
from limubert_jax.models.encoder import LimuBertConfig
from limubert_jax.models.layers import dataclass_from_dict

AGGREGATION = "mean_probability"  # a window's probabilities: the mean over its sub-windows
MODEL_DIR = "model"  # where a downstream run saves its trained classifier, inside the run directory


@dataclasses.dataclass(frozen=True)
class ClassifierPipelineConfig:
    """Everything a trained classifier needs to run on raw windows, beside its parameters."""

    method: str  # the downstream method that trained it: limu_<head>, finetune_<head>, or a baseline
    head: str  # the `registry` classifier (gru_v2, rgru, ...)
    class_names: tuple[str, ...]  # class c's name; C = len(class_names)
    label: str  # the task it predicts (activity, user, ...)
    seq_len: int  # S: steps of the raw windows it takes
    merge: int  # steps of each sub-window the head classifies
    feature_num: int  # features kept and normalized (6: acc + gyro, 9: + magnetometer)
    encoder: LimuBertConfig | None = None  # the encoder in front of the head; None: the head sees readings
    sampling_rate_hz: float | None = None  # the rate of the training windows (recordings input is resampled to it)
    dataset: str = ""  # where it was trained, name/version (informational)

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        for name in ("seq_len", "merge", "feature_num"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ClassifierPipelineConfig.{name} must be a positive int, got {value!r}")
        if self.seq_len % self.merge:
            raise ValueError(f"ClassifierPipelineConfig: merge ({self.merge}) must divide seq_len ({self.seq_len})")
        if len(self.class_names) < 1 or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"ClassifierPipelineConfig.class_names must be distinct and non-empty: "
                             f"{self.class_names}")
        if self.encoder is not None and self.encoder.feature_num != self.feature_num:
            raise ValueError(f"ClassifierPipelineConfig: feature_num {self.feature_num} differs from the "
                             f"encoder's {self.encoder.feature_num}")
        if self.encoder_pieces > 1 and self.encoder.seq_len % self.merge:  # a sub-window within one piece
            raise ValueError(f"ClassifierPipelineConfig: merge ({self.merge}) must divide the encoder's seq_len "
                             f"({self.encoder.seq_len}), which encodes the {self.seq_len}-step windows in pieces")
        registry.make_classifier(self.head, num_classes=self.num_classes, input_dim=self.head_input_dim,
                                 seq_len=self.merge)  # a ValueError for an unknown head or sizes it cannot take

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def subwindows(self) -> int:
        """K: sub-windows per window."""
        return self.seq_len // self.merge

    @property
    def encoder_pieces(self) -> int:
        """Pieces the encoder cuts each window into (`encoder.encoder_pieces`): 1 when it sees
        the whole window (or there is no encoder), seq_len // encoder.seq_len when shorter."""
        if self.encoder is None:
            return 1
        try:
            return encoder_lib.encoder_pieces(self.seq_len, self.encoder.seq_len)
        except ValueError as e:
            raise ValueError(f"ClassifierPipelineConfig: {e}") from None

    @property
    def head_input_dim(self) -> int:
        """Features of each sub-window step the head sees: the encoder's width, or the readings'."""
        return self.encoder.hidden if self.encoder is not None else self.feature_num

    @property
    def normalization(self) -> dict[str, Any]:
        """§1's (docs/reference.md) constants, for runtimes that reimplement it (PyTorch, ONNX)."""
        return dict(normalization.CONSTANTS)

    def head_module(self):
        return registry.make_classifier(self.head, num_classes=self.num_classes, input_dim=self.head_input_dim,
                                        seq_len=self.merge)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields, the encoder's as a nested dict."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["class_names"] = list(self.class_names)
        fields["encoder"] = None if self.encoder is None else self.encoder.to_dict()
        return fields

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "ClassifierPipelineConfig":
        """Inverse of `to_dict`; unknown fields are an error."""
        fields = dict(fields)
        if fields.get("encoder") is not None:
            fields["encoder"] = LimuBertConfig.from_dict(fields["encoder"])
        return dataclass_from_dict(cls, fields)


def subwindow_logits(params, config: ClassifierPipelineConfig, windows: jax.Array) -> jax.Array:
    """Raw windows [B, S, F] (acc m/s^2, gyro rad/s, mag any unit) -> logits [B, K, C] of
    each sub-window, eval mode."""
    b = windows.shape[0]
    x = normalize(windows.astype(jnp.float32), config.feature_num)
    if config.encoder is not None:
        x = encoder_lib.encode_windows(params["encoder"]["transformer"], x, config.encoder)
    sub = x.reshape(b * config.subwindows, config.merge, x.shape[-1])
    logits = config.head_module().apply({"params": params["head"]}, sub, train=False)
    return logits.reshape(b, config.subwindows, config.num_classes)


def window_probabilities(subwindow_logits: jax.Array) -> jax.Array:
    """[B, K, C] sub-window logits -> [B, C] window probabilities (`AGGREGATION`)."""
    return jnp.mean(jax.nn.softmax(subwindow_logits, axis=-1), axis=1)


@functools.partial(jax.jit, static_argnames="config")
def predict_batch(params, windows: jax.Array, *, config: ClassifierPipelineConfig) -> dict[str, jax.Array]:
    """One jitted batch: {"subwindow_logits" [B, K, C], "probabilities" [B, C]} of raw windows [B, S, F]."""
    logits = subwindow_logits(params, config, windows)
    return {"subwindow_logits": logits, "probabilities": window_probabilities(logits)}
