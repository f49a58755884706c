"""ONNX export (limubert_jax/export/onnx_export.py): ONNX Runtime agrees with the JAX
computation on raw windows, for the encoder alone and for whole classifiers."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import random_params, random_pipeline_params

onnx = pytest.importorskip("onnx", reason="ONNX export tests need 'onnx' (pip install 'limubert-jax[onnx]')")
pytest.importorskip("onnxruntime", reason="ONNX export tests need 'onnxruntime' (pip install 'limubert-jax[onnx]')")


from limubert_jax.export import onnx_export  # noqa: E402
from limubert_jax.io import checkpoint  # noqa: E402
from limubert_jax.models import pipeline  # noqa: E402
from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain  # noqa: E402
from limubert_jax.models.pipeline import ClassifierPipelineConfig  # noqa: E402
from limubert_jax.runtime.errors import LimuBertError  # noqa: E402

SEQ_LEN, MERGE = 40, 20
CLASSES = ("walk", "sit", "run")
TOLERANCE = 1e-4


def _encoder_config(feature_num: int = 6) -> LimuBertConfig:
    return LimuBertConfig(feature_num=feature_num, hidden=24, hidden_ff=48, n_layers=2, n_heads=4, seq_len=SEQ_LEN)


def _raw_windows(batch: int, feature_num: int, seed: int = 0) -> np.ndarray:
    """Raw readings at sensor scale: acc m/s^2 around gravity, gyro rad/s, mag in uT."""
    rng = np.random.default_rng(seed)
    scale = np.array([6.0, 6.0, 6.0, 1.0, 1.0, 1.0, 30.0, 30.0, 30.0], np.float32)[:feature_num]
    x = rng.normal(size=(batch, SEQ_LEN, feature_num)).astype(np.float32) * scale
    x[..., 2] += 9.8
    return x


def _save_encoder(path, feature_num: int = 6):
    cfg = _encoder_config(feature_num)
    checkpoint.save_model(path, random_params(LimuBertModel4Pretrain(cfg).init_params), cfg)
    return path


def _save_pipeline(run_dir, head: str, *, feature_num: int = 6, with_encoder: bool = True, seed: int = 1):
    enc_cfg = _encoder_config(feature_num) if with_encoder else None
    cfg = ClassifierPipelineConfig(method=f"limu_{head}" if with_encoder else head, head=head, class_names=CLASSES,
                                   label="activity", seq_len=SEQ_LEN, merge=MERGE, feature_num=feature_num,
                                   encoder=enc_cfg)
    params = random_pipeline_params(cfg, seed)
    checkpoint.save_model(run_dir / pipeline.MODEL_DIR, params, cfg)
    return run_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (source, exported .onnx path, feature_num, export summary)."""
    root = tmp_path_factory.mktemp("onnx")
    sources = {
        "encoder": (_save_encoder(root / "bert6"), 6),
        "encoder9": (_save_encoder(root / "bert9", 9), 9),
        "gru_v2": (_save_pipeline(root / "run_gru_v2", "gru_v2"), 6),
        "rgru": (_save_pipeline(root / "run_rgru", "rgru", with_encoder=False, seed=2), 6),
        "lstm_v1": (_save_pipeline(root / "run_lstm_v1", "lstm_v1", seed=3), 6),
        "gru_v1_mag": (_save_pipeline(root / "run_gru_v1_mag", "gru_v1", feature_num=9, seed=4), 9),
    }
    out = {}
    for name, (source, feature_num) in sources.items():
        # A run directory for the classifiers; its model/ for one of them (both are accepted).
        src = source / pipeline.MODEL_DIR if name == "lstm_v1" else source
        path = root / "exported" / f"{name}.onnx"
        out[name] = (src, path, feature_num, onnx_export.export_onnx(src, path))
    return out


@pytest.mark.parametrize("name", ["encoder", "encoder9", "gru_v2", "rgru", "lstm_v1", "gru_v1_mag"])
def test_onnxruntime_matches_jax(models, name):
    source, path, feature_num, _ = models[name]
    windows = _raw_windows(5, feature_num, seed=5)
    assert onnx_export.check_onnx(path, source, windows) <= TOLERANCE
    # The same file at another batch size (the dynamic axis): one window gives its row of five.
    kind, config, params = checkpoint.load_model(source)
    expected = onnx_export._reference_outputs(kind, config, params, windows)
    single = onnx_export.run_onnx(path, windows[:1])
    for key, value in single.items():
        assert value.shape[0] == 1 and np.max(np.abs(value - expected[key][:1])) <= TOLERANCE, key


def test_outputs_and_shapes(models):
    _, path, _, summary = models["gru_v2"]
    assert summary["kind"] == "classifier_pipeline"
    assert summary["inputs"] == {"windows": ["batch", SEQ_LEN, 6]}
    assert summary["outputs"] == {"probabilities": ["batch", 3], "subwindow_logits": ["batch", SEQ_LEN // MERGE, 3]}
    assert summary["bytes"] == path.stat().st_size > 0
    out = onnx_export.run_onnx(path, _raw_windows(5, 6))
    assert out["probabilities"].shape == (5, 3) and out["subwindow_logits"].shape == (5, 2, 3)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    _, enc_path, _, enc_summary = models["encoder"]
    assert enc_summary["kind"] == "limu_bert"
    assert enc_summary["outputs"] == {"embeddings": ["batch", SEQ_LEN, 24]}
    assert onnx_export.run_onnx(enc_path, _raw_windows(3, 6))["embeddings"].shape == (3, SEQ_LEN, 24)


def test_graph_is_valid_with_dynamic_batch_and_metadata(models):
    _, path, _, _ = models["gru_v1_mag"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == onnx_export.OPSET
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", SEQ_LEN, 9]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["class_names"]) == list(CLASSES)
    assert meta["kind"] == "classifier_pipeline"
    config = ClassifierPipelineConfig.from_dict(json.loads(meta["config"]))
    assert config.head == "gru_v1" and config.feature_num == 9 and config.encoder.hidden == 24
    assert json.loads(meta["normalization"]) == {"gravity": 9.8, "mag_gamma": 1.0, "mag_eps": 1e-5}
    # The shared encoder block is stored once, whatever n_layers.
    names = [t.name for t in model.graph.initializer]
    assert names.count("transformer.proj.kernel") == 1


def test_unsupported_head_refused(tmp_path):
    _save_pipeline(tmp_path / "run", "cnn1_v1")
    with pytest.raises(LimuBertError) as e:
        onnx_export.export_onnx(tmp_path / "run", tmp_path / "out.onnx")
    message = str(e.value)
    assert "\n" not in message and "cnn1_v1" in message and "gru_v2" in message and "lstm_v1" in message
    assert not (tmp_path / "out.onnx").exists()


def test_existing_output_refused_unless_overwrite(models, tmp_path):
    source, _, _, _ = models["encoder"]
    out = tmp_path / "enc.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(LimuBertError, match="already exists") as e:
        onnx_export.export_onnx(source, out)
    assert "\n" not in str(e.value)
    assert out.read_bytes() == b"keep me"
    summary = onnx_export.export_onnx(source, out, overwrite=True)
    assert out.stat().st_size == summary["bytes"]
    assert onnx_export.check_onnx(out, source, _raw_windows(2, 6)) <= TOLERANCE


def test_missing_onnx_names_the_extra(models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    source, _, _, _ = models["encoder"]
    with pytest.raises(LimuBertError) as e:
        onnx_export.export_onnx(source, tmp_path / "x.onnx")
    message = str(e.value)
    assert "\n" not in message and "pip install 'limubert-jax[onnx]'" in message
    assert not (tmp_path / "x.onnx").exists()
