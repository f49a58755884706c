"""TFLite export (limubert_jax/export/tflite_export.py): the LiteRT interpreter running the
exported file agrees with the JAX pipeline on raw windows; refusals are one line.

One export (a tiny gru_v2 classifier with an encoder, batch 2) serves the module: the
conversion takes tens of seconds."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import random_params, random_pipeline_params

pytest.importorskip("torch", reason="TFLite export tests need PyTorch (pip install 'limubert-jax[tflite]')")
pytest.importorskip("litert_torch", reason="TFLite export tests need 'litert-torch' (pip install 'limubert-jax[tflite]')")
pytest.importorskip("ai_edge_litert", reason="TFLite export tests need 'ai-edge-litert' (pip install 'limubert-jax[tflite]')")


from limubert_jax.export import tflite_export  # noqa: E402
from limubert_jax.io import checkpoint  # noqa: E402
from limubert_jax.models import pipeline  # noqa: E402
from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain  # noqa: E402
from limubert_jax.models.pipeline import ClassifierPipelineConfig  # noqa: E402
from limubert_jax.runtime.errors import LimuBertError  # noqa: E402

SEQ_LEN, MERGE, FEATURES = 40, 20, 6
CLASSES = ("walk", "sit", "run")
BATCH = 2
TOLERANCE = 1e-4


def _raw_windows(n: int, seed: int = 0) -> np.ndarray:
    """Raw readings at sensor scale: acc m/s^2 around gravity, gyro rad/s."""
    rng = np.random.default_rng(seed)
    scale = np.array([6.0, 6.0, 6.0, 1.0, 1.0, 1.0], np.float32)
    x = rng.normal(size=(n, SEQ_LEN, FEATURES)).astype(np.float32) * scale
    x[..., 2] += 9.8
    return x


def _save_pipeline(run_dir, head: str = "gru_v2", seed: int = 1):
    enc_cfg = LimuBertConfig(feature_num=FEATURES, hidden=24, hidden_ff=48, n_layers=2, n_heads=4, seq_len=SEQ_LEN)
    cfg = ClassifierPipelineConfig(method=f"limu_{head}", head=head, class_names=CLASSES, label="activity",
                                   seq_len=SEQ_LEN, merge=MERGE, feature_num=FEATURES, encoder=enc_cfg)
    params = random_pipeline_params(cfg, seed)
    checkpoint.save_model(run_dir / pipeline.MODEL_DIR, params, cfg)
    return run_dir, cfg, params


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """(run dir, config, params) of the tiny classifier."""
    return _save_pipeline(tmp_path_factory.mktemp("tflite") / "run")


@pytest.fixture(scope="module")
def exported(saved_run):
    """(run dir, config, params, .tflite path, export summary)."""
    run_dir, cfg, params = saved_run
    path = run_dir.parent / "out" / "classifier.tflite"
    path.parent.mkdir()
    path.write_bytes(b"an older export")  # replaced: the one export also covers --overwrite
    summary = tflite_export.export_tflite(run_dir, path, batch=BATCH, overwrite=True)
    return run_dir, cfg, params, path, summary


def test_interpreter_matches_jax(exported):
    _, cfg, params, path, _ = exported
    windows = _raw_windows(5)  # 5 windows through a batch-2 file: groups of 2, the last one padded
    out = tflite_export.run_tflite(path, windows)
    expected = pipeline.predict_batch(params, windows, config=cfg)
    assert out["probabilities"].shape == (5, 3) and out["subwindow_logits"].shape == (5, 2, 3)
    for name in ("probabilities", "subwindow_logits"):
        np.testing.assert_allclose(out[name], np.asarray(expected[name]), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)


def test_summary_and_fixed_input_shape(exported):
    run_dir, _, _, path, summary = exported
    assert summary["kind"] == "classifier_pipeline"
    assert summary["inputs"] == {"windows": [BATCH, SEQ_LEN, FEATURES]}
    assert summary["outputs"] == {"probabilities": [BATCH, 3], "subwindow_logits": [BATCH, SEQ_LEN // MERGE, 3]}
    assert summary["class_names"] == list(CLASSES)
    assert summary["bytes"] == path.stat().st_size > 0
    assert path.read_bytes()[4:8] == b"TFL3"  # the flatbuffer's file identifier
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    (signature,) = interpreter.get_signature_list().values()
    assert signature == {"inputs": ["windows"], "outputs": ["probabilities", "subwindow_logits"]}
    assert tflite_export.check_tflite(path, run_dir / pipeline.MODEL_DIR, _raw_windows(3, seed=1)) <= TOLERANCE
    with pytest.raises(LimuBertError, match=r"takes windows \(N, 40, 6\)"):
        tflite_export.run_tflite(path, _raw_windows(2)[..., :5])


def test_existing_output_refused(saved_run, tmp_path):
    run_dir = saved_run[0]
    out = tmp_path / "classifier.tflite"
    out.write_bytes(b"keep me")
    with pytest.raises(LimuBertError, match="already exists") as e:
        tflite_export.export_tflite(run_dir, out)
    assert "\n" not in str(e.value) and "--overwrite" in str(e.value)
    assert out.read_bytes() == b"keep me"


def test_missing_extra_names_it(saved_run, tmp_path, monkeypatch):
    run_dir = saved_run[0]
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(LimuBertError) as e:
        tflite_export.export_tflite(run_dir, tmp_path / "x.tflite")
    message = str(e.value)
    assert "\n" not in message and "litert-torch" in message and "pip install 'limubert-jax[tflite]'" in message
    assert not (tmp_path / "x.tflite").exists()


def test_non_classifier_and_unsupported_head_refused(tmp_path):
    enc_cfg = LimuBertConfig(feature_num=FEATURES, hidden=24, hidden_ff=48, n_layers=2, n_heads=4, seq_len=SEQ_LEN)
    checkpoint.save_model(tmp_path / "bert", random_params(LimuBertModel4Pretrain(enc_cfg).init_params), enc_cfg)
    with pytest.raises(LimuBertError, match="cannot be exported to TFLite") as e:
        tflite_export.export_tflite(tmp_path / "bert", tmp_path / "bert.tflite")
    assert "\n" not in str(e.value)
    _save_pipeline(tmp_path / "run", head="cnn1_v1")
    with pytest.raises(LimuBertError) as e:
        tflite_export.export_tflite(tmp_path / "run", tmp_path / "out.tflite")
    message = str(e.value)
    assert "\n" not in message and "cnn1_v1" in message and "gru_v2" in message
    assert not (tmp_path / "out.tflite").exists() and not (tmp_path / "bert.tflite").exists()
