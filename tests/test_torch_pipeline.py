"""PyTorch without JAX: `convert to_torch` of a trained classifier run (.pt + .json, or
.safetensors written without torch) loaded by the standalone `limubert_torch.py` gives the
JAX pipeline's outputs; the standalone file imports nothing but torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import random_pipeline_params

torch = pytest.importorskip("torch", reason="the torch extra is not installed")

from limubert_jax import convert  # noqa: E402
from limubert_jax.export import limubert_torch, torch_export  # noqa: E402
from limubert_jax.io import checkpoint, safetensors  # noqa: E402
from limubert_jax.models import pipeline  # noqa: E402
from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain  # noqa: E402
from limubert_jax.models.pipeline import ClassifierPipelineConfig  # noqa: E402

SEQ, MERGE = 40, 20
STANDALONE = Path(limubert_torch.__file__)
# Tolerance on logits and probabilities: float32 in two frameworks (measured ~1e-6).
ATOL = 1e-4


def _save(root: Path, name: str, head: str, *, features: int = 6, encoder: bool = True) -> Path:
    enc = LimuBertConfig(feature_num=features, hidden=24, hidden_ff=48, n_layers=2, n_heads=4, seq_len=SEQ)
    config = ClassifierPipelineConfig(method=f"limu_{head}" if encoder else head, head=head,
                                      class_names=("a", "b", "c"), label="activity", seq_len=SEQ, merge=MERGE,
                                      feature_num=features, encoder=enc if encoder else None, sampling_rate_hz=20.0)
    params = random_pipeline_params(config)
    run = root / name
    checkpoint.save_model(run / pipeline.MODEL_DIR, params, config)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"limu_gru_v2": _save(root, "limu_gru_v2", "gru_v2"),
            "rgru": _save(root, "rgru", "rgru", encoder=False),
            "limu_lstm_v1_mag": _save(root, "limu_lstm_v1_mag", "lstm_v1", features=9)}


def _windows(n: int, features: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, SEQ, features)).astype(np.float32)
    x[..., 2] += 9.8  # gravity, m/s^2
    if features == 9:
        x[..., 6:9] = rng.normal(0.0, 40.0, (n, SEQ, 3))  # microtesla
    return x


def _jax(run: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    kind, config, params = checkpoint.load_model(run)
    return {k: np.asarray(v) for k, v in pipeline.predict_batch(params, x, config=config).items()}


@pytest.mark.parametrize("name", ["limu_gru_v2", "rgru", "limu_lstm_v1_mag"])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_the_standalone_pipeline_gives_the_jax_predictions(runs, tmp_path, name, suffix):
    run = runs[name]
    features = 9 if name.endswith("mag") else 6
    out = tmp_path / f"model{suffix}"
    source = run / pipeline.MODEL_DIR if name == "rgru" else run  # RUN_DIR or its model/ checkpoint
    assert convert.main(["to_torch", str(source), str(out)]) == 0
    assert (tmp_path / "model.json").exists() == (suffix == ".pt")
    model = limubert_torch.load_pipeline(out)
    x = _windows(5, features)
    expected = _jax(run, x)
    with torch.no_grad():
        logits = model.subwindow_logits(torch.from_numpy(x)).numpy()
        probabilities = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected["subwindow_logits"], atol=ATOL)
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=ATOL)
    assert model.predict(torch.from_numpy(x)) == [("a", "b", "c")[i] for i in expected["probabilities"].argmax(-1)]


def test_safetensors_are_written_without_torch_and_read_by_the_safetensors_package(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    out = tmp_path / "model.safetensors"
    convert.to_torch(runs["limu_gru_v2"], out)
    with pytest.raises(Exception, match="PyTorch is needed for this: pip install 'limubert-jax\\[torch\\]'"):
        convert.to_torch(runs["limu_gru_v2"], tmp_path / "model.pt")
    monkeypatch.undo()
    tensors, metadata = safetensors.loads(out.read_bytes())
    config = json.loads(metadata[torch_export.SAFETENSORS_CONFIG_KEY])
    assert config["class_names"] == ["a", "b", "c"] and config["head"] == "gru_v2" and config["merge"] == MERGE
    _, _, params = checkpoint.load_model(runs["limu_gru_v2"])
    np.testing.assert_array_equal(tensors["head.gru0.weight_ih_l0"], params["head"]["gru0"]["kernel_ih_l0"].T)
    from safetensors.numpy import load_file

    theirs = load_file(str(out))
    assert theirs.keys() == tensors.keys()
    for key in tensors:
        np.testing.assert_array_equal(theirs[key], tensors[key])


def test_safetensors_round_trip_of_every_dtype(tmp_path):
    arrays = {"f32": np.arange(6, dtype=np.float32).reshape(2, 3), "f64": np.array([1.5]), "i64": np.array([-3, 4]),
              "u8": np.array([1, 2, 255], np.uint8), "big_endian": np.arange(3, dtype=">f4"), "empty": np.zeros((0, 2))}
    data = safetensors.dumps(arrays, {"k": "v"})
    header_size = int.from_bytes(data[:8], "little")
    assert header_size % 8 == 0
    tensors, metadata = safetensors.loads(data)
    assert metadata == {"k": "v"} and sorted(tensors) == sorted(arrays)  # the library orders them itself
    for key, array in arrays.items():
        np.testing.assert_array_equal(tensors[key], array)
    with pytest.raises(ValueError, match="not a safetensors file"):
        safetensors.loads(b"\xff" * 16)
    (tmp_path / "all.safetensors").write_bytes(data)  # the standalone file's reader, empty tensor included
    theirs, metadata = limubert_torch.read_safetensors(tmp_path / "all.safetensors")
    assert metadata == {"k": "v"} and sorted(theirs) == sorted(arrays)
    for key, array in arrays.items():
        np.testing.assert_array_equal(theirs[key].numpy(), array)


def test_the_standalone_file_needs_nothing_but_torch(runs, tmp_path):
    out = tmp_path / "model.pt"
    convert.to_torch(runs["limu_gru_v2"], out)
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "limubert_torch.py").write_text(STANDALONE.read_text())  # as a user copies it
    x = _windows(2, 6)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys\n"
        "for name in ('numpy', 'jax', 'flax', 'limubert_jax'):\n"
        "    sys.modules[name] = None  # importing any of them now fails\n"
        f"sys.path.insert(0, {str(tmp_path / 'copy')!r})\n"
        "import torch, limubert_torch\n"
        f"model = limubert_torch.load_pipeline({str(out)!r})\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "print(model(x).tolist())\n"
    )
    torch.save(torch.from_numpy(x), tmp_path / "x.pt")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.asarray(json.loads(result.stdout)), _jax(runs["limu_gru_v2"], x)["probabilities"],
                               atol=ATOL)
    assert torch_export.FORMAT == limubert_torch.FORMAT and torch_export.FORMAT_VERSION == limubert_torch.FORMAT_VERSION
    assert torch_export.SAFETENSORS_CONFIG_KEY == limubert_torch.SAFETENSORS_CONFIG_KEY


def test_a_pretrained_limu_bert_loads_strictly_into_the_standalone_model(tmp_path):
    config = LimuBertConfig(feature_num=6, hidden=24, hidden_ff=48, n_layers=2, n_heads=4, seq_len=SEQ)
    model = LimuBertModel4Pretrain(config)
    params = model.init_params(jax.random.key(3))
    checkpoint.save_model(tmp_path / "bert", params, config)
    convert.to_torch(tmp_path / "bert", tmp_path / "bert.pt")
    standalone = limubert_torch.LIMUBertModel4Pretrain(**json.loads((tmp_path / "bert.json").read_text()))
    standalone.load_state_dict(torch.load(tmp_path / "bert.pt", weights_only=True), strict=True)
    x = _windows(3, 6)
    normalized = limubert_torch.normalize(torch.from_numpy(x), 6)
    with torch.no_grad():
        embeddings = standalone.encode(normalized).numpy()
        reconstruction = standalone(normalized).numpy()
    np.testing.assert_allclose(embeddings, np.asarray(model.apply({"params": params}, normalized.numpy(),
                                                                  method=model.encode)), atol=ATOL)
    np.testing.assert_allclose(reconstruction, np.asarray(model.apply({"params": params}, normalized.numpy())),
                               atol=ATOL)


def test_unsupported_heads_and_existing_outputs_are_one_line_errors(runs, tmp_path, capsys):
    run = _save(tmp_path, "cnn", "cnn1_v1")
    assert convert.main(["to_torch", str(run), str(tmp_path / "cnn.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "the cnn1_v1 head has no PyTorch version" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cnn.pt").exists() and not (tmp_path / "cnn.json").exists()
    (tmp_path / "m.json").write_text("mine")
    assert convert.main(["to_torch", str(runs["rgru"]), str(tmp_path / "m.pt")]) == 2
    assert "m.json: already exists (pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "m.json").read_text() == "mine" and not (tmp_path / "m.pt").exists()
    assert convert.main(["to_torch", str(runs["rgru"]), str(tmp_path / "m.pt"), "--format=safetensors"]) == 2
    assert "--format=safetensors but the name ends in .pt" in capsys.readouterr().err


@pytest.mark.parametrize("command, out, blocked, extra", [
    ("to_torch", "m.pt", "torch", "torch"),
    ("to_onnx", "m.onnx", "onnx", "onnx"),
    ("to_tflite", "m.tflite", "litert_torch", "tflite"),
])
def test_a_missing_extra_is_one_line_naming_it(runs, tmp_path, capsys, monkeypatch, command, out, blocked, extra):
    monkeypatch.setitem(sys.modules, blocked, None)  # `import <blocked>` now fails
    assert convert.main([command, str(runs["limu_gru_v2"]), str(tmp_path / out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"pip install 'limubert-jax[{extra}]'" in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
