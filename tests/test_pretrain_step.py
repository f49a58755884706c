"""The jitted pretraining step: it learns, and its results do not depend on the device count.

Batches of 24 windows: on CPU the gradient is taken over three chunks of 8 (`steps.loss_and_grads`),
so the chunks and their split over the devices are part of the comparison."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # two processes compiling every kind of step

# Runs in a fresh interpreter: the CPU device count is fixed when JAX's backend starts.
_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))
    import numpy as np, optax
    from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain
    from limubert_jax.pretraining.steps import MaskConfig, TrainState, jit_eval_step, jit_train_step
    from limubert_jax.runtime.sharding import global_batch, make_mesh

    cfg = LimuBertConfig(hidden=24, hidden_ff=48, n_layers=2, n_heads=2, seq_len=40)
    mesh = make_mesh()
    tx = optax.adam(1e-3)
    state = TrainState.create(LimuBertModel4Pretrain(cfg).init_params(jax.random.key(0)), tx)
    step = jit_train_step(mesh, model_config=cfg, mask_config=MaskConfig(), tx=tx)
    evaluate = jit_eval_step(mesh, model_config=cfg, mask_config=MaskConfig())
    data = np.random.default_rng(0).normal(size=(5, 24, 40, 6)).astype(np.float32) * 5
    rng = jax.random.key(1)
    losses = []
    for raw in data:
        state, metrics = step(state, global_batch(raw, mesh), rng)
        losses.append(float(metrics["loss"]))
    # The efficiency options on this mesh: 5 steps as one call, and a device-resident epoch.
    from limubert_jax.pretraining.steps import jit_resident_epoch, jit_train_steps
    state0 = TrainState.create(LimuBertModel4Pretrain(cfg).init_params(jax.random.key(0)), tx)
    _, stacked = jit_train_steps(mesh, model_config=cfg, mask_config=MaskConfig(), tx=tx)(
        state0, global_batch(data, mesh, stacked=True), rng)
    windows = data.reshape(-1, 40, 6)
    state0 = TrainState.create(LimuBertModel4Pretrain(cfg).init_params(jax.random.key(0)), tx)
    _, resident = jit_resident_epoch(mesh, steps=4, batch_size=24, model_config=cfg, mask_config=MaskConfig(),
                                     tx=tx)(state0, windows, jax.random.key(5), rng)
    weights = np.ones(24, np.float32)
    sse, count = evaluate(state.params, global_batch(data[0], mesh), global_batch(weights, mesh), jax.random.key(2))
    try:
        global_batch(np.zeros((len(jax.devices()) + 1, 40, 6), np.float32), mesh)
        error = None
    except ValueError as e:
        error = str(e)
    print(json.dumps({"devices": len(jax.devices()), "losses": losses, "val": float(sse / count),
                      "stacked": np.asarray(stacked["loss"]).tolist(), "resident": np.asarray(resident["loss"]).tolist(),
                      "step": int(state.step), "error": error}))
    """
)


@functools.lru_cache(maxsize=None)
def _runs() -> dict[int, dict]:
    """The script on 1 and on 8 devices, as two concurrent processes (compiling is mostly
    single-threaded; the machine has 2 cores)."""
    processes = {devices: subprocess.Popen([sys.executable, "-c", _SCRIPT, str(devices)], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
                 for devices in (1, 8)}
    results = {}
    try:
        for devices, process in processes.items():
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, err[-3000:]
            results[devices] = json.loads(out.strip().splitlines()[-1])
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def _run(devices: int) -> dict:
    return _runs()[devices]


def test_same_losses_on_one_and_eight_devices():
    one, eight = _run(1), _run(8)
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert one["step"] == eight["step"] == 5
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eight["val"], one["val"], rtol=1e-5)
    assert one["losses"][-1] < one["losses"][0]  # it trains
    # Several steps per call: the same losses as one call per step, on either mesh.
    np.testing.assert_allclose(one["stacked"], one["losses"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(eight["stacked"], one["losses"], rtol=1e-5, atol=1e-6)
    # A device-resident epoch does not depend on the device count either.
    np.testing.assert_allclose(eight["resident"], one["resident"], rtol=1e-5, atol=1e-6)


def test_batch_that_does_not_divide_the_devices_is_rejected():
    eight = _run(8)
    assert "global batch size 9 does not divide by the 8 devices" in eight["error"]
