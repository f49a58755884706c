"""The embedding API and CLI: batching, normalization and file handling."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from limubert_jax import checkpoint, embed
from limubert_jax.demo import synthetic_windows
from limubert_jax.model import MODEL_CONFIGS, LimuBertModel4Pretrain
from limubert_jax.normalization import normalize


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
    assert embed.main(args + ["--batch-size", "3"]) == 0
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
        embed.embed_windows(params, cfg, nine), embed.embed_windows(params, cfg, six)
    )


def test_shorter_windows_and_float64_input(v1):
    _, cfg, params = v1
    windows = synthetic_windows(4, seq_len=20, seed=5).astype(np.float64)
    out = embed.embed_windows(params, cfg, windows, batch_size=2)
    assert out.shape == (4, 20, 72) and out.dtype == np.float32
    np.testing.assert_allclose(out, _direct(cfg, params, normalize(windows, 6).astype(np.float32)), atol=1e-5)
