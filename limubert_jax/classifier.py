"""GRU classifier heads over LIMU-BERT embeddings (SPEC section 7).

The GRU follows PyTorch's gate equations and packs its gates in PyTorch's order (r, z, n)
along the last kernel axis, so the released classifiers convert by a transpose.

Shapes: B batch, T time steps (20 for the reference classifiers), I input width,
G GRU hidden width, C classes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from limubert_jax.model import Linear, dataclass_from_dict


@dataclasses.dataclass(frozen=True)
class GRUClassifierConfig:
    """A stack of GRUs, the last time step, optional dropout, then linear layers.

    Mirrors the reference `ClassifierGRU` config (`rnn_io`, `num_layers`, `linear_io`).
    """

    input_dim: int = 72  # I: width of each input step (the encoder's hidden size).
    rnn_hidden: tuple[int, ...] = (20, 10)  # G of each GRU module `gru<i>`.
    rnn_layers: tuple[int, ...] = (2, 1)  # stacked layers inside each GRU module.
    linear_dims: tuple[int, ...] = (6,)  # output width of each `lin<i>`; the last is C.
    activation: bool = False  # ReLU after every GRU module and linear layer.
    dropout: float = 0.5  # dropout on the last time step while training (0 disables).
    seq_len: int = 20  # T of the windows the classifier was trained on (informational).

    def __post_init__(self):
        object.__setattr__(self, "rnn_hidden", tuple(self.rnn_hidden))
        object.__setattr__(self, "rnn_layers", tuple(self.rnn_layers))
        object.__setattr__(self, "linear_dims", tuple(self.linear_dims))
        if len(self.rnn_hidden) != len(self.rnn_layers) or not self.rnn_hidden:
            raise ValueError(
                "GRUClassifierConfig: rnn_hidden and rnn_layers need the same non-zero length, "
                f"got {self.rnn_hidden} and {self.rnn_layers}"
            )
        if not self.linear_dims:
            raise ValueError("GRUClassifierConfig.linear_dims needs at least the class count")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GRUClassifierConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def num_classes(self) -> int:
        """C, the width of the last linear layer."""
        return self.linear_dims[-1]

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-friendly dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "GRUClassifierConfig":
        """Inverse of `to_dict`; unknown fields are an error."""
        return dataclass_from_dict(cls, fields)

    def to_reference_json(self) -> dict[str, Any]:
        """The config in the reference `classifier.json` field names."""
        widths = (self.input_dim,) + self.rnn_hidden
        linear_in = (self.rnn_hidden[-1],) + self.linear_dims[:-1]
        return {
            "seq_len": self.seq_len,
            "input": self.input_dim,
            "num_rnn": len(self.rnn_hidden),
            "num_layers": list(self.rnn_layers),
            "rnn_io": [[widths[i], widths[i + 1]] for i in range(len(self.rnn_hidden))],
            "num_linear": len(self.linear_dims),
            "linear_io": [[linear_in[i], self.linear_dims[i]] for i in range(len(self.linear_dims))],
            "activ": self.activation,
            "dropout": self.dropout > 0,
        }


def gru_v2(num_classes: int, input_dim: int = 72) -> GRUClassifierConfig:
    """The released classifier: GRU(I->20, 2 layers) -> GRU(20->10) -> dropout -> Linear(10->C)."""
    return GRUClassifierConfig(input_dim=input_dim, linear_dims=(num_classes,))


def gru_layer(x, kernel_ih, kernel_hh, bias_ih, bias_hh):
    """One PyTorch GRU layer over time from h0 = 0.

    x: [B, T, I]; kernel_ih: [I, 3G]; kernel_hh: [G, 3G]; biases: [3G], gates packed (r, z, n).
    Returns all hidden states [B, T, G].
    """
    g = kernel_hh.shape[0]
    # The input projection has no recurrence: all time steps in one matmul.
    gates_x = jnp.dot(x, kernel_ih) + bias_ih  # [B, T, 3G]

    def step(h, gx):
        gh = jnp.dot(h, kernel_hh) + bias_hh
        r = jax.nn.sigmoid(gx[:, :g] + gh[:, :g])
        z = jax.nn.sigmoid(gx[:, g : 2 * g] + gh[:, g : 2 * g])
        n = jnp.tanh(gx[:, 2 * g :] + r * gh[:, 2 * g :])
        h = (1.0 - z) * n + z * h
        return h, h

    h0 = jnp.zeros((x.shape[0], g), gates_x.dtype)
    _, hs = jax.lax.scan(step, h0, jnp.swapaxes(gates_x, 0, 1))
    return jnp.swapaxes(hs, 0, 1)


class GRU(nn.Module):
    """Stacked GRU layers, equivalent to PyTorch `nn.GRU(I, G, num_layers, batch_first=True)`.

    Parameters per layer k: kernel_ih_l<k> [I or G, 3G], kernel_hh_l<k> [G, 3G],
    bias_ih_l<k> [3G], bias_hh_l<k> [3G] (PyTorch's names with `weight` -> `kernel`).
    """

    hidden: int
    num_layers: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, T, I] -> hidden states of the top layer [B, T, G]."""
        g = self.hidden
        bound = 1.0 / math.sqrt(g)

        def init(key, shape, dtype=jnp.float32):
            # PyTorch initialises every GRU tensor U(-1/sqrt(G), 1/sqrt(G)).
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        for k in range(self.num_layers):
            x = gru_layer(
                x,
                self.param(f"kernel_ih_l{k}", init, (x.shape[-1], 3 * g)),
                self.param(f"kernel_hh_l{k}", init, (g, 3 * g)),
                self.param(f"bias_ih_l{k}", init, (3 * g,)),
                self.param(f"bias_hh_l{k}", init, (3 * g,)),
            )
        return x


class GRUClassifier(nn.Module):
    """The reference `ClassifierGRU`: GRUs, last time step, dropout, linear layers."""

    config: GRUClassifierConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """x: [B, T, I] embeddings -> logits [B, C].

        With `train=True` dropout is active and needs a `dropout` rng.
        """
        cfg = self.config
        h = x
        for i, (hidden, layers) in enumerate(zip(cfg.rnn_hidden, cfg.rnn_layers)):
            h = GRU(hidden, layers, name=f"gru{i}")(h)
            if cfg.activation:
                h = jax.nn.relu(h)
        h = h[:, -1, :]
        if cfg.dropout:
            h = nn.Dropout(cfg.dropout, deterministic=not train)(h)
        for i, width in enumerate(cfg.linear_dims):
            h = Linear(width, name=f"lin{i}")(h)
            if cfg.activation:
                h = jax.nn.relu(h)
        return h

    def init_params(self, rng: jax.Array) -> dict:
        """Initial parameters as a plain pytree."""
        dummy = jnp.zeros((1, self.config.seq_len, self.config.input_dim), jnp.float32)
        return self.init(rng, dummy)["params"]
