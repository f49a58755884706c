"""Downstream tasks under the paper's protocol (docs/reference.md §7): embed, classify, finetune,
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

Beyond the reference's one draw (docs/downstream.md): `config.downstream.seeds` repeats each
method over other labelled subsets and initialisations (mean, sd, 95% t-interval, paired
differences against the best baseline), `folds` runs a grouped K-fold over the split groups
(`split_by`: user, device, ...), and a report over `label_rates` or `labels_per_class` draws the
label-rate curve; every draw's numbers stay in its run's metrics.json, the report's in
report.json and its TensorBoard run.

Data (docs/reference.md §7): the reference's 80/10/10 window split (same seed as pretraining), windows
re-cut into `merge`-step sub-windows (20; an encoder shorter than the windows: its seq_len,
`labels.resolve_merge`) with a constant label, and a balanced labelled subset at
`label_rate` drawn from the training split. Labels are chosen by task name (`activity`,
`user`, `position`, `device_model`), never by column index. Training: Adam, batch 128, 700
epochs, the parameters of the epoch with the best validation accuracy kept; the epochs run
as compiled chunks (`lax.scan` over epochs and batches, data on device). Each run writes
`metrics.json` (test accuracy, macro-F1, per-class scores, confusion matrix),
`confusion.png`, `tsne.png` (test sub-windows coloured by label), `history.json` and the
trained model `model/` (a checkpoint of the selected epoch with everything needed to run it
on raw windows: `models.pipeline`, `limubert_jax.predict`) to
`workdir/<task>/<method>-<label>-<rate>/`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from limubert_jax.data import loading, splits
from limubert_jax.data.normalization import normalize
from limubert_jax.datasets.common import parse_version
from limubert_jax.downstream import evaluation, report, stats, tsne
from limubert_jax.downstream.fit import ApplyFn, FitResult, fit, fit_many, map_batches, predict, predict_many
from limubert_jax.downstream.labels import (
    LabelledData,
    ProtocolData,
    check_label,
    check_protocol,
    downstream_data,
    labels_per_class,
    load_labelled,
    parse_list,
    protocol_draws,
    protocol_split,
    resolve_merge,
    split_by,
)
from limubert_jax.export import released
from limubert_jax.io import checkpoint, plots, storage
from limubert_jax.io.model_card import model_card
from limubert_jax.io.workdir import flat_fields
from limubert_jax.models import registry
from limubert_jax.models.encoder import LimuBertConfig, encode_windows, encoder_pieces
from limubert_jax.models.inference import embed_windows
from limubert_jax.models.pipeline import MODEL_DIR, ClassifierPipelineConfig
from limubert_jax.runtime.errors import LimuBertError
from limubert_jax.runtime.xla_options import compile_once


# ---------------------------------------------------------------------------------------
# The tasks.


def _encoder_path(config: ml_collections.ConfigDict, workdir: epath.Path) -> epath.Path:
    """Where the pretrained model is: `config.downstream.encoder` (a checkpoint, a
    pretraining workdir, whose best step is taken, or released weights by name:
    `export.released`), by default this workdir; an error unless it holds a LIMU-BERT."""
    # Released weights by name (limu_bert_x, limu_bert:hhar, ...) are fetched on first use.
    path = storage.as_path(released.resolve(config.downstream.encoder) if config.downstream.encoder else workdir)
    run = path.parent.parent
    if (not (path / checkpoint.CONFIG_FILE).is_file() and path.name.isdigit()
            and path.parent.name == checkpoint.CHECKPOINTS_DIR and (run / checkpoint.CONFIG_FILE).is_file()):
        raise LimuBertError(
            f"config.downstream.encoder={path} is checkpoint step {path.name} of the pretraining workdir {run}: "
            f"give the workdir (config.downstream.encoder={run}), whose best step is taken"
        )
    if not (path / checkpoint.CONFIG_FILE).is_file():
        raise LimuBertError(
            f"no pretrained LIMU-BERT in {path} (no {checkpoint.CONFIG_FILE}): pretrain there first "
            f"(config.task='pretrain'), or point config.downstream.encoder at a checkpoint or workdir"
        )
    kind, _ = checkpoint.read_model_config(path)
    if kind != "limu_bert":
        raise LimuBertError(f"{path} holds a {kind} model, not a pretrained LIMU-BERT")
    return path


def _encoder(config: ml_collections.ConfigDict, workdir: epath.Path) -> tuple[LimuBertConfig, dict]:
    """The pretrained model's config and parameters (see `_encoder_path`)."""
    _, model_config, params = checkpoint.load_model(_encoder_path(config, workdir))
    return model_config, params


def _check_windows(name: str, seq: int, features: int, model_config: LimuBertConfig) -> None:
    """A `LimuBertError` unless the encoder takes dataset `name`'s windows of `seq` steps x
    `features`: a multiple of its seq_len (a shorter encoder sees each seq_len-step piece,
    `encoder.encode_windows`), and at least its features (the first are kept, as the
    reference's normalization does)."""
    length, need = model_config.seq_len, model_config.feature_num
    if seq % length or features < need:
        raise LimuBertError(
            f"the encoder takes windows of {length} steps x {need} features; dataset {name} has {seq} x {features}: "
            f"windows of a multiple of {length} steps (encoded in {length}-step pieces) with {need} or more "
            f"features (the first {need} kept) would fit"
        )


def _check_merge(merge: int, config: ml_collections.ConfigDict, name: str, seq: int,
                 encoder: LimuBertConfig | None) -> None:
    """A `LimuBertError` unless `merge`-step sub-windows cut dataset `name`'s `seq`-step
    windows, each within one of the encoder's pieces (an encoder shorter than the windows
    encodes each seq_len-step piece on its own)."""
    field = f"config.downstream.merge={merge}" if config.downstream.merge is not None else (
        f"config.downstream.merge (unset: {merge})")
    if seq % merge:
        raise LimuBertError(f"{field} must divide the {seq}-step windows of {name}")
    if encoder is not None and encoder.seq_len < seq and encoder.seq_len % merge:
        raise LimuBertError(f"{field} must divide the encoder's seq_len {encoder.seq_len}: it encodes the {seq}-step "
                            f"windows of {name} in {encoder.seq_len}-step pieces, and a sub-window lies within one; "
                            f"unset it for {encoder.seq_len}-step sub-windows")


def point_name(config: ml_collections.ConfigDict) -> str:
    """What a run labels, as its folder names it: the label rate (`0.01`) or, where
    `config.downstream.labels_per_class` holds one number, that many per class (`5perclass`)."""
    per_class = labels_per_class(config)
    return f"{per_class}perclass" if per_class is not None else f"{config.downstream.label_rate:g}"


def run_dir(workdir: epath.Path, task: str, method: str, config: ml_collections.ConfigDict) -> epath.Path:
    """Where a downstream run writes: workdir/<task>/<method>-<label>-<label rate or N
    perclass>[-<run_name>]/ (`point_name`)."""
    d = config.downstream
    name = f"{method}-{d.label}-{point_name(config)}" + (f"-{d.run_name}" if d.get("run_name") else "")
    return storage.as_path(workdir) / task / name


def labelled_text(config: ml_collections.ConfigDict) -> str:
    """How much is labelled, in words: "0.01 labels" (a rate) or "5 labels per class"."""
    per_class = labels_per_class(config)
    return f"{per_class} labels per class" if per_class is not None else f"{config.downstream.label_rate:g} labels"


def repeated(config: ml_collections.ConfigDict) -> bool:
    """Whether a run evaluates more than one labelled draw (seeds > 1 or folds)."""
    return int(config.downstream.get("seeds") or 1) > 1 or int(config.downstream.get("folds") or 1) != 1


def evaluation_points(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """One config per point of a label-rate curve: `config.downstream.label_rates` (each
    point's `label_rate`) or `labels_per_class` (each point's one number); `[config]` itself
    when neither lists more than one value, so that a plain run is the run it always was."""
    rates = parse_list(config, "label_rates", float)
    per_class = parse_list(config, "labels_per_class", int)
    if not rates and len(per_class) <= 1:
        return [config]
    points = []
    for value in rates or per_class:
        point = config.copy_and_resolve_references()
        if rates:
            point.downstream.label_rate = float(value)
            point.downstream.label_rates = ""
        else:
            point.downstream.labels_per_class = str(value)
        points.append(point)
    return points


def method_name(task: str, model: str, config: ml_collections.ConfigDict) -> str:
    """The method a task trains with `model`: limu_<head> (classify), finetune_<head>
    (`_frozen` when the encoder is frozen), or the baseline's name."""
    if task == "classify":
        return f"limu_{model}"
    if task == "finetune":
        return f"finetune_{model}" + ("_frozen" if config.downstream.freeze_encoder else "")
    return model


SETTINGS_FILE = "settings.json"  # in each downstream run directory: what made its results


def run_settings(config: ml_collections.ConfigDict, task: str, model: str, dataset: str, *,
                 merge: int) -> dict[str, Any]:
    """Everything that makes a downstream run's results what they are (a rerun with other
    settings must not replace them): the data and its split, the `merge`-step sub-windows
    (`resolve_merge`), the labelled draw, the model and its training, and the encoder it runs
    behind. JSON values."""
    d = config.downstream
    data = {k: v for k, v in config.dataset.to_dict().items() if k != "data_dir"}  # where data live does not matter
    if data.get("manual_dir"):
        data["manual_dir"] = "+".join(_absolute(m) for m in str(data["manual_dir"]).split("+"))
    settings = {
        "task": task, "method": method_name(task, model, config), "dataset": dataset, "dataset_config": data,
        "label": d.label, "label_rate": d.label_rate, "balance": d.balance, "merge": merge,
        "num_epochs": d.num_epochs, "batch_size": d.batch_size, "learning_rate": d.learning_rate,
        "seed": config.seed, "downstream_dataset": d.get("dataset"),
    }
    # The protocol's extensions, recorded only where used: a plain run's settings stay the
    # ones earlier versions wrote, so that their run folders are not "other settings".
    per_class = labels_per_class(config)
    if per_class is not None:
        settings.update(labels_per_class=per_class, label_rate=None)
    for field, default in (("seeds", 1), ("folds", 1), ("split_by", None)):
        if d.get(field) not in (default, ""):
            settings[field] = d.get(field)
    if task == "baseline":
        settings["feature_num"] = config.model.feature_num
    else:
        named = released.is_release(d.encoder)  # a release's name is no path
        settings["encoder"] = (d.encoder if named else _absolute(d.encoder)) if d.encoder else None
    return json.loads(json.dumps(settings))


def _absolute(path: str) -> str:
    """A user path as settings record it: absolute when local, so that a relative path given
    from another directory is not another setting; a URI as given."""
    return os.path.abspath(os.path.expanduser(path)) if storage.is_local(path) else str(path)


def _settings_diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    before, after = flat_fields(before), flat_fields(after)
    return [f"{key} {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)]


def check_replaces_nothing(config: ml_collections.ConfigDict, workdir: epath.Path, task: str, model: str,
                           dataset: str, *, merge: int) -> None:
    """A `LimuBertError` if the run directory of (task, model) holds the results of other
    settings (`run_settings`): a rerun of the same settings replaces its own results, never
    another experiment's, unless `config.downstream.overwrite`."""
    out = run_dir(workdir, task, method_name(task, model, config), config)
    if config.downstream.get("overwrite") or not out.exists():
        return
    try:
        before = json.loads((out / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        before = None
    now = run_settings(config, task, model, dataset, merge=merge)
    if before == now:
        return
    differs = "; ".join(_settings_diff(before, now)[:5]) if isinstance(before, dict) else (
        f"no readable {SETTINGS_FILE}: written by an earlier version")
    raise LimuBertError(
        f"{out} holds the results of other settings ({differs}): set config.downstream.run_name=NAME to keep both "
        f"(written to {out.name}-NAME), or config.downstream.overwrite=True to replace them")


def _small_data_notes(out: epath.Path, method: str, absent_classes: str, tsne_points: int) -> list[str]:
    """What a small dataset could not give (test classes without a sub-window, a t-SNE plot of
    too few points), said in the log and returned for the metrics and the report; a t-SNE plot
    of an earlier run that this one cannot replace is removed."""
    notes = []
    if absent_classes:
        notes.append(f"no test sub-window of class {absent_classes}: its scores are 0, and macro-F1 averages the "
                     "classes in the test labels or the predictions")
    if tsne.perplexity_for(tsne_points) is None:
        notes.append(f"no t-SNE plot: {tsne_points} test sub-windows, fewer than the {tsne.MIN_POINTS} a plot needs")
        (out / "tsne.png").unlink(missing_ok=True)  # an earlier run's plot is not this run's
    for note in notes:
        logging.info("%s: %s", method, note)
    return notes


def _write_run_files(out: epath.Path, metrics: dict, history: dict, names, confusion_title: str,
                     tsne_features: np.ndarray, tsne_labels: np.ndarray, perplexity: float | None, tsne_title: str,
                     seed: int) -> None:
    """A run folder's metrics.json, history.json, confusion.png and (where `perplexity` is
    set) tsne.png of the test sub-windows `tsne_features` [P, ...] with classes `tsne_labels` [P]."""
    storage.write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    storage.write_text(out / "history.json", json.dumps(history) + "\n")
    plots.confusion_png(out / "confusion.png", np.asarray(metrics["confusion_matrix"]), names, confusion_title)
    if perplexity is not None:
        points = tsne.tsne(tsne_features.reshape(len(tsne_features), -1), perplexity=perplexity, seed=seed)
        plots.tsne_png(out / "tsne.png", np.asarray(points), tsne_labels, names, tsne_title)


def _write_outputs(out: epath.Path, *, method: str, model: str, task: str, config, data: LabelledData,
                   proto: ProtocolData, predictions: np.ndarray, tsne_features: np.ndarray, result: FitResult,
                   seconds: float) -> dict:
    """settings.json, metrics.json, history.json, confusion.png and tsne.png of one run."""
    out.mkdir(parents=True, exist_ok=True)
    settings = run_settings(config, task, model, f"{data.name}/{data.version}", merge=proto.merge)
    storage.write_text(out / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
    names = list(proto.names)
    test_y = proto.labels("test")
    metrics = evaluation.classification_metrics(test_y, predictions, names)
    metrics.update({
        "method": method, "task": task, "dataset": f"{data.name}/{data.version}", "label": data.labels.task,
        "label_rate": config.downstream.label_rate, "num_labelled": len(proto.split.train),
        "num_vali": len(proto.split.vali), "num_test": len(proto.split.test),
        "best_epoch": result.best_epoch, "best_vali_accuracy": result.best_vali_accuracy,
        "num_epochs": config.downstream.num_epochs, "seconds": seconds, "merge": proto.merge,
        "encoder": settings.get("encoder"), "run_dir": f"{task}/{out.name}",
    })
    if labels_per_class(config) is not None:
        metrics.update(label_rate=None, labels_per_class=labels_per_class(config))
    rows = tsne.subsample(len(tsne_features), config.downstream.tsne_points, config.seed, labels=test_y)
    perplexity = tsne.perplexity_for(len(rows))
    absent = [name for name, scores in metrics["per_class"].items() if scores["support"] == 0]
    metrics["notes"] = _small_data_notes(out, method, ", ".join(absent), len(rows))
    title = f"{method} on {data.name}/{data.version}, {data.labels.task}, {labelled_text(config)}"
    _write_run_files(out, metrics, result.history, names, f"{title}: test accuracy {metrics['accuracy']:.3f}",
                     tsne_features[rows], test_y[rows], perplexity, f"t-SNE of test sub-windows: {title}", config.seed)
    logging.info("%s: test accuracy %.4f, macro-F1 %.4f -> %s", method, metrics["accuracy"], metrics["macro_f1"], out)
    return metrics


def _head_module(name: str, proto: ProtocolData, input_dim: int):
    """The head `name` for `proto`'s classes on `input_dim`-wide sub-windows, and its apply function."""
    try:
        module = registry.make_classifier(name, num_classes=len(proto.names), input_dim=input_dim,
                                       seq_len=proto.merge)
    except ValueError as e:
        raise LimuBertError(f"config.downstream: {e}") from None

    def apply_fn(p, x, train, key):
        return module.apply({"params": p}, x, train=train, rngs={"dropout": key} if train else None)

    return module, apply_fn


def _head(name: str, proto: ProtocolData, input_dim: int, config) -> tuple[ApplyFn, dict]:
    module, apply_fn = _head_module(name, proto, input_dim)
    params = registry.init_classifier(module, jax.random.key(config.seed), seq_len=proto.merge,
                                   input_dim=input_dim)
    return apply_fn, params


def _heads(name: str, proto: ProtocolData, input_dim: int, config, count: int) -> tuple[ApplyFn, dict]:
    """`_head` for `count` draws: its apply function and the parameters of each draw s,
    initialised from the seed `config.seed + s` (draw 0's are `_head`'s), stacked on a
    leading axis (count, ...) in one compiled program."""
    module, apply_fn = _head_module(name, proto, input_dim)

    def init(key):
        return registry.init_classifier(module, key, seq_len=proto.merge, input_dim=input_dim)

    keys = jax.vmap(jax.random.key)(jnp.arange(count, dtype=jnp.uint32) + np.uint32(config.seed))
    return apply_fn, compile_once(jax.vmap(init))(keys)


def _stack(trees: list) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _fit_kwargs(config) -> dict:
    d = config.downstream
    return dict(num_epochs=d.num_epochs, batch_size=d.batch_size, learning_rate=d.learning_rate, seed=config.seed)


class Inputs:
    """What the methods of one config read, each loaded on first use and then shared (a
    report's methods load the dataset and embed its windows once): `data`, `merge`, `proto`,
    `encoder` (model config, parameters) and `embeddings` (N, S, H)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: epath.Path, dataset=None, *,
                 encoded: bool = True):
        """`dataset`: the `loading.load_data(config)` already loaded, if any. `encoded`: a
        method these inputs serve runs the encoder (`uses_encoder`), whose seq_len then sets
        the default `merge` for all of them (a report compares methods on the same sub-windows)."""
        self.config, self.workdir, self._dataset = config, storage.as_path(workdir), dataset
        self.encoded = encoded

    @functools.cached_property
    def data(self) -> LabelledData:
        return load_labelled(self.config, self._dataset)

    @functools.cached_property
    def merge(self) -> int:
        """Steps of every method's sub-windows (`resolve_merge`)."""
        seq = self.data.windows.shape[1]
        encoder = self.encoder[0] if self.encoded else None
        merge = resolve_merge(self.config, encoder.seq_len if encoder else None, seq)
        _check_merge(merge, self.config, f"{self.data.name}/{self.data.version}", seq, encoder)
        return merge

    @functools.cached_property
    def proto(self) -> ProtocolData:
        return protocol_split(self.data, self.config, self.merge)

    def draws(self, config: ml_collections.ConfigDict) -> list[list[ProtocolData]]:
        """The labelled draws [fold][seed] of `config` (`labels.protocol_draws`: this
        config's label rate or a point of its curve), each computed once."""
        d = config.downstream
        key = (d.label_rate, labels_per_class(config), d.balance, int(d.get("seeds") or 1), int(d.get("folds") or 1))
        cache = self.__dict__.setdefault("_draws", {})
        if key not in cache:
            cache[key] = protocol_draws(self.data, config, self.merge)
        return cache[key]

    @functools.cached_property
    def encoder(self) -> tuple[LimuBertConfig, dict]:
        model_config, params = _encoder(self.config, self.workdir)
        _, seq, features = self.data.windows.shape
        _check_windows(f"{self.data.name}/{self.data.version}", seq, features, model_config)
        return model_config, params

    @functools.cached_property
    def embeddings(self) -> np.ndarray:
        # docs/reference.md §7: the encoder sees whole windows (or its seq_len-step pieces of
        # them); the classifier their `merge`-step sub-windows.
        model_config, params = self.encoder
        return embed_windows(params, model_config, self.data.windows, progress=True)


def embed_dataset(config: ml_collections.ConfigDict, workdir: epath.Path, inputs: Inputs | None = None) -> dict:
    """The encoder over every window: workdir/embed/embeddings.npy (N, S, H) and the labels
    of every task the dataset has, labels_<task>.npy (N,) (the label of each window's first step)."""
    inputs = inputs or Inputs(config, workdir)
    data, embeddings = inputs.data, inputs.embeddings
    out = storage.as_path(workdir) / "embed"
    out.mkdir(parents=True, exist_ok=True)
    storage.save_npy(out / "embeddings.npy", embeddings)
    storage.save_npy(out / f"labels_{data.labels.task}.npy", data.labels.per_step[:, 0])
    summary = {"embeddings": str(out / "embeddings.npy"), "shape": list(embeddings.shape),
               "label": data.labels.task, "class_names": list(data.labels.names)}
    storage.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def sampling_rate_hz(version: str) -> float | None:
    """The sampling rate of a dataset version `<rate>_<steps>` (20 for 20_120); None if the
    version does not say."""
    try:
        return float(parse_version(version)[0])
    except ValueError:
        return None


def save_trained(out: epath.Path, *, method: str, model: str, config, data: LabelledData, proto: ProtocolData,
                 head_params, encoder: tuple[LimuBertConfig, dict] | None, metrics: dict) -> epath.Path:
    """The trained model of a run as a checkpoint `out/model/` (`models.pipeline`): the head's
    selected parameters, the encoder it runs behind (None: a baseline on readings) and
    everything between raw windows and classes, with a model card giving what the run reached
    (`metrics`, as `_write_outputs` returns them). Returns the checkpoint directory."""
    encoder_config, encoder_params = encoder if encoder is not None else (None, None)
    pipeline_config = ClassifierPipelineConfig(
        method=method, head=model, class_names=tuple(proto.names), label=data.labels.task,
        seq_len=int(data.windows.shape[1]), merge=proto.merge,
        feature_num=encoder_config.feature_num if encoder_config else config.model.feature_num,
        encoder=encoder_config, sampling_rate_hz=sampling_rate_hz(data.version), dataset=f"{data.name}/{data.version}")
    params = {"head": head_params}
    if encoder_params is not None:
        params["encoder"] = {"transformer": encoder_params["transformer"]}  # the decoder is not used
    rate = pipeline_config.sampling_rate_hz
    behind = (f"behind the encoder {config.downstream.encoder or 'pretrained in its workdir'}" if encoder_config
              else "on normalized readings (no encoder)")
    card = model_card(
        checkpoint.kind_of(pipeline_config), pipeline_config, title=f"{method}: {data.labels.task} on {data.name}",
        path=out, about=f"A classifier of {data.labels.task} ({', '.join(proto.names)}), {behind}, trained under the "
        f"paper's downstream protocol; it takes raw windows of {pipeline_config.seq_len} steps x "
        f"{pipeline_config.feature_num} features{f' at {rate:g} Hz' if rate else ''}.",
        data=f"{data.name}/{data.version}, " + (
            f"{per_class} training sub-windows per class labelled" if (per_class := labels_per_class(config))
            is not None else f"{config.downstream.label_rate:g} of the training sub-windows labelled"),
        metrics={name: metrics[key] for name, key in (("test accuracy", "accuracy"), ("test macro-F1", "macro_f1"),
                                                          ("validation accuracy", "best_vali_accuracy"),
                                                          ("at epoch", "best_epoch"))})
    return checkpoint.save_model(out / MODEL_DIR, jax.device_get(params), pipeline_config, overwrite=True, card=card)


def _train_on_features(config, workdir: epath.Path, *, task: str, method: str, model: str, windows: np.ndarray,
                       data: LabelledData, draws: list[list[ProtocolData]], start: float,
                       encoder: tuple[LimuBertConfig, dict] | None = None) -> dict:
    """Trains `model` on the labelled sub-windows of per-window features `windows` (N, S, D)
    (embeddings of `encoder`, or normalized readings), evaluates on the test split, writes the
    outputs and the trained model; of several draws [fold][seed], each (`_train_draws`)."""
    if len(draws) > 1 or len(draws[0]) > 1:
        return _train_draws(config, workdir, task=task, method=method, model=model, windows=windows, data=data,
                            draws=draws, start=start, encoder=encoder)
    proto = draws[0][0]
    sub = splits.subwindows(windows, proto.merge)
    part = {k: sub[getattr(proto.split, k).index] for k in ("train", "vali", "test")}
    apply_fn, params = _head(model, proto, windows.shape[-1], config)
    result = fit(apply_fn, params, part["train"], proto.labels("train"), jnp.asarray(part["vali"]),
                 proto.labels("vali"), desc=method, **_fit_kwargs(config))
    predictions = predict(apply_fn, result.params, part["test"])
    out = run_dir(workdir, task, method, config)
    metrics = _write_outputs(out, method=method, model=model, task=task, config=config, data=data, proto=proto,
                             predictions=predictions, tsne_features=part["test"].mean(axis=1), result=result,
                             seconds=time.perf_counter() - start)
    save_trained(out, method=method, model=model, config=config, data=data, proto=proto, head_params=result.params,
                 encoder=encoder, metrics=metrics)
    return metrics


def _train_draws(config, workdir: epath.Path, *, task: str, method: str, model: str, windows: np.ndarray,
                 data: LabelledData, draws: list[list[ProtocolData]], start: float,
                 encoder: tuple[LimuBertConfig, dict] | None) -> dict:
    """`_train_on_features` over several draws: the draws of a fold train through one
    compiled program (`fit_many`: side by side on an accelerator, in turn on a CPU) and
    predict the fold's test split through one more (`predict_many`); the outputs hold every
    draw (`_write_draw_outputs`), the saved model is draw 0 of fold 0."""
    merge = draws[0][0].merge
    sub = splits.subwindows(windows, merge)
    apply_fn, params = _heads(model, draws[0][0], windows.shape[-1], config, len(draws[0]))
    fits, predictions = _fit_folds(apply_fn, params, draws, config, method, train_inputs=lambda pool: sub[pool],
                                   vali_inputs=lambda proto: jnp.asarray(sub[proto.split.vali.index]),
                                   test_inputs=lambda proto: sub[proto.split.test.index])
    out = run_dir(workdir, task, method, config)
    metrics = _write_draw_outputs(out, method=method, model=model, task=task, config=config, data=data, draws=draws,
                                  predictions=predictions, fits=fits,
                                  tsne_features=sub[draws[0][0].split.test.index].mean(axis=1),
                                  seconds=time.perf_counter() - start)
    save_trained(out, method=method, model=model, config=config, data=data, proto=draws[0][0],
                 head_params=fits[0][0].params, encoder=encoder, metrics=metrics["draws"][0])
    return metrics


def _fit_folds(apply_fn: ApplyFn, params, draws: list[list[ProtocolData]], config, method: str, *,
               train_inputs: Callable[[np.ndarray], Any], vali_inputs: Callable[[ProtocolData], Any],
               test_inputs: Callable[[ProtocolData], Any], predict_batch_size: int = 2048,
               **fit_options) -> tuple[list[list[FitResult]], list[np.ndarray]]:
    """Each fold's draws [fold][seed] trained through one compiled program (`fit_many`, draw s
    seeded `config.seed + s`; `params` stacked per draw) and their test predictions through one
    more (`predict_many`): ([fold][seed] results, [fold] predictions [seeds, test rows]).
    `train_inputs(pool)` are the model inputs of training sub-windows `pool`, the union of the
    fold's labelled rows (uploaded once); `vali_inputs` / `test_inputs` those of a draw's
    validation / test split (the same for every draw of a fold)."""
    fits, predictions = [], []
    for fold, fold_draws in enumerate(draws):
        pool = np.unique(np.concatenate([p.split.train.index for p in fold_draws]))
        rows = np.stack([np.searchsorted(pool, p.split.train.index) for p in fold_draws])
        proto = fold_draws[0]
        results = fit_many(apply_fn, params, train_inputs(pool), rows,
                           np.stack([p.labels("train") for p in fold_draws]), vali_inputs(proto), proto.labels("vali"),
                           seeds=[config.seed + s for s in range(len(fold_draws))],
                           desc=method + (f" fold {fold + 1}/{len(draws)}" if len(draws) > 1 else ""),
                           **fit_options, **{k: v for k, v in _fit_kwargs(config).items() if k != "seed"})
        fits.append(results)
        predictions.append(predict_many(apply_fn, _stack([r.params for r in results]), test_inputs(proto),
                                        batch_size=predict_batch_size))
    return fits, predictions


def _write_draw_outputs(out: epath.Path, *, method: str, model: str, task: str, config, data: LabelledData,
                        draws: list[list[ProtocolData]], predictions: list[np.ndarray], fits: list[list[FitResult]],
                        tsne_features: np.ndarray, seconds: float) -> dict:
    """settings.json, metrics.json, history.json, confusion.png and tsne.png of a run of
    several draws [fold][seed]. `predictions[fold]` [seeds, test sub-windows of the fold];
    `tsne_features`: of fold 0's test sub-windows (N, ...).

    metrics.json holds every draw's scores (`draws`: accuracy, macro-F1, per-class scores,
    confusion matrix, fold, seeds, sizes, selected epoch), each seed's mean over the folds
    (`per_seed`), each fold's mean over the seeds (`per_fold`), and their `summary`: mean,
    sd and 95% t-interval over the seeds (over the folds for one seed, without interval);
    `accuracy` and `macro_f1` are the means, `confusion_matrix` the sum over draws."""
    out.mkdir(parents=True, exist_ok=True)
    d = config.downstream
    settings = run_settings(config, task, model, f"{data.name}/{data.version}", merge=draws[0][0].merge)
    storage.write_text(out / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
    names = list(draws[0][0].names)
    num_folds, num_seeds = len(draws), len(draws[0])
    runs, histories, absent = [], [], {}
    for fold, (fold_draws, fold_predictions, fold_fits) in enumerate(zip(draws, predictions, fits)):
        test_y = fold_draws[0].labels("test")
        for seed, (proto, predicted, result) in enumerate(zip(fold_draws, fold_predictions, fold_fits)):
            scores = evaluation.classification_metrics(test_y, predicted, names)
            scores.update({
                "fold": fold, "seed": seed, "draw_seed": config.dataset.seed + seed,
                "classifier_seed": config.seed + seed, "num_labelled": len(proto.split.train),
                "num_vali": len(proto.split.vali), "num_test": len(proto.split.test),
                "best_epoch": result.best_epoch, "best_vali_accuracy": result.best_vali_accuracy,
            })
            runs.append(scores)
            histories.append({"fold": fold, "seed": seed, **result.history})
            for name, class_scores in scores["per_class"].items():
                if class_scores["support"] == 0:
                    absent.setdefault(name, set()).add(fold)
    per = {metric: np.asarray([r[metric] for r in runs]).reshape(num_folds, num_seeds) for metric in ("accuracy",
                                                                                                        "macro_f1")}
    over = "seeds" if num_seeds > 1 else "folds"
    summary = {metric: stats.summary(v.mean(axis=0) if num_seeds > 1 else v[:, 0]) for metric, v in per.items()}
    if over == "folds":  # folds are not independent draws: their spread, but no interval
        for entry in summary.values():
            entry["ci"] = None
    by, _ = split_by(config)
    per_class = labels_per_class(config)
    metrics = {
        "method": method, "task": task, "dataset": f"{data.name}/{data.version}", "label": data.labels.task,
        "label_rate": None if per_class is not None else d.label_rate, "labels_per_class": per_class,
        "accuracy": summary["accuracy"]["mean"], "macro_f1": summary["macro_f1"]["mean"],
        "summary": {**summary, "over": over}, "seeds": num_seeds, "folds": num_folds, "split_by": by,
        "per_seed": {metric: v.mean(axis=0).tolist() for metric, v in per.items()},
        "per_fold": {metric: v.mean(axis=1).tolist() for metric, v in per.items()},
        "num_labelled": runs[0]["num_labelled"], "num_test": sum(len(f[0].split.test) for f in draws),
        "class_names": names,
        "confusion_matrix": np.sum([r["confusion_matrix"] for r in runs], axis=0).tolist(),
        "num_epochs": d.num_epochs, "seconds": seconds, "merge": draws[0][0].merge,
        "encoder": settings.get("encoder"), "run_dir": f"{task}/{out.name}", "draws": runs,
    }
    test_y = draws[0][0].labels("test")
    rows = tsne.subsample(len(tsne_features), d.tsne_points, config.seed, labels=test_y)
    perplexity = tsne.perplexity_for(len(rows))
    where = lambda folds: "" if num_folds == 1 else f" (fold {', '.join(str(f + 1) for f in sorted(folds))})"  # noqa: E731
    classes = ", ".join(f"{name}{where(folds)}" for name, folds in absent.items())
    metrics["notes"] = _small_data_notes(out, method, classes, len(rows))
    title = f"{method} on {data.name}/{data.version}, {data.labels.task}, {labelled_text(config)}"
    _write_run_files(out, metrics, {"draws": histories}, names,
                     f"{title}: summed over {len(runs)} draws, mean test accuracy {metrics['accuracy']:.3f}",
                     tsne_features[rows], test_y[rows], perplexity,
                     f"t-SNE of test sub-windows: {title}" + (", fold 1" if num_folds > 1 else ""), config.seed)
    acc, f1 = summary["accuracy"], summary["macro_f1"]
    logging.info("%s: test accuracy %.4f (sd %s), macro-F1 %.4f over %d draws -> %s", method, acc["mean"],
                 "-" if acc["sd"] is None else f"{acc['sd']:.4f}", f1["mean"], len(runs), out)
    return metrics


def classify(config: ml_collections.ConfigDict, workdir: epath.Path, head: str | None = None,
             inputs: Inputs | None = None) -> dict:
    """A head on frozen embeddings of the labelled sub-windows (LIMU-<head>)."""
    config = evaluation_points(config)[0]  # a one-value label_rates is that label rate (a curve is a report's)
    head = head or config.downstream.classifier
    start = time.perf_counter()
    inputs = inputs or Inputs(config, workdir)
    method = method_name("classify", head, config)
    return _train_on_features(config, workdir, task="classify", method=method, model=head,
                              windows=inputs.embeddings, data=inputs.data, draws=inputs.draws(config), start=start,
                              encoder=inputs.encoder)


def baseline(config: ml_collections.ConfigDict, workdir: epath.Path, name: str | None = None,
             inputs: Inputs | None = None) -> dict:
    """A model on raw normalized sub-windows (DCNN, DeepSense, R-GRU): no pretraining."""
    config = evaluation_points(config)[0]  # a one-value label_rates is that label rate (a curve is a report's)
    name = name or config.downstream.baseline
    start = time.perf_counter()
    inputs = inputs or Inputs(config, workdir, encoded=False)
    normalized = normalize(inputs.data.windows, config.model.feature_num).astype(np.float32)
    return _train_on_features(config, workdir, task="baseline", method=name, model=name,
                              windows=normalized, data=inputs.data, draws=inputs.draws(config), start=start)


def finetune(config: ml_collections.ConfigDict, workdir: epath.Path, head: str | None = None,
             inputs: Inputs | None = None) -> dict:
    """Encoder + head trained together on the labelled sub-windows (the encoder sees each
    sub-window's whole window, as in `classify`, or the seq_len-step piece of it that holds
    the sub-window when it is shorter); `freeze_encoder` trains the head only."""
    config = evaluation_points(config)[0]  # a one-value label_rates is that label rate (a curve is a report's)
    head = head or config.downstream.classifier
    start = time.perf_counter()
    inputs = inputs or Inputs(config, workdir)
    data, draws = inputs.data, inputs.draws(config)
    proto = draws[0][0]
    model_config, enc_params = inputs.encoder
    merge = proto.merge
    n, seq, _ = data.windows.shape
    # What the encoder sees at once (`encoder.encode_windows`): the whole window, or each of
    # its seq_len-step pieces. A sub-window's features depend on its piece alone, so every
    # piece is a row of its own and a labelled sub-window costs one piece's encoding.
    piece = seq // encoder_pieces(seq, model_config.seq_len)
    per_piece = piece // merge  # sub-windows per piece; sub-window i lies in piece row i // per_piece
    windows = jnp.asarray(normalize(data.windows, model_config.feature_num).astype(np.float32)).reshape(
        n * (seq // piece), piece, model_config.feature_num)
    several = len(draws) > 1 or len(draws[0]) > 1
    if several:
        apply_head, head_params = _heads(head, proto, model_config.hidden, config, len(draws[0]))
    else:
        apply_head, head_params = _head(head, proto, model_config.hidden, config)

    def encode(p, x):  # x [B, piece, F] -> [B, piece, H]
        return encode_windows(p["transformer"], x, model_config)

    def pieces(h, j):  # h [B, piece, H], j [B] -> the j-th sub-window of each row [B, merge, H]
        steps = j[:, None] * merge + jnp.arange(merge)[None, :]
        return jnp.take_along_axis(h, steps[:, :, None], axis=1)

    def apply_fn(p, index, train, key):  # index: sub-window rows of `subwindows(windows)`
        h = encode(p["encoder"], windows[index // per_piece])
        return apply_head(p["head"], pieces(h, index % per_piece), train, key)

    def vali_inputs(proto: ProtocolData) -> tuple[jax.Array, jax.Array]:
        # Validation encodes each validation piece once and classifies all its sub-windows.
        vali_pieces = np.unique(proto.split.vali.index // per_piece)
        position = np.searchsorted(vali_pieces, proto.split.vali.index // per_piece) * per_piece + (
            proto.split.vali.index % per_piece)
        return jnp.asarray(vali_pieces), jnp.asarray(position)

    def predict_fn(p, inputs):
        rows, position = inputs
        h = encode(p["encoder"], windows[rows])
        sub = h.reshape(-1, merge, h.shape[-1])
        return jnp.argmax(apply_head(p["head"], sub[position], False, jax.random.key(0)), -1)

    trainable = {"encoder": jax.tree_util.tree_map_with_path(
        lambda path, _: (not config.downstream.freeze_encoder) and path[0].key == "transformer", enc_params),
        "head": jax.tree.map(lambda _: True, head_params)}
    method = method_name("finetune", head, config)
    test_features = jax.jit(lambda p, i: pieces(encode(p, windows[i // per_piece]), i % per_piece))
    out = run_dir(workdir, "finetune", method, config)
    if several:
        count = len(draws[0])
        params = {"encoder": jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (count, *leaf.shape)), enc_params),
                  "head": head_params}
        fits, predictions = _fit_folds(apply_fn, params, draws, config, method, train_inputs=lambda pool: pool,
                                       vali_inputs=vali_inputs, test_inputs=lambda proto: proto.split.test.index,
                                       predict_batch_size=256, predict_fn=predict_fn, trainable=trainable)
        first = fits[0][0].params
        features = map_batches(lambda rows: test_features(first["encoder"], rows), proto.split.test.index, 256)
        metrics = _write_draw_outputs(out, method=method, model=head, task="finetune", config=config, data=data,
                                      draws=draws, predictions=predictions, fits=fits,
                                      tsne_features=features.mean(axis=1), seconds=time.perf_counter() - start)
        save_trained(out, method=method, model=head, config=config, data=data, proto=proto, head_params=first["head"],
                     encoder=(model_config, first["encoder"]), metrics=metrics["draws"][0])
        return metrics
    params = {"encoder": enc_params, "head": head_params}
    result = fit(apply_fn, params, proto.split.train.index, proto.labels("train"), vali_inputs(proto),
                 proto.labels("vali"), predict_fn=predict_fn, trainable=trainable, desc=method, **_fit_kwargs(config))
    test_index = proto.split.test.index
    predictions = predict(apply_fn, result.params, test_index, batch_size=256)
    features = map_batches(lambda rows: test_features(result.params["encoder"], rows), test_index, 256)
    metrics = _write_outputs(out, method=method, model=head, task="finetune", config=config, data=data, proto=proto,
                             predictions=predictions, tsne_features=features.mean(axis=1), result=result,
                             seconds=time.perf_counter() - start)
    save_trained(out, method=method, model=head, config=config, data=data, proto=proto,
                 head_params=result.params["head"], encoder=(model_config, result.params["encoder"]), metrics=metrics)
    return metrics


def method_task(method: str) -> tuple[str, str]:
    """(task, model) of a report method: `limu_<head>` -> classify, `finetune_<head>` ->
    finetune, a baseline name -> baseline; an unknown method is an error naming the field."""
    for prefix, task, names in (("limu_", "classify", registry.HEADS), ("finetune_", "finetune", registry.HEADS)):
        if method.startswith(prefix) and method.removeprefix(prefix) in names:
            return task, method.removeprefix(prefix)
    if method in registry.BASELINES:
        return "baseline", method
    raise LimuBertError(
        f"config.downstream.methods: unknown method {method!r}; use limu_<head> or finetune_<head> "
        f"(heads: {', '.join(registry.HEADS)}) or a baseline ({', '.join(registry.BASELINES)})"
    )


def report_methods(config: ml_collections.ConfigDict) -> list[str]:
    """The methods of `config.downstream.methods`, in order."""
    return [m.strip() for m in config.downstream.methods.split(",") if m.strip()]


def run_method(config: ml_collections.ConfigDict, workdir: epath.Path, method: str,
               inputs: Inputs | None = None) -> dict:
    """One report method: `limu_<head>` (classify), `finetune_<head>`, or a baseline name."""
    task, model = method_task(method)
    train = {"classify": classify, "finetune": finetune, "baseline": baseline}[task]
    return train(config, workdir, model, inputs)


def _run_methods(config: ml_collections.ConfigDict, workdir: epath.Path, methods: list[str],
                 inputs: Inputs) -> dict[str, dict]:
    """Every method of `methods` under `config`: their metrics, keyed by the method each one
    ran as (a frozen fine-tuning says so); a method that could not run is a dict with a note."""
    results, failed = {}, []
    for m in methods:
        try:
            metrics = run_method(config, workdir, m, inputs)
        except LimuBertError as e:  # the other methods' results are still worth a report
            logging.warning("%s could not run: %s", m, e)
            failed.append(f"{m} could not run: {e}")
            results[m] = {"method": m, "notes": [failed[-1]]}
            continue
        results[metrics["method"]] = metrics
    if len(failed) == len(methods):
        raise LimuBertError(f"config.downstream.methods: no method could run ({'; '.join(failed)})")
    return results


def run_report(config: ml_collections.ConfigDict, workdir: epath.Path, inputs: Inputs | None = None) -> dict:
    """Every method of `config.downstream.methods` on one dataset -> workdir/report.md, and
    the report's TensorBoard run (workdir/tensorboard/report/). Of several draws or label
    rates (`config.downstream.seeds`, `folds`, `label_rates`, `labels_per_class`), the
    report holds intervals, paired comparisons and the label-rate curve, and
    workdir/report.json every number of it (`_evaluation_report`)."""
    methods = report_methods(config)
    inputs = inputs or Inputs(config, workdir, encoded=uses_encoder(config, ["report"]))
    points = evaluation_points(config)
    if len(points) > 1 or repeated(config):
        return _evaluation_report(config, workdir, methods, [(p, _run_methods(p, workdir, methods, inputs))
                                                             for p in points])
    config = points[0]  # a one-value label_rates is that label rate
    results = _run_methods(config, workdir, methods, inputs)
    ran = next(r for r in results.values() if "run_dir" in r)
    dataset = f"{config.dataset.name}/{config.dataset.version}"
    path = storage.as_path(workdir) / "report.md"
    d = config.downstream
    per_class = labels_per_class(config)
    report.write_report(
        path, {dataset: results},
        title=f"{dataset}: {d.label}, " + (f"{per_class} labels per class" if per_class is not None
                                           else f"{d.label_rate:g} labels per class-balanced draw"),
        notes=[f"Test accuracy and macro-F1 of the epoch with the best validation accuracy ({d.num_epochs} epochs, "
               f"Adam lr {d.learning_rate:g}, batch {d.batch_size}); {ran['num_labelled']} labelled "
               f"sub-windows of {ran.get('merge')} steps.",
               f"Encoder: {d.encoder or 'pretrained in this workdir'}; runs in the workdir's "
               + ", ".join(f"{r['run_dir']}" for r in results.values() if "run_dir" in r) + ".",
               *dict.fromkeys(note for r in results.values() for note in r.get("notes", ()))],
    )
    table = report.table3_markdown({dataset: results})
    _report_board(config, workdir, path, [(config, results)], curve=None)
    # The table is the task's result for the user; the command prints it (`tasks.run`'s on_done).
    return {"report": str(path), "table": table,
            "results": {m: {k: r.get(k) for k in ("accuracy", "macro_f1")} for m, r in results.items()}}


REPORT_JSON = "report.json"  # beside report.md: every number of a report of several draws or label rates
CURVE_PNG = "label_rate_curve.png"  # beside report.md: a report's label-rate curve


def _point_heading(config: ml_collections.ConfigDict) -> str:
    per_class = labels_per_class(config)
    return f"{per_class} per class" if per_class is not None else f"{config.downstream.label_rate:g}"


def _split_note(config: ml_collections.ConfigDict, results: dict) -> str:
    by, field = split_by(config)
    ran = next((r for r in results.values() if "draws" in r), {})
    folds = ran.get("folds", 1)
    if by == "window":
        split = "the reference's split of shuffled windows (a person's windows may be in training and test alike)"
    else:
        split = f"split by {by} ({field}): training, validation and test hold disjoint {by} groups"
    if folds > 1:
        split += (f"; grouped {folds}-fold: each fold tests its {by} groups, and a seed's score is its mean over the "
                  "folds")
    pretrained = str(config.dataset.get("split_by", "window"))
    if by != pretrained or folds > 1:
        # Pretraining holds out one split's windows; the protocol tests others as well.
        split += (f". The encoder's pretraining split (config.dataset.split_by={pretrained!r}) is not this one: its "
                  f"pretraining windows may include test {by}s of this protocol "
                  "(unlabelled)")
    return "Split: " + split + "."


def _evaluation_report(config: ml_collections.ConfigDict, workdir: epath.Path, methods: list[str],
                       points: list[tuple[ml_collections.ConfigDict, dict]]) -> dict:
    """report.md, report.json, label_rate_curve.png (several points) and the TensorBoard run
    of a report of several draws or label-rate points (`points`: (point config, results by
    method)): per point the Table-3 layout with mean ± sd [95% t-interval] over the draws,
    each method against the best baseline draw for draw, and over the points the curve."""
    d = config.downstream
    dataset = f"{config.dataset.name}/{config.dataset.version}"
    workdir = storage.as_path(workdir)
    several = len(points) > 1
    sections, notes, summary_points = [], [], []
    for point, results in points:
        heading = (f"Label rate {point.downstream.label_rate:g}" if labels_per_class(point) is None
                   else f"{labels_per_class(point)} labels per class")
        table = report.table3_markdown({dataset: results})
        baseline = report.best_baseline(results, [m for m in results if m in registry.BASELINES])
        comparisons = report.paired_comparisons(results, baseline) if baseline else {}
        body = table
        if comparisons:
            body += (f"\nAgainst the best baseline ({report.method_display_name(baseline)}, highest mean accuracy), "
                     "draw for draw: the mean difference in percentage points ± its sd [95% t-interval]:\n\n"
                     + report.paired_markdown(comparisons, baseline))
        sections.append((heading if several else None, body))
        summary_points.append({
            "point": point_name(point), "label_rate": None if labels_per_class(point) is not None else
            point.downstream.label_rate, "labels_per_class": labels_per_class(point), "best_baseline": baseline,
            "paired": comparisons,
            "results": {m: {k: r.get(k) for k in ("accuracy", "macro_f1", "summary", "per_seed", "per_fold",
                                                    "num_labelled", "run_dir", "notes")} for m, r in results.items()}})
        notes += [note for r in results.values() for note in r.get("notes", ())]
    seeds = int(d.get("seeds") or 1)
    first = next((r for _, results in points for r in results.values() if "run_dir" in r), {})
    over = (first.get("summary") or {}).get("over")
    spread = (f"mean ± sd over the {seeds} draws" if seeds > 1 else
              f"mean ± sd over the {first.get('folds')} folds" if over == "folds" else "one draw")
    curve = None
    if several:
        columns = [(_point_heading(p), results) for p, results in points]
        per_class = labels_per_class(points[0][0]) is not None
        sections.append(("Label-rate curve", f"Accuracy (%), {spread}:\n\n"
                         + report.curve_markdown(columns, "accuracy", methods_order=list(points[0][1]))
                         + f"\nMacro-F1 (%), {spread}:\n\n"
                         + report.curve_markdown(columns, "macro_f1", methods_order=list(points[0][1]))
                         + f"\n![label-rate curve]({CURVE_PNG})\n"))
        xs = [labels_per_class(p) if per_class else p.downstream.label_rate for p, _ in points]
        methods_seen = list(dict.fromkeys(m for _, results in points for m in results))
        curve = report.label_rate_curve_png(
            workdir / CURVE_PNG, xs, "labelled sub-windows per class" if per_class else "label rate",
            {m: [results.get(m) for _, results in points] for m in methods_seen},
            title=f"{dataset}: {d.label}" + (f", {int(d.get('seeds') or 1)} draws per point"
                                             if int(d.get("seeds") or 1) > 1 else ""))
    if seeds > 1:
        cells = (f"mean ± standard deviation over {seeds} draws (other labelled subsets and classifier "
                 "initialisations; the same encoder and split) [the 95% t-interval of the mean]")
    elif over == "folds":
        cells = "mean ± standard deviation over the folds (no interval: folds are not independent draws)"
    else:
        cells = "one draw"
    explain = [f"Test accuracy and macro-F1 in percent: {cells}; best mean per column in bold; {report.MISSING} = "
               "not run. Each classifier is the epoch with the best validation accuracy "
               f"({d.num_epochs} epochs, Adam lr {d.learning_rate:g}, batch {d.batch_size}).",
               _split_note(config, points[0][1]),
               f"Encoder: {d.encoder or 'pretrained in this workdir'}; every draw's numbers in each run's metrics.json "
               f"({', '.join(dict.fromkeys(r['run_dir'] for _, rs in points for r in rs.values() if 'run_dir' in r))})"
               f" and in {REPORT_JSON}."]
    title = f"{dataset}: {d.label}, " + ("label-rate curve" if several else labelled_text(points[0][0]))
    path = report.write_sections(workdir / "report.md", title, sections, [*explain, *dict.fromkeys(notes)])
    storage.write_text(workdir / REPORT_JSON, json.dumps({"dataset": dataset, "label": d.label, "seeds": seeds,
                                                          "split_by": split_by(config)[0], "points": summary_points},
                                                         indent=2) + "\n")
    _report_board(config, workdir, path, points, curve=curve)
    body = "\n".join((f"## {heading}\n\n" if heading else "") + text for heading, text in sections)
    results = ({m: {k: r.get(k) for k in ("accuracy", "macro_f1", "summary")} for m, r in points[0][1].items()}
               if not several else {point_name(p): {m: {k: r.get(k) for k in ("accuracy", "macro_f1", "summary")}
                                                    for m, r in results.items()} for p, results in points})
    return {"report": str(path), "table": body, "results": results}


def _report_board(config: ml_collections.ConfigDict, workdir: epath.Path, report_path: epath.Path,
                  points: list[tuple[ml_collections.ConfigDict, dict]], curve: epath.Path | None) -> None:
    """The report's TensorBoard run, workdir/tensorboard/report/: the report's text, the
    label-rate curve, and an HParams session per method and point (its settings, and the
    mean, sd and interval of each metric)."""
    d = config.downstream
    dataset = f"{config.dataset.name}/{config.dataset.version}"
    sessions = []
    for point, results in points:
        for method, r in results.items():
            if r.get("accuracy") is None:
                continue
            per_class = labels_per_class(point)
            hparams = {"method": method, "dataset": dataset, "label": d.label, "split_by": split_by(config)[0],
                       "label_rate": -1.0 if per_class is not None else float(point.downstream.label_rate),
                       "labels_per_class": per_class or 0, "seeds": int(d.get("seeds") or 1),
                       "folds": int(r.get("folds") or 1), "num_epochs": int(d.num_epochs),
                       "encoder": str(d.encoder or "workdir")}
            metrics = {"accuracy": r["accuracy"], "macro_f1": r.get("macro_f1")}
            for metric in ("accuracy", "macro_f1"):
                entry = (r.get("summary") or {}).get(metric) or {}
                metrics[f"{metric}_sd"] = entry.get("sd")
                if entry.get("ci") is not None:
                    metrics[f"{metric}_ci_low"], metrics[f"{metric}_ci_high"] = entry["ci"]
            sessions.append((f"{method}-{point_name(point)}", hparams, metrics))
    images = {"label_rate_curve": report.png_bytes(curve)} if curve is not None else {}
    report.write_tensorboard(storage.as_path(workdir) / "tensorboard" / "report", text=report_path.read_text(),
                             images=images, sessions=sessions)


def _stage_methods(task: str, config: ml_collections.ConfigDict) -> list[tuple[str, str, str]]:
    """(config field, task, model) of each model a downstream task trains."""
    d = config.downstream
    if task == "report":
        methods = report_methods(config)
        if not methods:
            raise LimuBertError("config.downstream.methods is empty; name at least one method")
        return [("methods", *method_task(m)) for m in methods]
    if task in ("classify", "finetune"):
        if d.classifier not in registry.HEADS:
            raise LimuBertError(f"config.downstream.classifier: unknown head {d.classifier!r}; heads: "
                                f"{', '.join(registry.HEADS)}")
        return [("classifier", task, d.classifier)]
    if task == "baseline":
        if d.baseline not in registry.BASELINES:
            raise LimuBertError(f"config.downstream.baseline: unknown baseline {d.baseline!r}; baselines: "
                                f"{', '.join(registry.BASELINES)}")
        return [("baseline", task, d.baseline)]
    return []  # embed trains nothing


def uses_encoder(config: ml_collections.ConfigDict, stages: list[str]) -> bool:
    """Whether a downstream task of `stages` (task names; others are ignored) runs the encoder."""
    return "embed" in stages or any(task != "baseline" for s in stages for _, task, _ in _stage_methods(s, config))


def check_config(config: ml_collections.ConfigDict, workdir: epath.Path, stages: list[str], dataset,
                 pretrained_config: LimuBertConfig | None = None) -> None:
    """Checks every downstream stage of a chain (`stages`: its downstream task names, in
    order; `tasks.TASKS` says which names those are) before any stage of the chain runs, so that a
    chain fails in seconds, not after its pretraining: the label exists in `dataset` (the
    loaded `loading.load_data(config)`), numbers are in range, `merge` divides the windows,
    methods and heads are known and fit their inputs, and an encoder will exist and takes
    the dataset's windows. `pretrained_config`: the model that an earlier stage of the chain
    pretrains in `workdir`. Raises `LimuBertError` naming the field."""
    if not stages:
        return
    d = config.downstream
    label_tasks = check_label(config, dataset)
    loaded, dataset = dataset, downstream_data(config, dataset)  # of merged datasets, the one downstream tasks use
    for field in ("num_epochs", "batch_size", "merge", "tsne_points"):
        value = d[field]
        if field == "merge" and value is None:  # unset: resolved once the encoder is known
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LimuBertError(f"config.downstream.{field} must be a positive integer, got {value!r}")
    if not 0.0 < d.label_rate <= 1.0:
        raise LimuBertError(f"config.downstream.label_rate must be in (0, 1], got {d.label_rate!r}")
    seeds, folds = d.get("seeds", 1), d.get("folds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise LimuBertError(f"config.downstream.seeds must be a positive integer (draws per method), got {seeds!r}")
    if not isinstance(folds, int) or isinstance(folds, bool) or folds == 0 or folds < -1:
        raise LimuBertError(f"config.downstream.folds must be 1 (the protocol's one split), K >= 2 (a grouped K-fold) "
                            f"or -1 (one fold per group: leave one subject out), got {folds!r}")
    rates, per_class = parse_list(config, "label_rates", float), parse_list(config, "labels_per_class", int)
    if rates and per_class:
        raise LimuBertError("config.downstream.label_rates and config.downstream.labels_per_class: give one of them "
                            "(a curve over label rates or over labels per class)")
    if bad := [r for r in rates if not 0.0 < r <= 1.0]:
        raise LimuBertError(f"config.downstream.label_rates: each must be in (0, 1], got {bad[0]!r}")
    if bad := [k for k in per_class if k < 1]:
        raise LimuBertError(f"config.downstream.labels_per_class: each must be a positive integer, got {bad[0]!r}")
    single = [t for t in stages if t in ("classify", "finetune", "baseline")]
    if single and (len(rates) > 1 or len(per_class) > 1):
        field = "label_rates" if rates else "labels_per_class"
        raise LimuBertError(f"config.downstream.{field}={d[field]!r}: a curve over several values is the report task's "
                            f"(config.task=report); {single[0]} runs one (config.downstream.{field} with one value)")
    if d.get("split_by") and d.split_by not in loading.SPLIT_BY:
        raise LimuBertError(f"config.downstream.split_by must be one of {', '.join(loading.SPLIT_BY)} (or unset: "
                            f"config.dataset.split_by's), got {d.split_by!r}")
    if not d.learning_rate > 0:
        raise LimuBertError(f"config.downstream.learning_rate must be positive, got {d.learning_rate!r}")
    if d.get("run_name") is not None and not re.fullmatch(r"[A-Za-z0-9][\w.+=-]*", str(d.run_name)):
        raise LimuBertError(f"config.downstream.run_name={d.run_name!r}: a folder-name suffix (letters, digits, "
                            "'_', '.', '+', '=', '-'; no '/')")
    by, by_field = split_by(config)
    if d.label in (by, loading.GROUP_LABELS.get(by)):
        raise LimuBertError(f"config.downstream.label={d.label!r} with {by_field}={by!r}: every "
                            f"{by} is in one split only, so the test {by}s have no training labels; "
                            f"split by another group (or 'window') to classify {d.label}s")
    models = [m for t in stages for m in _stage_methods(t, config)]
    name = f"{dataset.name}/{dataset.version}"
    encoder = None
    if uses_encoder(config, stages):
        if d.encoder or pretrained_config is None:
            path = _encoder_path(config, workdir)
            _, encoder = checkpoint.read_model_config(path)
            checkpoint.check_saved(path)
        else:
            encoder = pretrained_config
        _check_windows(name, dataset.seq_len, dataset.num_features, encoder)
    merge = resolve_merge(config, encoder.seq_len if encoder else None, dataset.seq_len)  # as `Inputs.merge`
    _check_merge(merge, config, name, dataset.seq_len, encoder)
    points = evaluation_points(config)
    if any(t != "embed" for t in stages):  # the labelled draws, before any stage trains
        check_protocol(config, loaded, merge, points=points)
    for _, task, model in models:
        for point in points:
            check_replaces_nothing(point, workdir, task, model, name, merge=merge)
    num_classes = max(2, len(label_tasks[d.label] or ()))  # sizes only; npy classes are counted later
    for field, task, model in models:
        input_dim = config.model.feature_num if task == "baseline" else encoder.hidden
        try:
            registry.make_classifier(model, num_classes=num_classes, input_dim=input_dim, seq_len=merge)
        except ValueError as e:
            raise LimuBertError(f"config.downstream.{field}: {model} on {merge}-step sub-windows of "
                                f"{input_dim} features: {e}") from None
