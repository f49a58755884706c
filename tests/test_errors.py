"""Bad input exits non-zero with one line naming the file, key or shape, and leaves no
partial output behind (issue 2, point 6)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from limubert_jax import checkpoint, convert, embed  # noqa: E402
from limubert_jax.classifier import GRUClassifier, gru_v2  # noqa: E402
from limubert_jax.model import MODEL_CONFIGS, LimuBertModel4Pretrain  # noqa: E402
from limubert_jax.torch_reference import LIMUBertModel4Pretrain  # noqa: E402


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _listing(path):
    return sorted(p.name for p in path.iterdir())


@pytest.fixture
def state_dict():
    torch.manual_seed(0)
    return LIMUBertModel4Pretrain(MODEL_CONFIGS["base_v1"]).state_dict()


def _from_torch_fails(tmp_path, capsys, obj, *fragments, raw_bytes=None):
    src = tmp_path / "in.pt"
    if raw_bytes is not None:
        src.write_bytes(raw_bytes)
    else:
        torch.save(obj, src)
    out = tmp_path / "out"
    assert convert.main(["from-torch", str(src), str(out)]) == 2
    line = _error_line(capsys)
    assert str(src) in line
    for fragment in fragments:
        assert fragment in line, line
    assert not out.exists()
    assert _listing(tmp_path) == ["in.pt"]  # no staging directory left behind
    return line


def test_garbage_file_is_not_a_state_dict(tmp_path, capsys):
    _from_torch_fails(tmp_path, capsys, None, "not a readable PyTorch file", raw_bytes=b"hello, not a pickle\n")


def test_pickled_tensor_list_is_not_a_state_dict(tmp_path, capsys):
    _from_torch_fails(tmp_path, capsys, [torch.zeros(3)], "not a state dict", "list")


def test_dict_with_non_tensor_values_is_not_a_state_dict(tmp_path, capsys):
    _from_torch_fails(tmp_path, capsys, {"epoch": 3, "lr": 0.1}, "not a state dict", "'epoch'")


def test_unknown_model_keys(tmp_path, capsys):
    _from_torch_fails(tmp_path, capsys, {"encoder.weight": torch.zeros(2, 2)}, "neither a LIMU-BERT", "encoder.weight")


def test_missing_key(tmp_path, capsys, state_dict):
    del state_dict["decoder.bias"]
    _from_torch_fails(tmp_path, capsys, state_dict, "missing key(s): decoder.bias")


def test_unexpected_key(tmp_path, capsys, state_dict):
    state_dict["extra.weight"] = torch.zeros(2)
    _from_torch_fails(tmp_path, capsys, state_dict, "unexpected key(s): extra.weight")


def test_shape_mismatch(tmp_path, capsys, state_dict):
    state_dict["decoder.weight"] = torch.zeros(9, 72)
    _from_torch_fails(tmp_path, capsys, state_dict, "'decoder.weight' has shape (9, 72), expected (6, 72)")


def test_wrong_rank_weight(tmp_path, capsys, state_dict):
    state_dict["transformer.embed.lin.weight"] = torch.zeros(72)
    _from_torch_fails(tmp_path, capsys, state_dict, "'transformer.embed.lin.weight' has shape (72,)")


def test_missing_input_file(tmp_path, capsys):
    assert convert.main(["from-torch", str(tmp_path / "nope.pt"), str(tmp_path / "out")]) == 2
    assert "nope.pt: no such file" in _error_line(capsys)
    assert _listing(tmp_path) == []


def test_existing_output_is_kept_without_overwrite(tmp_path, capsys, state_dict):
    torch.save(state_dict, tmp_path / "in.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert convert.main(["from-torch", str(tmp_path / "in.pt"), str(out)]) == 2
    assert "--overwrite" in _error_line(capsys)
    assert _listing(out) == ["keep.txt"]
    assert convert.main(["from-torch", str(tmp_path / "in.pt"), str(out), "--overwrite"]) == 0
    assert "model_config.json" in _listing(out)


def test_to_torch_of_a_non_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert convert.main(["to-torch", str(tmp_path / "empty"), str(tmp_path / "out.pt")]) == 2
    assert "model_config.json" in _error_line(capsys)
    assert _listing(tmp_path) == ["empty"]


# --- embedding ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    for name in ("base_v1", "base_v2"):
        cfg = MODEL_CONFIGS[name]
        checkpoint.save_model(root / name, LimuBertModel4Pretrain(cfg).init_params(jax.random.key(0)), cfg)
    clf = gru_v2(num_classes=3)
    checkpoint.save_model(root / "gru", GRUClassifier(clf).init_params(jax.random.key(0)), clf)
    return root


def _embed_fails(tmp_path, capsys, ckpt, windows, *fragments, extra=()):
    src = tmp_path / "x.npy"
    np.save(src, windows)
    out = tmp_path / "e.npy"
    assert embed.main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), *extra]) == 2
    line = _error_line(capsys)
    for fragment in fragments:
        assert fragment in line, line
    assert _listing(tmp_path) == ["x.npy"]  # no output, no staging file
    return line


def test_nine_feature_weights_with_six_feature_input(tmp_path, capsys, checkpoints):
    windows = np.zeros((4, 120, 6), np.float32)
    _embed_fails(tmp_path, capsys, checkpoints / "base_v2", windows, "x.npy", "(4, 120, 6)", "F=6", "trained on 9")


def test_normalized_input_needs_exact_feature_count(tmp_path, capsys, checkpoints):
    windows = np.zeros((4, 120, 9), np.float32)
    _embed_fails(tmp_path, capsys, checkpoints / "base_v1", windows, "F=9", "exactly 6", extra=["--input-normalized"])


@pytest.mark.parametrize("shape", [(120, 6), (2, 3, 120, 6)])
def test_wrong_rank(tmp_path, capsys, checkpoints, shape):
    _embed_fails(tmp_path, capsys, checkpoints / "base_v1", np.zeros(shape, np.float32), "(N, S, F)", str(shape))


def test_too_long_windows(tmp_path, capsys, checkpoints):
    _embed_fails(tmp_path, capsys, checkpoints / "base_v1", np.zeros((2, 121, 6), np.float32), "S=121", "1..120")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_names_the_window(tmp_path, capsys, checkpoints, bad):
    windows = np.ones((10, 120, 6), np.float32)
    windows[7, 30, 2] = bad
    _embed_fails(tmp_path, capsys, checkpoints / "base_v1", windows, "window 7", "NaN or Inf", extra=["--batch-size", "4"])


def test_classifier_checkpoint_cannot_embed(tmp_path, capsys, checkpoints):
    _embed_fails(tmp_path, capsys, checkpoints / "gru", np.zeros((1, 120, 6), np.float32), "gru_classifier checkpoint")


def test_input_that_is_not_npy(tmp_path, capsys, checkpoints):
    src = tmp_path / "x.npy"
    src.write_text("a,b,c\n")
    assert embed.main(["--checkpoint", str(checkpoints / "base_v1"), "--input", str(src), "--output", str(tmp_path / "e.npy")]) == 2
    assert "not a readable .npy" in _error_line(capsys)
    assert _listing(tmp_path) == ["x.npy"]
