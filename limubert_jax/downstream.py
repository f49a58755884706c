"""Downstream tasks under the paper's protocol (SPEC section 7): embed, classify, finetune,
baseline, and a report comparing methods.

* `embed`: the pretrained encoder over every window -> `embed/embeddings.npy` (N, S, H) and
  one `embed/labels_<task>.npy` (N,) per task.
* `classify`: a head (`config.downstream.classifier`, e.g. `gru_v2` = LIMU-GRU) trained on
  frozen embeddings of the labelled sub-windows.
* `finetune`: encoder + head trained together (`freeze_encoder` keeps the encoder fixed).
* `baseline`: a model on raw normalized sub-windows (`config.downstream.baseline`: DCNN,
  DeepSense, R-GRU).
* `report`: several methods (`config.downstream.methods`) on one dataset, as a markdown
  table in the layout of the paper's Table 3.

Data (SPEC 7): the reference's 80/10/10 window split (same seed as pretraining), windows
re-cut into 20-step sub-windows with a constant label, and a balanced labelled subset at
`label_rate` drawn from the training split. Labels are chosen by task name (`activity`,
`user`, `position`, `device_model`), never by column index. Training: Adam, batch 128, 700
epochs, the parameters of the epoch with the best validation accuracy kept; the epochs run
as compiled chunks (`lax.scan` over epochs and batches, data on device). Each run writes
`metrics.json` (test accuracy, macro-F1, per-class scores, confusion matrix),
`confusion.png`, `tsne.png` (test sub-windows coloured by label) and `history.json` to
`workdir/<task>/<method>-<label>-<rate>/`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from limubert_jax import checkpoint, evaluation, heads, input_pipeline, plots, report, splits, storage, tsne
from limubert_jax.embed import embed_windows
from limubert_jax.errors import LimuBertError
from limubert_jax.model import LimuBertConfig, LimuBertModel4Pretrain
from limubert_jax.normalization import normalize

DOWNSTREAM_TASKS = ("embed", "classify", "finetune", "baseline", "report")
EPOCHS_PER_CALL = 50  # epochs per compiled call: one progress-bar tick, one host round trip


@dataclasses.dataclass(frozen=True)
class TaskLabels:
    """One task's labels for every window: `per_step` (N, S) int, class `names`."""

    task: str
    names: tuple[str, ...]
    per_step: np.ndarray


@dataclasses.dataclass(frozen=True)
class LabelledData:
    """Every window of a dataset in memory, with the chosen task's labels."""

    name: str
    version: str
    windows: np.ndarray  # (N, S, F) float32 raw readings in physical units
    labels: TaskLabels


# ---------------------------------------------------------------------------------------
# Data: windows and labels by task name.


def available_tasks(info) -> dict[str, tuple[str, ...] | None]:
    """Task name -> class names (None: unnamed integer classes) of a dataset's features.

    ClassLabel features are tasks; npy-layout builders (a `label` (S, L) feature) name their
    columns `label_columns` in metadata, else `label_0`, `label_1`, ...
    """
    tasks: dict[str, tuple[str, ...] | None] = {}
    for key, feature in info.features.items():
        names = getattr(feature, "names", None)
        if names is not None:
            tasks[key] = tuple(names)
    if "label" in info.features and not tasks:
        meta = dict(info.metadata or {})
        columns = meta.get("label_columns") or [f"label_{i}" for i in range(int(meta.get("num_labels", 0)))]
        tasks.update({str(c): None for c in columns})
    return tasks


def _check_label(config: ml_collections.ConfigDict, data) -> dict[str, tuple[str, ...] | None]:
    """The dataset's tasks (`available_tasks`); one lacking `config.downstream.label` is an
    error listing the tasks it has."""
    tasks = available_tasks(data.info)
    if config.downstream.label not in tasks:
        raise LimuBertError(
            f"config.downstream.label: dataset {data.name} has no task {config.downstream.label!r}; its tasks: "
            f"{', '.join(tasks) or 'none'}"
        )
    return tasks


def load_labelled(config: ml_collections.ConfigDict, data=None) -> LabelledData:
    """All windows of `config.dataset` (or of `data`, the `input_pipeline.load_data(config)` already
    loaded) and the labels of `config.downstream.label`; a task the dataset lacks is an error
    listing the tasks it has."""
    if data is None:
        data = input_pipeline.load_data(config)
    task = config.downstream.label
    tasks = _check_label(config, data)
    source = data.train.source
    rows = [source[i] for i in range(len(source))]
    windows = np.stack([np.asarray(r[input_pipeline.FEATURE], np.float32) for r in rows])
    seq = windows.shape[1]
    if tasks[task] is not None:
        per_step = np.repeat(np.array([int(r[task]) for r in rows], np.int64)[:, None], seq, axis=1)
        names = tasks[task]
    else:  # unnamed integer classes: 0-based from the smallest value, named by their values
        column = list(tasks).index(task)
        per_step = np.stack([np.asarray(r["label"])[:, column] for r in rows]).astype(np.int64)
        names = tuple(str(v) for v in range(int(per_step.min()), int(per_step.max()) + 1))
        per_step = per_step - per_step.min()
    return LabelledData(data.name, data.version, windows, TaskLabels(task, names, per_step))


@dataclasses.dataclass(frozen=True)
class ProtocolData:
    """The classifier protocol's splits (SPEC 7) with labels that index `names`."""

    split: splits.ClassifierSplit
    names: tuple[str, ...]

    def labels(self, part: str) -> np.ndarray:
        return getattr(self.split, part).labels


def protocol_split(data: LabelledData, config: ml_collections.ConfigDict) -> ProtocolData:
    """`splits.classifier_split` on the chosen task; class ids stay indices into the names
    (the reference's minus-the-minimum shift is undone)."""
    d = config.downstream
    per_step = data.labels.per_step
    try:
        split = splits.classifier_split(
            per_step[:, :, None], 0, label_rate=d.label_rate, seed=config.dataset.seed, merge=d.merge,
            balance=d.balance, train_rate=config.dataset.train_rate, vali_rate=config.dataset.vali_rate,
        )
    except ValueError as e:
        raise LimuBertError(f"config.downstream ({data.name}, task {data.labels.task}): {e}") from None
    offset = int(per_step.min())  # labels index `names`; the split subtracted the minimum
    if offset:
        shift = lambda s: dataclasses.replace(s, labels=s.labels + offset)  # noqa: E731
        split = dataclasses.replace(split, train=shift(split.train), vali=shift(split.vali), test=shift(split.test))
    return ProtocolData(split, data.labels.names)


# ---------------------------------------------------------------------------------------
# Training: whole epochs as compiled programs.


ApplyFn = Callable[[Any, jax.Array, bool, jax.Array], jax.Array]  # (params, x, train, key) -> logits
PredictFn = Callable[[Any, Any], jax.Array]  # (params, vali_inputs) -> predicted classes


@dataclasses.dataclass
class FitResult:
    params: Any
    best_epoch: int
    best_vali_accuracy: float
    history: dict[str, list[float]]


def fit(apply_fn: ApplyFn, params, train_x, train_y, vali_inputs, vali_y, *, num_epochs: int, batch_size: int,
        learning_rate: float, seed: int, predict_fn: PredictFn | None = None, trainable: Any = None,
        desc: str = "classifier") -> FitResult:
    """Adam with cross-entropy; keeps the parameters of the best validation accuracy.

    Data live on device and enter the compiled program as arguments; each call runs a chunk
    of epochs (`lax.scan` over epochs and, inside, over shuffled batches, the last one padded
    and masked), each followed by a validation pass: `predict_fn(params, vali_inputs)`
    (default: argmax of `apply_fn` on `vali_inputs`). `trainable`: a pytree of bools like
    `params` (False: frozen).
    """
    tx = optax.adam(learning_rate)
    if trainable is not None:
        tx = optax.multi_transform({True: tx, False: optax.set_to_zero()}, trainable)
    if predict_fn is None:
        predict_fn = lambda p, x: jnp.argmax(apply_fn(p, x, False, jax.random.key(0)), -1)  # noqa: E731
    data = jax.device_put((jnp.asarray(train_x), jnp.asarray(train_y, jnp.int32), vali_inputs,
                           jnp.asarray(vali_y, jnp.int32)))
    n = data[0].shape[0]
    batch_size = min(batch_size, n)
    num_batches = -(-n // batch_size)

    def loss_fn(p, x, y, weights, key):
        losses = optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x, True, key), y)
        return jnp.sum(losses * weights) / jnp.sum(weights)

    def epoch(carry, key, data):
        train_x, train_y, vali_inputs, vali_y = data
        p, o, best_p, best_acc, best_epoch, index = carry
        perm_key, drop_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, n)
        padded = jnp.concatenate([order, jnp.zeros(num_batches * batch_size - n, order.dtype)])
        weights = (jnp.arange(num_batches * batch_size) < n).astype(jnp.float32)

        def step(state, inputs):
            p, o = state
            rows, w, k = inputs
            loss, grads = jax.value_and_grad(loss_fn)(p, train_x[rows], train_y[rows], w, k)
            updates, o = tx.update(grads, o, p)
            return (optax.apply_updates(p, updates), o), loss

        batches = (padded.reshape(num_batches, batch_size), weights.reshape(num_batches, batch_size),
                   jax.random.split(drop_key, num_batches))
        (p, o), losses = jax.lax.scan(step, (p, o), batches)
        accuracy = jnp.mean(predict_fn(p, vali_inputs) == vali_y)
        better = accuracy > best_acc  # the first epoch reaching the best accuracy is kept
        best_p = jax.tree.map(lambda new, old: jnp.where(better, new, old), p, best_p)
        carry = (p, o, best_p, jnp.where(better, accuracy, best_acc), jnp.where(better, index, best_epoch), index + 1)
        return carry, (jnp.mean(losses), accuracy)

    @jax.jit
    def run_epochs(carry, keys, data):
        return jax.lax.scan(lambda c, k: epoch(c, k, data), carry, keys)

    keys = jax.random.split(jax.random.key(seed), num_epochs)
    # Equal chunks, so that one compilation serves every call.
    per_call = max(d for d in range(1, min(EPOCHS_PER_CALL, num_epochs) + 1) if num_epochs % d == 0)
    carry = (params, tx.init(params), params, jnp.float32(-1.0), jnp.int32(0), jnp.int32(0))
    history = {"train_loss": [], "vali_accuracy": []}
    with tqdm(total=num_epochs, desc=desc, unit="epoch", leave=False) as progress:
        for start in range(0, num_epochs, per_call):
            carry, (losses, accuracies) = run_epochs(carry, keys[start : start + per_call], data)
            losses, accuracies = np.asarray(losses), np.asarray(accuracies)
            if not np.isfinite(losses).all():
                bad = start + int(np.argmin(np.isfinite(losses)))
                raise LimuBertError(f"{desc}: the training loss became non-finite at epoch {bad + 1}")
            history["train_loss"] += losses.tolist()
            history["vali_accuracy"] += accuracies.tolist()
            progress.update(per_call)
            progress.set_postfix(loss=f"{losses[-1]:.3f}", vali_acc=f"{max(history['vali_accuracy']):.3f}")
    _, _, best_params, best_acc, best_epoch, _ = carry
    return FitResult(best_params, int(best_epoch) + 1, float(best_acc), history)


# ---------------------------------------------------------------------------------------
# The tasks.


def _encoder_path(config: ml_collections.ConfigDict, workdir: Path) -> Path:
    """Where the pretrained model is: `config.downstream.encoder` (a checkpoint or a
    pretraining workdir, whose best step is taken), by default this workdir; an error
    unless it holds a LIMU-BERT."""
    path = Path(config.downstream.encoder or workdir)
    if not (path / checkpoint.CONFIG_FILE).is_file():
        raise LimuBertError(
            f"no pretrained LIMU-BERT in {path} (no {checkpoint.CONFIG_FILE}): pretrain there first "
            f"(config.task='pretrain'), or point config.downstream.encoder at a checkpoint or workdir"
        )
    kind, _ = checkpoint.read_model_config(path)
    if kind != "limu_bert":
        raise LimuBertError(f"{path} holds a {kind} model, not a pretrained LIMU-BERT")
    return path


def _encoder(config: ml_collections.ConfigDict, workdir: Path) -> tuple[LimuBertConfig, dict]:
    """The pretrained model's config and parameters (see `_encoder_path`)."""
    _, model_config, params = checkpoint.load_model(_encoder_path(config, workdir))
    return model_config, params


def _check_windows(name: str, seq: int, features: int, model_config: LimuBertConfig) -> None:
    if seq != model_config.seq_len or features < model_config.feature_num:
        raise LimuBertError(
            f"the encoder takes windows of {model_config.seq_len} steps x {model_config.feature_num} features; "
            f"dataset {name} has {seq} x {features}"
        )


def run_dir(workdir: Path, task: str, method: str, config: ml_collections.ConfigDict) -> Path:
    """Where a downstream run writes: workdir/<task>/<method>-<label>-<label rate>/."""
    d = config.downstream
    return Path(workdir) / task / f"{method}-{d.label}-{d.label_rate:g}"


def _predict(apply_fn: ApplyFn, params, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    apply = jax.jit(lambda p, xb: jnp.argmax(apply_fn(p, xb, False, jax.random.key(0)), -1))
    return np.concatenate([np.asarray(apply(params, x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


def _write_outputs(out: Path, *, method: str, task: str, config, data: LabelledData, proto: ProtocolData,
                   predictions: np.ndarray, tsne_features: np.ndarray, result: FitResult, seconds: float) -> dict:
    """metrics.json, history.json, confusion.png and tsne.png of one run."""
    out.mkdir(parents=True, exist_ok=True)
    names = list(proto.names)
    test_y = proto.labels("test")
    metrics = evaluation.classification_metrics(test_y, predictions, names)
    metrics.update({
        "method": method, "task": task, "dataset": f"{data.name}/{data.version}", "label": data.labels.task,
        "label_rate": config.downstream.label_rate, "num_labelled": len(proto.split.train),
        "num_vali": len(proto.split.vali), "num_test": len(proto.split.test),
        "best_epoch": result.best_epoch, "best_vali_accuracy": result.best_vali_accuracy,
        "num_epochs": config.downstream.num_epochs, "seconds": seconds,
    })
    storage.write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    storage.write_text(out / "history.json", json.dumps(result.history) + "\n")
    title = f"{method} on {data.name}/{data.version}, {data.labels.task}, {config.downstream.label_rate:g} labels"
    plots.confusion_png(out / "confusion.png", np.asarray(metrics["confusion_matrix"]), names,
                        f"{title}: test accuracy {metrics['accuracy']:.3f}")
    rows = tsne.subsample(len(tsne_features), config.downstream.tsne_points, config.seed, labels=test_y)
    points = tsne.tsne(tsne_features[rows].reshape(len(rows), -1), seed=config.seed)
    plots.tsne_png(out / "tsne.png", np.asarray(points), test_y[rows], names, f"t-SNE of test sub-windows: {title}")
    logging.info("%s: test accuracy %.4f, macro-F1 %.4f -> %s", method, metrics["accuracy"], metrics["macro_f1"], out)
    return metrics


def _head(name: str, proto: ProtocolData, input_dim: int, config) -> tuple[ApplyFn, dict]:
    try:
        module = heads.make_classifier(name, num_classes=len(proto.names), input_dim=input_dim,
                                       seq_len=config.downstream.merge)
    except ValueError as e:
        raise LimuBertError(f"config.downstream: {e}") from None
    params = heads.init_classifier(module, jax.random.key(config.seed), seq_len=config.downstream.merge,
                                   input_dim=input_dim)

    def apply_fn(p, x, train, key):
        return module.apply({"params": p}, x, train=train, rngs={"dropout": key} if train else None)

    return apply_fn, params


def _fit_kwargs(config) -> dict:
    d = config.downstream
    return dict(num_epochs=d.num_epochs, batch_size=d.batch_size, learning_rate=d.learning_rate, seed=config.seed)


class Inputs:
    """What the methods of one config read, each loaded on first use and then shared (a
    report's methods load the dataset and embed its windows once): `data`, `proto`,
    `encoder` (model config, parameters) and `embeddings` (N, S, H)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path, dataset=None):
        """`dataset`: the `input_pipeline.load_data(config)` already loaded, if any."""
        self.config, self.workdir, self._dataset = config, Path(workdir), dataset

    @functools.cached_property
    def data(self) -> LabelledData:
        return load_labelled(self.config, self._dataset)

    @functools.cached_property
    def proto(self) -> ProtocolData:
        return protocol_split(self.data, self.config)

    @functools.cached_property
    def encoder(self) -> tuple[LimuBertConfig, dict]:
        model_config, params = _encoder(self.config, self.workdir)
        _, seq, features = self.data.windows.shape
        _check_windows(f"{self.data.name}/{self.data.version}", seq, features, model_config)
        return model_config, params

    @functools.cached_property
    def embeddings(self) -> np.ndarray:
        # SPEC 7: the encoder sees whole windows; the classifier their 20-step pieces.
        model_config, params = self.encoder
        return embed_windows(params, model_config, self.data.windows, progress=True)


def embed(config: ml_collections.ConfigDict, workdir: Path, inputs: Inputs | None = None) -> dict:
    """The encoder over every window: workdir/embed/embeddings.npy (N, S, H) and the labels
    of every task the dataset has, labels_<task>.npy (N,) (the label of each window's first step)."""
    inputs = inputs or Inputs(config, workdir)
    data, embeddings = inputs.data, inputs.embeddings
    out = Path(workdir) / "embed"
    out.mkdir(parents=True, exist_ok=True)
    storage.save_npy(out / "embeddings.npy", embeddings)
    storage.save_npy(out / f"labels_{data.labels.task}.npy", data.labels.per_step[:, 0])
    summary = {"embeddings": str(out / "embeddings.npy"), "shape": list(embeddings.shape),
               "label": data.labels.task, "class_names": list(data.labels.names)}
    storage.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _train_on_features(config, workdir: Path, *, task: str, method: str, model: str, windows: np.ndarray,
                       data: LabelledData, proto: ProtocolData, start: float) -> dict:
    """Trains `model` on the labelled sub-windows of per-window features `windows` (N, S, D)
    (embeddings or normalized readings), evaluates on the test split, writes the outputs."""
    sub = splits.subwindows(windows, config.downstream.merge)
    part = {k: sub[getattr(proto.split, k).index] for k in ("train", "vali", "test")}
    apply_fn, params = _head(model, proto, windows.shape[-1], config)
    result = fit(apply_fn, params, part["train"], proto.labels("train"), jnp.asarray(part["vali"]),
                 proto.labels("vali"), desc=method, **_fit_kwargs(config))
    predictions = _predict(apply_fn, result.params, part["test"])
    return _write_outputs(run_dir(workdir, task, method, config), method=method, task=task, config=config,
                          data=data, proto=proto, predictions=predictions,
                          tsne_features=part["test"].mean(axis=1), result=result,
                          seconds=time.perf_counter() - start)


def classify(config: ml_collections.ConfigDict, workdir: Path, head: str | None = None,
             inputs: Inputs | None = None) -> dict:
    """A head on frozen embeddings of the labelled sub-windows (LIMU-<head>)."""
    head = head or config.downstream.classifier
    start = time.perf_counter()
    inputs = inputs or Inputs(config, workdir)
    return _train_on_features(config, workdir, task="classify", method=f"limu_{head}", model=head,
                              windows=inputs.embeddings, data=inputs.data, proto=inputs.proto, start=start)


def baseline(config: ml_collections.ConfigDict, workdir: Path, name: str | None = None,
             inputs: Inputs | None = None) -> dict:
    """A model on raw normalized sub-windows (DCNN, DeepSense, R-GRU): no pretraining."""
    name = name or config.downstream.baseline
    start = time.perf_counter()
    inputs = inputs or Inputs(config, workdir)
    normalized = normalize(inputs.data.windows, config.model.feature_num).astype(np.float32)
    return _train_on_features(config, workdir, task="baseline", method=name, model=name,
                              windows=normalized, data=inputs.data, proto=inputs.proto, start=start)


def finetune(config: ml_collections.ConfigDict, workdir: Path, head: str | None = None,
             inputs: Inputs | None = None) -> dict:
    """Encoder + head trained together on the labelled sub-windows (the encoder sees each
    sub-window's whole window, as in `classify`); `freeze_encoder` trains the head only."""
    head = head or config.downstream.classifier
    start = time.perf_counter()
    inputs = inputs or Inputs(config, workdir)
    data, proto = inputs.data, inputs.proto
    model_config, enc_params = inputs.encoder
    merge = config.downstream.merge
    per_window = model_config.seq_len // merge
    windows = jnp.asarray(normalize(data.windows, model_config.feature_num).astype(np.float32))
    encoder = LimuBertModel4Pretrain(model_config)
    apply_head, head_params = _head(head, proto, model_config.hidden, config)

    def encode(p, x):
        return encoder.apply({"params": p}, x, method=encoder.encode)

    def pieces(h, j):  # h [B, S, H], j [B] -> the j-th sub-window of each row [B, merge, H]
        steps = j[:, None] * merge + jnp.arange(merge)[None, :]
        return jnp.take_along_axis(h, steps[:, :, None], axis=1)

    def apply_fn(p, index, train, key):  # index: sub-window rows of `subwindows(windows)`
        h = encode(p["encoder"], windows[index // per_window])
        return apply_head(p["head"], pieces(h, index % per_window), train, key)

    # Validation encodes each validation window once and classifies all its sub-windows.
    vali_windows = np.unique(proto.split.vali.index // per_window)
    position = np.searchsorted(vali_windows, proto.split.vali.index // per_window) * per_window + (
        proto.split.vali.index % per_window)

    def predict_fn(p, inputs):
        rows, position = inputs
        h = encode(p["encoder"], windows[rows])
        sub = h.reshape(-1, merge, h.shape[-1])
        return jnp.argmax(apply_head(p["head"], sub[position], False, jax.random.key(0)), -1)

    params = {"encoder": enc_params, "head": head_params}
    trainable = {"encoder": jax.tree_util.tree_map_with_path(
        lambda path, _: (not config.downstream.freeze_encoder) and path[0].key == "transformer", enc_params),
        "head": jax.tree.map(lambda _: True, head_params)}
    method = f"finetune_{head}" + ("_frozen" if config.downstream.freeze_encoder else "")
    result = fit(apply_fn, params, proto.split.train.index, proto.labels("train"),
                 (jnp.asarray(vali_windows), jnp.asarray(position)), proto.labels("vali"),
                 predict_fn=predict_fn, trainable=trainable, desc=method, **_fit_kwargs(config))
    test_index = proto.split.test.index
    predictions = _predict(apply_fn, result.params, test_index, batch_size=256)
    test_features = jax.jit(lambda p, i: pieces(encode(p, windows[i // per_window]), i % per_window))
    features = np.concatenate([np.asarray(test_features(result.params["encoder"], test_index[i : i + 256]))
                               for i in range(0, len(test_index), 256)])
    return _write_outputs(run_dir(workdir, "finetune", method, config), method=method, task="finetune",
                          config=config, data=data, proto=proto, predictions=predictions,
                          tsne_features=features.mean(axis=1), result=result, seconds=time.perf_counter() - start)


def method_task(method: str) -> tuple[str, str]:
    """(task, model) of a report method: `limu_<head>` -> classify, `finetune_<head>` ->
    finetune, a baseline name -> baseline; an unknown method is an error naming the field."""
    for prefix, task, names in (("limu_", "classify", heads.HEADS), ("finetune_", "finetune", heads.HEADS)):
        if method.startswith(prefix) and method.removeprefix(prefix) in names:
            return task, method.removeprefix(prefix)
    if method in heads.BASELINES:
        return "baseline", method
    raise LimuBertError(
        f"config.downstream.methods: unknown method {method!r}; use limu_<head> or finetune_<head> "
        f"(heads: {', '.join(heads.HEADS)}) or a baseline ({', '.join(heads.BASELINES)})"
    )


def report_methods(config: ml_collections.ConfigDict) -> list[str]:
    """The methods of `config.downstream.methods`, in order."""
    return [m.strip() for m in config.downstream.methods.split(",") if m.strip()]


def run_method(config: ml_collections.ConfigDict, workdir: Path, method: str, inputs: Inputs | None = None) -> dict:
    """One report method: `limu_<head>` (classify), `finetune_<head>`, or a baseline name."""
    task, model = method_task(method)
    return TASK_RUNNERS[task](config, workdir, model, inputs)


def run_report(config: ml_collections.ConfigDict, workdir: Path, inputs: Inputs | None = None) -> dict:
    """Every method of `config.downstream.methods` on one dataset -> workdir/report.md."""
    methods = report_methods(config)
    inputs = inputs or Inputs(config, workdir)
    results = {m: run_method(config, workdir, m, inputs) for m in methods}
    dataset = f"{config.dataset.name}/{config.dataset.version}"
    path = Path(workdir) / "report.md"
    d = config.downstream
    report.write_report(
        path, {dataset: results},
        title=f"{dataset}: {d.label}, {d.label_rate:g} labels per class-balanced draw",
        notes=[f"Test accuracy and macro-F1 of the epoch with the best validation accuracy ({d.num_epochs} epochs, "
               f"Adam lr {d.learning_rate:g}, batch {d.batch_size}); {results[methods[0]]['num_labelled']} labelled "
               f"sub-windows of {d.merge} steps."],
    )
    table = report.table3_markdown({dataset: results})
    print(table)
    return {"report": str(path), "results": {m: {k: r[k] for k in ("accuracy", "macro_f1")} for m, r in results.items()}}


def _stage_methods(task: str, config: ml_collections.ConfigDict) -> list[tuple[str, str, str]]:
    """(config field, task, model) of each model a downstream task trains."""
    d = config.downstream
    if task == "report":
        methods = report_methods(config)
        if not methods:
            raise LimuBertError("config.downstream.methods is empty; name at least one method")
        return [("methods", *method_task(m)) for m in methods]
    if task in ("classify", "finetune"):
        if d.classifier not in heads.HEADS:
            raise LimuBertError(f"config.downstream.classifier: unknown head {d.classifier!r}; heads: "
                                f"{', '.join(heads.HEADS)}")
        return [("classifier", task, d.classifier)]
    if task == "baseline":
        if d.baseline not in heads.BASELINES:
            raise LimuBertError(f"config.downstream.baseline: unknown baseline {d.baseline!r}; baselines: "
                                f"{', '.join(heads.BASELINES)}")
        return [("baseline", task, d.baseline)]
    return []  # embed trains nothing


def check_config(config: ml_collections.ConfigDict, workdir: Path, tasks: list[str], dataset,
                 pretrained_config: LimuBertConfig | None = None) -> None:
    """Checks every downstream stage of `tasks` before any stage of the chain runs, so that a
    chain fails in seconds, not after its pretraining: the label exists in `dataset` (the
    loaded `input_pipeline.load_data(config)`), numbers are in range, `merge` divides the windows,
    methods and heads are known and fit their inputs, and an encoder will exist and takes
    the dataset's windows. `pretrained_config`: the model that an earlier stage of the chain
    pretrains in `workdir`. Raises `LimuBertError` naming the field."""
    stages = [t for t in tasks if t in DOWNSTREAM_TASKS]
    if not stages:
        return
    d = config.downstream
    label_tasks = _check_label(config, dataset)
    for field in ("num_epochs", "batch_size", "merge", "tsne_points"):
        value = d[field]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LimuBertError(f"config.downstream.{field} must be a positive integer, got {value!r}")
    if not 0.0 < d.label_rate <= 1.0:
        raise LimuBertError(f"config.downstream.label_rate must be in (0, 1], got {d.label_rate!r}")
    if not d.learning_rate > 0:
        raise LimuBertError(f"config.downstream.learning_rate must be positive, got {d.learning_rate!r}")
    if dataset.seq_len % d.merge:
        raise LimuBertError(f"config.downstream.merge={d.merge} must divide the {dataset.seq_len}-step windows "
                            f"of {dataset.name}/{dataset.version}")
    models = [m for t in stages for m in _stage_methods(t, config)]
    encoder = None
    if "embed" in stages or any(task != "baseline" for _, task, _ in models):
        if d.encoder or pretrained_config is None:
            path = _encoder_path(config, workdir)
            _, encoder = checkpoint.read_model_config(path)
            checkpoint.check_saved(path)
        else:
            encoder = pretrained_config
        _check_windows(f"{dataset.name}/{dataset.version}", dataset.seq_len, dataset.num_features, encoder)
    num_classes = max(2, len(label_tasks[d.label] or ()))  # sizes only; npy classes are counted later
    for field, task, model in models:
        input_dim = config.model.feature_num if task == "baseline" else encoder.hidden
        try:
            heads.make_classifier(model, num_classes=num_classes, input_dim=input_dim, seq_len=d.merge)
        except ValueError as e:
            raise LimuBertError(f"config.downstream.{field}: {model} on {d.merge}-step sub-windows of "
                                f"{input_dim} features: {e}") from None


TASK_RUNNERS = {"embed": embed, "classify": classify, "finetune": finetune, "baseline": baseline, "report": run_report}
