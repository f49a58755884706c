"""Architecture facts of docs/reference.md §2, 3 and 8 that need no reference files."""

from __future__ import annotations

import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from limubert_jax.io.state_dict import (
    gru_classifier_shapes,
    limu_bert_shapes,
    params_to_state_dict,
    state_dict_to_params,
)
from limubert_jax.models.encoder import MODEL_CONFIGS, LimuBertConfig, LimuBertModel4Pretrain, count_params, gelu
from limubert_jax.models.recurrent import GRUClassifier, GRUClassifierConfig, gru_v2


def test_base_v1_has_62646_parameters():
    params = LimuBertModel4Pretrain(MODEL_CONFIGS["base_v1"]).init_params(jax.random.key(0))
    assert count_params(params) == 62_646


@pytest.mark.parametrize("name", ["base_v1", "base_v2"])
def test_param_tree_matches_reference_key_table(name):
    cfg = MODEL_CONFIGS[name]
    params = LimuBertModel4Pretrain(cfg).init_params(jax.random.key(1))
    shapes = {k: v.shape for k, v in params_to_state_dict(params).items()}
    assert shapes == limu_bert_shapes(cfg)
    assert cfg.hidden == 72 and cfg.hidden_ff == 144 and cfg.n_layers == 4 and cfg.n_heads == 4
    assert cfg.seq_len == 120 and cfg.emb_norm


def test_classifier_param_tree_matches_reference_key_table():
    cfg = gru_v2(num_classes=7)
    params = GRUClassifier(cfg).init_params(jax.random.key(2))
    shapes = {k: v.shape for k, v in params_to_state_dict(params).items()}
    assert shapes == gru_classifier_shapes(cfg)
    assert shapes["gru0.weight_ih_l1"] == (60, 20) and shapes["lin0.weight"] == (7, 10)


def test_state_dict_mapping_is_an_exact_inverse():
    params = LimuBertModel4Pretrain(MODEL_CONFIGS["base_v2"]).init_params(jax.random.key(3))
    back = state_dict_to_params(params_to_state_dict(params))
    flat_a = jax.tree_util.tree_leaves_with_path(params)
    flat_b = jax.tree_util.tree_leaves_with_path(back)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (_, a), (_, b) in zip(flat_a, flat_b):
        assert np.array_equal(np.asarray(a), b)


def test_output_shapes_and_masked_gather():
    cfg = MODEL_CONFIGS["base_v1"]
    model = LimuBertModel4Pretrain(cfg)
    params = model.init_params(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 120, 6))
    pos = jnp.array([[5, 0, 119], [1, 2, 3], [100, 50, 7]], jnp.int32)
    # One compiled program (eagerly, every operation compiles on its own).
    full, masked, encoded = jax.jit(lambda p, x, pos: (
        model.apply({"params": p}, x), model.apply({"params": p}, x, pos),
        model.apply({"params": p}, x, method=model.encode)))(params, x, pos)
    assert full.shape == (3, 120, 6)
    assert masked.shape == (3, 3, 6)
    # The head is per position, so gathering before or after decoding agrees.
    np.testing.assert_allclose(masked, jnp.take_along_axis(full, pos[:, :, None], axis=1), atol=1e-5)
    assert encoded.shape == (3, 120, 72)


def test_shorter_windows_use_the_first_positions_and_longer_ones_fail():
    cfg = LimuBertConfig(seq_len=20, hidden=16, hidden_ff=32, n_heads=2, n_layers=2)
    model = LimuBertModel4Pretrain(cfg)
    params = model.init_params(jax.random.key(0))
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    assert apply(params, jnp.ones((2, 12, 6))).shape == (2, 12, 6)
    with pytest.raises(ValueError, match="seq_len=20"):
        apply(params, jnp.ones((2, 21, 6)))


def test_layer_count_reuses_one_block():
    shallow = LimuBertConfig(n_layers=1)
    deep = LimuBertConfig(n_layers=6)
    p1 = LimuBertModel4Pretrain(shallow).init_params(jax.random.key(0))
    p6 = LimuBertModel4Pretrain(deep).init_params(jax.random.key(0))
    assert count_params(p1) == count_params(p6)
    x = jax.random.normal(jax.random.key(1), (2, 120, 6))
    out1, out6 = jax.jit(lambda p, x: (LimuBertModel4Pretrain(shallow).apply({"params": p}, x),
                                       LimuBertModel4Pretrain(deep).apply({"params": p}, x)))(p1, x)
    assert not np.allclose(out1, out6)


def test_gelu_is_the_exact_erf_form():
    x = jnp.linspace(-4, 4, 101)
    np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), atol=1e-6)
    assert not np.allclose(gelu(x), jax.nn.gelu(x, approximate=True), atol=1e-5)


@pytest.mark.parametrize(
    "fields, message",
    [({"hidden": 70, "n_heads": 4}, "divide"), ({"feature_num": 0}, "positive"), ({"seq_len": 1.5}, "positive")],
)
def test_bad_model_config_is_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        LimuBertConfig(**fields)
    with pytest.raises(ValueError, match="unknown"):
        LimuBertConfig.from_dict({"hiden": 72})


def test_classifier_dropout_only_while_training():
    cfg = gru_v2(num_classes=3)
    model = GRUClassifier(cfg)
    params = model.init_params(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 20, 72))
    eval_a, eval_b, train = jax.jit(lambda p, x: (
        model.apply({"params": p}, x), model.apply({"params": p}, x, train=False),
        model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(2)})))(params, x)
    np.testing.assert_array_equal(eval_a, eval_b)
    assert eval_a.shape == train.shape == (4, 3)
    assert not np.allclose(eval_a, train)
    with pytest.raises(ValueError, match="same non-zero length"):
        GRUClassifierConfig(rnn_hidden=(20,), rnn_layers=(2, 1))


@pytest.mark.parametrize("layer", ["gru", "lstm"])
def test_recurrent_layers_unrolled_equal_the_loop(layer):
    # Inference unrolls the time loop (faster on XLA:CPU); it must compute what the loop does.
    from recurrent_layers import gru_layer, lstm_layer

    fn, gates = (gru_layer, 3) if layer == "gru" else (lstm_layer, 4)
    keys = jax.random.split(jax.random.key(3), 5)
    x = jax.random.normal(keys[0], (5, 7, 6))
    weights = [0.4 * jax.random.normal(k, shape) for k, shape in
               zip(keys[1:], [(6, gates * 4), (4, gates * 4), (gates * 4,), (gates * 4,)])]
    looped = jax.jit(lambda x, *w: fn(x, *w))(x, *weights)
    unrolled = jax.jit(lambda x, *w: fn(x, *w, unroll=True))(x, *weights)
    assert looped.shape == (5, 7, 4)
    np.testing.assert_allclose(unrolled, looped, rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(looped[:, -1]) - np.asarray(looped[:, 0])).max() > 0.1  # not a constant


# The CPU encoder (chunks in a rematerialised loop, streams, hand-written VJPs) must compute
# the plain formulation's values and gradients. Float32 sums in another order: 1e-5.
def _small_model(seed=0):
    import dataclasses

    cfg = dataclasses.replace(MODEL_CONFIGS["base_v1"], n_layers=2, seq_len=20)
    params = LimuBertModel4Pretrain(cfg).init_params(jax.random.key(seed))
    x = jax.random.normal(jax.random.key(seed + 1), (11, 20, 6))
    positions = jnp.stack([jax.random.permutation(jax.random.key(seed + 2 + i), 20)[:5] for i in range(11)])
    return cfg, params["transformer"], x, positions


@pytest.mark.parametrize("chunk,streams,with_positions", [
    pytest.param(4, 2, False, marks=pytest.mark.slow), (4, 2, True), pytest.param(3, 1, True, marks=pytest.mark.slow)])
def test_chunked_encoder_equals_whole_batch_values_and_gradients(with_positions, chunk, streams):
    from limubert_jax.models.encoder import encode, encode_plain

    cfg, p, x, positions = _small_model()
    pos = positions if with_positions else None

    def values_and_gradients(fn):
        """fn's outputs and the gradients of sum(sin(outputs)) w.r.t. (p, x), as one program."""
        def run(p, x):
            out, vjp = jax.vjp(fn, p, x)
            return out, vjp(jnp.cos(out))
        return jax.jit(run)(p, x)

    chunked, g_chunked = values_and_gradients(lambda p, x: encode(p, x, cfg, pos, chunk=chunk, streams=streams))
    plain, g_plain = values_and_gradients(lambda p, x: encode_plain(p, x, cfg, pos))
    np.testing.assert_allclose(chunked, plain, atol=1e-5, rtol=0)
    for a, b in zip(jax.tree_util.tree_leaves(g_chunked), jax.tree_util.tree_leaves(g_plain)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_chunk_must_divide_by_streams():
    from limubert_jax.models.encoder import encode

    cfg, p, x, _ = _small_model()
    with pytest.raises(ValueError, match="chunk \\(6\\) must divide by streams \\(4\\)"):
        encode(p, x, cfg, chunk=6, streams=4)


def test_the_chunk_loop_runs_streams_chunks_per_iteration():
    # 32 windows in chunks of 4 = 8 chunks; 2 side by side per iteration (the two CPU cores'
    # independent work) is a loop of 4 iterations, 4 side by side a loop of 2.
    from conftest import loop_trip_counts
    from limubert_jax.models.encoder import encode

    cfg, p, _, _ = _small_model()
    x = jnp.zeros((32, 20, 6))
    for streams, trips in ((2, "4"), (4, "2")):
        compiled = jax.jit(lambda p, x: encode(p, x, cfg, chunk=4, streams=streams)).lower(p, x).compile().as_text()
        assert loop_trip_counts(compiled) == Counter({trips: 1})


def test_hand_written_attention_and_layer_norm_gradients_match_autodiff():
    from limubert_jax.models.encoder import (
        _layer_norm,
        layer_norm_reference,
        softmax_attention,
        softmax_attention_reference,
    )

    keys = jax.random.split(jax.random.key(3), 6)
    q, k, v = (jax.random.normal(kk, (2, 3, 7, 5)) for kk in keys[:3])
    q_rows = q[:, :, :4]  # fewer query rows than keys, as in the last layer
    cot = jax.random.normal(keys[3], (2, 3, 4, 5))
    for fn in (softmax_attention, softmax_attention_reference):
        np.testing.assert_allclose(fn(q_rows, k, v), softmax_attention_reference(q_rows, k, v), atol=1e-6)
    custom = jax.jit(lambda *a: jax.vjp(softmax_attention, *a)[1](cot))(q_rows, k, v)
    auto = jax.jit(lambda *a: jax.vjp(softmax_attention_reference, *a)[1](cot))(q_rows, k, v)
    for a, b in zip(custom, auto):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)

    x = 3.0 * jax.random.normal(keys[4], (4, 6, 9)) + 1.0
    gamma, beta = jax.random.normal(keys[5], (2, 9))
    cot = jax.random.normal(keys[0], x.shape)
    np.testing.assert_allclose(_layer_norm(x, gamma, beta, 1e-12), layer_norm_reference(x, gamma, beta), atol=1e-6)
    custom = jax.jit(lambda *a: jax.vjp(lambda *b: _layer_norm(*b, 1e-12), *a)[1](cot))(x, gamma, beta)
    auto = jax.jit(lambda *a: jax.vjp(layer_norm_reference, *a)[1](cot))(x, gamma, beta)
    for a, b in zip(custom, auto):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(5, 9), (2, 7, 9)])
def test_layers_matmul_matches_autodiff_of_dot(shape, dtype):
    """The layers' matmul (its CPU backward pass takes the kernel's gradient over the flattened
    rows) has the values and gradients of a plain dot, for [rows, K] and [B, S, K]."""
    from limubert_jax.models.layers import _matmul_over_flat_rows, matmul
    from limubert_jax.runtime.precision import dot

    keys = jax.random.split(jax.random.key(4), 3)
    x = jax.random.normal(keys[0], shape).astype(dtype)
    kernel = jax.random.normal(keys[1], (9, 4)).astype(dtype)
    cot = jax.random.normal(keys[2], (*shape[:-1], 4)).astype(dtype)
    tol = 1e-6 if dtype == jnp.float32 else 2e-2
    assert matmul(x, kernel).dtype == dtype
    for fn in (matmul, _matmul_over_flat_rows):
        np.testing.assert_allclose(np.float32(fn(x, kernel)), np.float32(dot(x, kernel)), atol=tol, rtol=tol)
        custom = jax.jit(lambda *a, fn=fn: jax.vjp(fn, *a)[1](cot))(x, kernel)
        auto = jax.jit(lambda *a: jax.vjp(dot, *a)[1](cot))(x, kernel)
        for got, want in zip(custom, auto):
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(np.float32(got), np.float32(want), atol=5 * tol, rtol=tol)


def test_compiled_layer_gradient_copies_nothing_on_cpu():
    """On CPU the compiled gradient of a Linear layer on [B, S, K] inputs takes the kernel's
    gradient as one dot over the rows of x and dy as stored (both contracted on axis 0), with no
    transposed copy before it: autodiff of a plain dot compiles to a copy of dy transposed."""
    if jax.default_backend() != "cpu":
        pytest.skip("the flat-rows backward pass is the CPU path")
    from limubert_jax.models.layers import linear

    p = {"kernel": jnp.ones((9, 4)), "bias": jnp.zeros(4)}
    x = jnp.ones((2, 6, 9))
    grads = jax.jit(jax.grad(lambda p, x: jnp.tanh(linear(p, x)).sum(), argnums=(0, 1)))
    entry = grads.lower(p, x).compile().as_text().split("ENTRY", 1)[1]
    kernel_grad = [line for line in entry.splitlines() if re.search(r"= f32\[9,4\]\{1,0\} dot\(", line)]
    assert len(kernel_grad) == 1, entry
    assert "lhs_contracting_dims={0}, rhs_contracting_dims={0}" in kernel_grad[0], kernel_grad[0]
    assert not re.search(r"%\S*(copy|transpose)\S* = ", entry), entry
