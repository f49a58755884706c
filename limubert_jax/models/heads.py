"""The convolutional and attention classifiers of the LIMU-BERT paper protocol (docs/reference.md §7);
the recurrent ones are in `recurrent`, and `registry` builds any of them by name.

Heads classify LIMU-BERT embeddings, baselines classify raw normalized IMU windows; both
take windows [B, T, D] (in the paper T = 20 sub-window steps, D = 72 embedding features for
the heads and D = 6 IMU channels for the baselines) and return logits [B, C]:

    module = registry.make_classifier("cnn1_v1", num_classes=C, input_dim=D, seq_len=T)
    params = registry.init_classifier(module, rng, seq_len=T, input_dim=D)
    logits = module.apply({"params": params}, x, train=False)
    logits = module.apply({"params": params}, x, train=True, rngs={"dropout": key})

Architectures follow the public reference code (LIMU-BERT-Public: `config/classifier.json` and
the `ClassifierGRU`, `ClassifierLSTM`, `ClassifierCNN1D`, `ClassifierCNN2D`, `ClassifierAttn`,
`BenchmarkDCNN`, `BenchmarkDeepSense` classes of `models.py`; `benchmark.py` for the
baselines). Where this module departs from it, the class docstring says so. Departures shared
by all of them:

- BatchNorm is left out (CNN2D, DCNN, DeepSense). The registry's modules carry parameters
  only, with no running statistics, and in evaluation a BatchNorm is a per-channel affine
  map that the next unpadded convolution or linear layer absorbs exactly (all but DeepSense's
  per-sensor output, whose per-filter scales its merge convolution absorbs only in part).
  What is lost is mostly BatchNorm's conditioning during training.
- `F.dropout` in the reference uses p = 0.5; so does every dropout here, active only with
  `train=True` (it then needs a `dropout` rng).
- Linear and convolution layers are initialised like PyTorch's defaults (uniform with bound
  1/sqrt(fan_in)), as the reference trains from those.

Shapes: B batch, T time steps, D input features, C classes.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from limubert_jax.models.layers import Linear, torch_uniform
from limubert_jax.runtime.precision import dot, dot_precision, einsum

DROPOUT = 0.5  # the reference's `F.dropout(h, training=...)` default rate.


# ----------------------------------------------------------------------------- helpers


def _conv(x: jax.Array, features: int, kernel: tuple[int, ...], name: str) -> jax.Array:
    """An unpadded, stride-1 convolution over the spatial axes of channels-last `x`."""
    fan_in = x.shape[-1] * math.prod(kernel)
    return nn.Conv(
        features,
        kernel,
        padding="VALID",
        precision=dot_precision(),
        kernel_init=torch_uniform(fan_in),
        bias_init=torch_uniform(fan_in),
        name=name,
    )(x)


def _valid(n: int, window: int, stride: int = 1) -> int:
    """Output length of an unpadded convolution/pooling window (0 when it does not fit)."""
    return (n - window) // stride + 1 if n >= window else 0


def _channels_first_flatten(h: jax.Array) -> jax.Array:
    """[B, *spatial, K] -> [B, K * prod(spatial)] in PyTorch's NC... flatten order."""
    return jnp.moveaxis(h, -1, 1).reshape(h.shape[0], -1)


def _check_positive(name: str, what: str, value: int, hint: str) -> None:
    if value < 1:
        raise ValueError(f"{name}: {what} shrinks to {value} ({hint})")


def _require_positive(cls_name: str, **fields: int) -> None:
    for field, value in fields.items():
        if value < 1:
            raise ValueError(f"{cls_name}.{field} must be >= 1, got {value}")


def _check_dropout(cls_name: str, rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{cls_name}.dropout must be in [0, 1), got {rate}")


# ----------------------------------------------------------------------------- CNN heads


@dataclasses.dataclass(frozen=True)
class CNN1DConfig:
    """The reference `cnn1_v1`: three Conv1d over the feature axis with the T steps as channels.

    conv_io [[T, 16, 5], [16, 8, 3], [8, 4, 3]], each conv -> ReLU -> MaxPool1d(3, stride 1);
    flatten (4 * 58 = 232 for D = 72, the reference `flat_num`) -> dropout -> Linear(-> 12) ->
    ReLU -> Linear(12 -> C) -> ReLU.

    The reference's `activ: true` puts that last ReLU on the logits, so they are non-negative
    and a class whose logit goes negative for every window gets no gradient from then on; on a toy
    problem this killed a class at Adam lr 1e-2 but not at the reference's 1e-3. Kept for
    fidelity; `relu_logits=False` drops it.
    """

    num_classes: int  # C
    seq_len: int = 20  # T, the conv input channels.
    input_dim: int = 72  # D, the conv length axis.
    conv_features: tuple[int, ...] = (16, 8, 4)
    kernel_sizes: tuple[int, ...] = (5, 3, 3)
    pool_window: int = 3
    pool_stride: int = 1
    hidden: int = 12  # width of lin0
    activation: bool = True  # ReLU after every conv layer and lin0.
    relu_logits: bool = True  # the reference's ReLU on the logits too (see above).
    dropout: float = DROPOUT

    def __post_init__(self):
        object.__setattr__(self, "conv_features", tuple(self.conv_features))
        object.__setattr__(self, "kernel_sizes", tuple(self.kernel_sizes))
        _require_positive("CNN1DConfig", num_classes=self.num_classes, seq_len=self.seq_len,
                          input_dim=self.input_dim, hidden=self.hidden)
        if len(self.conv_features) != len(self.kernel_sizes) or not self.conv_features:
            raise ValueError("CNN1DConfig: conv_features and kernel_sizes need the same non-zero length")
        _check_dropout("CNN1DConfig", self.dropout)
        _check_positive("CNN1DConfig", f"the feature axis (input_dim {self.input_dim})",
                        self.out_length, "input_dim too small for the conv/pool stack")

    @property
    def out_length(self) -> int:
        """Length of the feature axis after the conv/pool stack (58 for D = 72)."""
        n = self.input_dim
        for k in self.kernel_sizes:
            n = _valid(_valid(n, k), self.pool_window, self.pool_stride)
        return n

    @property
    def flat_num(self) -> int:
        """Input width of lin0 (the reference's `flat_num`)."""
        return self.conv_features[-1] * self.out_length


class CNN1DClassifier(nn.Module):
    """The reference `ClassifierCNN1D`; see `CNN1DConfig`. Submodules cnn<i>, lin0, lin1."""

    config: CNN1DConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """x: [B, T, D] -> logits [B, C]; `train=True` enables dropout (needs a `dropout` rng)."""
        cfg = self.config
        act = jax.nn.relu if cfg.activation else (lambda v: v)
        # The reference feeds [B, T, D] to Conv1d(T, ...): steps are channels, D is the length.
        h = jnp.swapaxes(x, 1, 2)  # [B, D, T], channels last
        for i, (features, k) in enumerate(zip(cfg.conv_features, cfg.kernel_sizes)):
            h = act(_conv(h, features, (k,), f"cnn{i}"))
            h = nn.max_pool(h, (cfg.pool_window,), strides=(cfg.pool_stride,), padding="VALID")
        h = _channels_first_flatten(h)  # [B, flat_num]
        if cfg.dropout:
            h = nn.Dropout(cfg.dropout, deterministic=not train)(h)
        h = act(Linear(cfg.hidden, name="lin0")(h))
        h = Linear(cfg.num_classes, name="lin1")(h)
        return jax.nn.relu(h) if cfg.relu_logits else h


@dataclasses.dataclass(frozen=True)
class CNN2DConfig:
    """The reference `cnn2_v1`: three Conv2d over the [T, D] plane (one input channel).

    conv_io [[1, 16, 3], [16, 8, 3], [8, 4, 3]], each conv -> MaxPool2d(3, stride (1, 2))
    (-> BatchNorm2d, left out); flatten (4 * 8 * 6 = 192 for T = 20, D = 72, the reference
    `flat_num`) -> dropout -> Linear(-> 12) -> Linear(12 -> C). `activ: false`: no ReLU, the
    max-pools are the only non-linearity.
    """

    num_classes: int  # C
    seq_len: int = 20  # T, the first spatial axis.
    input_dim: int = 72  # D, the second spatial axis.
    conv_features: tuple[int, ...] = (16, 8, 4)
    kernel_size: int = 3  # square kernels
    pool_window: int = 3  # square windows
    pool_strides: tuple[int, int] = (1, 2)  # (time, feature)
    hidden: int = 12  # width of lin0
    activation: bool = False  # ReLU after every conv and linear layer.
    dropout: float = DROPOUT

    def __post_init__(self):
        object.__setattr__(self, "conv_features", tuple(self.conv_features))
        object.__setattr__(self, "pool_strides", tuple(self.pool_strides))
        _require_positive("CNN2DConfig", num_classes=self.num_classes, seq_len=self.seq_len,
                          input_dim=self.input_dim, hidden=self.hidden)
        if not self.conv_features:
            raise ValueError("CNN2DConfig.conv_features needs at least one conv")
        _check_dropout("CNN2DConfig", self.dropout)
        t, d = self.out_shape
        _check_positive("CNN2DConfig", f"the time axis (seq_len {self.seq_len})", t,
                        "seq_len too small for the conv/pool stack")
        _check_positive("CNN2DConfig", f"the feature axis (input_dim {self.input_dim})", d,
                        "input_dim too small for the conv/pool stack")

    @property
    def out_shape(self) -> tuple[int, int]:
        """(time, feature) extent after the conv/pool stack ((8, 6) for T = 20, D = 72)."""
        t, d = self.seq_len, self.input_dim
        for _ in self.conv_features:
            t = _valid(_valid(t, self.kernel_size), self.pool_window, self.pool_strides[0])
            d = _valid(_valid(d, self.kernel_size), self.pool_window, self.pool_strides[1])
        return t, d

    @property
    def flat_num(self) -> int:
        """Input width of lin0 (the reference's `flat_num`)."""
        t, d = self.out_shape
        return self.conv_features[-1] * t * d


class CNN2DClassifier(nn.Module):
    """The reference `ClassifierCNN2D`; see `CNN2DConfig`. Submodules cnn<i>, lin0, lin1."""

    config: CNN2DConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """x: [B, T, D] -> logits [B, C]; `train=True` enables dropout (needs a `dropout` rng)."""
        cfg = self.config
        act = jax.nn.relu if cfg.activation else (lambda v: v)
        h = x[..., None]  # [B, T, D, 1]
        window = (cfg.pool_window, cfg.pool_window)
        for i, features in enumerate(cfg.conv_features):
            h = act(_conv(h, features, (cfg.kernel_size, cfg.kernel_size), f"cnn{i}"))
            h = nn.max_pool(h, window, strides=cfg.pool_strides, padding="VALID")
        h = _channels_first_flatten(h)  # [B, flat_num]
        if cfg.dropout:
            h = nn.Dropout(cfg.dropout, deterministic=not train)(h)
        h = act(Linear(cfg.hidden, name="lin0")(h))
        return act(Linear(cfg.num_classes, name="lin1")(h))


# ----------------------------------------------------------------------------- attention head


@dataclasses.dataclass(frozen=True)
class AttnConfig:
    """The reference `attn_v1`: learned positions, one multi-head self-attention, one linear.

    x + pos_embed -> proj_{q,k,v}: Linear(D -> 36) -> MultiheadAttention(36, 4 heads, with its
    own in/out projections) -> dropout -> flatten (T * 36 = 720, the reference's lin0 input)
    -> Linear(-> C); `activ: false`.
    """

    num_classes: int  # C
    seq_len: int = 20  # T, rows of the learned position table.
    input_dim: int = 72  # D
    hidden: int = 36  # `atten_hidden`
    num_heads: int = 4  # `num_head`
    activation: bool = False  # ReLU after the linear layer.
    dropout: float = DROPOUT

    def __post_init__(self):
        _require_positive("AttnConfig", num_classes=self.num_classes, seq_len=self.seq_len,
                          input_dim=self.input_dim, hidden=self.hidden, num_heads=self.num_heads)
        if self.hidden % self.num_heads:
            raise ValueError(f"AttnConfig.hidden ({self.hidden}) must divide by num_heads ({self.num_heads})")
        _check_dropout("AttnConfig", self.dropout)

    @property
    def flat_num(self) -> int:
        """Input width of lin0."""
        return self.seq_len * self.hidden


class MultiheadAttention(nn.Module):
    """Self-attention like PyTorch `nn.MultiheadAttention(E, heads)` called as attn(q, k, v).

    Parameters: in_proj_kernel [E, 3E] (q, k, v packed), in_proj_bias [3E], out_proj.
    """

    num_heads: int

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """q, k, v: [B, T, E] -> [B, T, E], attending over T."""
        b, t, e = q.shape
        w = self.param("in_proj_kernel", nn.initializers.xavier_uniform(), (e, 3 * e))
        bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * e,))
        head = e // self.num_heads

        def split(x, i):  # [B, T, E] -> [B, heads, T, head]
            y = dot(x, w[:, i * e : (i + 1) * e]) + bias[i * e : (i + 1) * e]
            return y.reshape(b, t, self.num_heads, head).transpose(0, 2, 1, 3)

        qh, kh, vh = split(q, 0), split(k, 1), split(v, 2)
        scores = einsum("bhqd,bhkd->bhqk", qh, kh) / math.sqrt(head)
        out = einsum("bhqk,bhkd->bhqd", jax.nn.softmax(scores, axis=-1), vh)
        out = out.transpose(0, 2, 1, 3).reshape(b, t, e)
        return Linear(e, name="out_proj")(out)


class AttnClassifier(nn.Module):
    """The reference `ClassifierAttn`; see `AttnConfig`. Submodules proj_q/k/v, attn, lin0.

    Departure: the reference calls `nn.MultiheadAttention` (sequence-first by default) on
    batch-first [B, T, E] tensors, so it attends across the *batch* at each step and its
    predictions depend on the other windows in the batch. Here attention runs over the T steps
    of each window, which is what the head's design (position table, flatten of T * 36) implies.
    """

    config: AttnConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """x: [B, T, D] -> logits [B, C]; `train=True` enables dropout (needs a `dropout` rng)."""
        cfg = self.config
        if x.shape[1] != cfg.seq_len:
            raise ValueError(f"AttnClassifier: windows of {x.shape[1]} steps, built for {cfg.seq_len}")
        # nn.Embedding(T, D) of the reference: initialised N(0, 1).
        pos = self.param("pos_embed", nn.initializers.normal(1.0), (cfg.seq_len, x.shape[-1]))
        h = x + pos
        q = Linear(cfg.hidden, name="proj_q")(h)
        k = Linear(cfg.hidden, name="proj_k")(h)
        v = Linear(cfg.hidden, name="proj_v")(h)
        h = MultiheadAttention(cfg.num_heads, name="attn")(q, k, v)
        if cfg.dropout:
            h = nn.Dropout(cfg.dropout, deterministic=not train)(h)
        h = Linear(cfg.num_classes, name="lin0")(h.reshape(h.shape[0], -1))
        return jax.nn.relu(h) if cfg.activation else h


# ----------------------------------------------------------------------------- baselines


@dataclasses.dataclass(frozen=True)
class DCNNConfig:
    """The reference `BenchmarkDCNN` (`dcnn_v1`), over raw windows [B, T, D].

    Conv2d(1 -> 50, (5, 1)) -> relu(tanh) -> MaxPool(2, 1) -> Conv2d(50 -> 40, (5, 1)) ->
    relu(tanh) -> MaxPool(2, 1) -> Conv2d(40 -> 20, (2, 1) if T <= 20 else (3, 1)) ->
    relu(tanh) -> per conv channel: Linear(T' * D -> 400) (T' = 1 for T = 20, the reference's
    `flat_num`), summed over the 20 channels -> relu(tanh) -> Linear(400 -> C). The kernels
    span time only, so every IMU axis is filtered alike; axes meet first in lin1. (The
    reference's local response normalisation is a no-op there; BatchNorm left out, see the
    module docstring.) No dropout.
    """

    num_classes: int  # C
    seq_len: int = 20  # T
    input_dim: int = 6  # D
    conv_features: tuple[int, ...] = (50, 40, 20)
    kernel_sizes: tuple[int, ...] = (5, 5, 2)  # along time; the reference's last is 3 when T > 20
    pool: int = 2  # max-pool window and stride along time, after the first two convs
    hidden: int = 400  # width of lin1

    def __post_init__(self):
        object.__setattr__(self, "conv_features", tuple(self.conv_features))
        object.__setattr__(self, "kernel_sizes", tuple(self.kernel_sizes))
        _require_positive("DCNNConfig", num_classes=self.num_classes, seq_len=self.seq_len,
                          input_dim=self.input_dim, hidden=self.hidden, pool=self.pool)
        if len(self.conv_features) != len(self.kernel_sizes) or not self.conv_features:
            raise ValueError("DCNNConfig: conv_features and kernel_sizes need the same non-zero length")
        _check_positive("DCNNConfig", f"the time axis (seq_len {self.seq_len})", self.out_length,
                        "seq_len too small for the conv/pool stack; the reference needs T = 20 or T >= 24")

    @classmethod
    def reference(cls, num_classes: int, seq_len: int, input_dim: int) -> "DCNNConfig":
        """The reference's choice of the last kernel: 2 steps for T <= 20, else 3."""
        return cls(num_classes, seq_len, input_dim, kernel_sizes=(5, 5, 2 if seq_len <= 20 else 3))

    @property
    def out_length(self) -> int:
        """Time steps left after the conv/pool stack (1 for T = 20)."""
        n = self.seq_len
        for i, k in enumerate(self.kernel_sizes):
            n = _valid(n, k)
            if i < len(self.kernel_sizes) - 1:
                n = _valid(n, self.pool, self.pool)
        return n


class DCNN(nn.Module):
    """The reference `BenchmarkDCNN`; see `DCNNConfig`. Submodules conv<i>, lin1, lin2."""

    config: DCNNConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """x: [B, T, D] raw normalized IMU -> logits [B, C]. No dropout: `train` is ignored."""
        del train
        cfg = self.config
        h = x[..., None]  # [B, T, D, 1]
        last = len(cfg.conv_features) - 1
        for i, (features, k) in enumerate(zip(cfg.conv_features, cfg.kernel_sizes)):
            h = jax.nn.relu(jnp.tanh(_conv(h, features, (k, 1), f"conv{i + 1}")))
            if i < last:
                h = nn.max_pool(h, (cfg.pool, 1), strides=(cfg.pool, 1), padding="VALID")
        b, t, d, k = h.shape
        h = jnp.transpose(h, (0, 3, 1, 2)).reshape(b, k, t * d)  # [B, channels, T' * D]
        h = Linear(cfg.hidden, name="lin1")(h).sum(axis=1)
        h = jax.nn.relu(jnp.tanh(h))
        return Linear(cfg.num_classes, name="lin2")(h)


@dataclasses.dataclass(frozen=True)
class DeepSenseConfig:
    """The reference `BenchmarkDeepSense` (`deepsense_v1`), over raw windows [B, T, D].

    Input features (the reference's `FFTDataset`): the FFT over time with `fft_points` = 10
    points — numpy's `fft(x, n=10)`, i.e. of the first 10 of the 20 steps — as magnitude rows
    then phase rows: [B, 2 * fft_points, D] (`fft_points = 0` feeds the time-domain window).
    Per sensor (3 axes each): Conv2d(1 -> 8, (2, 3)) -> ReLU -> Conv2d(8 -> 8, (3, 1)) ->
    ReLU -> Conv2d(8 -> 8, (2, 1)) -> ReLU, flattened channel-major; the sensors side by side
    -> Conv2d(1 -> 8, (2, sensors)) -> ReLU -> Conv2d(8 -> 8, (3, 1)) -> ReLU ->
    Conv2d(8 -> 8, (2, 1)) -> ReLU -> flatten (992 for 20 rows, the reference's `flat_num`)
    -> Linear(-> 12) -> ReLU -> Linear(12 -> C). BatchNorm after each conv left out (module
    docstring). No dropout. This is the reference's small benchmark version, not the full
    DeepSense of Yao et al. (no recurrent layers).
    """

    num_classes: int  # C
    seq_len: int = 20  # T
    input_dim: int = 6  # D, a whole number of 3-axis sensors
    fft_points: int = 10  # 0: no FFT
    num_filters: int = 8
    axes_per_sensor: int = 3
    sensor_kernels: tuple[int, ...] = (2, 3, 2)  # time extents of the per-sensor convs
    merge_kernels: tuple[int, ...] = (2, 3, 2)  # time extents of the convs over all sensors
    hidden: int = 12  # width of lin1

    def __post_init__(self):
        object.__setattr__(self, "sensor_kernels", tuple(self.sensor_kernels))
        object.__setattr__(self, "merge_kernels", tuple(self.merge_kernels))
        _require_positive("DeepSenseConfig", num_classes=self.num_classes, seq_len=self.seq_len,
                          input_dim=self.input_dim, num_filters=self.num_filters,
                          axes_per_sensor=self.axes_per_sensor, hidden=self.hidden)
        if self.fft_points < 0:
            raise ValueError(f"DeepSenseConfig.fft_points must be >= 0, got {self.fft_points}")
        if self.input_dim % self.axes_per_sensor:
            raise ValueError(
                f"DeepSenseConfig: input_dim ({self.input_dim}) must be a multiple of "
                f"axes_per_sensor ({self.axes_per_sensor}), one group per sensor"
            )
        if not self.sensor_kernels or not self.merge_kernels:
            raise ValueError("DeepSenseConfig: sensor_kernels and merge_kernels need at least one conv")
        _check_positive("DeepSenseConfig", f"the time axis (seq_len {self.seq_len})", self.out_length,
                        "too few input rows for the conv stacks")

    @classmethod
    def reference(cls, num_classes: int, seq_len: int, input_dim: int) -> "DeepSenseConfig":
        """FFT points scaled with the window (10 of 20 steps in the reference), so 2n rows ~ T."""
        return cls(num_classes, seq_len, input_dim, fft_points=max(seq_len // 2, 1))

    @property
    def num_sensors(self) -> int:
        return self.input_dim // self.axes_per_sensor

    @property
    def input_rows(self) -> int:
        """Rows of the network's input: 2 * fft_points with the FFT, else T."""
        return 2 * self.fft_points if self.fft_points else self.seq_len

    @property
    def out_length(self) -> int:
        """Rows left after both conv stacks (124 for 20 input rows)."""
        n = self.input_rows
        for k in self.sensor_kernels:
            n = _valid(n, k)
        n *= self.num_filters  # channel-major flatten of each sensor's features
        for k in self.merge_kernels:
            n = _valid(n, k)
        return n

    @property
    def flat_num(self) -> int:
        """Input width of lin1 (the reference's `flat_num`)."""
        return self.num_filters * self.out_length


def fft_features(x: jax.Array, points: int) -> jax.Array:
    """The reference DeepSense input: x [B, T, D] -> [B, 2 * points, D] (|FFT| rows, then phase).

    Like numpy's `fft(x, n=points, axis=time)`: the first `points` steps (zero-padded if T is
    shorter), no gradient needed (the input is data).
    """
    f = jnp.fft.fft(x, n=points, axis=1)
    return jnp.concatenate([jnp.abs(f), jnp.angle(f)], axis=1).astype(x.dtype)


class DeepSense(nn.Module):
    """The reference `BenchmarkDeepSense`; see `DeepSenseConfig`.

    Submodules conv<s>_<j> (sensor s, layer j = 1..3), conv1..3, lin1, lin2.
    """

    config: DeepSenseConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """x: [B, T, D] raw normalized IMU -> logits [B, C]. No dropout: `train` is ignored."""
        del train
        cfg = self.config
        if cfg.fft_points:
            x = fft_features(x, cfg.fft_points)
        b, rows, _ = x.shape
        h = x.reshape(b, rows, cfg.num_sensors, cfg.axes_per_sensor)
        per_sensor = []
        for s in range(cfg.num_sensors):  # a handful of sensors, each with its own weights
            t = h[:, :, s, :, None]  # [B, rows, axes, 1]
            for j, k in enumerate(cfg.sensor_kernels):
                width = cfg.axes_per_sensor if j == 0 else 1  # the first conv spans the 3 axes
                t = jax.nn.relu(_conv(t, cfg.num_filters, (k, width), f"conv{s}_{j + 1}"))
            # The reference flattens NCHW (filter-major) and convolves that as one long axis.
            per_sensor.append(_channels_first_flatten(t))
        h = jnp.stack(per_sensor, axis=-1)[..., None]  # [B, filters * rows', sensors, 1]
        for j, k in enumerate(cfg.merge_kernels):
            width = cfg.num_sensors if j == 0 else 1  # the first conv merges the sensors
            h = jax.nn.relu(_conv(h, cfg.num_filters, (k, width), f"conv{j + 1}"))
        h = _channels_first_flatten(h)  # [B, flat_num]
        h = jax.nn.relu(Linear(cfg.hidden, name="lin1")(h))
        return Linear(cfg.num_classes, name="lin2")(h)
