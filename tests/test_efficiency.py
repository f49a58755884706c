"""The accelerator-efficiency options give the results of the plain loop: several steps per
compiled call, a device-resident epoch (same batches, same losses), bfloat16 compute (within
bf16 tolerance, parameters and optimizer state staying float32), and the main job under each."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import loop_trip_counts
from limubert_jax import config_lib, tasks
from limubert_jax.io import checkpoint
from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain
from limubert_jax.pretraining.steps import (
    MaskConfig,
    TrainState,
    epoch_order,
    eval_step,
    loss_and_grads,
    mask_batch,
    resident_epoch,
    train_step,
)
from limubert_jax.runtime import cpu_devices
from limubert_jax.runtime.errors import LimuBertError

ROOT = Path(__file__).resolve().parents[1]
CFG = LimuBertConfig(hidden=24, hidden_ff=48, n_layers=2, n_heads=2, seq_len=40)
TX = optax.adam(1e-3)


def _state(seed=0):
    return TrainState.create(LimuBertModel4Pretrain(CFG).init_params(jax.random.key(seed)), TX)


def _windows(n=50, seed=0):
    return (np.random.default_rng(seed).normal(size=(n, 40, 6)) * 5).astype(np.float32)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.slow
def test_resident_epoch_is_the_same_batches_stepped_one_by_one():
    windows, key, rng = _windows(), jax.random.key(7), jax.random.key(1)
    kwargs = dict(model_config=CFG, mask_config=MaskConfig(), tx=TX)
    resident_state, metrics = jax.jit(lambda s, w: resident_epoch(s, w, key, rng, steps=3, batch_size=16, **kwargs))(
        _state(), windows)
    order = np.asarray(epoch_order(key, len(windows), 3, 16))
    assert sorted(order.ravel().tolist()) == sorted(set(order.ravel().tolist()))  # no window twice
    step = jax.jit(lambda s, raw: train_step(s, raw, rng, **kwargs))
    state, losses = _state(), []
    for rows in order:
        state, m = step(state, windows[rows])
        losses.append(float(m["loss"]))
    np.testing.assert_allclose(np.asarray(metrics["loss"]), losses, rtol=1e-6, atol=1e-7)
    for a, b in zip(_leaves(resident_state.params), _leaves(state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_bfloat16_compute_tracks_float32_and_keeps_float32_state():
    # Batches of 16 as in the test above: its float32 step is this one (the persistent cache).
    windows, rng = _windows(96), jax.random.key(1)
    runs = {}
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        step = jax.jit(lambda s, raw, dtype=dtype: train_step(s, raw, rng, model_config=CFG, mask_config=MaskConfig(),
                                                            tx=TX, compute_dtype=dtype))
        state, losses = _state(), []
        for i in range(6):
            state, m = step(state, windows[i * 16 : i * 16 + 16])
            losses.append(float(m["loss"]))
        runs[name] = (state, np.array(losses))
    (state32, loss32), (state16, loss16) = runs["float32"], runs["bfloat16"]
    assert {x.dtype for x in jax.tree_util.tree_leaves((state16.params, state16.opt_state)) if x.ndim} == {np.dtype("float32")}
    # bfloat16 keeps 8 bits of mantissa (relative rounding 2^-8 = 0.4%); a masked MSE of
    # ~1 summed in float32 lands within a few of those.
    np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
    assert np.abs(loss16 - loss32).max() > 0  # it did compute in bfloat16
    drift = max(np.abs(a - b).max() for a, b in zip(_leaves(state16.params), _leaves(state32.params)))
    assert drift < 2 * 6 * 1e-3  # each run moves a parameter by about lr = 1e-3 per step


@pytest.mark.parametrize("batch,chunk", [(11, 4), (3, 4)])
def test_gradient_over_chunks_equals_the_whole_batch(batch, chunk):
    # 11 = 3 chunks, the last padded; 3 = less than a chunk (no loop). Whole chunks split over
    # 8 devices: test_pretrain_step.
    # Float32 sums in another order: 1e-6 on the loss, 1e-5 on the gradients.
    params = _state().params
    masked, positions, targets = mask_batch(jax.random.key(3), jnp.asarray(_windows(batch)), CFG, MaskConfig())
    run = jax.jit(lambda chunk: loss_and_grads(params, masked, positions, targets, model_config=CFG,
                                               encoder_chunk=chunk), static_argnums=0)
    (loss, grads), (whole_loss, whole_grads) = run(chunk), run(0)
    np.testing.assert_allclose(loss, whole_loss, rtol=1e-6)
    for a, b in zip(_leaves(grads), _leaves(whole_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert max(np.abs(g).max() for g in _leaves(grads)) > 1e-3  # gradients that say something


@pytest.mark.parametrize("cores, iterations", [(2, "4"), (1, "8")])
def test_the_train_step_takes_a_chunk_gradient_per_core_in_each_loop_iteration(monkeypatch, cores, iterations):
    # A device with two cores takes two independent gradients per iteration, which the cores
    # run side by side (`steps.GRADIENT_CHUNKS_PER_ITERATION`); a device with one core (one CPU
    # device per core, `runtime.cpu_devices`) one. 32 windows in chunks of 4 = 8 chunks.
    monkeypatch.setattr(cpu_devices, "usable_cores", lambda: cores)  # this process has one CPU device
    state, raw = jax.eval_shape(_state), jax.ShapeDtypeStruct((32, 40, 6), jnp.float32)

    def trip_counts(chunk):
        step = jax.jit(lambda s, raw: train_step(s, raw, jax.random.key(1), model_config=CFG, mask_config=MaskConfig(),
                                                 tx=TX, encoder_chunk=chunk))
        # Compiled as users' runs compile it (the session turns XLA:CPU's fusion emitters off,
        # conftest.py, and the older emitters write some fusions as loops of their own).
        compiled = step.lower(state, raw).compile(compiler_options={"xla_cpu_use_fusion_emitters": True})
        return loop_trip_counts(compiled.as_text())

    assert trip_counts(4) - trip_counts(0) == Counter({iterations: 1})  # the masking's loops are in both


def test_encoder_chunk_reaches_the_pretraining_programs():
    # The values do not depend on the split (`test_model`: chunked = whole batch, values and
    # gradients); here the setting must reach the train and eval steps' programs. 4 chunks: the
    # train step's loop takes 2 per iteration, and a loop of one iteration would be unrolled.
    windows, rng, state = _windows(64), jax.random.key(1), jax.eval_shape(_state)  # lowered, never run
    loops = {}
    for chunk in (16, 0):
        step = jax.jit(lambda s, raw, chunk=chunk: train_step(s, raw, rng, model_config=CFG, mask_config=MaskConfig(),
                                                            tx=TX, encoder_chunk=chunk))
        evaluate = jax.jit(lambda p, raw, chunk=chunk: eval_step(p, raw, jnp.ones(len(raw)), rng, model_config=CFG,
                                                               mask_config=MaskConfig(), encoder_chunk=chunk))
        loops[chunk] = [program.lower(*args).as_text().count("stablehlo.while")
                        for program, args in ((step, (state, windows)), (evaluate, (state.params, windows)))]
    assert all(chunked > plain for chunked, plain in zip(loops[16], loops[0])), loops  # the loop over chunks


def _config(data_dir, **train_overrides):
    """The tiny test model on 320 windows of the user-array dataset (8 steps of 32 per epoch)."""
    config = config_lib.sibling_config(str(ROOT / "tests" / "configs" / "test.py"), "test").get_config()
    config.dataset.name = "imu_npy"
    config.dataset.data_dir = str(data_dir / "tfds")
    config.dataset.manual_dir = str(data_dir / "arrays")
    config.train.num_epochs = 1
    for key, value in train_overrides.items():
        config.train[key] = value
    return config


def _run(workdir, config):
    summary = tasks.run(config, workdir)
    records = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    params = checkpoint.ocp.StandardCheckpointer().restore(
        (Path(workdir) / "checkpoints" / str(records[-1]["step"]) / "state").absolute())["params"]
    return summary, records, params


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("efficiency")
    (root / "arrays").mkdir()
    rng = np.random.default_rng(0)
    np.save(root / "arrays" / "data_20_120.npy", (rng.normal(size=(320, 120, 6)) * 5).astype(np.float32))
    np.save(root / "arrays" / "label_20_120.npy", np.zeros((320, 120, 1), np.int64))
    return root


@pytest.mark.slow
def test_main_job_with_several_steps_per_dispatch_is_the_same_run(tmp_path, data_dir):
    # 8 steps per epoch in calls of 3: two calls of 3, then the remaining 2 one by one.
    _, plain, plain_params = _run(tmp_path / "plain", _config(data_dir, num_epochs=2))
    _, stacked, stacked_params = _run(tmp_path / "stacked", _config(data_dir, num_epochs=2, steps_per_dispatch=3))
    assert [r["epoch"] for r in stacked] == [1, 2]
    for a, b in zip(plain, stacked):
        assert a["step"] == b["step"]
        np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(b["val_loss"], a["val_loss"], rtol=1e-5)
    for a, b in zip(_leaves(plain_params), _leaves(stacked_params)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_main_job_device_resident_resumes_to_the_same_run(tmp_path, data_dir):
    _, straight, straight_params = _run(tmp_path / "straight", _config(data_dir, device_resident=True, num_epochs=2))
    _run(tmp_path / "resumed", _config(data_dir, device_resident=True, num_epochs=1))
    _, resumed, resumed_params = _run(tmp_path / "resumed", _config(data_dir, device_resident=True, num_epochs=1,
                                                                    extend_to_epochs=2))
    assert [r["epoch"] for r in resumed] == [1, 2] and all(np.isfinite(r["train_loss"]) for r in resumed)
    np.testing.assert_allclose([r["train_loss"] for r in resumed], [r["train_loss"] for r in straight], rtol=1e-5)
    for a, b in zip(_leaves(straight_params), _leaves(resumed_params)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_unknown_compute_dtype_is_a_clear_error(tmp_path, data_dir):
    with pytest.raises(LimuBertError, match="compute_dtype 'float16': use one of float32, bfloat16"):
        tasks.run(_config(data_dir, compute_dtype="float16"), tmp_path)
