"""The embedding API and CLI: batching, normalization and file handling."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import child_env
from limubert_jax import embed
from limubert_jax.data.normalization import normalize
from limubert_jax.data.synthetic import synthetic_windows
from limubert_jax.io import checkpoint, storage
from limubert_jax.models import inference
from limubert_jax.models.encoder import MODEL_CONFIGS, LimuBertModel4Pretrain
from limubert_jax.runtime.errors import LimuBertError


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    cfg = MODEL_CONFIGS["base_v1"]
    params = LimuBertModel4Pretrain(cfg).init_params(jax.random.key(3))
    path = checkpoint.save_model(tmp_path_factory.mktemp("v1") / "ckpt", params, cfg)
    return path, cfg, params


def _direct(cfg, params, normalized_windows):
    model = LimuBertModel4Pretrain(cfg)
    return np.asarray(model.apply({"params": params}, normalized_windows, method=model.encode))


def test_cli_matches_direct_encoder_with_padded_last_batch(tmp_path, v1):
    path, cfg, params = v1
    windows = synthetic_windows(7, seed=1)
    np.save(tmp_path / "x.npy", windows)
    args = ["--checkpoint", str(path), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "e.npy")]
    assert embed.main(args + ["--batch_size", "3"]) == 0
    out = np.load(tmp_path / "e.npy")
    assert out.shape == (7, 120, 72) and out.dtype == np.float32
    np.testing.assert_allclose(out, _direct(cfg, params, normalize(windows, 6)), rtol=0, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "x.npy"]


def test_input_normalized_skips_normalization(tmp_path, v1):
    path, cfg, params = v1
    normalized = normalize(synthetic_windows(5, seed=2), 6)
    np.save(tmp_path / "x.npy", normalized)
    embed.embed_file(path, tmp_path / "x.npy", tmp_path / "e.npy", normalized=True, progress=False)
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), _direct(cfg, params, normalized), rtol=0, atol=1e-5)


def test_extra_raw_features_are_dropped_like_the_reference(v1):
    _, cfg, params = v1
    six = synthetic_windows(3, seed=4)
    nine = np.concatenate([six, np.random.default_rng(0).normal(size=(3, 120, 3)).astype(np.float32)], axis=-1)
    np.testing.assert_array_equal(
        inference.embed_windows(params, cfg, nine), inference.embed_windows(params, cfg, six)
    )


def test_shorter_windows_and_float64_input(v1):
    _, cfg, params = v1
    windows = synthetic_windows(4, seq_len=20, seed=5).astype(np.float64)
    out = inference.embed_windows(params, cfg, windows, batch_size=2)
    assert out.shape == (4, 20, 72) and out.dtype == np.float32
    np.testing.assert_allclose(out, _direct(cfg, params, normalize(windows, 6).astype(np.float32)), atol=1e-5)


def test_big_endian_input_gives_the_native_embeddings(tmp_path, v1):
    path, _, _ = v1
    windows = synthetic_windows(3, seed=6)
    np.save(tmp_path / "le.npy", windows)
    np.save(tmp_path / "be.npy", windows.astype(">f4"))
    for name in ("le", "be"):
        embed.embed_file(path, tmp_path / f"{name}.npy", tmp_path / f"e_{name}.npy", progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "e_be.npy"), np.load(tmp_path / "e_le.npy"))


def test_non_finite_weights_give_an_error_naming_the_window(v1):
    _, cfg, params = v1
    broken = jax.tree_util.tree_map(np.array, params)
    broken["transformer"]["embed"]["lin"]["bias"][:] = np.nan
    with pytest.raises(LimuBertError, match="embedding of window 0 is not finite.*non-finite model weights"):
        inference.embed_windows(broken, cfg, synthetic_windows(3, seed=7), batch_size=2, source="w")


# --- staging: leftovers, signals, disk space ---------------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_staging_of_the_output_is_removed_and_live_ones_kept(tmp_path, v1):
    path, _, _ = v1
    np.save(tmp_path / "x.npy", synthetic_windows(2, seed=8))
    out = tmp_path / "e.npy"
    dead = storage.staging_path(out, pid=_dead_pid())
    dead.write_bytes(b"\0" * 4096)  # as SIGKILL leaves it
    live = storage.staging_path(out)  # this process's: in use
    live.write_bytes(b"")
    other = storage.staging_path(tmp_path / "other.npy", pid=_dead_pid())  # not this output's
    other.write_bytes(b"")
    embed.embed_file(path, tmp_path / "x.npy", out, progress=False)
    assert not dead.exists()
    assert live.exists() and other.exists()
    assert np.load(out).shape == (2, 120, 72)


def test_full_disk_is_an_error_naming_the_bytes_not_a_bus_error(tmp_path, capsys, v1, monkeypatch):
    path, _, _ = v1
    np.save(tmp_path / "x.npy", synthetic_windows(4, seed=9))

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    args = ["--checkpoint", str(path), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "e.npy")]
    assert embed.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    needed = 4 * 120 * 72 * 4  # float32 data, plus the .npy header
    assert err[0].startswith(f"error: {tmp_path / 'e.npy'}: no space left on the device (")
    assert needed < int(err[0].split("(")[1].split(" bytes")[0].replace(",", "")) < needed + 4096
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


# The command as `python -m` runs it (argv from sys.argv), with SIGINT re-enabled: a
# background shell may have started the tests with SIGINT ignored.
_CLI = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); " \
       "from limubert_jax import embed; sys.exit(embed.main())"


# SIGTERM as soon as the staging file appears lands in the first compilation (which left
# the interpreter's teardown crashing), SIGINT a second later in the batches. The child
# compiles (no persistent cache) so that the first signal still finds it compiling.
@pytest.mark.parametrize("signum, status, delay", [(signal.SIGTERM, 143, 0.0), (signal.SIGINT, 130, 1.0)])
def test_signal_during_embedding_removes_the_staging_file(tmp_path, v1, signum, status, delay):
    path, _, _ = v1
    np.save(tmp_path / "x.npy", synthetic_windows(3000, seed=10))
    out = tmp_path / "e.npy"
    process = subprocess.Popen(
        [sys.executable, "-c", _CLI, "--checkpoint", str(path), "--input", str(tmp_path / "x.npy"),
         "--output", str(out), "--batch_size", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(xla_cache="off"),
    )
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".e.npy.tmp-") for p in tmp_path.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(delay)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert err.strip().splitlines()[-1] == f"error: {'terminated' if signum == signal.SIGTERM else 'interrupted'} " \
        f"({signal.Signals(signum).name})"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
