"""Labelled data for the downstream protocol (docs/reference.md §7): every window with one task's labels,
chosen by task name (`activity`, `user`, `position`, ...), never by column index, and the
protocol's split (80/10/10 windows, `merge`-step sub-windows, a balanced labelled subset)."""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from limubert_jax.data import loading, splits
from limubert_jax.datasets.common import MISSING_LABEL
from limubert_jax.runtime.errors import LimuBertError


def resolve_merge(config: ml_collections.ConfigDict, encoder_seq_len: int | None, seq_len: int) -> int:
    """The sub-window length (steps) of the protocol on `seq_len`-step windows:
    `config.downstream.merge` when set; unset (None), the encoder's `seq_len` when the encoder
    is shorter than the windows (it encodes them in pieces of that length, and LIMU-BERT-X's
    release classifies each such piece), else the reference's `splits.MERGE` (also for
    methods without an encoder: `encoder_seq_len` None)."""
    merge = config.downstream.get("merge")
    if merge is not None:
        return merge
    if encoder_seq_len is not None and encoder_seq_len < seq_len:
        return encoder_seq_len
    return splits.MERGE


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
    groups: np.ndarray | None = None  # (N,) split groups (config.dataset.split_by); None: by window


def available_tasks(info) -> dict[str, tuple[str, ...] | None]:
    """Task name -> class names (None: unnamed integer classes) of a dataset's features.

    ClassLabel features are tasks; npy-layout builders (a `label` (S, L) feature) name their
    columns `label_columns` in metadata, else `label_0`, `label_1`, ..., and their classes
    `label_classes` ({column: names indexed by the label value}) where given.
    """
    tasks: dict[str, tuple[str, ...] | None] = {}
    for key, feature in info.features.items():
        names = getattr(feature, "names", None)
        if names is not None:
            tasks[key] = tuple(names)
    if "label" in info.features and not tasks:
        meta = dict(info.metadata or {})
        columns = meta.get("label_columns") or [f"label_{i}" for i in range(int(meta.get("num_labels", 0)))]
        classes = meta.get("label_classes") or {}
        tasks.update({str(c): tuple(classes[c]) if c in classes else None for c in columns})
    return tasks


def downstream_data(config: ml_collections.ConfigDict, data):
    """The dataset downstream tasks use: `data`, or of merged datasets the one named by
    `config.downstream.dataset` (default: the first)."""
    try:
        return data.source(config.downstream.get("dataset"))
    except ValueError as e:
        raise LimuBertError(str(e)) from None


def check_label(config: ml_collections.ConfigDict, data) -> dict[str, tuple[str, ...] | None]:
    """The dataset's tasks (`available_tasks`); one lacking `config.downstream.label` is an
    error listing the tasks it has."""
    data = downstream_data(config, data)
    tasks = available_tasks(data.info)
    if not tasks:
        raise LimuBertError(
            f"config.downstream.label: dataset {data.name} has no labels (windows without labels pretrain "
            f"only; downstream tasks need a labelled dataset)"
        )
    if config.downstream.label not in tasks:
        raise LimuBertError(
            f"config.downstream.label: dataset {data.name} has no task {config.downstream.label!r}; its tasks: "
            f"{', '.join(tasks) or 'none'}"
        )
    return tasks


def load_labelled(config: ml_collections.ConfigDict, data=None) -> LabelledData:
    """All windows of `config.dataset` (or of `data`, the `loading.load_data(config)` already
    loaded) and the labels of `config.downstream.label`; a task the dataset lacks is an error
    listing the tasks it has."""
    if data is None:
        data = loading.load_data(config)
    tasks = check_label(config, data)
    data = downstream_data(config, data)
    rows = [r for records in loading.records_in_batches(data.train.source) for r in records]
    windows = np.stack([np.asarray(r[loading.FEATURE], np.float32) for r in rows])
    labels = _task_labels(config.downstream.label, tasks, data, rows, windows.shape[1])
    return LabelledData(data.name, data.version, windows, labels, data.groups)


def _task_labels(task: str, tasks: dict, data, rows, seq: int) -> TaskLabels:
    """`task`'s labels (N, `seq`) of the records `rows` (every window of `data`, in order)."""
    if task in data.info.features:  # a ClassLabel
        per_step = np.repeat(np.array([int(r[task]) for r in rows], np.int64)[:, None], seq, axis=1)
        names = tasks[task]
    else:  # a column of the npy layout's `label`
        column = list(tasks).index(task)
        per_step = np.stack([np.asarray(r["label"])[:, column] for r in rows]).astype(np.int64)
        names = tasks[task]
        if names is None:  # unnamed integer classes: 0-based from the smallest value, named by their values
            names = tuple(str(v) for v in range(int(per_step.min()), int(per_step.max()) + 1))
            per_step = per_step - per_step.min()
    return TaskLabels(task, names, per_step)


def check_protocol(config: ml_collections.ConfigDict, data, merge: int) -> None:
    """Raises the `LimuBertError` that `protocol_split` would raise for `config.downstream`
    and `merge`-step sub-windows (a `label_rate` that selects no labelled sub-window, too few
    windows to split), from the labels alone: a downstream stage's data fails before the
    pretraining that precedes it."""
    tasks = check_label(config, data)
    data = downstream_data(config, data)
    rows = [{k: v for k, v in r.items() if k != loading.FEATURE}  # the windows' readings dropped as read
            for records in loading.records_in_batches(data.train.source) for r in records]
    _split(_task_labels(config.downstream.label, tasks, data, rows, data.seq_len), data.groups, data.name, config,
           merge)


@dataclasses.dataclass(frozen=True)
class ProtocolData:
    """The classifier protocol's splits (docs/reference.md §7) with labels that index `names`."""

    split: splits.ClassifierSplit
    names: tuple[str, ...]
    merge: int  # steps of each sub-window; split indices count sub-windows of all windows, window-major

    def labels(self, part: str) -> np.ndarray:
        return getattr(self.split, part).labels


def protocol_split(data: LabelledData, config: ml_collections.ConfigDict, merge: int | None = None) -> ProtocolData:
    """`splits.classifier_split` on the chosen task, in `merge`-step sub-windows (None:
    `resolve_merge` for a method without an encoder); class ids stay indices into the names
    (the reference's minus-the-minimum shift is undone)."""
    merge = resolve_merge(config, None, data.windows.shape[1]) if merge is None else merge
    return ProtocolData(_split(data.labels, data.groups, data.name, config, merge), data.labels.names, merge)


def _split(labels: TaskLabels, groups: np.ndarray | None, name: str,
           config: ml_collections.ConfigDict, merge: int) -> splits.ClassifierSplit:
    d = config.downstream
    per_step = labels.per_step
    try:
        split = splits.classifier_split(
            per_step[:, :, None], 0, label_rate=d.label_rate, seed=config.dataset.seed, merge=merge,
            balance=d.balance, train_rate=config.dataset.train_rate, vali_rate=config.dataset.vali_rate,
            groups=groups, missing=MISSING_LABEL,
        )
    except ValueError as e:
        raise LimuBertError(f"config.downstream ({name}, task {labels.task}): {e}") from None
    drawn = np.unique(split.train.labels)
    if len(drawn) < 2:  # a classifier of one class learns nothing, and its scores say nothing
        raise LimuBertError(
            f"config.downstream ({name}, task {labels.task}): the labelled draw holds one class only "
            f"({labels.names[int(drawn[0]) + int(per_step[per_step != MISSING_LABEL].min())]}); a classifier needs "
            f"two or more: label another task, or give a dataset with more classes (a higher label_rate draws more)")
    known = per_step[per_step != MISSING_LABEL]
    offset = int(known.min())  # labels index `names`; the split subtracted the minimum
    if offset:
        shift = lambda s: dataclasses.replace(s, labels=s.labels + offset)  # noqa: E731
        split = dataclasses.replace(split, train=shift(split.train), vali=shift(split.vali), test=shift(split.test))
    return split
