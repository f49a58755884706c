"""The downstream classifier registry (`limubert_jax.models.heads`): names, shapes, sizes, the GRUs'
identity with the released classifier, dropout, determinism and a short training run.

Shapes and sizes are checked abstractly (`jax.eval_shape`: nothing is compiled). Each model is
compiled once, as one program that initialises it, trains it with Adam on a small synthetic
problem for a given number of steps and evaluates it (`_program`); the tests share its runs.

Compile time, not run time, is what these tiny models cost on CPU, and random-number
generation is a large share of it (Flax derives a key per parameter). The training programs
therefore draw from `_HASH_PRNG`, a counter-based hash PRNG that compiles to a kernel or two
per draw, instead of threefry or RBG (dozens of kernels per parameter), and are compiled with
XLA:CPU's older, faster-compiling emitters (`_fast_compile_options`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend import random as jex_random
from jax.flatten_util import ravel_pytree

from limubert_jax.io.state_dict import gru_classifier_shapes, params_to_state_dict
from limubert_jax.models import heads, registry
from limubert_jax.models.recurrent import GRUClassifier, gru_v2

ALL = registry.HEADS + registry.BASELINES
# Models whose training programs run outside the fast subset (the slowest to compile); the
# fast one keeps a recurrent head with dropout, an attention and a CNN head, a CNN baseline.
SLOW = {"gru_v1", "lstm_v1", "cnn2_v1", "deepsense"}
# Their convolutions run several times slower compiled without backend optimisation.
OPTIMIZED = {"dcnn", "cnn2_v1"}
TRAINED = [pytest.param(name, marks=[*([pytest.mark.slow] if name in SLOW else []),
                                     *([pytest.mark.optimized] if name in OPTIMIZED else [])])
           for name in ALL]
WITH_DROPOUT = {"gru_v2", "lstm_v1", "cnn1_v1", "cnn2_v1", "attn_v1", "rgru"}

# (seq_len, input width of the heads, input width of the baselines, classes): the paper's
# sizes (20-step sub-windows of 72-wide embeddings / of 6 IMU channels) and another setting.
SETTINGS = [(20, 72, 6, 6), (32, 40, 9, 3)]


def _dim(name: str, head_dim: int, base_dim: int) -> int:
    return head_dim if name in registry.HEADS else base_dim


def _num_params(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _abstract_params(module, seq_len, input_dim):
    return jax.eval_shape(
        lambda key: registry.init_classifier(module, key, seq_len=seq_len, input_dim=input_dim),
        jax.random.key(0),
    )


# ----------------------------------------------------------------------------- registry


def test_names():
    assert registry.HEADS == ("gru_v1", "gru_v2", "lstm_v1", "cnn1_v1", "cnn2_v1", "attn_v1")
    assert registry.BASELINES == ("dcnn", "deepsense", "rgru")


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown classifier 'gru_v3'") as err:
        registry.make_classifier("gru_v3", num_classes=3, input_dim=72, seq_len=20)
    for name in ALL:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "name, seq_len, input_dim",
    [("cnn2_v1", 12, 72), ("cnn2_v1", 20, 20), ("cnn1_v1", 20, 10), ("dcnn", 22, 6),
     ("dcnn", 16, 6), ("deepsense", 20, 7), ("deepsense", 4, 6)],
)
def test_sizes_the_architecture_cannot_take_are_rejected(name, seq_len, input_dim):
    with pytest.raises(ValueError, match="seq_len|input_dim"):
        registry.make_classifier(name, num_classes=3, input_dim=input_dim, seq_len=seq_len)


def test_sizes_must_be_positive_integers():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_classes"):
            registry.make_classifier("gru_v1", num_classes=bad, input_dim=72, seq_len=20)
    module = registry.make_classifier("cnn1_v1", num_classes=np.int64(3), input_dim=np.int32(72), seq_len=20)
    assert module.config.num_classes == 3 and type(module.config.num_classes) is int


# ----------------------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"T{s[0]}-D{s[1]}or{s[2]}-C{s[3]}")
@pytest.mark.parametrize("name", ALL)
def test_maps_windows_to_logits(name, setting):
    seq_len, head_dim, base_dim, classes = setting
    dim = _dim(name, head_dim, base_dim)
    module = registry.make_classifier(name, num_classes=classes, input_dim=dim, seq_len=seq_len)
    params = _abstract_params(module, seq_len, dim)
    x = jax.ShapeDtypeStruct((5, seq_len, dim), jnp.float32)
    for train in (False, True):
        out = jax.eval_shape(
            lambda p, x: module.apply({"params": p}, x, train=train, rngs={"dropout": jax.random.key(1)}),
            params, x)
        assert out.shape == (5, classes) and out.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
    assert 0 < _num_params(params) < 50_000


def test_attention_head_needs_the_window_length_it_was_built_for():
    module = registry.make_classifier("attn_v1", num_classes=3, input_dim=72, seq_len=20)
    params = _abstract_params(module, 20, 72)
    with pytest.raises(ValueError, match="10 steps, built for 20"):
        jax.eval_shape(lambda p, x: module.apply({"params": p}, x), params,
                       jax.ShapeDtypeStruct((2, 10, 72), jnp.float32))


def _rnn_count(input_dim, classes, gates):
    """Parameters of RNN(I -> 20, 2 layers) -> RNN(20 -> 10) -> Linear(10 -> C)."""
    def layer(n_in, hidden):
        return gates * hidden * (n_in + hidden + 2)
    return layer(input_dim, 20) + layer(20, 20) + layer(20, 10) + 10 * classes + classes


# Parameter counts at the paper's sizes (T 20, heads D 72, baselines D 6, C 6), written out
# from the reference architectures. The first linear layers' input widths are the reference
# config's `flat_num` / `linear_io` values: 232, 192, 720, 6 * 1 and 992.
REFERENCE_COUNTS = {
    "gru_v1": _rnn_count(72, 6, 3),
    "gru_v2": _rnn_count(72, 6, 3),
    "lstm_v1": _rnn_count(72, 6, 4),
    "cnn1_v1": (20 * 5 * 16 + 16) + (16 * 3 * 8 + 8) + (8 * 3 * 4 + 4) + (232 * 12 + 12) + (12 * 6 + 6),
    "cnn2_v1": (9 * 16 + 16) + (16 * 9 * 8 + 8) + (8 * 9 * 4 + 4) + (192 * 12 + 12) + (12 * 6 + 6),
    "attn_v1": 20 * 72 + 3 * (72 * 36 + 36) + (36 * 108 + 108) + (36 * 36 + 36) + (720 * 6 + 6),
    "dcnn": (5 * 50 + 50) + (50 * 5 * 40 + 40) + (40 * 2 * 20 + 20) + (6 * 400 + 400) + (400 * 6 + 6),
    "deepsense": 2 * ((2 * 3 * 8 + 8) + (8 * 3 * 8 + 8) + (8 * 2 * 8 + 8))
    + (2 * 2 * 8 + 8) + (8 * 3 * 8 + 8) + (8 * 2 * 8 + 8) + (992 * 12 + 12) + (12 * 6 + 6),
    "rgru": _rnn_count(6, 6, 3),
}


@pytest.mark.parametrize("name", ALL)
def test_parameter_counts_match_the_reference_architectures(name):
    dim = _dim(name, 72, 6)
    module = registry.make_classifier(name, num_classes=6, input_dim=dim, seq_len=20)
    assert _num_params(_abstract_params(module, 20, dim)) == REFERENCE_COUNTS[name]


def test_reference_flat_widths():
    assert heads.CNN1DConfig(6, 20, 72).flat_num == 232
    assert heads.CNN2DConfig(6, 20, 72).flat_num == 192
    assert heads.AttnConfig(6, 20, 72).flat_num == 720
    assert heads.DeepSenseConfig.reference(6, 20, 6).flat_num == 992
    assert heads.DCNNConfig.reference(6, 20, 6).out_length == 1
    assert heads.DCNNConfig.reference(6, 40, 6).kernel_sizes[-1] == 3


# ----------------------------------------------------------------------------- the RNNs


def test_gru_v2_is_the_released_classifier():
    module = registry.make_classifier("gru_v2", num_classes=6, input_dim=72, seq_len=20)
    assert module == GRUClassifier(gru_v2(6, 72))
    zeros = jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, np.float32),
                                   _abstract_params(module, 20, 72))
    shapes = {key: value.shape for key, value in params_to_state_dict(zeros).items()}
    assert shapes == gru_classifier_shapes(gru_v2(6, 72))


def test_gru_v1_and_rgru_are_gru_classifiers():
    gru_v1 = registry.make_classifier("gru_v1", num_classes=4, input_dim=72, seq_len=20)
    assert gru_v1 == GRUClassifier(dataclasses.replace(gru_v2(4, 72), dropout=0.0))
    rgru = registry.make_classifier("rgru", num_classes=4, input_dim=6, seq_len=20)
    assert rgru == GRUClassifier(gru_v2(4, 6))


def test_lstm_follows_the_pytorch_gate_equations():
    """The scanned LSTM layer against PyTorch's equations (gates i, f, g, o) step by step."""
    rng = np.random.default_rng(0)
    b, t, i, g = 2, 5, 3, 4
    x = rng.normal(size=(b, t, i)).astype(np.float32)
    w_ih, w_hh = (rng.normal(size=(n, 4 * g)).astype(np.float32) for n in (i, g))
    b_ih, b_hh = (rng.normal(size=4 * g).astype(np.float32) for _ in range(2))
    from recurrent_layers import lstm_layer

    got = np.asarray(jax.jit(lstm_layer)(x, w_ih, w_hh, b_ih, b_hh))

    def sigmoid(v):
        return 1.0 / (1.0 + np.exp(-v))

    h = np.zeros((b, g), np.float32)
    c = np.zeros((b, g), np.float32)
    for step in range(t):
        z = x[:, step] @ w_ih + b_ih + h @ w_hh + b_hh
        gate_i, gate_f, gate_o = sigmoid(z[:, :g]), sigmoid(z[:, g:2 * g]), sigmoid(z[:, 3 * g:])
        c = gate_f * c + gate_i * np.tanh(z[:, 2 * g:3 * g])
        h = gate_o * np.tanh(c)
        np.testing.assert_allclose(got[:, step], h, atol=1e-5)


def test_deepsense_fft_features_match_numpy():
    x = np.random.default_rng(1).normal(size=(2, 20, 6)).astype(np.float32)
    got = np.asarray(jax.jit(heads.fft_features, static_argnums=1)(x, 10))
    f = np.fft.fft(x, n=10, axis=1)  # the reference's FFTDataset: first 10 steps
    magnitude, phase = got[:, :10], got[:, 10:]
    np.testing.assert_allclose(magnitude, np.abs(f), atol=1e-4)
    # Phases compared on the circle: a real bin's phase may be pi on one side, -pi on the other.
    np.testing.assert_allclose(magnitude * np.exp(1j * phase), f, atol=1e-4)


# ----------------------------------------------------------------------------- training


def _mix(x):
    """murmur3's 32-bit finaliser: a cheap bijective scramble of uint32 values."""
    x = x ^ (x >> 16)
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _hash_bits(key, bit_width, shape):
    """Bits i of a draw: a hash of (i, key). Float32 draws need 32 bits, nothing here more."""
    if bit_width > 32:
        raise NotImplementedError("the test PRNG draws at most 32 bits")
    counter = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    bits = _mix(_mix(counter ^ key[0]) + key[1])
    return bits if bit_width == 32 else bits.astype(jnp.dtype(f"uint{bit_width}"))


def _hash_seed(seed):
    return _mix(jnp.asarray(seed).astype(jnp.uint32) ^ np.array([0x9E3779B9, 0x7F4A7C15], np.uint32))


def _hash_fold_in(key, data):
    return _mix(key ^ _mix(jnp.asarray(data).astype(jnp.uint32) + np.uint32(0x2545F491)))


_HASH_PRNG = jex_random.define_prng_impl(
    key_shape=(2,),
    seed=_hash_seed,
    split=lambda key, shape: _hash_bits(key, 32, (*shape, 2)),
    random_bits=_hash_bits,
    fold_in=_hash_fold_in,
    name="test_hash32",
)


def _key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl=_HASH_PRNG)


@functools.cache
def _fast_compile_options() -> dict:
    """XLA:CPU's older elemental emitters compile these programs about a fifth faster; no
    options where this XLA no longer has the flag."""
    options = {"xla_cpu_use_fusion_emitters": False}
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
    except Exception:  # an unknown option is an INVALID_ARGUMENT error, raised at compile time
        return {}
    return options


CLASSES, SEQ_LEN, STEPS, BATCH, LEARNING_RATE, N_TRAIN, N_TEST = 4, 20, 200, 16, 3e-3, 256, 256
# Input width of the toy problem: 30 (the CNN heads need at least 29), but 6 IMU channels
# for the two IMU-specific baselines. R-GRU then is the very module gru_v2 is, and shares its
# run (programs are cached per module).
TRAIN_DIM = {"dcnn": 6, "deepsense": 6}


def _train_module(name: str):
    dim = TRAIN_DIM.get(name, 30)
    return registry.make_classifier(name, num_classes=CLASSES, input_dim=dim, seq_len=SEQ_LEN), dim


def _windows(rng: np.random.Generator, n: int, dim: int):
    """Noise windows [n, T, dim] in which channel `label * (dim // CLASSES)` also carries a sine
    of one frequency (phase and amplitude jittered): a matched filter separates the classes
    linearly. The channels are spread out so that the CNN heads, which convolve across
    channels, need not tell neighbours apart."""
    labels = rng.integers(0, CLASSES, n)
    phase = rng.uniform(-np.pi / 8, np.pi / 8, (n, 1))
    amplitude = rng.uniform(0.7, 1.3, (n, 1))
    x = 0.3 * rng.normal(size=(n, SEQ_LEN, dim))
    sine = amplitude * np.sin(2 * np.pi * np.arange(SEQ_LEN) / 8 + phase)  # [n, T]
    x[np.arange(n), :, labels * (dim // CLASSES)] += sine
    return x.astype(np.float32), labels.astype(np.int32)


@functools.cache
def _data(dim: int, dropout_seed: int = 2):
    """Train and test windows, the batches' indices and the dropout key of every step."""
    rng = np.random.default_rng(0)
    batches = rng.integers(0, N_TRAIN, (STEPS, BATCH)).astype(np.int32)
    dropout_keys = jax.random.split(_key(dropout_seed), STEPS)
    return (*_windows(rng, N_TRAIN, dim), *_windows(rng, N_TEST, dim), batches, dropout_keys)


@functools.cache
def _program(module: nn.Module, dim: int):
    """The compiled run(init_key, steps, data) of one model: init, `steps` Adam steps (a
    traced count, so short reruns reuse the compile), then evaluation."""
    opt = optax.adam(LEARNING_RATE)

    def cross_entropy(logits, labels):
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def run(init_key, steps, data):
        x_train, y_train, x_test, y_test, batches, dropout_keys = data
        params = registry.init_classifier(module, init_key, seq_len=SEQ_LEN, input_dim=dim)
        flat, unravel = ravel_pytree(params)  # one vector: Adam compiles to a few kernels

        def loss_fn(flat, idx, key):
            logits = module.apply({"params": unravel(flat)}, x_train[idx], train=True, rngs={"dropout": key})
            return cross_entropy(logits, y_train[idx])

        def step(i, carry):
            flat, state, losses = carry
            loss, grads = jax.value_and_grad(loss_fn)(flat, batches[i], dropout_keys[i])
            updates, state = opt.update(grads, state, flat)
            return flat + updates, state, losses.at[i].set(loss)

        losses = jnp.full((STEPS,), jnp.nan)
        flat, _, losses = jax.lax.fori_loop(0, steps, step, (flat, opt.init(flat), losses))
        # Eval mode is given no dropout rng at all: Flax raises if a layer asks for one.
        x_eval = jnp.concatenate([x_test, x_train[batches[0]]])
        logits = module.apply({"params": unravel(flat)}, x_eval, train=False)
        return {
            "init": params,
            "losses": losses,  # in train mode; NaN after `steps`
            "accuracy": jnp.mean(jnp.argmax(logits[:N_TEST], -1) == y_test),
            "first_batch_eval_loss": cross_entropy(logits[N_TEST:], y_train[batches[0]]),
        }

    return jax.jit(run, compiler_options=_fast_compile_options())


@functools.cache
def _outputs(module: nn.Module, dim: int, seed: int, steps: int, dropout_seed: int):
    return jax.device_get(_program(module, dim)(_key(seed), steps, _data(dim, dropout_seed)))


def _run(name: str, seed: int = 0, steps: int = STEPS, dropout_seed: int = 2):
    return _outputs(*_train_module(name), seed, steps, dropout_seed)


@pytest.mark.parametrize("name", TRAINED)
def test_training_lifts_accuracy_well_above_chance(name):
    out = _run(name)
    losses = out["losses"]
    assert np.all(np.isfinite(losses))
    assert losses[-20:].mean() < 0.5 * losses[:5].mean(), losses[::20]
    assert out["accuracy"] >= 0.8, (out["accuracy"], "chance", 1 / CLASSES)


@pytest.mark.parametrize("name", TRAINED)
def test_dropout_only_in_training(name):
    # The first training loss (train mode, initial parameters, first batch) under two sets of
    # dropout keys, and the eval-mode loss of the same batch and parameters.
    first = _run(name, steps=1)["losses"][0]
    other_keys = _run(name, steps=1, dropout_seed=3)["losses"][0]
    eval_mode = _run(name, steps=0)["first_batch_eval_loss"]
    if name in WITH_DROPOUT:
        assert first != other_keys
        assert first != eval_mode
    else:
        assert first == other_keys
        np.testing.assert_allclose(first, eval_mode, rtol=1e-5)


@pytest.mark.parametrize("name", TRAINED)
def test_initialisation_and_training_are_deterministic_for_a_seed(name):
    # Reruns of the compiled program, cut short: the same seed gives the same initial
    # parameters and first losses, another seed other initial parameters.
    first, again, other = _run(name), _run(name, steps=3), _run(name, seed=1, steps=0)
    init, init_again, init_other = (ravel_pytree(out["init"])[0] for out in (first, again, other))
    np.testing.assert_array_equal(init, init_again)
    np.testing.assert_array_equal(first["losses"][:3], again["losses"][:3])
    assert init.shape == init_other.shape and np.any(init != init_other)
