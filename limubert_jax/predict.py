"""Activities (or any trained task) from raw IMU windows with a trained classifier (`limubert-predict`).

    limubert-predict --model=RUN_DIR --input=X.npy --output=P.csv [--labels=Y.npy] [--subwindow_output=S.csv]
        [--overwrite]
    limubert-predict --model=RUN_DIR --input=RECORDINGS_DIR --output=P.csv [--stride=STEPS] [--acc_unit=g]
        [--timestamp_unit=ms] [--columns=ax:acc_x,...] [--label_columns=activity] [--ignore_columns=...]

RUN_DIR is a classify, finetune or baseline run (`workdir/<task>/<method>-<label>-<rate>/`; its
`model/` checkpoint, or that checkpoint itself). The input is either

* X.npy: raw windows (N, S, F) as the dataset's windows were: S = the model's window length,
  F >= its features, in the order acc x/y/z (m/s^2), gyro x/y/z (rad/s), then magnetometer
  (any unit; it is scaled to unit norm); extra trailing columns are ignored. Read
  memory-mapped, batch by batch; or
* a folder of recordings (CSV or Parquet files with `timestamp` and acc/gyro columns, see
  the `recordings` dataset's README), resampled to the model's rate and cut into windows
  every `--stride` steps (default: the window length, no overlap); the flags `--max_gap_s`,
  `--acc_unit`, `--gyro_unit`, `--timestamp_unit`, `--columns`, `--label_columns` and
  `--ignore_columns` read them as the training job's `config.dataset` fields of those names do.

The model runs what it was trained with: the normalization (docs/reference.md §1), the encoder over the
whole window (or over each of its seq_len-step pieces, for an encoder shorter than the
windows), the cut into `merge`-step sub-windows, the classifier on each sub-window. A
window's answer is the mean of its sub-windows' class probabilities, then the most probable
class (`models.pipeline.AGGREGATION`). P.csv has one row per window: `window` (its index;
for recordings also `recording` and `start_s`, and `true_<label>` when the recordings carry
that label column), `predicted` (the class name) and `prob_<class>` for every class.
`--subwindow_output` adds S.csv with one row per sub-window (`subwindow`, `first_step`).
Where the true classes are known (recordings with the model's label column, or `--labels
Y.npy` for an .npy input: (N,) or (N, S) class indices or names), the command also prints the
accuracy and macro-F1 over the labelled windows and writes them, with per-class scores and
the confusion matrix, to P.metrics.json beside P.csv (`true_<label>` is then a column of P.csv).
Outputs appear complete or not at all, and an existing output is refused unless
`--overwrite`. Paths may be object-store paths (`gs://`), read or assembled in memory.

From Python: `load_classifier(RUN_DIR).predict(windows)`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, Sequence

import jax
import numpy as np
from absl import flags
from etils import epath
from tqdm.auto import tqdm

from limubert_jax.downstream import evaluation
from limubert_jax.export import released
from limubert_jax.io import checkpoint, storage
from limubert_jax.io.state_dict import CLASSIFIER_PIPELINE
from limubert_jax.io.windows import open_windows  # one reader of window files (embed uses it too)
from limubert_jax.models import pipeline
from limubert_jax.models.inference import check_finite, check_finite_outputs
from limubert_jax.models.pipeline import MODEL_DIR, ClassifierPipelineConfig
from limubert_jax.runtime import cli
from limubert_jax.runtime.errors import LimuBertError, check_terminated


def model_dir(path: str | os.PathLike) -> epath.Path:
    """The classifier checkpoint that `path` names: a run directory's `model/`, the checkpoint,
    or a released classifier by name (`gru:hhar`, ...; fetched on first use: `limubert-fetch`)."""
    path = storage.as_path(released.resolve(path))
    if not path.exists():
        raise LimuBertError(f"{path}: no such run directory")
    try:
        return checkpoint.resolve_model_dir(path)
    except LimuBertError:  # its message speaks of checkpoints and workdirs; this command takes runs
        raise LimuBertError(f"{path}: no trained classifier here (no {MODEL_DIR}/{checkpoint.CONFIG_FILE}); a "
                            "classify, finetune or baseline run saves one in its run directory, "
                            "workdir/<task>/<method>-<label>-<rate>/") from None


@dataclasses.dataclass(frozen=True)
class Predictions:
    """A classifier's answers for N windows of K sub-windows over C classes."""

    class_names: tuple[str, ...]
    probabilities: np.ndarray  # (N, C) float32: the mean of the sub-windows' probabilities
    subwindow_logits: np.ndarray  # (N, K, C) float32

    @property
    def predicted(self) -> np.ndarray:
        """(N,) class index of each window."""
        return np.argmax(self.probabilities, axis=-1)

    @property
    def predicted_subwindows(self) -> np.ndarray:
        """(N, K) class index of each sub-window."""
        return np.argmax(self.subwindow_logits, axis=-1)

    @property
    def subwindow_probabilities(self) -> np.ndarray:
        """(N, K, C) softmax of each sub-window's logits."""
        z = self.subwindow_logits - self.subwindow_logits.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    @property
    def labels(self) -> list[str]:
        """The predicted class name of each window."""
        return [self.class_names[i] for i in self.predicted]


class TrainedClassifier:
    """A saved classifier run, ready to predict: `load_classifier(RUN_DIR).predict(windows)`."""

    def __init__(self, config: ClassifierPipelineConfig, params: Any, path: str = ""):
        self.config, self.path = config, path
        self.params = jax.device_put(params)  # once, not per batch

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    def check_windows(self, shape: tuple[int, ...], source: str) -> None:
        """`LimuBertError` in one line unless raw windows of `shape` fit the model."""
        cfg = self.config
        units = "acc m/s^2, gyro rad/s" + (", magnetometer" if cfg.feature_num == 9 else "")
        need = f"(N, {cfg.seq_len}, {cfg.feature_num}+) raw windows ({units})"
        if len(shape) != 3:
            raise LimuBertError(f"{source}: shape {tuple(shape)} is not {need}, as the model {self.path} takes")
        if shape[1] != cfg.seq_len or shape[2] < cfg.feature_num:
            raise LimuBertError(f"{source}: windows of {shape[1]} steps x {shape[2]} features; the model "
                                f"{self.path} takes {need}: {cfg.seq_len} steps at "
                                f"{cfg.sampling_rate_hz or '?'} Hz, as in {cfg.dataset or 'its training data'}")

    def batches(self, windows, *, batch_size: int = 256, source: str = "input",
                progress: bool = False) -> Iterator[tuple[int, Predictions]]:
        """(first window index, `Predictions`) of consecutive batches of `windows` (N, S, F)
        (any array, memory-mapped ones included: read a batch at a time). A batch holding NaN
        or Inf is an error naming the window. Fixed-size jitted batches, the last one padded
        (one compilation serves them all)."""
        self.check_windows(tuple(windows.shape), source)
        n = len(windows)
        size = max(1, min(batch_size, n))
        with tqdm(range(0, n, size), desc="predict", unit="batch", disable=not progress) as starts:
            for start in starts:
                check_terminated()
                batch = np.asarray(windows[start : start + size], np.float32)  # native byte order too
                check_finite(batch, source=source, first=start)
                rows = len(batch)
                if rows < size:
                    batch = np.concatenate([batch, np.zeros((size - rows, *batch.shape[1:]), np.float32)])
                out = pipeline.predict_batch(self.params, batch, config=self.config)
                probabilities = np.asarray(out["probabilities"])[:rows]
                check_finite_outputs(probabilities, batch, what="prediction", source=source, first=start)
                yield start, Predictions(self.class_names, probabilities, np.asarray(out["subwindow_logits"])[:rows])

    def predict(self, windows, *, batch_size: int = 256, progress: bool = False) -> Predictions:
        """`Predictions` for all windows (N, S, F) raw readings."""
        parts = [p for _, p in self.batches(windows, batch_size=batch_size, progress=progress)]
        if not parts:
            raise LimuBertError("no windows to predict (an empty input)")
        return Predictions(self.class_names, np.concatenate([p.probabilities for p in parts]),
                           np.concatenate([p.subwindow_logits for p in parts]))


def load_classifier(path: str | os.PathLike) -> TrainedClassifier:
    """The trained classifier of a run directory (or its `model/` checkpoint)."""
    directory = model_dir(path)
    kind, config, params = checkpoint.load_model(directory)
    if kind != CLASSIFIER_PIPELINE:
        raise LimuBertError(f"{directory}: holds a {kind} model, not a trained classifier; predict takes a classify, "
                            "finetune or baseline run (for LIMU-BERT embeddings use limubert-embed)")
    return TrainedClassifier(config, params, str(path))


# ---------------------------------------------------------------------------------------
# Inputs.


@dataclasses.dataclass
class WindowsInput:
    """Windows to predict (N, S, F) and the columns that say where each one comes from."""

    windows: Any  # an array or a memory map
    columns: dict[str, Sequence[Any]] = dataclasses.field(default_factory=dict)  # name -> N values


def npy_input(path: str | os.PathLike, config: ClassifierPipelineConfig,
              labels_path: str | os.PathLike | None = None) -> WindowsInput:
    """Windows of an .npy file; with `labels_path`, each window's true class (`npy_labels`)
    as the `true_<label>` column."""
    windows = open_windows(path, command="predict")
    if labels_path is None:
        return WindowsInput(windows)
    return WindowsInput(windows, {f"true_{config.label}": npy_labels(labels_path, len(windows), config.class_names)})


def npy_labels(path: str | os.PathLike, num_windows: int, class_names: Sequence[str]) -> list[str]:
    """The true class name of each of `num_windows` windows ("" where unknown) from an .npy
    of labels: (N,) per window or (N, S) per step (a window whose steps disagree has none),
    as class indices into `class_names` (negative: no label) or as class names."""
    path = storage.as_path(path)
    if not path.is_file():
        raise LimuBertError(f"{path}: no such file (--labels)")
    try:
        labels = np.asarray(storage.load_npy(path))
    except (ValueError, OSError, EOFError) as e:
        raise LimuBertError(f"{path}: not a readable .npy array of labels ({e})") from None
    if labels.ndim == 3 and labels.shape[2] == 1:
        labels = labels[..., 0]
    if labels.ndim not in (1, 2) or len(labels) != num_windows:
        raise LimuBertError(f"{path}: labels of shape {labels.shape}; expected ({num_windows},) or ({num_windows}, "
                            "steps): one label per window or per step of each of the input's windows")
    if labels.ndim == 2:  # per step: a window's label is its steps' common one
        constant = (labels == labels[:, :1]).all(axis=1)
        labels = labels[:, 0]
    else:
        constant = np.ones(len(labels), bool)
    if labels.dtype.kind in "US":
        names = [str(v).strip() for v in labels.astype(str)]
        return [n if ok else "" for n, ok in zip(names, constant)]
    whole = labels.dtype.kind == "f" and np.all(labels[np.isfinite(labels)] % 1 == 0)
    if labels.dtype.kind not in "iu" and not whole:
        raise LimuBertError(f"{path}: labels of dtype {labels.dtype}; expected class indices (integers) or class "
                            f"names (strings)")
    known = constant & np.isfinite(labels) & (labels >= 0) if labels.dtype.kind == "f" else constant & (labels >= 0)
    indices = np.where(known, labels, 0).astype(np.int64)
    if (indices >= len(class_names)).any():
        bad = int(indices[indices >= len(class_names)][0])
        raise LimuBertError(f"{path}: label {bad} is not a class index of the model (0..{len(class_names) - 1}: "
                            f"{', '.join(class_names)})")
    return [class_names[i] if ok else "" for i, ok in zip(indices, known)]


def label_metrics(true: Sequence[str], predicted: np.ndarray, class_names: Sequence[str], task: str) -> dict[str, Any]:
    """Accuracy and macro-F1 of the predictions over the windows whose true class (a name,
    "" for none) is one of the model's classes; windows of classes the model was not trained
    on are counted apart, since no prediction can be right for them."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown: dict[str, int] = {}
    rows, labels = [], []
    for row, name in enumerate(true):
        if name in index:
            rows.append(row)
            labels.append(index[name])
        elif name:
            unknown[name] = unknown.get(name, 0) + 1
    summary: dict[str, Any] = {"label": task, "windows": len(true), "labelled_windows": len(rows),
                               "unlabelled_windows": sum(1 for name in true if not name),
                               "classes_unknown_to_the_model": unknown}
    if not rows:
        return {**summary, "accuracy": None, "macro_f1": None}
    return {**summary, **evaluation.classification_metrics(labels, np.asarray(predicted)[rows], class_names)}


def metrics_path(output: str | os.PathLike) -> epath.Path:
    """Where the label metrics of an output CSV go: beside it, `P.csv` -> `P.metrics.json`."""
    output = storage.as_path(output)
    return output.parent / f"{output.stem if output.suffix.lower() == '.csv' else output.name}.metrics.json"


def recordings_input(folder: str | os.PathLike, config: ClassifierPipelineConfig, **options) -> WindowsInput:
    """Windows of a folder of recordings at the model's rate and window length (the
    `recordings` dataset's reader, with its source `options`: `recording_options_defaults()`), with
    each window's recording, start time and, if the recordings carry the model's label
    column, its true class (empty where unlabelled)."""
    rate = config.sampling_rate_hz
    if not rate or rate != int(rate):
        raise LimuBertError(f"the model was trained on {config.dataset or 'windows'} at {rate or 'an unknown'} Hz; "
                            "recordings can be resampled only to a whole number of Hz: cut them into windows "
                            "yourself and pass an .npy")
    try:
        source = _recordings().read_source(folder, int(rate), config.seq_len, **options)
    except ValueError as e:  # options are named as the training job's config fields; here they are flags
        raise LimuBertError(str(e).replace("config.dataset.", "--")) from None
    if source.num_features < config.feature_num:
        raise LimuBertError(f"{folder}: the recordings have {source.num_features} channels; the model takes "
                            f"{config.feature_num} (magnetometer columns mag_x, mag_y, mag_z in every recording)")
    windows, labels = [], []
    column = source.label_columns.index(config.label) if config.label in source.label_columns else None
    names = source.label_classes.get(config.label, [])
    for imu, label, _ in source.windows():
        windows.append(imu)
        if column is not None:
            labels.append(names[label[0, column]] if label[0, column] >= 0 else "")
    times = list(source.window_times())
    columns = {"recording": [source.recordings[i].file for i, _ in times], "start_s": [round(t, 6) for _, t in times]}
    if column is not None:
        columns[f"true_{config.label}"] = labels
    return WindowsInput(np.stack(windows), columns)


# ---------------------------------------------------------------------------------------
# Outputs.


def _probability(value: float) -> str:
    return f"{value:.6g}"


def predict_file(model: str | os.PathLike, input_path: str | os.PathLike, output: str | os.PathLike, *,
                 subwindow_output: str | os.PathLike | None = None, labels: str | os.PathLike | None = None,
                 batch_size: int = 256, overwrite: bool = False, progress: bool = True,
                 **recording_options) -> dict[str, Any]:
    """Predicts every window of an .npy file or a recordings folder into CSV file(s) (see
    the module docstring); where the input carries true labels (recordings with the model's
    label column, or `labels` for an .npy), also their accuracy and macro-F1 into
    `metrics_path(output)`. Returns a summary: windows, class counts, outputs, metrics."""
    inputs = [p for p in (input_path, model, labels) if p]
    outputs = [storage.as_path(p) for p in (output, subwindow_output) if p]
    for path in outputs:
        storage.check_output_file(path, *inputs, overwrite=overwrite)
    if len(outputs) == 2 and str(outputs[0]) == str(outputs[1]):
        raise LimuBertError(f"{outputs[0]}: given as both --output and --subwindow_output")
    classifier = load_classifier(model)
    source = storage.as_path(input_path)
    if source.is_dir():
        if labels is not None:
            raise LimuBertError("--labels: for an .npy input; recordings carry their labels in a column named "
                                f"{classifier.config.label!r}")
        data = recordings_input(source, classifier.config, **recording_options)
    else:
        defaults = recording_options_defaults()
        given = sorted(k for k, v in recording_options.items() if v != defaults[k])
        if given:
            raise LimuBertError(f"--{', --'.join(given)}: for a folder of recordings, not an .npy input")
        data = npy_input(source, classifier.config, labels)
    if len(data.windows) == 0:
        raise LimuBertError(f"{source}: holds no windows")
    truth = data.columns.get(f"true_{classifier.config.label}")
    if truth is not None:
        outputs.append(storage.check_output_file(metrics_path(output), *inputs, overwrite=overwrite))
    names = classifier.class_names
    probability_columns = [f"prob_{c}" for c in names]
    predicted_all = np.zeros(len(data.windows), np.int64)
    local = all(storage.is_local(p) for p in outputs)
    metrics = None
    with (storage.staged(*outputs, replace=overwrite) if local else _in_memory(outputs, overwrite)) as files:
        handles = [open(f, "w", newline="") if local else f for f in files]
        try:
            writers = [csv.writer(h) for h in handles]
            writers[0].writerow(["window", *data.columns, "predicted", *probability_columns])
            if subwindow_output:
                writers[1].writerow(["window", "subwindow", "first_step", *data.columns, "predicted",
                                     *probability_columns])
            for start, batch in classifier.batches(data.windows, batch_size=batch_size, source=str(source),
                                                   progress=progress):
                predicted = batch.predicted
                predicted_all[start : start + len(predicted)] = predicted
                sub_probabilities = batch.subwindow_probabilities if subwindow_output else None
                for row in range(len(predicted)):
                    i = start + row
                    where = [values[i] for values in data.columns.values()]
                    writers[0].writerow([i, *where, names[predicted[row]],
                                         *map(_probability, batch.probabilities[row])])
                    if sub_probabilities is None:
                        continue
                    for j, p in enumerate(sub_probabilities[row]):
                        writers[1].writerow([i, j, j * classifier.config.merge, *where, names[int(np.argmax(p))],
                                             *map(_probability, p)])
            if truth is not None:
                metrics = label_metrics(truth, predicted_all, names, classifier.config.label)
                handles[-1].write(json.dumps(metrics, indent=2) + "\n")
        finally:
            if local:
                for h in handles:
                    h.close()
    counts = np.bincount(predicted_all, minlength=len(names))
    return {"windows": len(predicted_all), "counts": {n: int(c) for n, c in zip(names, counts)},
            "outputs": [str(p) for p in outputs], "metrics": metrics}


def _recordings():
    """The recordings reader, imported on first use: TFDS registers every builder when the
    datasets package loads, which `load_classifier(...).predict` (the Python API) does without."""
    from limubert_jax.datasets.recordings import reader  # noqa: PLC0415

    return reader


def recording_options_defaults() -> dict[str, Any]:
    """The `recordings` reader's options that `predict` takes (flags of the same names), with
    their defaults; a build's `fingerprint` mode has no use for one reading."""
    return {k: v for k, v in _recordings().SOURCE_OPTIONS.items() if k != "fingerprint"}


class _in_memory:
    """Object-store outputs: CSV text assembled in memory, written together at the end."""

    def __init__(self, paths, replace: bool):
        self.paths, self.replace = paths, replace

    def __enter__(self):
        self.buffers = [io.StringIO(newline="") for _ in self.paths]
        return self.buffers

    def __exit__(self, kind, *_):
        if kind is None:
            storage.write_together({p: b.getvalue().encode("utf-8") for p, b in zip(self.paths, self.buffers)},
                                   replace=self.replace)
        return False


# ---------------------------------------------------------------------------------------
# The command.


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("model", None, "A classify / finetune / baseline run directory (or its model/ checkpoint), "
                        "or a released classifier by name (gru:hhar, gru:motion, gru:shoaib, gru:uci).",
                        required=True, flag_values=fv)
    flags.DEFINE_string("input", None, "Raw windows (N, S, F) .npy, or a folder of recordings.", required=True,
                        flag_values=fv)
    flags.DEFINE_string("output", None, "CSV to write: one row per window.", required=True, flag_values=fv)
    flags.DEFINE_string("subwindow_output", None, "Also write this CSV: one row per sub-window.", flag_values=fv)
    flags.DEFINE_string("labels", None, "An .npy input's true labels, (N,) or (N, S): class indices (-1: none) or "
                        "names; accuracy and macro-F1 go to OUTPUT.metrics.json.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 256, "Windows per compiled batch.", lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace existing output files.", flag_values=fv)
    for name, default in recording_options_defaults().items():
        define = {int: flags.DEFINE_integer, float: flags.DEFINE_float}.get(type(default), flags.DEFINE_string)
        define(name, default, f"Recordings: {_recordings().OPTION_HELP[name]}", flag_values=fv)


def _run(fv: flags.FlagValues, args: list[str]) -> None:
    summary = predict_file(fv.model, fv.input, fv.output, subwindow_output=fv.subwindow_output, labels=fv.labels,
                           batch_size=fv.batch_size, overwrite=fv.overwrite,
                           **{name: fv[name].value for name in recording_options_defaults()})
    counts = ", ".join(f"{name} {count}" for name, count in summary["counts"].items())
    # The command's result: stdout (logs go to stderr).
    print(f"wrote {' and '.join(summary['outputs'])}: {summary['windows']} windows ({counts})")
    metrics = summary["metrics"]
    if metrics is not None:
        print(describe_metrics(metrics))


def describe_metrics(metrics: dict[str, Any]) -> str:
    """One line on `label_metrics`: the scores and what they were computed over."""
    over = f"{metrics['labelled_windows']} of {metrics['windows']} windows labelled"
    unknown = metrics["classes_unknown_to_the_model"]
    if unknown:
        over += f"; {sum(unknown.values())} of classes the model does not know ({', '.join(sorted(unknown))}) left out"
    if metrics["accuracy"] is None:
        return f"{metrics['label']}: no window has a label among the model's classes ({over})"
    return f"{metrics['label']}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} ({over})"


def main(argv: Sequence[str] | None = None) -> int:
    """The command (`limubert-predict`); argv after the program name, None for sys.argv. Returns the exit status."""
    return cli.run_command(__doc__, define_flags, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
