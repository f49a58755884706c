"""GRU classifier heads over LIMU-BERT embeddings (docs/reference.md §7).

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

from limubert_jax.models.layers import Linear, dataclass_from_dict
from limubert_jax.runtime.precision import dot
from limubert_jax.runtime.xla_options import compile_once


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


def over_time(step, carry, xs, *, unroll: bool = False):
    """`step(carry, x_t) -> (carry, y_t)` over the leading (time) axis of `xs`; returns the
    stacked y [T, ...].

    `unroll=True` traces every step instead of a `lax.scan`. On XLA:CPU a while loop's body
    runs these small recurrent steps about 2x slower than the same ops unrolled, so inference
    unrolls; training keeps the loop, whose unrolled gradient compiles for tens of seconds.
    """
    if not unroll:
        return jax.lax.scan(step, carry, xs)[1]
    ys = []
    for t in range(xs.shape[0]):
        carry, y = step(carry, xs[t])
        ys.append(y)
    return jnp.stack(ys)


def _gru_cell(h, gx, kernel_hh, bias_hh):
    """PyTorch's GRU cell; gx = W_i x + b_i [B, 3G], gates packed (r, z, n)."""
    g = kernel_hh.shape[0]
    gh = dot(h, kernel_hh) + bias_hh
    r = jax.nn.sigmoid(gx[:, :g] + gh[:, :g])
    z = jax.nn.sigmoid(gx[:, g : 2 * g] + gh[:, g : 2 * g])
    n = jnp.tanh(gx[:, 2 * g :] + r * gh[:, 2 * g :])
    h = (1.0 - z) * n + z * h
    return h, h


def _lstm_cell(carry, gx, kernel_hh, bias_hh):
    """PyTorch's LSTM cell; gx = W_i x + b_i [B, 4G], gates packed (i, f, g, o):
    c' = f * c + i * g, h' = o * tanh(c')."""
    h, c = carry
    g = kernel_hh.shape[0]
    gates = gx + (dot(h, kernel_hh) + bias_hh)
    i = jax.nn.sigmoid(gates[:, :g])
    f = jax.nn.sigmoid(gates[:, g : 2 * g])
    cand = jnp.tanh(gates[:, 2 * g : 3 * g])
    o = jax.nn.sigmoid(gates[:, 3 * g :])
    c = f * c + i * cand
    h = o * jnp.tanh(c)
    return (h, c), h


# cell name -> (gates per unit, cell function, initial state of [B, G] zeros).
CELLS = {
    "gru": (3, _gru_cell, lambda zeros: zeros),
    "lstm": (4, _lstm_cell, lambda zeros: (zeros, zeros)),
}


@dataclasses.dataclass(frozen=True)
class RecurrentLayer:
    """One PyTorch GRU/LSTM layer's tensors (kernels transposed: [in, gates * G], [G, gates * G])
    and whether a ReLU follows it."""

    kernel_ih: jax.Array
    kernel_hh: jax.Array
    bias_ih: jax.Array
    bias_hh: jax.Array
    relu: bool = False


def stacked_rnn(x: jax.Array, layers: list[RecurrentLayer], cell: str, *, unroll: bool = False) -> jax.Array:
    """Stacked PyTorch GRU or LSTM layers over time from zero states.

    x: [B, T, I] -> hidden states of the top layer [B, T, G] (after its ReLU, if any).
    Layer by layer: each layer's input projection has no recurrence and runs for all steps as
    one matmul (running all layers inside one time loop instead measured no faster).
    `unroll`: see `over_time`.
    """
    _, cell_fn, initial = CELLS[cell]
    h = x
    for layer in layers:
        gates_x = dot(h, layer.kernel_ih) + layer.bias_ih  # [B, T, gates * G]

        def step(state, gx, layer=layer):
            return cell_fn(state, gx, layer.kernel_hh, layer.bias_hh)

        zeros = jnp.zeros((x.shape[0], layer.kernel_hh.shape[0]), gates_x.dtype)
        h = jnp.swapaxes(over_time(step, initial(zeros), jnp.swapaxes(gates_x, 0, 1), unroll=unroll), 0, 1)
        if layer.relu:
            h = jax.nn.relu(h)
    return h


class RecurrentWeights(nn.Module):
    """The tensors of PyTorch `nn.GRU` / `nn.LSTM(I, G, num_layers)`, declared, not run.

    Parameters per layer k (PyTorch's names with `weight` -> `kernel`, transposed):
    kernel_ih_l<k> [I or G, gates * G], kernel_hh_l<k> [G, gates * G], bias_ih_l<k> and
    bias_hh_l<k> [gates * G], all initialised U(-1/sqrt(G), 1/sqrt(G)) as PyTorch does.
    A classifier collects the layers of all its modules and runs them with `stacked_rnn`.
    """

    hidden: int
    num_layers: int = 1
    gates: int = 3

    @nn.compact
    def __call__(self, input_dim: int, relu: bool = False) -> list[RecurrentLayer]:
        """The layers, bottom first; `relu` marks the last one (a ReLU after the module)."""
        g, n = self.hidden, self.gates * self.hidden
        bound = 1.0 / math.sqrt(g)

        def init(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        layers = []
        for k in range(self.num_layers):
            layers.append(RecurrentLayer(
                self.param(f"kernel_ih_l{k}", init, (input_dim if k == 0 else g, n)),
                self.param(f"kernel_hh_l{k}", init, (g, n)),
                self.param(f"bias_ih_l{k}", init, (n,)),
                self.param(f"bias_hh_l{k}", init, (n,)),
                relu=relu and k == self.num_layers - 1,
            ))
        return layers


class RecurrentClassifier(nn.Module):
    """Stacked recurrent modules, the last time step, dropout, linear layers: the reference
    `ClassifierGRU` (cell "gru", modules `gru<i>`) and `ClassifierLSTM` (cell "lstm",
    modules `lstm<i>`), sharing one config schema."""

    config: GRUClassifierConfig
    cell: str = "gru"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """x: [B, T, I] embeddings -> logits [B, C].

        With `train=True` dropout is active and needs a `dropout` rng. Inference unrolls the
        time loop (see `over_time`).
        """
        cfg = self.config
        gates = CELLS[self.cell][0]
        layers, width = [], x.shape[-1]
        for i, (hidden, num_layers) in enumerate(zip(cfg.rnn_hidden, cfg.rnn_layers)):
            module = RecurrentWeights(hidden, num_layers, gates, name=f"{self.cell}{i}")
            layers += module(width, relu=cfg.activation)
            width = hidden
        h = stacked_rnn(x, layers, self.cell, unroll=not train)[:, -1, :]
        if cfg.dropout:
            h = nn.Dropout(cfg.dropout, deterministic=not train)(h)
        for i, width in enumerate(cfg.linear_dims):
            h = Linear(width, name=f"lin{i}")(h)
            if cfg.activation:
                h = jax.nn.relu(h)
        return h

    def init_params(self, rng: jax.Array) -> dict:
        """Initial parameters as a plain pytree, compiled as one program (see `registry.init_classifier`)."""
        cfg = self.config

        def init(key):
            return self.init(key, jnp.zeros((1, cfg.seq_len, cfg.input_dim), jnp.float32))["params"]

        return compile_once(init)(rng)


class GRUClassifier(RecurrentClassifier):
    """The reference `ClassifierGRU`; `GRUClassifier(gru_v2(C))` is the released classifier."""

    cell: str = "gru"


class LSTMClassifier(RecurrentClassifier):
    """The reference `ClassifierLSTM` (`lstm_v1`): LSTMs, last time step, dropout, linear layers.

    `lstm_v1`: LSTM(D -> 20, 2 stacked layers) -> LSTM(20 -> 10) -> last step -> dropout 0.5
    -> Linear(10 -> C); no activations. The reference shares `ClassifierGRU`'s config schema,
    so this takes a `GRUClassifierConfig`; submodules are `lstm<i>` and `lin<i>` as in the
    reference state dict (the reference also builds `bn<i>` layers it never uses; left out).
    """

    cell: str = "lstm"
