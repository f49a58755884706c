"""The CPU backend split into one device per core, and the training mesh cut to the batch.

The device count is fixed when JAX's backend starts, so the split is tested in fresh
interpreters; the test process itself runs on one pinned CPU device (conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from conftest import child_env, loop_trip_counts
from limubert_jax import main
from limubert_jax.pretraining import steps
from limubert_jax.runtime import cpu_devices

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from limubert_jax.runtime import cpu_devices
    asked = cpu_devices.split_cores(int(sys.argv[1]))
    import jax
    from limubert_jax.runtime.sharding import training_mesh
    out = {
        "asked": asked, "devices": len(jax.devices()), "cores_per_device": cpu_devices.cores_per_device(),
        "mesh": {batch: int(training_mesh(batch).devices.size) for batch in (128, 12, 7, 1)},
        "again": cpu_devices.split_cores(3), "devices_after": len(jax.devices()),
    }
    if len(sys.argv) > 2:  # the compiled train step of 24 windows on the 6 devices, chunks of 2 and whole
        import optax
        from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain
        from limubert_jax.pretraining.steps import MaskConfig, TrainState, jit_train_step

        cfg = LimuBertConfig(hidden=24, hidden_ff=48, n_layers=2, n_heads=2, seq_len=40)
        state = jax.eval_shape(lambda: TrainState.create(LimuBertModel4Pretrain(cfg).init_params(jax.random.key(0)),
                                                         optax.adam(1e-3)))
        raw = jax.ShapeDtypeStruct((24, 40, 6), jax.numpy.float32)
        for chunk in (2, 0):
            step = jit_train_step(training_mesh(24), model_config=cfg, mask_config=MaskConfig(), tx=optax.adam(1e-3),
                                  encoder_chunk=chunk)
            with open(f"{sys.argv[2]}/step_{chunk}.txt", "w") as f:
                # As users' runs compile it (the test session turns the fusion emitters off).
                options = {"xla_cpu_use_fusion_emitters": True}
                f.write(step.lower(state, raw, jax.random.key(1)).compile(compiler_options=options).as_text())
    print(json.dumps(out))
    """
)


def _split(devices: int, *args: str, xla_flags: str = "") -> dict:
    env = child_env()
    env["XLA_FLAGS"] = f"{os.environ.get('LIMUBERT_TESTS_XLA_FLAGS', '')} {xla_flags}".strip()
    env.pop("JAX_NUM_CPU_DEVICES", None)
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(devices), *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_split_into_devices_and_the_mesh_each_batch_trains_on(tmp_path):
    six = _split(6, str(tmp_path))
    assert (six["asked"], six["devices"]) == (6, 6)
    assert six["cores_per_device"] == max(1, cpu_devices.usable_cores() // 6)
    # The most devices the batch divides by: 128 on 4 of the 6, 12 on all, 7 and 1 on one.
    assert six["mesh"] == {"128": 4, "12": 6, "7": 1, "1": 1}
    # Once JAX runs, the count is what it is: a later call changes nothing.
    assert (six["again"], six["devices_after"]) == (None, 6)
    # Each device takes the gradient of its own 4 windows: 2 chunks of 2 in a loop of 2
    # iterations (one core per device on a machine of up to 11 cores). Partitioned by XLA
    # instead, the loop would run over the whole batch's 12 chunks.
    if six["cores_per_device"] == 1:
        loops = {chunk: loop_trip_counts((tmp_path / f"step_{chunk}.txt").read_text()) for chunk in (2, 0)}
        assert loops[2] - loops[0] == Counter({"2": 1}), loops


def test_one_device_per_core_unless_the_count_was_chosen():
    per_core = _split(cpu_devices.ONE_PER_CORE)
    assert per_core["asked"] == per_core["devices"] == cpu_devices.usable_cores()
    assert per_core["cores_per_device"] == 1
    chosen = _split(cpu_devices.ONE_PER_CORE, xla_flags="--xla_force_host_platform_device_count=3")
    assert (chosen["asked"], chosen["devices"]) == (None, 3)


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "2"])
def test_bad_counts_are_refused(value):
    with pytest.raises(ValueError, match=r"cpu_devices must be -1 \(one per core\) or a positive integer"):
        cpu_devices.check_count(value)


def test_the_main_job_names_a_bad_count_before_it_starts(tmp_path, capsys):
    workdir = tmp_path / "run"
    status = main.main([f"--config={ROOT / 'tests' / 'configs' / 'test.py'}", f"--workdir={workdir}", "--config.cpu_devices=0"])
    assert status == 2  # the status of every LimuBertError
    assert "config.cpu_devices must be -1 (one per core) or a positive integer, got 0" in capsys.readouterr().err
    assert not workdir.exists()


def test_a_device_of_one_core_takes_one_chunk_gradient_at_a_time(monkeypatch):
    # One device in this process: with 2 cores it has two, with 1 core one.
    monkeypatch.setattr(cpu_devices, "usable_cores", lambda: 2)
    assert steps.chunks_per_iteration() == steps.GRADIENT_CHUNKS_PER_ITERATION == 2
    monkeypatch.setattr(cpu_devices, "usable_cores", lambda: 1)
    assert steps.chunks_per_iteration() == 1
