"""Evaluation as researchers need it (docs/downstream.md): repeated labelled draws with
intervals (checked against scipy.stats) and paired comparisons, metrics (checked against
scikit-learn), label-rate curves, splits by subject and device with a grouped K-fold, and
the report of all of it (report.md, report.json, metrics.json, the curve, TensorBoard),
on the synthetic dataset with a tiny random encoder and a few classifier epochs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from limubert_jax import config_lib, tasks
from limubert_jax.downstream import evaluation, fit, labels, report, runners, stats
from limubert_jax.io import checkpoint
from limubert_jax.models.encoder import LimuBertModel4Pretrain
from limubert_jax.pretraining import trainer
from limubert_jax.runtime.errors import LimuBertError

ROOT = Path(__file__).resolve().parents[1]


def _config(data_dir, task="report", **downstream):
    config = config_lib.sibling_config(str(ROOT / "tests" / "configs" / "test.py"), "test").get_config()
    config.dataset.data_dir = str(data_dir)
    config.task = task
    config.downstream.update(**{"num_epochs": 2, "tsne_points": 60, "label_rate": 0.05, **downstream})
    return config


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny LIMU-BERT with random weights: the protocol, not the encoder, is under test."""
    model_config = trainer.model_config_from(_config("unused"))
    path = tmp_path_factory.mktemp("encoder") / "encoder"
    checkpoint.save_model(path, LimuBertModel4Pretrain(model_config).init_params(jax.random.key(0)), model_config)
    return str(path)


@pytest.fixture(scope="module")
def labelled(synthetic_data_dir):
    """The synthetic windows with their activity labels, split by user (10 users)."""
    config = _config(synthetic_data_dir)
    config.dataset.split_by = "user"
    return labels.load_labelled(config)


# ---------------------------------------------------------------------------------------
# Intervals and metrics against the reference libraries.


def test_t_intervals_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (*range(1, 40), 57, 120, 999):
        assert stats.t_quantile(0.95, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-12)
        assert stats.t_quantile(0.9, df) == pytest.approx(scipy_stats.t.ppf(0.95, df), rel=1e-12)
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 30):
        x, y = rng.normal(0.8, 0.05, n), rng.normal(0.7, 0.05, n)
        summary = stats.summary(x)
        assert summary["mean"] == pytest.approx(np.mean(x)) and summary["sd"] == pytest.approx(np.std(x, ddof=1))
        np.testing.assert_allclose(summary["ci"], scipy_stats.t.interval(0.95, n - 1, loc=np.mean(x),
                                                                         scale=scipy_stats.sem(x)), rtol=1e-12)
        paired = scipy_stats.ttest_rel(x, y).confidence_interval(0.95)
        np.testing.assert_allclose(stats.paired(x, y)["ci"], [paired.low, paired.high], rtol=1e-10)
    assert stats.summary([0.5]) == {"n": 1, "mean": 0.5, "sd": None, "ci": None, "level": 0.95}


def test_accuracy_macro_f1_and_confusion_match_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for trial in range(20):
        c = int(rng.integers(2, 8))
        y = rng.integers(0, c, 50)
        p = np.where(rng.random(50) < 0.6, y, rng.integers(0, c + 1, 50) % c)  # some classes absent on a side
        if trial % 3 == 0:
            y[y == c - 1] = 0  # a class with no test example
        assert evaluation.accuracy(y, p) == pytest.approx(sk.accuracy_score(y, p))
        assert evaluation.macro_f1(y, p, c) == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0))
        np.testing.assert_array_equal(evaluation.confusion_matrix(y, p, c), sk.confusion_matrix(y, p, labels=range(c)))
        metrics = evaluation.classification_metrics(y, p, [f"c{i}" for i in range(c)])
        precision, recall, f1, support = sk.precision_recall_fscore_support(y, p, labels=range(c), zero_division=0)
        for i in range(c):
            scores = metrics["per_class"][f"c{i}"]
            assert (scores["precision"], scores["recall"], scores["f1"], scores["support"]) == pytest.approx(
                (precision[i], recall[i], f1[i], support[i]))


# ---------------------------------------------------------------------------------------
# Labelled draws, labels per class, groups and folds.


def test_repeated_draws_start_with_the_reference_draw_and_differ_after_it(synthetic_data_dir):
    config = _config(synthetic_data_dir, label_rate=0.01)
    data = labels.load_labelled(config)
    reference = labels.protocol_split(data, config, 20)
    config.downstream.seeds = 3
    (draws,) = labels.protocol_draws(data, config, 20)
    for part in ("train", "vali", "test"):
        for field in ("index", "ids", "labels"):
            np.testing.assert_array_equal(getattr(getattr(draws[0].split, part), field),
                                          getattr(getattr(reference.split, part), field))
    assert [len(d.split.train) for d in draws] == [114] * 3  # balanced: 19 per class, whatever the seed
    assert len({tuple(d.split.train.index) for d in draws}) == 3
    everything = labels.protocol_split(data, _config(synthetic_data_dir, label_rate=1.0, balance=False), 20)
    for d in draws[1:]:  # the split stays: only the labelled subset changes
        np.testing.assert_array_equal(d.split.test.index, reference.split.test.index)
        assert set(d.split.train.index) <= set(everything.split.train.index)
    config.downstream.update(seeds=2, labels_per_class="4")
    for d in labels.protocol_draws(data, config, 20)[0]:
        assert np.bincount(d.split.train.labels).tolist() == [4] * 6
    config.downstream.labels_per_class = "5000"
    with pytest.raises(LimuBertError, match=r"labels_per_class=5000 exceeds the \d+ training sub-windows of its "
                                            r"smallest class$"):
        labels.protocol_draws(data, config, 20)


def test_leave_one_subject_out_tests_every_user_once_and_keeps_users_apart(labelled, synthetic_data_dir):
    config = _config(synthetic_data_dir, folds=-1, seeds=2)
    config.dataset.split_by = "user"
    draws = labels.protocol_draws(labelled, config, 20)
    assert len(draws) == 10 and all(len(fold) == 2 for fold in draws)
    user = labelled.groups
    tested = []
    for fold in draws:
        for d in fold:
            train, vali, test = (set(user[getattr(d.split, part).index // 6]) for part in ("train", "vali", "test"))
            assert train and vali and len(test) == 1 and not (train & vali or train & test or vali & test)
        tested += sorted(test)
    assert sorted(tested) == list(range(10))
    config.downstream.folds = 3  # about a third of the windows each, every user once
    sizes = [len(np.unique(fold[0].split.test.index // 6)) for fold in labels.protocol_draws(labelled, config, 20)]
    assert sum(sizes) == 2400 and max(sizes) - min(sizes) <= 240


def test_a_device_split_reads_the_device_label_and_is_refused_without_one(tmp_path):
    raw = tmp_path / "arrays"
    raw.mkdir()
    n = 120
    rng = np.random.default_rng(0)
    columns = np.stack([np.arange(n) % 3, np.arange(n) // 20, (np.arange(n) // 5) % 4], -1)  # activity, user, device
    np.save(raw / "data_20_120.npy", rng.normal(size=(n, 120, 6)).astype(np.float32))
    np.save(raw / "label_20_120.npy", np.repeat(columns[:, None, :], 120, axis=1))
    (raw / "label_columns.json").write_text(json.dumps({"activity": None, "user": None, "device_model": None}))
    config = _config(tmp_path / "tfds", label="activity", split_by="device", folds=-1, label_rate=0.5)
    config.dataset.update(name="imu_npy", manual_dir=str(raw))
    data = labels.load_labelled(config)
    np.testing.assert_array_equal(data.groups, columns[:, 2])
    draws = labels.protocol_draws(data, config, 20)
    assert len(draws) == 4
    for fold in draws:
        devices = [set(data.groups[getattr(fold[0].split, p).index // 6]) for p in ("train", "vali", "test")]
        assert len(devices[2]) == 1 and not (devices[0] & devices[2] or devices[1] & devices[2])


def test_the_reference_datasets_name_their_subjects_and_hhar_its_devices(tmp_path):
    """Every reference builder has the `user` task a split by subject reads; HHAR alone a
    `device_model`, and its dummy raw files split by device, one phone model left out a fold."""
    import limubert_jax.datasets

    for name in ("hhar", "uci_hapt", "motionsense", "shoaib", "wisdm"):
        builder_tasks = limubert_jax.datasets.BUILDERS[name].TASKS
        assert "user" in builder_tasks and ("device_model" in builder_tasks) == (name == "hhar"), name
    config = _config(tmp_path / "tfds", split_by="device", folds=-1, label_rate=1.0, balance=False)
    config.dataset.update(name="hhar", manual_dir=str(ROOT / "datasets" / "hhar" / "dummy_data"))
    data = labels.load_labelled(config)
    draws = labels.protocol_draws(data, config, 20)
    assert len(draws) == len(np.unique(data.groups)) == 3
    tested = []
    for fold in draws:
        parts = [set(data.groups[getattr(fold[0].split, p).index // 6]) for p in ("train", "vali", "test")]
        assert len(parts[2]) == 1 and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        tested += parts[2]
    assert sorted(tested) == [0, 1, 2]


@pytest.mark.parametrize("overrides, dataset, message", [
    ({"seeds": 0}, {}, r"^config\.downstream\.seeds must be a positive integer \(draws per method\), got 0$"),
    ({"folds": 0}, {}, r"^config\.downstream\.folds must be 1 \(the protocol's one split\), K >= 2"),
    ({"folds": 3}, {}, r"^config\.downstream\.folds=3: a grouped K-fold needs split groups; "
                       r"config\.dataset\.split_by='window' has none"),
    ({"folds": 11}, {"split_by": "user"}, r"^config\.downstream\.folds=11: the data has 10 user groups, so 2 to 10 "
                                          r"folds \(-1: one per group, leaving one user out\)$"),
    ({"split_by": "device"}, {}, r"^config\.downstream\.split_by='device': synthetic_imu/20_120 has no device labels "
                                 r"\(a 'device_model' task; HHAR has one\); split by window or user$"),
    ({"split_by": "person"}, {}, r"^config\.downstream\.split_by must be one of window, recording, user, device"),
    ({"label": "user", "split_by": "user"}, {},
     r"^config\.downstream\.label='user' with config\.downstream\.split_by='user': every user is in one split"),
    ({"label_rates": "0.1,2"}, {}, r"^config\.downstream\.label_rates: each must be in \(0, 1\], got 2\.0$"),
    ({"labels_per_class": "1,x"}, {}, r"^config\.downstream\.labels_per_class='1,x': give comma-separated whole "
                                      r"numbers, e.g\. 1,5,10$"),
    ({"labels_per_class": "5", "label_rates": "0.1,0.2"}, {},
     r"^config\.downstream\.label_rates and config\.downstream\.labels_per_class: give one of them"),
    ({"label_rates": "0.1,0.2", "task": "classify"}, {},
     r"^config\.downstream\.label_rates='0\.1,0\.2': a curve over several values is the report task's"),
], ids=["seeds", "folds-0", "folds-without-groups", "folds-too-many", "no-device", "split-by-unknown",
        "label-is-group", "rate-range", "per-class-int", "both-curves", "curve-not-report"])
def test_bad_evaluation_settings_stop_in_one_line_before_anything_runs(synthetic_data_dir, encoder, tmp_path,
                                                                       monkeypatch, overrides, dataset, message):
    monkeypatch.setattr(runners, "fit_many", lambda *a, **k: pytest.fail("training started"))
    overrides = dict(overrides)
    config = _config(synthetic_data_dir, overrides.pop("task", "report"), encoder=encoder, methods="rgru",
                     **overrides)
    config.dataset.update(**dataset)
    with pytest.raises(LimuBertError, match=message) as raised:
        tasks.run(config, tmp_path / "work")
    assert "\n" not in str(raised.value) and not (tmp_path / "work").exists()


def test_default_settings_name_and_record_runs_as_before(synthetic_data_dir):
    config = _config(synthetic_data_dir)
    assert runners.evaluation_points(config) == [config] and not runners.repeated(config)
    settings = runners.run_settings(config, "baseline", "rgru", "synthetic_imu/20_120", merge=20)
    assert not {"seeds", "folds", "split_by", "labels_per_class"} & set(settings)
    assert runners.run_dir("w", "baseline", "rgru", config).name == "rgru-activity-0.05"
    config.downstream.label_rates = "0.2"  # one value: that rate
    (point,) = runners.evaluation_points(config)
    assert runners.run_dir("w", "baseline", "rgru", point).name == "rgru-activity-0.2"
    config.downstream.update(label_rates="", labels_per_class="5")
    assert runners.run_dir("w", "baseline", "rgru", config).name == "rgru-activity-5perclass"
    assert runners.run_settings(config, "baseline", "rgru", "x", merge=20)["labels_per_class"] == 5


@pytest.mark.parametrize("vectorize", [False, True], ids=["in-turn", "side-by-side"])
def test_draws_trained_together_match_draws_trained_one_by_one(vectorize):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.int32)

    def apply_fn(p, xb, train, key):
        return xb @ p["w"] + p["b"]

    inits = [{"w": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32), "b": jnp.zeros(2)} for _ in range(3)]
    rows = np.stack([rng.permutation(200)[:60] for _ in range(3)])
    kwargs = dict(num_epochs=6, batch_size=16, learning_rate=0.05)
    together = fit.fit_many(apply_fn, jax.tree.map(lambda *a: jnp.stack(a), *inits), x[:200], rows, y[rows],
                            jnp.asarray(x[200:]), y[200:], seeds=[7, 8, 9], vectorize=vectorize, **kwargs)
    for d in range(3):
        alone = fit.fit(apply_fn, inits[d], x[rows[d]], y[rows[d]], jnp.asarray(x[200:]), y[200:], seed=7 + d,
                        **kwargs)
        assert together[d].best_epoch == alone.best_epoch
        if not vectorize:  # the same program, draw after draw: the same numbers
            assert together[d].history == alone.history
            np.testing.assert_array_equal(together[d].params["w"], alone.params["w"])
        np.testing.assert_allclose(together[d].history["train_loss"], alone.history["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(together[d].history["vali_accuracy"], alone.history["vali_accuracy"])
        np.testing.assert_allclose(together[d].params["w"], alone.params["w"], rtol=1e-5, atol=1e-6)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[r.params for r in together])
    predicted = fit.predict_many(apply_fn, stacked, x[200:], batch_size=32, vectorize=vectorize)
    assert predicted.shape == (3, 100)
    for d in range(3):
        np.testing.assert_array_equal(predicted[d], fit.predict(apply_fn, together[d].params, x[200:]))


# ---------------------------------------------------------------------------------------
# The report of repeated draws over a label-rate curve, end to end.


@pytest.fixture(scope="module")
def curve_report(synthetic_data_dir, encoder, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("curve")
    config = _config(synthetic_data_dir, encoder=encoder, methods="limu_gru_v2,rgru", seeds=3, label_rates="0.01,0.05")
    return config, workdir, tasks.run(config, workdir)


def _events(folder: Path) -> list:
    """Every event of the TensorBoard files in `folder` (TFRecord frames: length, CRC, event, CRC)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + length]))
            i += 12 + length + 4
    return events


def test_the_report_shows_intervals_paired_differences_and_the_curve(curve_report):
    config, workdir, summary = curve_report
    text = (workdir / "report.md").read_text()
    assert "## Label rate 0.01" in text and "## Label rate 0.05" in text and "## Label-rate curve" in text
    assert "| LIMU-GRU | R-GRU |" in text and "mean ± standard deviation over 3 draws" in text
    assert set(summary["results"]) == {"0.01", "0.05"}
    saved = json.loads((workdir / runners.REPORT_JSON).read_text())
    for point in saved["points"]:
        results = point["results"]
        gru = json.loads((workdir / results["limu_gru_v2"]["run_dir"] / "metrics.json").read_text())
        rgru = json.loads((workdir / results["rgru"]["run_dir"] / "metrics.json").read_text())
        # Every draw's numbers are kept, and the summary is theirs.
        assert [(d["fold"], d["seed"]) for d in gru["draws"]] == [(0, 0), (0, 1), (0, 2)]
        assert gru["per_seed"]["accuracy"] == [d["accuracy"] for d in gru["draws"]]
        expected = stats.summary(gru["per_seed"]["accuracy"])
        assert gru["summary"]["accuracy"]["ci"] == pytest.approx(expected["ci"])
        assert np.sum(gru["confusion_matrix"]) == 3 * gru["draws"][0]["num_test"]
        # The same labelled draws for both methods: the comparison pairs them draw for draw.
        assert [d["num_labelled"] for d in gru["draws"]] == [d["num_labelled"] for d in rgru["draws"]]
        assert point["best_baseline"] == "rgru"
        paired = point["paired"]["limu_gru_v2"]["macro_f1"]
        assert paired["mean"] == pytest.approx(np.mean(np.subtract(gru["per_seed"]["macro_f1"],
                                                                   rgru["per_seed"]["macro_f1"])))
        mean, sd = gru["accuracy"], gru["summary"]["accuracy"]["sd"]
        lo, hi = gru["summary"]["accuracy"]["ci"]
        assert f"{100 * mean:.1f}** ± {100 * sd:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" in text or (
            f"| {100 * mean:.1f} ± {100 * sd:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" in text)
        history = json.loads((workdir / results["rgru"]["run_dir"] / "history.json").read_text())
        assert len(history["draws"]) == 3 and len(history["draws"][2]["vali_accuracy"]) == 2
        assert (workdir / results["rgru"]["run_dir"] / "model" / checkpoint.CONFIG_FILE).is_file()
    assert (workdir / runners.CURVE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # TensorBoard: the report as text, the curve as an image, one HParams session per method and rate.
    board = workdir / "tensorboard" / "report"
    tags = {v.tag for e in _events(board) for v in e.summary.value}
    assert {"report/text_summary", "label_rate_curve"} <= tags
    sessions = sorted(p.name for p in board.iterdir() if p.is_dir())
    assert sessions == ["limu_gru_v2-0.01", "limu_gru_v2-0.05", "rgru-0.01", "rgru-0.05"]
    session_tags = {v.tag for e in _events(board / "rgru-0.05") for v in e.summary.value}
    assert {"_hparams_/session_start_info", "hparam/accuracy", "hparam/accuracy_ci_low"} <= session_tags


def test_a_grouped_k_fold_report_over_labels_per_class_averages_the_folds(synthetic_data_dir, encoder, tmp_path):
    config = _config(synthetic_data_dir, encoder=encoder, methods="dcnn", folds=2, labels_per_class="3,6")
    config.dataset.split_by = "user"
    summary = tasks.run(config, tmp_path)
    assert set(summary["results"]) == {"3perclass", "6perclass"}
    for k in (3, 6):
        metrics = json.loads((tmp_path / "baseline" / f"dcnn-activity-{k}perclass" / "metrics.json").read_text())
        assert [(d["fold"], d["seed"]) for d in metrics["draws"]] == [(0, 0), (1, 0)]
        assert [d["num_labelled"] for d in metrics["draws"]] == [6 * k] * 2 and metrics["labels_per_class"] == k
        assert metrics["accuracy"] == pytest.approx(np.mean([d["accuracy"] for d in metrics["draws"]]))
        assert metrics["summary"]["over"] == "folds" and metrics["summary"]["accuracy"]["ci"] is None
        assert metrics["num_test"] == sum(d["num_test"] for d in metrics["draws"])  # every test sub-window once
        assert summary["results"][f"{k}perclass"]["dcnn"]["accuracy"] == metrics["accuracy"]
    text = (tmp_path / "report.md").read_text()
    assert "## 3 labels per class" in text and "| method | 3 per class | 6 per class |" in text
    assert "mean ± standard deviation over the folds" in text and "grouped 2-fold" in text
    assert (tmp_path / runners.CURVE_PNG).is_file()


def test_fine_tuning_repeats_its_draws_from_the_same_encoder(synthetic_data_dir, encoder, tmp_path):
    config = _config(synthetic_data_dir, "finetune", encoder=encoder, seeds=2, num_epochs=1, label_rate=0.01)
    metrics = tasks.run(config, tmp_path)
    assert [d["seed"] for d in metrics["draws"]] == [0, 1] and metrics["summary"]["accuracy"]["n"] == 2
    assert metrics["draws"][0]["num_labelled"] == metrics["draws"][1]["num_labelled"] == 114
    saved = json.loads((tmp_path / "finetune" / "finetune_gru_v2-activity-0.01" / "metrics.json").read_text())
    assert saved["per_seed"]["accuracy"] == [d["accuracy"] for d in metrics["draws"]]
    assert (tmp_path / "finetune" / "finetune_gru_v2-activity-0.01" / "model" / checkpoint.CONFIG_FILE).is_file()


def test_the_curve_plot_and_the_tables_read_their_inputs(tmp_path):
    def entry(mean, sd):
        return {"accuracy": mean, "macro_f1": mean - 0.1, "per_seed": {"accuracy": [mean - sd, mean + sd],
                                                                       "macro_f1": [mean - 0.1, mean - 0.1]},
                "summary": {m: stats.summary([v - sd, v + sd]) for m, v in (("accuracy", mean),
                                                                            ("macro_f1", mean - 0.1))}}

    points = [("0.01", {"limu_gru_v2": entry(0.8, 0.02), "rgru": entry(0.6, 0.05)}),
              ("0.1", {"limu_gru_v2": entry(0.9, 0.01), "rgru": {"method": "rgru", "notes": ["could not run"]}})]
    table = report.curve_markdown(points, "accuracy")
    assert "| LIMU-GRU | **80.0** ± 2.8 | **90.0** ± 1.4 |" in table and "| R-GRU | 60.0 ± 7.1 | — |" in table
    comparisons = report.paired_comparisons(points[0][1], "rgru")
    assert comparisons["limu_gru_v2"]["accuracy"]["mean"] == pytest.approx(0.2)
    assert "| LIMU-GRU | R-GRU | +20.0 ± 4.2 [" in report.paired_markdown(comparisons, "rgru")
    path = report.label_rate_curve_png(tmp_path / "curve.png", [0.01, 0.1], "label rate",
                                       {m: [r.get(m) for _, r in points] for m in ("limu_gru_v2", "rgru")})
    assert report.png_size(path.read_bytes())[1] > 500
