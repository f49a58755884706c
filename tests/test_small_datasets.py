"""Small datasets run to the end: `pretrain+report` with every method of the default report,
over the smallest dataset the config checks accept and a few larger ones (merge 20 and 40).
Each run either ends with its report or is refused in one line before its first train step;
no stage after training (t-SNE, confusion matrices, per-class scores, the report) fails on
few points or on classes missing from the test split.

The data: N windows of 120 x 6 in the npy layout, three classes taking turns (window i is
class i % 3), so that the smallest accepted sizes have classes without a test window."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from limubert_jax import config_lib, tasks
from limubert_jax.downstream import fit, runners
from limubert_jax.pretraining import trainer
from limubert_jax.runtime.errors import LimuBertError

ROOT = Path(__file__).resolve().parents[1]
METHODS = runners.report_methods(config_lib.sibling_config(str(ROOT / "configs" / "default.py"), "default")
                                 .get_config())  # the default report's


def _arrays(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    labels = np.repeat((np.arange(n) % 3)[:, None, None], 120, axis=1)
    windows = rng.normal(size=(n, 120, 6)).astype(np.float32) + 0.5 * labels
    windows[..., 2] += 9.8
    np.save(folder / "data_20_120.npy", windows)
    np.save(folder / "label_20_120.npy", labels)
    return folder


def _config(arrays: Path, data_dir: Path, merge: int):
    config = config_lib.sibling_config(str(ROOT / "tests" / "configs" / "test.py"), "test").get_config()
    config.dataset.update(name="imu_npy", manual_dir=str(arrays), data_dir=str(data_dir))
    config.task = "pretrain+report"
    config.train.update(num_epochs=1, batch_size=4, eval_batch_size=8)
    config.downstream.update(label="label_0", label_rate=0.5, merge=merge, num_epochs=2, tsne_points=60)
    assert runners.report_methods(config) == METHODS
    return config


class _FirstTrainStep(Exception):
    pass


def test_the_checks_refuse_what_cannot_run_before_the_first_train_step(tmp_path, monkeypatch):
    """Below the smallest size that runs, the refusal comes before pretraining, in one line."""
    def first_step(*args, **kwargs):
        raise _FirstTrainStep

    monkeypatch.setattr(trainer, "pretrain", first_step)
    accepted = []
    for n in range(6, 13):
        workdir = tmp_path / f"work{n}"
        try:
            tasks.run(_config(_arrays(tmp_path / f"arrays{n}", n), tmp_path / "tfds", 40), workdir)
        except _FirstTrainStep:
            accepted.append(n)
        except LimuBertError as e:
            assert "\n" not in str(e) and not workdir.exists(), e
    assert accepted == [10, 11, 12]  # 10 windows: 8 train, 1 validation, 1 test


def test_a_labelled_draw_of_one_class_is_refused_before_pretraining(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "pretrain", lambda *a, **k: pytest.fail("pretraining started"))
    arrays = _arrays(tmp_path / "arrays", 30)
    np.save(arrays / "label_20_120.npy", np.zeros((30, 120, 1)))
    with pytest.raises(LimuBertError, match=r"^config\.downstream \(imu_npy, task label_0\): the labelled draw holds "
                                            r"one class only \(0\); a classifier needs two or more"):
        tasks.run(_config(arrays, tmp_path / "tfds", 20), tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_a_method_that_cannot_run_leaves_a_row_of_dashes_and_a_note(tmp_path, monkeypatch):
    def run_method(config, workdir, method, inputs):
        if method == "dcnn":
            raise LimuBertError("dcnn: something only this method needs is missing")
        return {"method": method, "accuracy": 0.5, "macro_f1": 0.5, "num_labelled": 4, "run_dir": f"x/{method}"}

    monkeypatch.setattr(runners, "run_method", run_method)
    config = _config(tmp_path, tmp_path, 20)
    summary = runners.run_report(config, tmp_path, inputs=object())
    report = (tmp_path / "report.md").read_text()
    assert "| DCNN | — | — |" in report and "- dcnn could not run: dcnn: something only" in report
    assert summary["results"]["dcnn"] == {"accuracy": None, "macro_f1": None}
    monkeypatch.setattr(runners, "run_method", lambda *a: (_ for _ in ()).throw(LimuBertError("no")))
    with pytest.raises(LimuBertError, match="^config.downstream.methods: no method could run"):
        runners.run_report(config, tmp_path, inputs=object())


@pytest.mark.slow
@pytest.mark.parametrize("n, merge, trained", [(10, 40, True), (20, 20, False), (60, 40, False)])
def test_pretrain_and_report_run_to_the_end_on_small_data(tmp_path_factory, monkeypatch, n, merge, trained):
    """The smallest accepted size trains every method for real; the others stand the
    classifiers' training in for their initial parameters (training at these sizes is the
    same program on other shapes; what runs after it is what small data used to break)."""
    if not trained:
        monkeypatch.setattr(runners, "fit", lambda apply_fn, params, *a, num_epochs, **k: fit.FitResult(
            params, 1, 0.0, {"train_loss": [0.0] * num_epochs, "vali_accuracy": [0.0] * num_epochs}))
    root = tmp_path_factory.mktemp(f"small{n}-{merge}")
    workdir = root / "work"
    summary = tasks.run(_config(_arrays(root / "arrays", n), root / "tfds", merge), workdir)
    report = (workdir / "report.md").read_text()
    assert set(summary["results"]) == set(METHODS)
    for method in METHODS:
        task, model = runners.method_task(method)
        out = runners.run_dir(workdir, task, method, _config(root / "arrays", root / "tfds", merge))
        metrics = json.loads((out / "metrics.json").read_text())
        assert np.asarray(metrics["confusion_matrix"]).sum() == metrics["num_test"] > 0
        assert (out / "confusion.png").exists()
        assert (out / "tsne.png").exists() == (metrics["num_test"] >= 5)
        for note in metrics["notes"]:
            assert note in report
    if n == 10:  # one test window: 3 or 6 sub-windows of one class, so no t-SNE and absent classes
        assert "no test sub-window of class" in report
        assert ("no t-SNE plot" in report) == (merge == 40)
