"""Matmul precision in the lowered programs (XLA:CPU ignores it, so values cannot show it).

Inference, evaluation and the downstream classifiers must compute full float32 on every
backend (`precision = [HIGHEST, HIGHEST]` on every dot_general and convolution), as the
reference does; only the pretraining train step follows `config.train.matmul_precision`.
Two levels: the lowered text of each public entry point, and every program the real
commands compile (JAX's IR dump) while they run.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from limubert_jax import config_lib, embed, tasks
from limubert_jax.io import checkpoint
from limubert_jax.models import inference, registry
from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain, encode
from limubert_jax.pretraining.steps import MaskConfig, TrainState, eval_step, train_step
from limubert_jax.runtime import precision

ROOT = Path(__file__).resolve().parents[1]
TINY = LimuBertConfig(feature_num=6, hidden=8, hidden_ff=16, n_layers=2, n_heads=2, seq_len=20)
_OP = re.compile(r"stablehlo\.(dot_general|convolution)\b.*")
_PRECISION = re.compile(r"precision(?:_config)? = \[(?:#stablehlo<precision )?(\w+)>?, (?:#stablehlo<precision )?(\w+)")


def matmul_precisions(text: str) -> list[str]:
    """The precision of every dot_general and convolution in a StableHLO module's text
    ('DEFAULT' where the op carries none)."""
    found = []
    for op in _OP.finditer(text):
        match = _PRECISION.search(op.group(0))
        found.append("DEFAULT" if match is None else match.group(1))
        if match is not None:
            assert match.group(1) == match.group(2), op.group(0)
    return found


def assert_all(text: str, want: str) -> None:
    got = matmul_precisions(text)
    assert got, "no matmul or convolution in the program"
    assert set(got) == {want}, f"precisions {sorted(set(got))}, want only {want}"


def test_the_parser_sees_each_precision():
    x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
    assert matmul_precisions(jax.jit(jnp.dot).lower(x, w).as_text()) == ["DEFAULT"]
    with precision.matmul_precision("high"):
        assert matmul_precisions(jax.jit(precision.dot).lower(x, w).as_text()) == ["HIGH"]
    assert matmul_precisions(jax.jit(precision.dot).lower(x, w).as_text()) == ["HIGHEST"]


@pytest.fixture(scope="module")
def tiny_params():
    return LimuBertModel4Pretrain(TINY).init_params(jax.random.key(0))


@pytest.mark.parametrize("chunk", [None, 0, 4])  # the backend's default, the whole batch (GPU/TPU), chunks (CPU)
def test_encoder_through_the_public_api_is_full_float32(tiny_params, chunk):
    x = jnp.zeros((8, 20, 6))
    model = LimuBertModel4Pretrain(TINY)
    if chunk is None:
        text = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode)).lower(tiny_params, x).as_text()
    else:
        text = jax.jit(lambda p, x: encode(p["transformer"], x, TINY, chunk=chunk)).lower(tiny_params, x).as_text()
    assert_all(text, "HIGHEST")
    positions = jnp.zeros((8, 3), jnp.int32)
    assert_all(jax.jit(model.apply).lower({"params": tiny_params}, x, positions).as_text(), "HIGHEST")


def test_embed_cli_program_is_full_float32(tiny_params):
    windows = jnp.zeros((4, 20, 6))
    for normalized in (False, True):
        assert_all(inference._encode.lower(tiny_params, windows, config=TINY, normalized=normalized).as_text(), "HIGHEST")


@pytest.mark.parametrize("name", registry.HEADS + registry.BASELINES)
def test_every_classifier_is_full_float32(name):
    input_dim = 6 if name in registry.BASELINES else 72  # the paper sizes
    module = registry.make_classifier(name, num_classes=3, input_dim=input_dim, seq_len=20)
    params = jax.eval_shape(lambda k: registry.init_classifier(module, k, seq_len=20, input_dim=input_dim),
                            jax.random.key(0))
    x = jnp.zeros((2, 20, input_dim))
    assert_all(jax.jit(lambda p, x: module.apply({"params": p}, x, train=False)).lower(params, x).as_text(),
               "HIGHEST")


def _lowered_train_step(params, **kwargs) -> str:
    tx = optax.adam(1e-3)
    state = TrainState.create(params, tx)
    step = jax.jit(lambda s, raw, key: train_step(s, raw, key, model_config=TINY, mask_config=MaskConfig(),
                                                  tx=tx, **kwargs))
    return step.lower(state, jnp.ones((4, 20, 6)), jax.random.key(0)).as_text()


def test_train_step_follows_matmul_precision_and_eval_stays_full(tiny_params):
    assert_all(_lowered_train_step(tiny_params), "HIGHEST")  # the default: the reference's float32
    assert_all(_lowered_train_step(tiny_params, matmul_precision="default"), "DEFAULT")
    assert_all(_lowered_train_step(tiny_params, matmul_precision="high"), "HIGH")
    assert_all(_lowered_train_step(tiny_params, matmul_precision="default", compute_dtype=jnp.bfloat16), "DEFAULT")
    # The scope ends with the step: validation traced afterwards is full float32 again.
    evaluate = jax.jit(lambda p, raw, w, k: eval_step(p, raw, w, k, model_config=TINY, mask_config=MaskConfig()))
    assert_all(evaluate.lower(tiny_params, jnp.ones((4, 20, 6)), jnp.ones(4), jax.random.key(0)).as_text(), "HIGHEST")
    with pytest.raises(ValueError, match=r"matmul_precision 'tf32': use one of highest, high, default"):
        _lowered_train_step(tiny_params, matmul_precision="tf32")


def rounded_dot_operands(text: str) -> tuple[int, int, set[str]]:
    """(dot_generals, their operands produced by a `reduce_precision`, the rounding formats
    used) of a StableHLO module's text; SSA names are scoped per function, so per function."""
    dots = rounded = 0
    for function in text.split("func.func")[1:]:
        defined_by = dict(re.findall(r"(%[\w#]+)(?::\d+)? = \"?([\w.]+)", function))
        for op in re.finditer(r"stablehlo\.dot_general (%[\w#]+), (%[\w#]+)", function):
            dots += 1
            rounded += sum(defined_by.get(name) == "stablehlo.reduce_precision" for name in op.groups())
    return dots, rounded, set(re.findall(r"reduce_precision .*format = (e\d+m\d+)", text))


def test_emulated_rounding_reaches_every_matmul_of_the_train_step(tiny_params):
    """The emulation's one home is `precision.dot`/`einsum`, which every layer calls: inside
    the scope each matmul of the step, the backward pass's too, reads rounded operands."""
    with precision.emulate_operand_rounding(precision.BFLOAT16_MANTISSA_BITS):
        dots, rounded, formats = rounded_dot_operands(_lowered_train_step(tiny_params))
    assert dots > 40 and rounded == 2 * dots and formats == {"e8m7"}
    with precision.emulate_operand_rounding(precision.TF32_MANTISSA_BITS):
        assert rounded_dot_operands(_lowered_train_step(tiny_params))[1:] == (2 * dots, {"e8m10"})
    # Outside the scope (and traced again: the scope is part of the jit cache key) nothing is rounded.
    assert rounded_dot_operands(_lowered_train_step(tiny_params)) == (dots, 0, set())
    assert precision.operand_rounding() is None


def test_emulated_rounding_numbers():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(16, 32)).astype(np.float32), rng.normal(size=(32, 8)).astype(np.float32)

    def bf16(x):  # round to nearest even on 7 mantissa bits, as a bfloat16 pass reads its inputs
        return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)

    full = jax.jit(precision.dot)(a, b)
    loss = jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(precision.dot(a, b) ** 2), argnums=(0, 1)))
    with precision.emulate_operand_rounding(7):
        emulated = jax.jit(precision.dot)(a, b)
        (_, (grad_a, grad_b)) = loss(a, b)
        einsum = jax.jit(lambda a, b: precision.einsum("ik,kj->ij", a, b))(a, b)
    want = bf16(a) @ bf16(b)
    np.testing.assert_allclose(emulated, want, rtol=1e-5, atol=1e-5)  # float32 accumulation of rounded inputs
    np.testing.assert_allclose(einsum, want, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(np.asarray(full, np.float64) - want)) > 1e-3  # the rounding is visible at this size
    # Backward: the cotangent 2*y (y from rounded operands) is rounded too before each matmul.
    cotangent = bf16(2 * np.asarray(emulated, np.float64))
    np.testing.assert_allclose(grad_a, cotangent @ bf16(b).T, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad_b, bf16(a).T @ cotangent, rtol=1e-5, atol=1e-4)
    for bad in (0, 23, 7.0):
        with pytest.raises(ValueError, match="an integer from 1 to 22"):
            precision.emulate_operand_rounding(bad)


@pytest.fixture
def ir_dump(tmp_path):
    """Every program compiled inside the fixture is dumped as StableHLO into the folder yielded."""
    folder = tmp_path / "ir"
    jax.clear_caches()  # programs compiled by earlier tests would not be dumped again
    jax.config.update("jax_dump_ir_to", str(folder))
    try:
        yield folder
    finally:
        jax.config.update("jax_dump_ir_to", "")


@pytest.mark.slow
def test_every_program_of_the_commands_is_full_float32_but_the_train_step(ir_dump, tmp_path, synthetic_data_dir):
    """Pretraining with matmul_precision='default' (train step, validation, plot), then the
    encoder over every window, a head on the embeddings, a baseline with convolutions,
    predictions, t-SNE and the report, then the embed command: only the train step's programs
    may compute below float32. (Fine-tuning runs the same encoder and heads; each head's and
    baseline's own program: `test_every_classifier_is_full_float32`.)"""
    config = config_lib.sibling_config(str(ROOT / "tests" / "configs" / "test.py"), "test").get_config()
    config.dataset.data_dir = str(synthetic_data_dir)
    config.task = "pretrain+report"
    config.dataset.train_rate = 0.2  # 3 steps: the programs are what the test reads, not the training
    config.train.num_epochs = 1
    config.train.batch_size = 128
    config.train.encoder_chunk = -1  # the CPU default's chunked encoder, as users' runs compile it
    config.train.matmul_precision = "default"
    config.downstream.update(num_epochs=1, label_rate=0.05, tsne_points=60, methods="limu_cnn1_v1,dcnn")
    workdir = tmp_path / "work"
    tasks.run(config, workdir)
    windows = np.zeros((3, 120, 6), np.float32)
    np.save(tmp_path / "x.npy", windows)
    assert embed.main(["--checkpoint", str(workdir), "--input", str(tmp_path / "x.npy"),
                       "--output", str(tmp_path / "e.npy")]) == 0
    assert checkpoint.load_model(workdir)[0] == "limu_bert"

    by_precision: dict[str, set[str]] = {}
    convolutions = 0
    for module in sorted(ir_dump.glob("*.mlir")):
        text = module.read_text()
        convolutions += text.count("stablehlo.convolution")
        for p in set(matmul_precisions(text)):
            by_precision.setdefault(p, set()).add(module.name)
    assert set(by_precision) == {"HIGHEST", "DEFAULT"}, by_precision.keys()
    assert by_precision["DEFAULT"] and all("train_step" in name for name in by_precision["DEFAULT"]), \
        sorted(by_precision["DEFAULT"])
    # Each kind of full-precision program: validation, plot, the fits, the embed command.
    for kind in ("eval_step", "reconstruct", "run_epochs", "_encode"):
        assert any(kind in name for name in by_precision["HIGHEST"]), (kind, sorted(by_precision["HIGHEST"]))
    assert convolutions > 0  # the CNN head and DCNN, all HIGHEST (checked above)
