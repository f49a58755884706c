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
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from limubert_jax.data import splits
from limubert_jax.data.normalization import normalize
from limubert_jax.datasets.common import parse_version
from limubert_jax.downstream import evaluation, report, tsne
from limubert_jax.downstream.fit import ApplyFn, FitResult, fit, map_batches, predict
from limubert_jax.downstream.labels import (
    LabelledData,
    ProtocolData,
    check_label,
    check_protocol,
    downstream_data,
    load_labelled,
    protocol_split,
    resolve_merge,
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


def run_dir(workdir: epath.Path, task: str, method: str, config: ml_collections.ConfigDict) -> epath.Path:
    """Where a downstream run writes: workdir/<task>/<method>-<label>-<label rate>[-<run_name>]/."""
    d = config.downstream
    name = f"{method}-{d.label}-{d.label_rate:g}" + (f"-{d.run_name}" if d.get("run_name") else "")
    return storage.as_path(workdir) / task / name


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
    rows = tsne.subsample(len(tsne_features), config.downstream.tsne_points, config.seed, labels=test_y)
    perplexity = tsne.perplexity_for(len(rows))
    # What a small dataset could not give: said in the log, the metrics and the report.
    notes = []
    absent = [name for name, scores in metrics["per_class"].items() if scores["support"] == 0]
    if absent:
        notes.append(f"no test sub-window of class {', '.join(absent)}: its scores are 0, and macro-F1 averages "
                     "the classes in the test labels or the predictions")
    if perplexity is None:
        notes.append(f"no t-SNE plot: {len(rows)} test sub-windows, fewer than the {tsne.MIN_POINTS} a plot needs")
        (out / "tsne.png").unlink(missing_ok=True)  # an earlier run's plot is not this run's
    for note in notes:
        logging.info("%s: %s", method, note)
    metrics["notes"] = notes
    storage.write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    storage.write_text(out / "history.json", json.dumps(result.history) + "\n")
    title = f"{method} on {data.name}/{data.version}, {data.labels.task}, {config.downstream.label_rate:g} labels"
    plots.confusion_png(out / "confusion.png", np.asarray(metrics["confusion_matrix"]), names,
                        f"{title}: test accuracy {metrics['accuracy']:.3f}")
    if perplexity is not None:
        points = tsne.tsne(tsne_features[rows].reshape(len(rows), -1), perplexity=perplexity, seed=config.seed)
        plots.tsne_png(out / "tsne.png", np.asarray(points), test_y[rows], names,
                       f"t-SNE of test sub-windows: {title}")
    logging.info("%s: test accuracy %.4f, macro-F1 %.4f -> %s", method, metrics["accuracy"], metrics["macro_f1"], out)
    return metrics


def _head(name: str, proto: ProtocolData, input_dim: int, config) -> tuple[ApplyFn, dict]:
    try:
        module = registry.make_classifier(name, num_classes=len(proto.names), input_dim=input_dim,
                                       seq_len=proto.merge)
    except ValueError as e:
        raise LimuBertError(f"config.downstream: {e}") from None
    params = registry.init_classifier(module, jax.random.key(config.seed), seq_len=proto.merge,
                                   input_dim=input_dim)

    def apply_fn(p, x, train, key):
        return module.apply({"params": p}, x, train=train, rngs={"dropout": key} if train else None)

    return apply_fn, params


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
        data=f"{data.name}/{data.version}, {config.downstream.label_rate:g} of the training sub-windows labelled",
        metrics={name: metrics[key] for name, key in (("test accuracy", "accuracy"), ("test macro-F1", "macro_f1"),
                                                          ("validation accuracy", "best_vali_accuracy"),
                                                          ("at epoch", "best_epoch"))})
    return checkpoint.save_model(out / MODEL_DIR, jax.device_get(params), pipeline_config, overwrite=True, card=card)


def _train_on_features(config, workdir: epath.Path, *, task: str, method: str, model: str, windows: np.ndarray,
                       data: LabelledData, proto: ProtocolData, start: float,
                       encoder: tuple[LimuBertConfig, dict] | None = None) -> dict:
    """Trains `model` on the labelled sub-windows of per-window features `windows` (N, S, D)
    (embeddings of `encoder`, or normalized readings), evaluates on the test split, writes the
    outputs and the trained model."""
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


def classify(config: ml_collections.ConfigDict, workdir: epath.Path, head: str | None = None,
             inputs: Inputs | None = None) -> dict:
    """A head on frozen embeddings of the labelled sub-windows (LIMU-<head>)."""
    head = head or config.downstream.classifier
    start = time.perf_counter()
    inputs = inputs or Inputs(config, workdir)
    method = method_name("classify", head, config)
    return _train_on_features(config, workdir, task="classify", method=method, model=head,
                              windows=inputs.embeddings, data=inputs.data, proto=inputs.proto, start=start,
                              encoder=inputs.encoder)


def baseline(config: ml_collections.ConfigDict, workdir: epath.Path, name: str | None = None,
             inputs: Inputs | None = None) -> dict:
    """A model on raw normalized sub-windows (DCNN, DeepSense, R-GRU): no pretraining."""
    name = name or config.downstream.baseline
    start = time.perf_counter()
    inputs = inputs or Inputs(config, workdir, encoded=False)
    normalized = normalize(inputs.data.windows, config.model.feature_num).astype(np.float32)
    return _train_on_features(config, workdir, task="baseline", method=name, model=name,
                              windows=normalized, data=inputs.data, proto=inputs.proto, start=start)


def finetune(config: ml_collections.ConfigDict, workdir: epath.Path, head: str | None = None,
             inputs: Inputs | None = None) -> dict:
    """Encoder + head trained together on the labelled sub-windows (the encoder sees each
    sub-window's whole window, as in `classify`, or the seq_len-step piece of it that holds
    the sub-window when it is shorter); `freeze_encoder` trains the head only."""
    head = head or config.downstream.classifier
    start = time.perf_counter()
    inputs = inputs or Inputs(config, workdir)
    data, proto = inputs.data, inputs.proto
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
    apply_head, head_params = _head(head, proto, model_config.hidden, config)

    def encode(p, x):  # x [B, piece, F] -> [B, piece, H]
        return encode_windows(p["transformer"], x, model_config)

    def pieces(h, j):  # h [B, piece, H], j [B] -> the j-th sub-window of each row [B, merge, H]
        steps = j[:, None] * merge + jnp.arange(merge)[None, :]
        return jnp.take_along_axis(h, steps[:, :, None], axis=1)

    def apply_fn(p, index, train, key):  # index: sub-window rows of `subwindows(windows)`
        h = encode(p["encoder"], windows[index // per_piece])
        return apply_head(p["head"], pieces(h, index % per_piece), train, key)

    # Validation encodes each validation piece once and classifies all its sub-windows.
    vali_pieces = np.unique(proto.split.vali.index // per_piece)
    position = np.searchsorted(vali_pieces, proto.split.vali.index // per_piece) * per_piece + (
        proto.split.vali.index % per_piece)

    def predict_fn(p, inputs):
        rows, position = inputs
        h = encode(p["encoder"], windows[rows])
        sub = h.reshape(-1, merge, h.shape[-1])
        return jnp.argmax(apply_head(p["head"], sub[position], False, jax.random.key(0)), -1)

    params = {"encoder": enc_params, "head": head_params}
    trainable = {"encoder": jax.tree_util.tree_map_with_path(
        lambda path, _: (not config.downstream.freeze_encoder) and path[0].key == "transformer", enc_params),
        "head": jax.tree.map(lambda _: True, head_params)}
    method = method_name("finetune", head, config)
    result = fit(apply_fn, params, proto.split.train.index, proto.labels("train"),
                 (jnp.asarray(vali_pieces), jnp.asarray(position)), proto.labels("vali"),
                 predict_fn=predict_fn, trainable=trainable, desc=method, **_fit_kwargs(config))
    test_index = proto.split.test.index
    predictions = predict(apply_fn, result.params, test_index, batch_size=256)
    test_features = jax.jit(lambda p, i: pieces(encode(p, windows[i // per_piece]), i % per_piece))
    features = map_batches(lambda rows: test_features(result.params["encoder"], rows), test_index, 256)
    out = run_dir(workdir, "finetune", method, config)
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


def run_report(config: ml_collections.ConfigDict, workdir: epath.Path, inputs: Inputs | None = None) -> dict:
    """Every method of `config.downstream.methods` on one dataset -> workdir/report.md."""
    methods = report_methods(config)
    inputs = inputs or Inputs(config, workdir, encoded=uses_encoder(config, ["report"]))
    results, failed = {}, []
    for m in methods:  # keyed by the method each one ran as (a frozen fine-tuning says so)
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
    ran = next(r for r in results.values() if "run_dir" in r)
    dataset = f"{config.dataset.name}/{config.dataset.version}"
    path = storage.as_path(workdir) / "report.md"
    d = config.downstream
    report.write_report(
        path, {dataset: results},
        title=f"{dataset}: {d.label}, {d.label_rate:g} labels per class-balanced draw",
        notes=[f"Test accuracy and macro-F1 of the epoch with the best validation accuracy ({d.num_epochs} epochs, "
               f"Adam lr {d.learning_rate:g}, batch {d.batch_size}); {ran['num_labelled']} labelled "
               f"sub-windows of {ran.get('merge')} steps.",
               f"Encoder: {d.encoder or 'pretrained in this workdir'}; runs in the workdir's "
               + ", ".join(f"{r['run_dir']}" for r in results.values() if "run_dir" in r) + ".",
               *dict.fromkeys(note for r in results.values() for note in r.get("notes", ()))],
    )
    # The table is the task's result for the user; the command prints it (`tasks.run`'s on_done).
    return {"report": str(path), "table": report.table3_markdown({dataset: results}),
            "results": {m: {k: r.get(k) for k in ("accuracy", "macro_f1")} for m, r in results.items()}}


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
    if not d.learning_rate > 0:
        raise LimuBertError(f"config.downstream.learning_rate must be positive, got {d.learning_rate!r}")
    if d.get("run_name") is not None and not re.fullmatch(r"[A-Za-z0-9][\w.+=-]*", str(d.run_name)):
        raise LimuBertError(f"config.downstream.run_name={d.run_name!r}: a folder-name suffix (letters, digits, "
                            "'_', '.', '+', '=', '-'; no '/')")
    split_by = config.dataset.get("split_by", "window")
    if d.label == split_by:
        raise LimuBertError(f"config.downstream.label={d.label!r} with config.dataset.split_by={split_by!r}: every "
                            f"{split_by} is in one split only, so the test {split_by}s have no training labels; "
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
    if any(t != "embed" for t in stages):  # the labelled draw, before any stage trains
        check_protocol(config, loaded, merge)
    for _, task, model in models:
        check_replaces_nothing(config, workdir, task, model, name, merge=merge)
    num_classes = max(2, len(label_tasks[d.label] or ()))  # sizes only; npy classes are counted later
    for field, task, model in models:
        input_dim = config.model.feature_num if task == "baseline" else encoder.hidden
        try:
            registry.make_classifier(model, num_classes=num_classes, input_dim=input_dim, seq_len=merge)
        except ValueError as e:
            raise LimuBertError(f"config.downstream.{field}: {model} on {merge}-step sub-windows of "
                                f"{input_dim} features: {e}") from None
