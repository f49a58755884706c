"""Downstream evaluation pieces: metrics, t-SNE, result plots and the Table-3 report."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from limubert_jax.downstream import evaluation, report, tsne
from limubert_jax.io import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------
# Metrics

# Class 2 is never predicted.
LABELS_A = [0, 0, 1, 1, 2, 2]
PREDS_A = [0, 1, 1, 1, 0, 0]


def test_confusion_matrix_rows_true_columns_predicted():
    matrix = evaluation.confusion_matrix(LABELS_A, PREDS_A, 3)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 2, 0], [2, 0, 0]])
    # Classes that never occur give zero rows and columns.
    np.testing.assert_array_equal(evaluation.confusion_matrix([1], [1], 3), [[0, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_metrics_with_a_class_never_predicted():
    assert evaluation.accuracy(LABELS_A, PREDS_A) == pytest.approx(0.5)
    # class 0: P 1/3, R 1/2 -> F1 0.4; class 1: P 2/3, R 1 -> 0.8; class 2: 0. Mean over 3.
    assert evaluation.macro_f1(LABELS_A, PREDS_A, 3) == pytest.approx((0.4 + 0.8 + 0.0) / 3)


def test_macro_f1_averages_over_labels_or_predictions():
    labels, preds = [0, 0, 1, 1], [0, 2, 1, 1]
    # Class 2 is predicted but absent from the labels: F1 0, counted. Class 3 never occurs
    # on either side: left out. (Same as sklearn's f1_score(average="macro").)
    assert evaluation.macro_f1(labels, preds, 4) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert evaluation.accuracy(labels, preds) == pytest.approx(0.75)


def test_perfect_and_all_wrong_predictions():
    labels = np.array([0, 1, 2, 2, 1])
    assert evaluation.accuracy(labels, labels) == 1.0
    assert evaluation.macro_f1(labels, labels, 5) == 1.0  # classes 3, 4 absent: not averaged
    wrong = (labels + 1) % 3
    assert evaluation.accuracy(labels, wrong) == 0.0
    assert evaluation.macro_f1(labels, wrong, 3) == 0.0


def test_classification_metrics_dict():
    names = ["walk", "sit", "stand"]
    metrics = evaluation.classification_metrics(np.array(LABELS_A), np.array(PREDS_A, np.int32), names)
    json.dumps(metrics)  # JSON-friendly
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["macro_f1"] == pytest.approx(0.4)
    assert metrics["num_examples"] == 6
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [2, 0, 0]]
    assert metrics["macro_f1_classes"] == names
    assert metrics["per_class"]["walk"] == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4, "support": 2})
    assert metrics["per_class"]["sit"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert metrics["per_class"]["stand"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert isinstance(metrics["per_class"]["walk"]["support"], int)

    absent = evaluation.classification_metrics([0, 0, 1, 1], [0, 2, 1, 1], ["a", "b", "c", "d"])
    assert absent["macro_f1_classes"] == ["a", "b", "c"]
    assert absent["per_class"]["d"]["support"] == 0
    assert absent["macro_f1"] == pytest.approx(5 / 9)


@pytest.mark.parametrize(
    "labels, preds, num_classes, match",
    [
        ([0, 1, 2], [0, 1], 3, "length"),
        ([0, 1, 3], [0, 1, 2], 3, "labels out of range"),
        ([0, -1, 2], [0, 1, 2], 3, "labels out of range"),
        ([0, 1, 2], [0, 1, 5], 3, "predictions out of range"),
        ([0, 1.5, 2], [0, 1, 2], 3, "integer"),
        ([[0, 1]], [[0, 1]], 3, "1-D"),
        ([], [], 3, "no examples"),
    ],
)
def test_metric_errors(labels, preds, num_classes, match):
    with pytest.raises(ValueError, match=match):
        evaluation.confusion_matrix(labels, preds, num_classes)
    with pytest.raises(ValueError, match=match):
        evaluation.classification_metrics(labels, preds, [f"c{i}" for i in range(num_classes)])


def test_accuracy_and_f1_errors():
    with pytest.raises(ValueError, match="length"):
        evaluation.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="out of range"):
        evaluation.macro_f1([0, 1], [0, 2], 2)
    with pytest.raises(ValueError, match="duplicates"):
        evaluation.classification_metrics([0], [0], ["a", "a"])


# --------------------------------------------------------------------------------------
# t-SNE


def _clusters(n_per: int = 50, dim: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, dim)) * 8.0
    labels = np.repeat(np.arange(3), n_per)
    return (centers[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def _knn_purity(points: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    d = np.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=-1)
    np.fill_diagonal(d, np.inf)
    neighbours = np.argsort(d, axis=1)[:, :k]
    return float(np.mean(labels[neighbours] == labels[:, None]))


def test_perplexity_calibration_hits_the_target():
    x, _ = _clusters()
    rng = np.random.default_rng(1)
    x_wide = rng.normal(size=(120, 7)) * np.array([1e-2, 1, 1, 1, 10, 100, 1e3])  # uneven scales
    for data, perplexity in ((x, 30.0), (x, 5.0), (x_wide, 50.0)):
        p, beta = tsne.conditional_affinities(data, perplexity)
        assert np.all(np.isfinite(p)) and np.all(beta > 0)
        np.testing.assert_array_equal(np.diag(p), 0.0)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
        safe = np.where(p > 0, p, 1.0)
        row_perplexity = np.exp(-np.sum(p * np.log(safe), axis=1))
        np.testing.assert_allclose(row_perplexity, perplexity, rtol=1e-3)


def test_joint_probabilities_symmetric_and_normalised():
    x, _ = _clusters(n_per=20)
    p = tsne.joint_probabilities(x, 10.0)
    np.testing.assert_allclose(p, p.T, atol=1e-9)
    assert p.sum() == pytest.approx(1.0, rel=1e-5)


def test_kl_gradient_matches_autodiff():
    rng = np.random.default_rng(2)
    x, _ = _clusters()
    n = len(x)
    p = jnp.asarray(tsne.joint_probabilities(x, 30.0))
    y = jnp.asarray(rng.normal(size=(n, 2)).astype(np.float32))
    off = ~jnp.eye(n, dtype=bool)

    def kl(y):
        num = jnp.where(off, 1.0 / (1.0 + jnp.sum((y[:, None] - y[None]) ** 2, -1)), 0.0)
        q = num / jnp.sum(num)
        return jnp.sum(jnp.where(off, p * (jnp.log(jnp.where(off, p, 1.0)) - jnp.log(jnp.where(off, q, 1.0))), 0.0))

    expected = jax.jit(jax.grad(kl))(y)
    for rows in (n, 64):  # one block, and blocks with zero-padded rows
        blocks = -(-n // rows)
        p_blocks = jnp.pad(p, ((0, blocks * rows - n), (0, 0))).reshape(blocks, rows, n)
        got = jax.jit(tsne._kl_gradient)(p_blocks, y, jnp.float32(1.0))
        np.testing.assert_allclose(got, expected, atol=1e-5 * float(jnp.max(jnp.abs(expected))))


def test_tsne_separates_clusters_and_is_deterministic():
    x, labels = _clusters()
    y = tsne.tsne(x, perplexity=30, seed=0)
    assert y.shape == (150, 2) and y.dtype == np.float32
    assert np.all(np.isfinite(y))
    assert _knn_purity(y, labels) > 0.95
    np.testing.assert_array_equal(y, tsne.tsne(x, perplexity=30, seed=0))


def test_tsne_random_init_seeded():
    x, labels = _clusters(n_per=30)
    a = tsne.tsne(x, perplexity=15, num_iters=400, seed=3, init="random")
    b = tsne.tsne(x, perplexity=15, num_iters=400, seed=3, init="random")
    c = tsne.tsne(x, perplexity=15, num_iters=400, seed=4, init="random")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(np.isfinite(a)) and _knn_purity(a, labels) > 0.95


def test_tsne_errors():
    x, _ = _clusters(n_per=5)
    with pytest.raises(ValueError, match="perplexity"):
        tsne.tsne(x, perplexity=30)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        tsne.tsne(x[0])
    with pytest.raises(ValueError, match="learning_rate"):
        tsne.tsne(x, perplexity=3, learning_rate="fast")
    with pytest.raises(ValueError, match="init"):
        tsne.tsne(x, perplexity=3, init="spectral")


def test_subsample():
    np.testing.assert_array_equal(tsne.subsample(5, 10), np.arange(5))
    idx = tsne.subsample(1000, 100, seed=1)
    assert len(idx) == 100 and np.all(np.diff(idx) > 0) and idx.max() < 1000
    np.testing.assert_array_equal(idx, tsne.subsample(1000, 100, seed=1))
    labels = np.array([0] * 900 + [1] * 95 + [2] * 5)
    idx = tsne.subsample(1000, 100, seed=0, labels=labels)
    assert len(idx) == 100 and np.all(np.diff(idx) > 0)
    counts = np.bincount(labels[idx], minlength=3)
    assert counts[0] in (89, 90) and counts[1] in (9, 10) and counts[2] >= 1
    # Fewer slots than classes: still max_points indices.
    assert len(tsne.subsample(10, 2, labels=np.arange(10) % 5)) == 2


# --------------------------------------------------------------------------------------
# Plots


def test_confusion_and_tsne_pngs(tmp_path):
    matrix = evaluation.confusion_matrix(LABELS_A, PREDS_A, 3)
    out = plots.confusion_png(tmp_path / "confusion.png", matrix, ["walk", "sit", "stand"], "test")
    assert out == tmp_path / "confusion.png"
    assert (png := out.read_bytes())[:8] == PNG_SIGNATURE and len(png) > 1000

    rng = np.random.default_rng(0)
    points = rng.normal(size=(60, 2))
    labels = np.arange(60) % 3
    out = plots.tsne_png(tmp_path / "tsne.png", points, labels, ["walk", "sit", "stand"], "test")
    assert (png := out.read_bytes())[:8] == PNG_SIGNATURE and len(png) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "tsne.png"]  # no temp files left


# --------------------------------------------------------------------------------------
# Report

RESULTS = {
    "hhar": {
        "limu_gru_v2": {"accuracy": 0.9612, "macro_f1": 0.9604, "num_examples": 10},
        "dcnn": {"accuracy": 0.851, "macro_f1": 0.87},
    },
    "uci": {
        "limu_gru_v2": {"accuracy": 0.9, "macro_f1": 0.88},
        "custom_thing": {"accuracy": 0.95},
    },
}

EXPECTED_TABLE = (
    "| method | HHAR acc | HHAR F1 | UCI acc | UCI F1 |\n"
    "|---|---:|---:|---:|---:|\n"
    "| LIMU-GRU | **96.1** | **96.0** | 90.0 | **88.0** |\n"
    "| DCNN | 85.1 | 87.0 | — | — |\n"
    "| custom_thing | — | — | **95.0** | — |\n"
)


def test_table3_markdown():
    assert report.table3_markdown(RESULTS) == EXPECTED_TABLE


def test_table3_markdown_orders_and_ties():
    results = {"uci": {"rgru": {"accuracy": 0.5, "macro_f1": 0.4}, "deepsense": {"accuracy": 0.5, "macro_f1": float("nan")}}}
    table = report.table3_markdown(results, datasets_order=["motion", "uci"],
                                   methods_order=["deepsense", "rgru", "limu_attn_v1"])
    assert table == (
        "| method | MotionSense acc | MotionSense F1 | UCI acc | UCI F1 |\n"
        "|---|---:|---:|---:|---:|\n"
        "| DeepSense | — | — | **50.0** | — |\n"
        "| R-GRU | — | — | **50.0** | **40.0** |\n"
        "| LIMU-Attn | — | — | — | — |\n"
    )


def test_dataset_display_names_take_the_report_keys():
    # run_report keys its results "name/version" by the TFDS builder's name.
    assert report.dataset_display_name("uci_hapt/20_120") == "UCI 20_120"
    assert report.dataset_display_name("hhar") == "HHAR"
    assert report.dataset_display_name("my_data/50_200") == "my_data 50_200"


def test_method_display_names():
    expected = {
        "limu_gru_v2": "LIMU-GRU", "rgru": "R-GRU", "dcnn": "DCNN", "deepsense": "DeepSense",
        "limu_lstm_v1": "LIMU-LSTM", "limu_cnn1_v1": "LIMU-CNN1D", "limu_cnn2_v1": "LIMU-CNN2D",
        "limu_attn_v1": "LIMU-Attn", "limu_gru_v1": "LIMU-GRU (v1)", "mystery": "mystery",
        "finetune_gru_v2": "LIMU-GRU fine-tuned", "finetune_lstm_v1_frozen": "LIMU-LSTM fine-tuned (frozen encoder)",
    }
    assert {key: report.method_display_name(key) for key in expected} == expected


def test_write_report(tmp_path):
    path = report.write_report(tmp_path / "sub" / "table3.md", RESULTS, "Table 3 (1% labels)",
                               notes=["seed 0", "HHAR only partly run"])
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Table 3 (1% labels)\n\n" + EXPECTED_TABLE)
    assert "## Notes\n\n- seed 0\n- HHAR only partly run\n" in text
    assert [p.name for p in path.parent.iterdir()] == ["table3.md"]
    plain = report.write_report(tmp_path / "plain.md", RESULTS, "T", notes="One paragraph.")
    assert plain.read_text(encoding="utf-8").endswith("## Notes\n\nOne paragraph.\n")
