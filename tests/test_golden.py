"""Parity with the original code's outputs for the released weights (docs/reference.md §9).

Tolerance: max abs error <= 1e-4 in float32 on CPU, as docs/reference.md states.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import RELEASED_DATASETS
from limubert_jax import convert
from limubert_jax.data.normalization import normalize
from limubert_jax.io import checkpoint
from limubert_jax.models.encoder import LimuBertModel4Pretrain
from limubert_jax.models.recurrent import GRUClassifier

TOL = 1e-4

pytestmark = pytest.mark.optimized  # the programs users run, compared with the original outputs


def test_normalization_matches_reference(reference):
    golden = np.load(reference / "golden" / "normalization.npz")
    for f in (6, 9):
        raw = golden[f"raw{f}"]
        np.testing.assert_allclose(normalize(raw, f), golden[f"norm{f}"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(normalize(jnp.asarray(raw), f)), golden[f"norm{f}"], rtol=0, atol=1e-6
        )


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    """Each released checkpoint converted once with `from_torch`."""
    pytest.importorskip("torch")
    out = {}
    root = tmp_path_factory.mktemp("released")
    for name in RELEASED_DATASETS:
        for kind in ("limu_bert", "gru_classifier"):
            src = reference / "weights" / f"{kind}_{name}_20_120.pt"
            convert.from_torch(src, root / f"{kind}_{name}")
            out[kind, name] = checkpoint.load_model(root / f"{kind}_{name}")
    return out


@pytest.mark.parametrize("name", RELEASED_DATASETS)
def test_released_limu_bert_outputs(reference, converted, name):
    golden = np.load(reference / "golden" / f"released_{name}.npz")
    kind, config, params = converted["limu_bert", name]
    assert kind == "limu_bert" and config.feature_num == 6 and config.seq_len == 120
    model = LimuBertModel4Pretrain(config)
    variables = {"params": params}

    embeddings = model.apply(variables, golden["inputs"], method=model.encode)
    np.testing.assert_allclose(embeddings, golden["embeddings"], rtol=0, atol=TOL)
    reconstruction = model.apply(variables, golden["inputs"])
    np.testing.assert_allclose(reconstruction, golden["reconstruction"], rtol=0, atol=TOL)
    masked = model.apply(variables, golden["mask_seqs"], jnp.asarray(golden["masked_pos"], jnp.int32))
    np.testing.assert_allclose(masked, golden["reconstruction_masked"], rtol=0, atol=TOL)
    mse = float(jnp.mean(jnp.square(masked - golden["targets"])))
    np.testing.assert_allclose(mse, float(golden["masked_mse"]), rtol=1e-5)


@pytest.mark.parametrize("name", RELEASED_DATASETS)
def test_released_gru_classifier_logits(reference, converted, name):
    golden = np.load(reference / "golden" / f"released_{name}.npz")
    kind, config, params = converted["gru_classifier", name]
    assert kind == "gru_classifier" and config.num_classes == golden["classifier_logits"].shape[1]
    logits = GRUClassifier(config).apply({"params": params}, golden["classifier_windows"])
    np.testing.assert_allclose(logits, golden["classifier_logits"], rtol=0, atol=TOL)


@pytest.mark.parametrize("kind", ["limu_bert", "gru_classifier"])
def test_released_weights_round_trip_bit_identical(reference, tmp_path, kind):
    torch = pytest.importorskip("torch")
    src = reference / "weights" / f"{kind}_uci_20_120.pt"
    convert.from_torch(src, tmp_path / "ckpt")
    convert.to_torch(tmp_path / "ckpt", tmp_path / "back.pt")
    original = torch.load(src, map_location="cpu", weights_only=True)
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert list(back) == list(original)
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape, key
        assert torch.equal(back[key].view(torch.int32), tensor.view(torch.int32)), key


def test_torch_reference_reproduces_golden(reference):
    """The in-project PyTorch model (used by the self-contained tests) is itself faithful."""
    torch = pytest.importorskip("torch")
    from torch_reference import LIMUBertModel4Pretrain

    from limubert_jax.models.encoder import MODEL_CONFIGS

    golden = np.load(reference / "golden" / "released_hhar.npz")
    model = LIMUBertModel4Pretrain(MODEL_CONFIGS["base_v1"]).eval()
    state = torch.load(reference / "weights" / "limu_bert_hhar_20_120.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        masked = model(torch.from_numpy(golden["mask_seqs"]), torch.from_numpy(golden["masked_pos"]))
    np.testing.assert_allclose(masked.numpy(), golden["reconstruction_masked"], rtol=0, atol=TOL)
