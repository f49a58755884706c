"""Self-contained PyTorch interop: Flax -> to-torch -> strict load into the in-project
PyTorch model (written from docs/reference.md) gives the same outputs, and back, bit for bit."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference  # noqa: E402
from torch_reference import ClassifierGRU, LIMUBertModel4Pretrain  # noqa: E402

from limubert_jax import convert  # noqa: E402
from limubert_jax.io import checkpoint  # noqa: E402
from limubert_jax.models.encoder import (  # noqa: E402
    LAYER_NORM_EPS,
    MODEL_CONFIGS,
    LimuBertConfig,
    LimuBertModel4Pretrain,
)
from limubert_jax.models.recurrent import GRUClassifier, GRUClassifierConfig, gru_v2  # noqa: E402

ATOL = 2e-5  # float32, same arithmetic in a different order

SMALL = LimuBertConfig(feature_num=9, hidden=32, hidden_ff=48, n_layers=2, n_heads=2, seq_len=40, emb_norm=False)


def test_the_oracle_and_the_package_share_the_specs_constants():
    # The oracle is written from docs/reference.md, not from the package: the constant is stated twice.
    assert torch_reference.LAYER_NORM_EPS == LAYER_NORM_EPS


def _assert_params_equal(a, b):
    flat_a = jax.tree_util.tree_leaves_with_path(a)
    flat_b = jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32)), path


@pytest.mark.parametrize("cfg", [MODEL_CONFIGS["base_v1"], MODEL_CONFIGS["base_v2"], SMALL], ids=["v1", "v2", "small"])
def test_flax_to_torch_and_back(tmp_path, cfg):
    model = LimuBertModel4Pretrain(cfg)
    params = model.init_params(jax.random.key(7))
    checkpoint.save_model(tmp_path / "ckpt", params, cfg)
    kind, _ = convert.to_torch(tmp_path / "ckpt", tmp_path / "model.pt")
    assert kind == "limu_bert"

    torch_model = LIMUBertModel4Pretrain(cfg).eval()
    torch_model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, cfg.seq_len, cfg.feature_num)).astype(np.float32)
    pos = np.stack([rng.choice(cfg.seq_len - 1, 18, replace=False) for _ in range(4)])
    with torch.no_grad():
        t_full = torch_model(torch.from_numpy(x)).numpy()
        t_masked = torch_model(torch.from_numpy(x), torch.from_numpy(pos)).numpy()
        t_emb = torch_model.transformer(torch.from_numpy(x)).numpy()
    # One compiled program for the three outputs (eagerly, every operation compiles on its own).
    full, masked, emb = jax.jit(lambda p, x, pos: (
        model.apply({"params": p}, x), model.apply({"params": p}, x, pos),
        model.apply({"params": p}, x, method=model.encode)))(params, x, pos)
    np.testing.assert_allclose(full, t_full, rtol=0, atol=ATOL)
    np.testing.assert_allclose(masked, t_masked, rtol=0, atol=ATOL)
    np.testing.assert_allclose(emb, t_emb, rtol=0, atol=ATOL)

    reference_json = json.loads((tmp_path / "model.json").read_text())
    assert reference_json == {
        "feature_num": cfg.feature_num, "hidden": cfg.hidden, "hidden_ff": cfg.hidden_ff,
        "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "seq_len": cfg.seq_len, "emb_norm": cfg.emb_norm,
    }

    # Back: the config comes from the weights plus the flags the weights cannot carry.
    convert.from_torch(tmp_path / "model.pt", tmp_path / "back", n_layers=cfg.n_layers,
                       n_heads=cfg.n_heads, emb_norm=cfg.emb_norm)
    _, back_cfg, back_params = checkpoint.load_model(tmp_path / "back")
    assert back_cfg == cfg
    _assert_params_equal(params, back_params)


def test_torch_initialised_model_imports_with_same_outputs(tmp_path):
    cfg = MODEL_CONFIGS["base_v1"]
    torch.manual_seed(0)
    torch_model = LIMUBertModel4Pretrain(cfg).eval()
    torch.save(torch_model.state_dict(), tmp_path / "init.pt")
    assert convert.main(["from_torch", str(tmp_path / "init.pt"), str(tmp_path / "ckpt")]) == 0
    _, loaded_cfg, params = checkpoint.load_model(tmp_path / "ckpt")
    x = np.random.default_rng(1).normal(size=(2, 120, 6)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(LimuBertModel4Pretrain(loaded_cfg).apply({"params": params}, x), expected, atol=ATOL)
    assert convert.main(["to_torch", str(tmp_path / "ckpt"), str(tmp_path / "out.pt")]) == 0
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    for key, tensor in torch_model.state_dict().items():
        assert torch.equal(out[key], tensor), key


@pytest.mark.parametrize(
    "cfg",
    [gru_v2(num_classes=5),
     GRUClassifierConfig(input_dim=16, rnn_hidden=(8,), rnn_layers=(3,), linear_dims=(12, 4), activation=True)],
    ids=["gru_v2", "deep_activ"],
)
def test_gru_classifier_round_trip(tmp_path, cfg):
    torch.manual_seed(1)
    torch_model = ClassifierGRU(cfg).eval()
    torch.save(torch_model.state_dict(), tmp_path / "clf.pt")
    kind, inferred = convert.from_torch(tmp_path / "clf.pt", tmp_path / "ckpt")
    assert kind == "gru_classifier"
    dims = ("rnn_hidden", "rnn_layers", "linear_dims")
    assert [getattr(inferred, d) for d in dims] == [getattr(cfg, d) for d in dims]
    # The ReLU flag leaves no trace in the weights; the test model is built with the right one.
    _, _, params = checkpoint.load_model(tmp_path / "ckpt")
    x = np.random.default_rng(2).normal(size=(6, 20, cfg.input_dim)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(GRUClassifier(cfg).apply({"params": params}, x), expected, rtol=0, atol=ATOL)

    convert.to_torch(tmp_path / "ckpt", tmp_path / "back.pt")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert list(back) == list(torch_model.state_dict())
    for key, tensor in torch_model.state_dict().items():
        assert torch.equal(back[key], tensor), key
    reference_json = json.loads((tmp_path / "back.json").read_text())
    assert reference_json["rnn_io"][0] == [cfg.input_dim, cfg.rnn_hidden[0]]
    assert reference_json["num_layers"] == list(cfg.rnn_layers)
    strict = ClassifierGRU(inferred)
    strict.load_state_dict(back, strict=True)
