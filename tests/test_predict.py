"""`limubert-predict` and `load_classifier` on a saved classifier (random weights: the
end-to-end runs in test_downstream.py check that predictions reproduce a trained run's test
accuracy): batches, CSV outputs, recordings input, and refusals of wrong input."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import random_params, random_pipeline_params
from limubert_jax import predict
from limubert_jax.io import checkpoint
from limubert_jax.models import pipeline
from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain
from limubert_jax.models.pipeline import ClassifierPipelineConfig

SEQ, MERGE, RATE = 40, 20, 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory with a saved LIMU-GRU classifier (tiny encoder, random weights)."""
    encoder = LimuBertConfig(feature_num=6, hidden=24, hidden_ff=48, n_layers=2, n_heads=4, seq_len=SEQ)
    config = ClassifierPipelineConfig(method="limu_gru_v2", head="gru_v2", class_names=("run", "sit", "walk"),
                                      label="activity", seq_len=SEQ, merge=MERGE, feature_num=6, encoder=encoder,
                                      sampling_rate_hz=RATE, dataset="test/20_40")
    params = random_pipeline_params(config)
    out = tmp_path_factory.mktemp("run")
    checkpoint.save_model(out / pipeline.MODEL_DIR, params, config)
    return out


def _windows(n: int, seed: int = 0, features: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, SEQ, features)).astype(np.float32)
    x[..., 2] += 9.8  # gravity on z, as raw readings in m/s^2 have it
    return x


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predictions_do_not_depend_on_the_batching(run_dir):
    classifier = predict.load_classifier(run_dir)
    # Batch sizes 4 and 2 throughout this module: few compiled programs.
    x = _windows(6)
    whole = classifier.predict(x, batch_size=2)
    assert whole.probabilities.shape == (6, 3) and whole.subwindow_logits.shape == (6, SEQ // MERGE, 3)
    batched = classifier.predict(x, batch_size=4)  # 4 + 2 padded
    np.testing.assert_allclose(batched.probabilities, whole.probabilities, atol=1e-6)
    # A window's probabilities: the mean of its sub-windows' softmax.
    np.testing.assert_allclose(whole.subwindow_probabilities.mean(axis=1), whole.probabilities, atol=1e-6)
    assert whole.labels == [classifier.class_names[i] for i in whole.predicted]


def test_the_model_normalizes_raw_readings(run_dir):
    """Readings in g instead of m/s^2 change the answer: the model divides by gravity itself."""
    classifier = predict.load_classifier(run_dir)
    x = _windows(4)
    direct = predict.pipeline.predict_batch(classifier.params, x, config=classifier.config)["probabilities"]
    np.testing.assert_allclose(classifier.predict(x).probabilities, np.asarray(direct), atol=1e-6)
    assert not np.allclose(classifier.predict(x / 9.8).probabilities, classifier.predict(x).probabilities, atol=1e-4)


def test_cli_writes_window_and_subwindow_rows(run_dir, tmp_path, capsys):
    x = _windows(5, features=8)  # extra trailing columns are ignored, as in training
    np.save(tmp_path / "x.npy", x)
    args = ["--model", str(run_dir / "model"), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "p.csv"),
            "--subwindow_output", str(tmp_path / "s.csv"), "--batch_size", "4"]
    assert predict.main(args) == 0
    assert "5 windows" in capsys.readouterr().out
    rows, sub = _rows(tmp_path / "p.csv"), _rows(tmp_path / "s.csv")
    expected = predict.load_classifier(run_dir).predict(x[..., :6], batch_size=4)
    assert [r["window"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [r["predicted"] for r in rows] == expected.labels
    got = np.asarray([[float(r[f"prob_{c}"]) for c in ("run", "sit", "walk")] for r in rows])
    np.testing.assert_allclose(got, expected.probabilities, atol=1e-5)
    assert [(r["window"], r["subwindow"], r["first_step"]) for r in sub[:3]] == [("0", "0", "0"), ("0", "1", "20"),
                                                                                  ("1", "0", "0")]
    assert len(sub) == 10


@pytest.mark.parametrize("shape, fragment", [
    ((3, 30, 6), "windows of 30 steps x 6 features; the model"),
    ((3, SEQ, 3), "windows of 40 steps x 3 features"),
    ((3, SEQ), "is not (N, 40, 6+) raw windows"),
])
def test_windows_of_the_wrong_shape_are_refused_in_one_line(run_dir, tmp_path, capsys, shape, fragment):
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    args = ["--model", str(run_dir), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "p.csv")]
    assert predict.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1, err
    assert "20 Hz" in err or len(shape) == 2
    assert not (tmp_path / "p.csv").exists()


def test_a_failure_midway_leaves_no_output(run_dir, tmp_path, capsys):
    x = _windows(6)
    x[4, 3, 1] = np.nan  # in the third batch of 2
    np.save(tmp_path / "x.npy", x)
    args = ["--model", str(run_dir), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "p.csv"),
            "--subwindow_output", str(tmp_path / "s.csv"), "--batch_size", "2"]
    assert predict.main(args) == 2
    assert "window 4 contains NaN or Inf" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]  # neither output, no staging file


def test_existing_outputs_are_refused_unless_overwrite(run_dir, tmp_path, capsys):
    np.save(tmp_path / "x.npy", _windows(2))
    (tmp_path / "p.csv").write_text("mine\n")
    args = ["--model", str(run_dir), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "p.csv")]
    assert predict.main(args) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "p.csv").read_text() == "mine\n"
    assert predict.main([*args, "--overwrite"]) == 0
    assert len(_rows(tmp_path / "p.csv")) == 2
    assert predict.main(["--model", str(run_dir), "--input", str(tmp_path / "x.npy"),
                         "--output", str(tmp_path / "x.npy")]) == 2
    assert "is also an input" in capsys.readouterr().err


def test_models_that_are_not_classifiers_are_refused(tmp_path, capsys):
    config = LimuBertConfig(feature_num=6, hidden=24, hidden_ff=48, n_layers=1, n_heads=4, seq_len=SEQ)
    checkpoint.save_model(tmp_path / "bert", random_params(LimuBertModel4Pretrain(config).init_params), config)
    np.save(tmp_path / "x.npy", _windows(2))
    for model, fragment in ((tmp_path / "bert", "holds a limu_bert model, not a trained classifier"),
                            (tmp_path, "no trained classifier here"), (tmp_path / "nope", "no such run directory")):
        args = ["--model", str(model), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path.parent / "p.csv")]
        assert predict.main(args) == 2
        assert fragment in capsys.readouterr().err


def _recording(path: Path, seconds: float, activity: list[str], rate: float = 50.0) -> None:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(len(activity))
    x = rng.normal(0, 1, (len(t), 6))
    x[:, 2] += 9.8
    lines = ["timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,activity"]
    for i in range(len(t)):
        lines.append(",".join([repr(float(t[i])), *(repr(float(v)) for v in x[i]), activity[i * len(activity) // len(t)]]))
    path.write_text("\n".join(lines) + "\n")


def test_a_folder_of_recordings_is_resampled_and_cut_like_the_training_windows(run_dir, tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    _recording(folder / "a.csv", 8.0, ["walk", "sit"])
    _recording(folder / "b.csv", 4.0, ["run"])
    assert predict.main(["--model", str(run_dir), "--input", str(folder), "--output", str(tmp_path / "p.csv"),
                         "--stride", "20", "--batch_size", "4"]) == 0  # half-overlapping windows
    rows = _rows(tmp_path / "p.csv")
    from limubert_jax.datasets.recordings import reader as recordings

    source = recordings.read_source(folder, RATE, SEQ, stride=20)
    windows = np.stack([imu for imu, _, _ in source.windows()])
    per_file = [r.windows for r in source.recordings]
    assert len(rows) == len(windows) and per_file[0] >= 5 and per_file[1] >= 2
    assert [r["recording"] for r in rows] == ["a.csv"] * per_file[0] + ["b.csv"] * per_file[1]
    assert [float(r["start_s"]) for r in rows[: per_file[0]]] == [float(i) for i in range(per_file[0])]  # 20 steps
    # The recordings' own label column comes along (empty where a window's label changes).
    true = [r["true_activity"] for r in rows]
    assert true[0] == "walk" and true[per_file[0] - 1] == "sit" and "" in true[: per_file[0]]
    assert set(true[per_file[0]:]) == {"run"}
    expected = predict.load_classifier(run_dir).predict(windows, batch_size=4)
    assert [r["predicted"] for r in rows] == expected.labels


def test_recording_options_are_refused_for_npy_input(run_dir, tmp_path, capsys):
    np.save(tmp_path / "x.npy", _windows(2))
    args = ["--model", str(run_dir), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "p.csv"),
            "--acc_unit", "g"]
    assert predict.main(args) == 2
    assert "--acc_unit: for a folder of recordings" in capsys.readouterr().err


def test_the_saved_config_says_everything_predict_needs(run_dir):
    record = json.loads((run_dir / "model" / checkpoint.CONFIG_FILE).read_text())
    assert record["kind"] == "classifier_pipeline"
    config = ClassifierPipelineConfig.from_dict(record["config"])
    assert config == predict.load_classifier(run_dir).config
    assert (config.seq_len, config.merge, config.feature_num, config.sampling_rate_hz) == (SEQ, MERGE, 6, RATE)
    with pytest.raises(ValueError, match="unknown ClassifierPipelineConfig field"):
        ClassifierPipelineConfig.from_dict({**record["config"], "typo": 1})


def test_finite_windows_whose_probabilities_overflow_are_refused(run_dir, tmp_path, capsys):
    """Readings of 3e38 are finite, but the normalization overflows float32: NaN probabilities
    used to be written with exit status 0."""
    x = _windows(3)
    x[1] = 3e38
    np.save(tmp_path / "x.npy", x)
    args = ["--model", str(run_dir), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "p.csv"),
            "--batch_size", "4"]
    assert predict.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("error: ") and "the prediction of window 1 is not finite" in err and "3e+38" in err
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


def test_npy_labels_give_accuracy_and_macro_f1_beside_the_csv(run_dir, tmp_path, capsys):
    from limubert_jax.downstream import evaluation

    x = _windows(6)
    np.save(tmp_path / "x.npy", x)
    predicted = predict.load_classifier(run_dir).predict(x, batch_size=4).predicted
    truth = np.array([predicted[0], predicted[1], (predicted[2] + 1) % 3, -1, predicted[4], (predicted[5] + 2) % 3])
    np.save(tmp_path / "y.npy", np.repeat(truth[:, None], SEQ, axis=1))  # per step, as the datasets store them
    args = ["--model", str(run_dir), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "p.csv"),
            "--labels", str(tmp_path / "y.npy"), "--batch_size", "4"]
    assert predict.main(args) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "p.metrics.json").read_text())
    kept = truth >= 0
    expected = evaluation.classification_metrics(truth[kept], predicted[kept], ("run", "sit", "walk"))
    assert metrics["accuracy"] == pytest.approx(0.6) == expected["accuracy"]
    assert metrics["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert (metrics["labelled_windows"], metrics["unlabelled_windows"], metrics["label"]) == (5, 1, "activity")
    assert f"activity: accuracy 0.6000, macro-F1 {expected['macro_f1']:.4f} (5 of 6 windows labelled)" in out
    rows = _rows(tmp_path / "p.csv")
    assert [r["true_activity"] for r in rows][2:4] == [("run", "sit", "walk")[truth[2]], ""]
    # Class names work as labels too; an index the model does not have is refused in one line.
    np.save(tmp_path / "names.npy", np.array(["run", "sit", "walk", "jump", "sit", "run"]))
    assert predict.main([*args[:6], "--labels", str(tmp_path / "names.npy"), "--output", str(tmp_path / "q.csv")]) == 0
    assert "1 of classes the model does not know (jump) left out" in capsys.readouterr().out
    np.save(tmp_path / "bad.npy", np.array([0, 1, 7, 0, 0, 0]))
    assert predict.main([*args[:6], "--labels", str(tmp_path / "bad.npy"), "--output", str(tmp_path / "r.csv")]) == 2
    assert "label 7 is not a class index of the model" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "r.metrics.json").exists()


def test_recordings_with_the_label_column_give_metrics(run_dir, tmp_path, capsys):
    folder = tmp_path / "recordings"
    folder.mkdir()
    _recording(folder / "a.csv", 6.0, ["walk", "walk", "sit"])
    assert predict.main(["--model", str(run_dir), "--input", str(folder), "--output", str(tmp_path / "p.csv"),
                         "--batch_size", "4"]) == 0
    metrics = json.loads((tmp_path / "p.metrics.json").read_text())
    rows = _rows(tmp_path / "p.csv")
    labelled = [r for r in rows if r["true_activity"]]
    assert metrics["labelled_windows"] == len(labelled) > 0
    right = sum(r["true_activity"] == r["predicted"] for r in labelled)
    assert metrics["accuracy"] == pytest.approx(right / len(labelled))
    assert "activity: accuracy" in capsys.readouterr().out


def test_recordings_as_phones_write_them_are_read_with_the_builds_options(run_dir, tmp_path, capsys):
    """Milliseconds and a logger's own column names, read through the same options as a build."""
    folder = tmp_path / "phone"
    folder.mkdir()
    _recording(folder / "a.csv", 6.0, ["walk"])
    lines = (folder / "a.csv").read_text().splitlines()
    renamed = ["t_ms,ax,ay,az,gx,gy,gz,activity"]
    for line in lines[1:]:
        t, *rest = line.split(",")
        renamed.append(",".join([f"{float(t) * 1000:.0f}", *rest]))
    (folder / "a.csv").write_text("\n".join(renamed) + "\n")
    columns = "t_ms:timestamp,ax:acc_x,ay:acc_y,az:acc_z,gx:gyro_x,gy:gyro_y,gz:gyro_z"
    args = ["--model", str(run_dir), "--input", str(folder), "--output", str(tmp_path / "p.csv"), "--batch_size", "4",
            "--columns", columns]
    assert predict.main(args) == 2
    err = capsys.readouterr().err
    assert "--timestamp_unit='ms'" in err and "config.dataset" not in err, err
    assert predict.main([*args, "--timestamp_unit", "ms"]) == 0
    assert len(_rows(tmp_path / "p.csv")) == 3  # 6 s at 20 Hz: three whole 40-step windows
    assert predict.main([*args, "--timestamp_unit", "ms", "--max_gap_s", "nan", "--output", str(tmp_path / "q.csv")]) == 2
    assert "--max_gap_s must be" in capsys.readouterr().err


def test_an_output_that_appears_during_the_run_is_not_replaced(run_dir, tmp_path, capsys, monkeypatch):
    """Two runs to one new output both passed the check at their start, and the later one
    silently replaced the earlier's file; the rename into place now refuses it."""
    np.save(tmp_path / "x.npy", _windows(2))
    batches = predict.TrainedClassifier.batches

    def another_run_writes_first(self, *args, **kwargs):
        (tmp_path / "p.csv").write_text("the other run's\n")
        yield from batches(self, *args, **kwargs)

    monkeypatch.setattr(predict.TrainedClassifier, "batches", another_run_writes_first)
    args = ["--model", str(run_dir), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "p.csv")]
    assert predict.main(args) == 2
    assert "p.csv: appeared while this command ran; pass --overwrite to replace it" in capsys.readouterr().err
    assert (tmp_path / "p.csv").read_text() == "the other run's\n"
    assert sorted(os.listdir(tmp_path)) == ["p.csv", "x.npy"]  # no staging file left
    (tmp_path / "p.csv").unlink()
    assert predict.main([*args, "--overwrite"]) == 0  # told to replace: it does
    assert len(_rows(tmp_path / "p.csv")) == 2
