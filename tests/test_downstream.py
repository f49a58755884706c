"""Downstream tasks (docs/reference.md §7): labels by task name, the protocol split, compiled whole-epoch
training with best-validation selection, and each task end to end on the synthetic dataset
with the tiny test config (a short pretraining first)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from limubert_jax import config_lib, predict, tasks
from limubert_jax.data import loading
from limubert_jax.downstream import fit, labels, runners
from limubert_jax.io import checkpoint
from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain
from limubert_jax.pretraining import trainer
from limubert_jax.runtime.errors import LimuBertError

ROOT = Path(__file__).resolve().parents[1]


def _config(data_dir, task="pretrain", **downstream_overrides):
    config = config_lib.sibling_config(str(ROOT / "tests" / "configs" / "test.py"), "test").get_config()
    config.dataset.data_dir = str(data_dir)
    config.task = task
    config.train.num_epochs = 1
    config.downstream.num_epochs = 6
    config.downstream.label_rate = 0.1
    config.downstream.tsne_points = 120
    for key, value in downstream_overrides.items():
        config.downstream[key] = value
    return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, synthetic_data_dir):
    """A workdir holding a (briefly) pretrained tiny model, and the TFDS data_dir."""
    workdir = tmp_path_factory.mktemp("work")
    tasks.run(_config(synthetic_data_dir), workdir)
    return workdir, synthetic_data_dir


def test_config_argument_picks_version_and_task():
    config = config_lib.sibling_config(str(ROOT / "configs" / "motion.py"), "motion").get_config("10_100,classify")
    assert (config.dataset.version, config.task, trainer.model_config_from(config).seq_len) == ("10_100", "classify", 100)
    # The model's window length follows a version given later (the command line) unless set.
    config.dataset.version = "50_200"
    assert trainer.model_config_from(config).seq_len == 200
    config.model.seq_len = 120
    assert trainer.model_config_from(config).seq_len == 120
    config = config_lib.sibling_config(str(ROOT / "configs" / "motion.py"), "motion").get_config("report")
    assert (config.dataset.version, config.task) == ("20_120", "report")


def test_labels_are_chosen_by_task_name(synthetic_data_dir):
    data_dir = synthetic_data_dir
    data = labels.load_labelled(_config(data_dir))
    assert data.labels.task == "activity" and data.labels.names[0] == "sit"
    user = labels.load_labelled(_config(data_dir, label="user"))
    assert len(user.labels.names) == 10 and user.labels.per_step.shape == data.labels.per_step.shape
    proto = labels.protocol_split(data, _config(data_dir))
    # Class ids index the names; every class of the synthetic set is labelled (balanced draw).
    assert set(proto.labels("train")) == set(range(len(data.labels.names)))
    counts = np.bincount(proto.labels("train"))
    assert counts.min() == counts.max()


def test_split_by_user_keeps_users_apart_in_the_classifier_protocol(synthetic_data_dir):
    config = _config(synthetic_data_dir)
    config.dataset.split_by = "user"
    data = labels.load_labelled(config)
    user = labels.load_labelled(_config(synthetic_data_dir, label="user")).labels.per_step[:, 0]
    np.testing.assert_array_equal(data.groups, user)
    proto = labels.protocol_split(data, config)
    seq = data.windows.shape[1] // proto.merge
    users = [set(user[getattr(proto.split, part).index // seq]) for part in ("train", "vali", "test")]
    assert all(users) and not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])


def test_merged_datasets_downstream_uses_the_chosen_one(synthetic_data_dir, tmp_path):
    raw = tmp_path / "arrays"
    raw.mkdir()
    np.save(raw / "data_20_120.npy", np.random.default_rng(0).normal(size=(40, 120, 6)).astype(np.float32))
    config = _config(synthetic_data_dir)
    config.dataset.update(name="imu_npy+synthetic_imu", manual_dir=f"{raw}+")
    merged = loading.load_data(config)
    assert merged.num_features == 6 and [s.name for s in merged.sources] == ["imu_npy", "synthetic_imu"]
    # The first (unlabelled) by default; downstream.dataset picks another.
    with pytest.raises(LimuBertError, match=r"dataset imu_npy has no labels"):
        labels.load_labelled(config, merged)
    config.downstream.dataset = "synthetic_imu"
    data = labels.load_labelled(config, merged)
    assert data.name == "synthetic_imu" and data.windows.shape[2] == 9 and data.labels.names[0] == "sit"
    config.downstream.dataset = "hhar"
    with pytest.raises(LimuBertError, match=r"config\.downstream\.dataset='hhar' is not one of the merged datasets "
                                            r"imu_npy, synthetic_imu"):
        labels.load_labelled(config, merged)


@pytest.mark.slow  # the pretraining of `pretrained`
def test_a_task_the_dataset_lacks_is_a_clear_error(pretrained, tmp_path):
    workdir, data_dir = pretrained
    with pytest.raises(LimuBertError, match=r"has no task 'position'; its tasks: activity, user"):
        tasks.run(_config(data_dir, "classify", label="position"), workdir)
    with pytest.raises(LimuBertError, match=r"unknown task 'clasify'"):
        tasks.run(_config(data_dir, "clasify"), workdir)
    with pytest.raises(LimuBertError, match=r"unknown method 'svm'"):
        tasks.run(_config(data_dir, "report", methods="svm"), workdir)
    with pytest.raises(LimuBertError, match="no pretrained LIMU-BERT"):
        tasks.run(_config(data_dir, "classify"), tmp_path / "empty")


@pytest.mark.parametrize("task, overrides, message", [
    ("pretrain+report", {"label": "position"},
     r"^config\.downstream\.label: dataset synthetic_imu has no task 'position'; its tasks: activity, user$"),
    ("pretrain+report", {"methods": "limu_gru_v2,svm"}, r"^config\.downstream\.methods: unknown method 'svm'"),
    ("pretrain+report", {"methods": "limu_gru_v7"}, r"^config\.downstream\.methods: unknown method 'limu_gru_v7'"),
    ("pretrain+report", {"methods": ""}, r"^config\.downstream\.methods is empty"),
    ("pretrain+classify", {"classifier": "svm"}, r"^config\.downstream\.classifier: unknown head 'svm'"),
    ("pretrain+baseline", {"baseline": "gru_v2"}, r"^config\.downstream\.baseline: unknown baseline 'gru_v2'"),
    ("pretrain+report", {"merge": 7}, r"^config\.downstream\.merge=7 must divide the 120-step windows"),
    ("pretrain+finetune", {"merge": 0}, r"^config\.downstream\.merge must be a positive integer, got 0"),
    ("pretrain+report", {"label_rate": 0.0}, r"^config\.downstream\.label_rate must be in \(0, 1\], got 0\.0"),
    ("pretrain+report", {"label_rate": 1.5}, r"^config\.downstream\.label_rate must be in \(0, 1\]"),
    # Found from the labels, before the pretraining (it used to surface after it).
    ("pretrain+classify", {"label_rate": 1e-5},
     r"^config\.downstream \(synthetic_imu, task activity\): label_rate=1e-05 selects no labelled sub-windows"),
    ("pretrain+report", {"num_epochs": 0}, r"^config\.downstream\.num_epochs must be a positive integer"),
    # The test model's 24-wide embeddings are too narrow for CNN2D's conv/pool stack.
    ("pretrain+report", {"methods": "dcnn,limu_cnn2_v1"},
     r"^config\.downstream\.methods: cnn2_v1 on 20-step sub-windows of 24 features: .*shrinks"),
    ("pretrain+embed", {"encoder": "/nonexistent/encoder"}, r"^no pretrained LIMU-BERT in /nonexistent/encoder"),
    ("classify", {}, r"^no pretrained LIMU-BERT in .*new-run"),
], ids=["label", "method", "head-of-method", "no-methods", "classifier", "baseline", "merge-divides", "merge-positive",
        "label-rate-0", "label-rate-1.5", "label-rate-selects-none", "epochs", "head-fits", "encoder-path", "no-encoder"])
def test_a_chain_fails_on_any_stage_before_the_first_step(synthetic_data_dir, tmp_path, monkeypatch, task, overrides,
                                                          message):
    data_dir = synthetic_data_dir

    def no_training(*args, **kwargs):
        raise AssertionError("a stage started before the chain was checked")

    monkeypatch.setattr(trainer, "pretrain", no_training)
    monkeypatch.setattr(runners, "fit", no_training)
    workdir = tmp_path / "new-run"
    with pytest.raises(LimuBertError, match=message):
        tasks.run(_config(data_dir, task, **overrides), workdir)
    assert not workdir.exists()  # nothing written


def test_a_chain_checks_an_existing_encoder_against_the_data(synthetic_data_dir, tmp_path):
    data_dir = synthetic_data_dir
    short = LimuBertConfig(hidden=8, hidden_ff=16, n_layers=1, n_heads=2, seq_len=100)
    encoder = checkpoint.save_model(tmp_path / "short", LimuBertModel4Pretrain(short).init_params(jax.random.key(0)),
                                    short)
    with pytest.raises(LimuBertError, match=r"the encoder takes windows of 100 steps x 6 features; "
                                            r"dataset synthetic_imu/20_120 has 120 x 9"):
        tasks.run(_config(data_dir, "report", encoder=str(encoder)), tmp_path / "other")
    # A baseline needs no encoder, so the same chain without one is fine to start.
    runners.check_config(_config(data_dir, "baseline"), tmp_path / "empty", ["baseline"],
                          loading.load_data(_config(data_dir)))


def test_npy_label_columns_name_the_tasks_and_their_classes(tmp_path):
    raw = tmp_path / "arrays"
    raw.mkdir()
    rng = np.random.default_rng(0)
    activity = np.arange(60) % 3  # classes 0..2, named in the JSON
    user = 5 + np.arange(60) % 2  # unnamed: named by their values
    label = np.repeat(np.stack([activity, user], -1)[:, None, :], 120, axis=1)
    np.save(raw / "data_20_120.npy", rng.normal(size=(60, 120, 6)).astype(np.float32))
    np.save(raw / "label_20_120.npy", label)
    (raw / "label_columns.json").write_text(json.dumps({"activity": ["sit", "stand", "walk"], "user": None}))
    config = _config(tmp_path / "tfds")
    config.dataset.update(name="imu_npy", manual_dir=str(raw))
    data = labels.load_labelled(config)
    assert data.labels.names == ("sit", "stand", "walk")
    np.testing.assert_array_equal(data.labels.per_step[:, 0], activity)
    config.downstream.label = "user"
    data = labels.load_labelled(config)
    assert data.labels.names == ("5", "6") and set(data.labels.per_step[:, 0]) == {0, 1}
    config.downstream.label = "label_0"
    with pytest.raises(LimuBertError, match=r"has no task 'label_0'; its tasks: activity, user$"):
        labels.load_labelled(config)


def test_unlabelled_npy_windows_pretrain_and_downstream_tasks_say_there_are_no_labels(tmp_path, monkeypatch):
    raw = tmp_path / "arrays"
    raw.mkdir()
    np.save(raw / "data_20_120.npy", np.random.default_rng(0).normal(size=(60, 120, 6)).astype(np.float32))
    config = _config(tmp_path / "tfds", "pretrain+classify")
    config.dataset.update(name="imu_npy", manual_dir=str(raw))
    assert loading.load_data(config).num_windows == 60  # pretraining reads them
    monkeypatch.setattr(trainer, "pretrain", lambda *a, **k: pytest.fail("the chain started"))
    with pytest.raises(LimuBertError, match=r"^config\.downstream\.label: dataset imu_npy has no labels \(windows "
                                            r"without labels pretrain only; downstream tasks need a labelled dataset\)$"):
        tasks.run(config, tmp_path / "work")
    assert not (tmp_path / "work").exists()
    # Labels added later are not silently ignored: the build without them is refused.
    np.save(raw / "label_20_120.npy", np.zeros((60, 120, 1)))
    with pytest.raises(LimuBertError, match=r"was built without label_20_120\.npy, and .* exists now; delete"):
        loading.load_data(config)


def test_fit_keeps_the_best_validation_epoch_and_respects_frozen_parameters():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    params = {"w": jnp.zeros((4, 2)), "frozen": jnp.ones((2,))}

    def apply_fn(p, xb, train, key):
        return xb @ p["w"] + p["frozen"]

    result = fit.fit(apply_fn, params, x[:200], y[:200], jnp.asarray(x[200:]), y[200:], num_epochs=10,
                            batch_size=32, learning_rate=0.05, seed=0,
                            trainable={"w": True, "frozen": False})
    accuracies = result.history["vali_accuracy"]
    assert len(accuracies) == 10 and len(result.history["train_loss"]) == 10
    assert result.best_vali_accuracy == max(accuracies) > 0.9
    assert result.best_epoch == 1 + int(np.argmax(accuracies))
    np.testing.assert_array_equal(result.params["frozen"], np.ones(2))
    predicted = np.argmax(x[200:] @ np.asarray(result.params["w"]) + 1.0, -1)
    assert np.mean(predicted == y[200:]) == pytest.approx(result.best_vali_accuracy)


@pytest.mark.slow
@pytest.mark.parametrize("task, method", [("classify", "limu_gru_v2"), ("baseline", "rgru"),
                                          ("finetune", "finetune_gru_v2")])
def test_task_end_to_end_writes_metrics_and_plots(pretrained, task, method):
    workdir, data_dir = pretrained
    if task == "finetune":
        config = _config(data_dir, task, num_epochs=2)
    else:
        config = _config(data_dir, task)
    metrics = tasks.run(config, workdir)
    out = runners.run_dir(workdir, task, method, config)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"] and 0.0 <= saved["accuracy"] <= 1.0
    assert saved["method"] == method and saved["label"] == "activity" and saved["num_labelled"] > 0
    assert np.asarray(saved["confusion_matrix"]).sum() == saved["num_test"]
    for png in ("confusion.png", "tsne.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "history.json").read_text())
    assert len(history["vali_accuracy"]) == config.downstream.num_epochs
    settings = json.loads((out / runners.SETTINGS_FILE).read_text())
    assert settings["method"] == method and settings["merge"] == 20 and settings["label_rate"] == 0.1
    _predict_reproduces_the_test_accuracy(config, out, saved, via_cli=task == "classify")


def test_a_rerun_with_other_settings_never_replaces_a_runs_results(synthetic_data_dir, tmp_path, monkeypatch):
    """Run folders are named <method>-<label>-<rate>: another merge used to replace the
    earlier model and metrics silently. Now the folder's settings.json must match."""
    def trains(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(runners, "fit", trains)
    workdir = tmp_path / "work"
    earlier = _config(synthetic_data_dir, "baseline")
    out = runners.run_dir(workdir, "baseline", "rgru", earlier)
    out.mkdir(parents=True)
    settings = runners.run_settings(earlier, "baseline", "rgru", "synthetic_imu/20_120", merge=20)
    (out / runners.SETTINGS_FILE).write_text(json.dumps(settings))
    other = _config(synthetic_data_dir, "baseline", merge=40, learning_rate=5e-4)
    with pytest.raises(LimuBertError, match=r"^.*rgru-activity-0\.1 holds the results of other settings \(learning_rate "
                                            r"0\.001 -> 0\.0005; merge 20 -> 40\): set config\.downstream\.run_name=NAME "
                                            r"to keep both \(written to rgru-activity-0\.1-NAME\), or "
                                            r"config\.downstream\.overwrite=True to replace them$"):
        tasks.run(other, workdir)
    assert os.listdir(out) == [runners.SETTINGS_FILE]  # nothing replaced
    # The same settings rerun (replacing their own results), a run_name, or overwrite: training starts.
    for config in (earlier, _config(synthetic_data_dir, "baseline", merge=40, learning_rate=5e-4, run_name="m40"),
                   _config(synthetic_data_dir, "baseline", merge=40, learning_rate=5e-4, overwrite=True)):
        with pytest.raises(AssertionError, match="training started"):
            tasks.run(config, workdir)
    assert runners.run_dir(workdir, "baseline", "rgru", _config(synthetic_data_dir, run_name="m40")).name == (
        "rgru-activity-0.1-m40")
    (out / runners.SETTINGS_FILE).unlink()  # a run folder of an earlier version: its settings are unknown
    with pytest.raises(LimuBertError, match="no readable settings.json: written by an earlier version"):
        tasks.run(earlier, workdir)
    with pytest.raises(LimuBertError, match=r"config\.downstream\.run_name='a/b': a folder-name suffix"):
        tasks.run(_config(synthetic_data_dir, "baseline", run_name="a/b"), workdir)


def test_a_label_that_is_the_split_group_is_refused_before_training(synthetic_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "pretrain", lambda *a, **k: pytest.fail("the chain started"))
    config = _config(synthetic_data_dir, "pretrain+classify", label="user")
    config.dataset.split_by = "user"
    with pytest.raises(LimuBertError, match=r"^config\.downstream\.label='user' with config\.dataset\.split_by='user': "
                                            r"every user is in one split only"):
        tasks.run(config, tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_a_checkpoint_step_as_encoder_is_answered_with_its_workdir(synthetic_data_dir, tmp_path):
    run = tmp_path / "pretrained"
    (run / checkpoint.CHECKPOINTS_DIR / "40").mkdir(parents=True)
    (run / checkpoint.CONFIG_FILE).write_text("{}")
    step = run / checkpoint.CHECKPOINTS_DIR / "40"
    with pytest.raises(LimuBertError, match=rf"^config\.downstream\.encoder={step} is checkpoint step 40 of the "
                                            rf"pretraining workdir {run}: give the workdir \(config\.downstream\.encoder="
                                            rf"{run}\), whose best step is taken$"):
        tasks.run(_config(synthetic_data_dir, "classify", encoder=str(step)), tmp_path / "work")


def test_the_report_names_a_frozen_fine_tuning_as_such(synthetic_data_dir, tmp_path, monkeypatch):
    def ran(config, workdir, method, inputs):
        task, model = runners.method_task(method)
        name = runners.method_name(task, model, config)
        return {"method": name, "accuracy": 0.5, "macro_f1": 0.4, "num_labelled": 3, "run_dir": f"{task}/{name}"}

    monkeypatch.setattr(runners, "run_method", ran)
    config = _config(synthetic_data_dir, "report", methods="finetune_gru_v2,rgru", freeze_encoder=True)
    result = runners.run_report(config, tmp_path, inputs=object())
    text = (tmp_path / "report.md").read_text()
    assert "| LIMU-GRU fine-tuned (frozen encoder) | **50.0** | **40.0** |" in text, text
    assert set(result["results"]) == {"finetune_gru_v2_frozen", "rgru"}
    assert "finetune/finetune_gru_v2_frozen" in text


_LABELLED: dict = {}
_LABELLED: dict = {}


def _predict_reproduces_the_test_accuracy(config, out, saved, *, via_cli):
    """The saved model, run by `predict` on the raw test windows, gives the run's accuracy:
    it normalizes, encodes whole windows and cuts sub-windows as training did."""
    key = str(config.dataset.data_dir)
    if key not in _LABELLED:  # the same windows and split for every method of the module
        _LABELLED[key] = labels.load_labelled(config)
    data = _LABELLED[key]
    proto = labels.protocol_split(data, config)
    per_window = data.windows.shape[1] // proto.merge
    index = proto.split.test.index
    windows = np.unique(index // per_window)  # the test windows, raw readings
    rows = np.searchsorted(windows, index // per_window) * per_window + index % per_window  # their sub-windows
    classifier = predict.load_classifier(out)
    assert classifier.class_names == tuple(proto.names) and classifier.config.method == saved["method"]
    if via_cli:
        beside = out.parent / f"{out.name}-predicted"  # never inside the run it reads
        beside.mkdir()
        np.save(beside / "test_windows.npy", data.windows[windows])
        args = ["--model", str(out), "--input", str(beside / "test_windows.npy"), "--output", str(beside / "p.csv"),
                "--subwindow_output", str(beside / "s.csv"), "--batch_size", "100"]
        assert predict.main(args) == 0
        with open(beside / "s.csv") as f:
            named = [row["predicted"] for row in csv.DictReader(f)]
        with open(beside / "p.csv") as f:
            per_window_rows = list(csv.DictReader(f))
        assert len(per_window_rows) == len(windows) and len(named) == len(windows) * per_window
        predicted = np.asarray([proto.names.index(n) for n in named])[rows]
        probabilities = np.asarray([[float(r[f"prob_{c}"]) for c in proto.names] for r in per_window_rows])
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    else:
        predictions = classifier.predict(data.windows[windows], batch_size=100)
        predicted = predictions.predicted_subwindows.reshape(-1)[rows]
    assert np.mean(predicted == proto.labels("test")) == saved["accuracy"]


@pytest.mark.slow
def test_embed_and_report_load_the_data_and_embed_once(pretrained, monkeypatch):
    workdir, data_dir = pretrained
    calls = {"load_labelled": 0, "embed_windows": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    for name in calls:
        monkeypatch.setattr(runners, name, counted(name, getattr(runners, name)))
    # The module's 6 epochs: limu_gru_v2 and rgru then run the programs the classify and
    # baseline tests compiled (the persistent compilation cache), only limu_gru_v1 is new.
    config = _config(data_dir, "embed+report", methods="limu_gru_v2,rgru,limu_gru_v1")
    summary = tasks.run(config, workdir)
    assert calls == {"load_labelled": 1, "embed_windows": 1}
    embeddings = np.load(Path(workdir) / "embed" / "embeddings.npy")
    assert embeddings.shape == (2400, 120, 24) and np.isfinite(embeddings).all()
    assert np.load(Path(workdir) / "embed" / "labels_activity.npy").shape == (2400,)
    table = Path(summary["report"]).read_text()
    assert "LIMU-GRU" in table and "R-GRU" in table
    assert set(summary["results"]) == {"limu_gru_v2", "rgru", "limu_gru_v1"}
