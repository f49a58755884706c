"""An encoder shorter than the windows (docs/downstream.md): a LIMU-BERT of seq_len 10 on
windows of 40 steps encodes each 10-step piece on its own in every downstream task, the
classifier's sub-windows default to the encoder's 10 steps, the saved classifier predicts
what training computed, and its ONNX and PyTorch exports agree with JAX. What cannot fit is
refused in one line before anything runs.

The data: 60 windows of 40 x 9 in the npy layout (the encoder takes the first 6 features),
a label per 10-step piece, so that the sub-windows' labels come from their own steps."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from conftest import random_params
from limubert_jax import config_lib, predict, tasks
from limubert_jax.data.normalization import normalize
from limubert_jax.downstream import labels, runners
from limubert_jax.io import checkpoint
from limubert_jax.models import pipeline
from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain, encode_plain
from limubert_jax.models.inference import embed_windows
from limubert_jax.models.pipeline import ClassifierPipelineConfig
from limubert_jax.runtime.errors import LimuBertError

ROOT = Path(__file__).resolve().parents[1]
N, SEQ, PIECE, FEATURES = 60, 40, 10, 9
CLASSES = ["sit", "stand", "walk"]
ENCODER = LimuBertConfig(feature_num=6, hidden=16, hidden_ff=32, n_layers=1, n_heads=2, seq_len=PIECE)


def _windows_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """Raw windows (N, SEQ, FEATURES) and per-step labels (N, SEQ, 1): piece j of window i is
    class (i + j) % 3."""
    rng = np.random.default_rng(0)
    per_piece = (np.arange(N)[:, None] + np.arange(SEQ // PIECE)[None, :]) % len(CLASSES)
    steps = np.repeat(per_piece, PIECE, axis=1)[:, :, None]
    windows = rng.normal(size=(N, SEQ, FEATURES)).astype(np.float32) + steps
    windows[..., 2] += 9.8
    windows[..., 6:9] *= 30.0  # magnetometer, uT
    return windows, steps


def _save_encoder(path: Path, config: LimuBertConfig) -> Path:
    return checkpoint.save_model(path, random_params(LimuBertModel4Pretrain(config).init_params, 3), config)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config maker, raw windows, the encoder's checkpoint)."""
    root = tmp_path_factory.mktemp("short-encoder")
    arrays = root / "arrays"
    arrays.mkdir()
    windows, steps = _windows_and_labels()
    np.save(arrays / f"data_20_{SEQ}.npy", windows)
    np.save(arrays / f"label_20_{SEQ}.npy", steps)
    (arrays / "label_columns.json").write_text(json.dumps({"activity": CLASSES}))
    encoder = _save_encoder(root / "encoder", ENCODER)

    def make(task: str, **downstream) -> ml_collections.ConfigDict:
        config = config_lib.sibling_config(str(ROOT / "tests" / "configs" / "test.py"), "test").get_config()
        config.dataset.update(name="imu_npy", version=f"20_{SEQ}", manual_dir=str(arrays), data_dir=str(root / "tfds"))
        config.task = task
        config.downstream.update(encoder=str(encoder), label_rate=0.25, num_epochs=2, tsne_points=20)
        config.downstream.update(downstream)
        return config

    return make, windows, encoder


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    """The workdir of one `embed+classify+finetune` chain, and its config."""
    make, _, _ = setup
    config = make("embed+classify+finetune")
    workdir = tmp_path_factory.mktemp("short-encoder-work")
    tasks.run(config, workdir)
    return workdir, config


def _pieces_encoded(params, windows: np.ndarray) -> np.ndarray:
    """The encoder on each PIECE-step piece by itself, put side by side: [N, SEQ, H]."""
    x = normalize(windows, ENCODER.feature_num)
    return np.concatenate([np.asarray(encode_plain(params["transformer"], x[:, j:j + PIECE], ENCODER))
                           for j in range(0, SEQ, PIECE)], axis=1)


def test_embeddings_are_the_encoder_on_each_piece(setup, trained):
    _, windows, encoder = setup
    workdir, _ = trained
    _, _, params = checkpoint.load_model(encoder)
    embeddings = np.load(workdir / "embed" / "embeddings.npy")
    assert embeddings.shape == (N, SEQ, ENCODER.hidden)
    expected = _pieces_encoded(params, windows)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5, rtol=0)
    # The same through the Python function, and through the model's `encode`.
    np.testing.assert_allclose(embed_windows(params, ENCODER, windows), expected, atol=1e-5, rtol=0)
    model = LimuBertModel4Pretrain(ENCODER)
    encoded = model.apply({"params": params}, normalize(windows, ENCODER.feature_num), method=model.encode)
    np.testing.assert_allclose(np.asarray(encoded), expected, atol=1e-5, rtol=0)


def _test_split(config):
    data = labels.load_labelled(config)
    return data, labels.protocol_split(data, config, PIECE)


@pytest.mark.parametrize("task, method", [("classify", "limu_gru_v2"), ("finetune", "finetune_gru_v2")])
def test_classifiers_train_on_piece_subwindows_and_predict_as_trained(setup, trained, task, method):
    _, _, encoder = setup
    workdir, config = trained
    out = runners.run_dir(workdir, task, method, config)
    metrics = json.loads((out / "metrics.json").read_text())
    settings = json.loads((out / runners.SETTINGS_FILE).read_text())
    assert metrics["merge"] == settings["merge"] == PIECE  # unset: the encoder's seq_len
    classifier = predict.load_classifier(out)
    assert (classifier.config.seq_len, classifier.config.merge, classifier.config.encoder.seq_len) == (SEQ, PIECE, PIECE)
    # The saved pipeline on the raw test windows gives the run's test accuracy: it encodes
    # and cuts the windows as training did.
    data, proto = _test_split(config)
    per_window = SEQ // PIECE
    index = proto.split.test.index
    rows = np.unique(index // per_window)
    predicted = classifier.predict(data.windows[rows]).predicted_subwindows.reshape(-1)
    chosen = np.searchsorted(rows, index // per_window) * per_window + index % per_window
    assert np.mean(predicted[chosen] == proto.labels("test")) == metrics["accuracy"]
    # A sub-window's label is its own piece's (piece j of window i is class (i + j) % 3).
    np.testing.assert_array_equal(proto.labels("test"), (index // per_window + index % per_window) % len(CLASSES))
    if task == "finetune":  # trained end to end: the encoder moved
        _, _, before = checkpoint.load_model(encoder)
        after = checkpoint.load_model(out / pipeline.MODEL_DIR)[2]["encoder"]["transformer"]
        moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before["transformer"], after)
        assert any(jax.tree.leaves(moved))


def test_onnx_export_of_the_pipeline_equals_jax(setup, trained, tmp_path):
    pytest.importorskip("onnx", reason="needs the onnx extra")
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    from limubert_jax.export import onnx_export

    _, windows, _ = setup
    workdir, config = trained
    out = runners.run_dir(workdir, "finetune", "finetune_gru_v2", config)
    path = tmp_path / "classifier.onnx"
    summary = onnx_export.export_onnx(out, path)
    assert summary["inputs"] == {"windows": [onnx_export.BATCH, SEQ, ENCODER.feature_num]}
    assert onnx_export.check_onnx(path, out / pipeline.MODEL_DIR, windows[:7, :, :ENCODER.feature_num]) < 1e-4


def test_torch_pipeline_equals_jax(setup, trained, tmp_path):
    torch = pytest.importorskip("torch", reason="needs the torch extra")
    from limubert_jax import convert
    from limubert_jax.export import limubert_torch

    _, windows, _ = setup
    workdir, config = trained
    out = runners.run_dir(workdir, "classify", "limu_gru_v2", config)
    convert.to_torch(out, tmp_path / "classifier.pt")
    model = limubert_torch.load_pipeline(tmp_path / "classifier.pt")
    _, pipeline_config, params = checkpoint.load_model(out / pipeline.MODEL_DIR)
    expected = pipeline.predict_batch(params, windows[:7], config=pipeline_config)
    with torch.no_grad():
        logits = model.subwindow_logits(torch.from_numpy(windows[:7])).numpy()
    np.testing.assert_allclose(logits, np.asarray(expected["subwindow_logits"]), atol=1e-4, rtol=0)


def test_merge_defaults_to_a_shorter_encoders_seq_len():
    config = ml_collections.ConfigDict({"downstream": {"merge": None}})
    assert labels.resolve_merge(config, PIECE, SEQ) == PIECE
    assert labels.resolve_merge(config, SEQ, SEQ) == 20  # an encoder of the windows' length: the reference's 20
    assert labels.resolve_merge(config, None, SEQ) == 20  # no encoder (a baseline)
    config.downstream.merge = 5
    assert labels.resolve_merge(config, PIECE, SEQ) == 5


def _one_line_refusal(make, tmp_path, message: str, **downstream):
    with pytest.raises(LimuBertError, match=message) as caught:
        tasks.run(make("classify", **downstream), tmp_path / "work")
    assert "\n" not in str(caught.value) and not (tmp_path / "work").exists()


def test_what_does_not_fit_is_a_one_line_error(setup, tmp_path):
    make, windows, _ = setup
    # Windows that are not a multiple of the encoder's seq_len.
    odd = _save_encoder(tmp_path / "odd", LimuBertConfig(feature_num=6, hidden=8, hidden_ff=16, n_layers=1,
                                                         n_heads=2, seq_len=15))
    _one_line_refusal(make, tmp_path, r"^the encoder takes windows of 15 steps x 6 features; dataset imu_npy/20_40 "
                                      r"has 40 x 9: windows of a multiple of 15 steps .* would fit$", encoder=str(odd))
    # An encoder of more features than the data has.
    wide = _save_encoder(tmp_path / "wide", LimuBertConfig(feature_num=12, hidden=8, hidden_ff=16, n_layers=1,
                                                           n_heads=2, seq_len=PIECE))
    _one_line_refusal(make, tmp_path, r"^the encoder takes windows of 10 steps x 12 features; dataset imu_npy/20_40 "
                                      r"has 40 x 9: .* with 12 or more features", encoder=str(wide))
    # Sub-windows across the encoder's pieces.
    _one_line_refusal(make, tmp_path, r"^config\.downstream\.merge=20 must divide the encoder's seq_len 10: it "
                                      r"encodes the 40-step windows of imu_npy/20_40 in 10-step pieces", merge=20)
    # The model and its saved pipeline say the same.
    with pytest.raises(LimuBertError, match=r"S=35 time steps; the model takes 1\.\.10, or a multiple of 10"):
        embed_windows(random_params(LimuBertModel4Pretrain(ENCODER).init_params), ENCODER, windows[:2, :35])
    with pytest.raises(ValueError, match=r"merge \(20\) must divide the encoder's seq_len \(10\)"):
        ClassifierPipelineConfig(method="limu_gru_v2", head="gru_v2", class_names=CLASSES, label="activity",
                                 seq_len=SEQ, merge=20, feature_num=6, encoder=ENCODER)
