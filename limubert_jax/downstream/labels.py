"""Labelled data for the downstream protocol (docs/reference.md §7): every window with one task's labels,
chosen by task name (`activity`, `user`, `position`, ...), never by column index, and the
protocol's split (80/10/10 windows, `merge`-step sub-windows, a balanced labelled subset).

Beyond the reference's one split and one draw (`protocol_draws`): repeated labelled draws
(`config.downstream.seeds`), a number of labels per class (`labels_per_class`), splits by
another group than pretraining's (`config.downstream.split_by`, e.g. `device`) and a grouped
K-fold (`config.downstream.folds`: every group is tested once; K = number of groups leaves
one subject out)."""

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
    return LabelledData(data.name, data.version, windows, labels, _groups(config, data, tasks, rows, windows.shape[1]))


def split_by(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(the group the downstream protocol splits by, the config field that says so):
    `config.downstream.split_by` where set, else pretraining's `config.dataset.split_by`."""
    if config.downstream.get("split_by"):
        return str(config.downstream.split_by), "config.downstream.split_by"
    return str(config.dataset.get("split_by", "window")), "config.dataset.split_by"


def _groups(config: ml_collections.ConfigDict, data, tasks: dict, rows, seq: int) -> np.ndarray | None:
    """One split-group id per window (N,) for the downstream protocol (`split_by`; None: by
    window): pretraining's groups when the protocol splits as pretraining does, else read
    from the records `rows` (every window of `data`, in order)."""
    by, field = split_by(config)
    if by == getattr(data, "split_by", "window"):
        return data.groups
    if by not in loading.SPLIT_BY:
        raise LimuBertError(f"{field} must be one of {', '.join(loading.SPLIT_BY)}; got {by!r}")
    if by == "window":
        return None
    what = f"{data.name}/{data.version}"
    if by == "recording":
        try:
            return loading.split_groups(data.train.source, data.info, "recording", what)
        except ValueError as e:
            raise LimuBertError(f"{field}='recording': {str(e).partition(': ')[2]}") from None
    task = loading.GROUP_LABELS[by]
    if task not in tasks:
        has = [g for g, t in loading.GROUP_LABELS.items() if t in tasks]
        raise LimuBertError(f"{field}={by!r}: {what} has no {by} labels (a {task!r} task; HHAR has one); split by "
                            f"{' or '.join(['window', *has])}")
    groups = _task_labels(task, tasks, data, rows, seq).per_step[:, 0]
    if (groups < 0).any():
        raise LimuBertError(f"{field}={by!r}: {np.count_nonzero(groups < 0)} windows of {what} have no {task} label")
    return groups


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


def check_protocol(config: ml_collections.ConfigDict, data, merge: int,
                   points: list[ml_collections.ConfigDict] | None = None) -> None:
    """Raises the `LimuBertError` that `protocol_draws` would raise for `config.downstream`
    (or for each config of `points`: the label rates of a curve) and `merge`-step
    sub-windows (a `label_rate` that selects no labelled sub-window, too few windows to split,
    a fold without test sub-windows, more labels per class than a class has), from the labels
    alone: a downstream stage's data fails before the pretraining that precedes it."""
    tasks = check_label(config, data)
    data = downstream_data(config, data)
    rows = [{k: v for k, v in r.items() if k != loading.FEATURE}  # the windows' readings dropped as read
            for records in loading.records_in_batches(data.train.source) for r in records]
    labels = _task_labels(config.downstream.label, tasks, data, rows, data.seq_len)
    groups = _groups(config, data, tasks, rows, data.seq_len)
    for point in points or [config]:
        _protocol_draws(labels, groups, data.name, point, merge)


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


def protocol_draws(data: LabelledData, config: ml_collections.ConfigDict, merge: int) -> list[list[ProtocolData]]:
    """Every labelled draw of the protocol, [fold][seed]: `config.downstream.folds` folds
    (1: the protocol's one split) times `config.downstream.seeds` labelled draws, each at
    `label_rate` or, where `labels_per_class` holds one number, that many per class. One
    fold and one seed at a label rate is `protocol_split` (the reference's draw, exactly);
    otherwise draw s of a fold is the same balanced (or unbalanced) draw from that fold's
    training sub-windows with the seed `config.dataset.seed + s`, so that draw 0 of one split
    is the reference's draw and draw s is the same labelled set for every method."""
    return _protocol_draws(data.labels, data.groups, data.name, config, merge)


def labels_per_class(config: ml_collections.ConfigDict) -> int | None:
    """The number of labels per class of one evaluation (`config.downstream.labels_per_class`
    holding one number), or None: the labelled draw is by `label_rate`."""
    values = parse_list(config, "labels_per_class", int)
    if len(values) > 1:
        raise LimuBertError(f"config.downstream.labels_per_class={config.downstream.labels_per_class!r}: one number "
                            "here (a curve over several numbers is the report task's)")
    return values[0] if values else None


def parse_list(config: ml_collections.ConfigDict, field: str, kind: type) -> list:
    """`config.downstream.<field>`, a comma-separated list ('0.01,0.1'; '' or None: empty;
    a list or tuple as is), as values of `kind`; a value that is not one is a one-line
    `LimuBertError` naming the field."""
    value = config.downstream.get(field)
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, (list, tuple)) else [v.strip() for v in str(value).split(",")]
    try:
        return [kind(v) if kind is float else _integer(v) for v in items]
    except (TypeError, ValueError):
        what = "numbers" if kind is float else "whole numbers"
        raise LimuBertError(f"config.downstream.{field}={value!r}: give comma-separated {what}, e.g. "
                            f"{'0.01,0.1' if kind is float else '1,5,10'}") from None


def _integer(value) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(str(value)) if isinstance(value, str) else int(value)


def _protocol_draws(labels: TaskLabels, groups: np.ndarray | None, name: str, config: ml_collections.ConfigDict,
                    merge: int) -> list[list[ProtocolData]]:
    d = config.downstream
    seeds, folds = int(d.get("seeds") or 1), int(d.get("folds") or 1)
    per_class = labels_per_class(config)
    if seeds == 1 and folds == 1 and per_class is None:  # the reference's split and draw
        return [[ProtocolData(_split(labels, groups, name, config, merge), labels.names, merge)]]
    where = f"config.downstream ({name}, task {labels.task})"
    per_step = labels.per_step
    seq = per_step.shape[1]
    if seq % merge:
        raise LimuBertError(f"{where}: merge={merge} must divide the window length {seq}")
    draws = []
    fold_parts = _fold_windows(len(per_step), groups, config, folds)
    for fold, parts in enumerate(fold_parts):
        of_fold = f" of fold {fold + 1} of {len(fold_parts)}" if len(fold_parts) > 1 else ""
        train, vali, test = (splits.constant_subwindows(w, per_step, merge) for w in parts)
        for part, split in (("train", train), ("vali", vali), ("test", test)):
            if len(split) == 0:
                raise LimuBertError(f"{where}: no constant-label sub-windows in the {part} split{of_fold}; too few "
                                    f"windows")
        fold_draws = []
        for seed in range(seeds):
            rows = _draw(train.labels, config.dataset.seed + seed, rate=d.label_rate, per_class=per_class,
                         balance=d.balance, where=where + of_fold)
            drawn = np.unique(train.labels[rows])
            if len(drawn) < 2:
                raise LimuBertError(f"{where}: the labelled draw{of_fold} holds one class only "
                                    f"({labels.names[int(drawn[0])]}); a classifier needs two or more")
            labelled = splits.SubwindowSplit(train.index[rows], train.ids[rows], train.labels[rows])
            split = splits.ClassifierSplit(train=labelled, vali=vali, test=test, merge=merge)
            fold_draws.append(ProtocolData(split, labels.names, merge))
        draws.append(fold_draws)
    return draws


def number_of_folds(config: ml_collections.ConfigDict, groups: np.ndarray | None) -> int:
    """`config.downstream.folds`, -1 resolved to the number of groups (leave one group out)."""
    folds = int(config.downstream.get("folds") or 1)
    return len(np.unique(groups)) if folds == -1 and groups is not None else folds


def _fold_windows(num_windows: int, groups: np.ndarray | None, config: ml_collections.ConfigDict,
                  folds: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(train, validation, test) window indices of each fold. One fold: the protocol's split
    (`splits.window_split`). K folds (grouped K-fold): the groups, shuffled with
    `config.dataset.seed`, go largest first to the fold holding the fewest windows so far (a
    fold per group when K is the number of groups); fold k tests its groups and splits the
    others into training and validation groups in the ratio train_rate : vali_rate
    (`splits.group_split`, seeded `config.dataset.seed + k`), so that no group is in two
    parts of a fold."""
    ds = config.dataset
    if folds == 1:
        try:
            return [splits.window_split(num_windows, ds.seed, ds.train_rate, ds.vali_rate, groups)]
        except ValueError as e:
            raise LimuBertError(f"config.downstream: {e}") from None
    by, field = split_by(config)
    if groups is None:
        raise LimuBertError(f"config.downstream.folds={config.downstream.folds}: a grouped K-fold needs split groups; "
                            f"{field}={by!r} has none: split by user (or recording, or device where the dataset has "
                            "device labels)")
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    folds = len(ids) if folds == -1 else folds
    if not 2 <= folds <= len(ids):
        raise LimuBertError(f"config.downstream.folds={config.downstream.folds}: the data has {len(ids)} {by} groups, "
                            f"so 2 to {len(ids)} folds (-1: one per group, leaving one {by} out)")
    shuffled = np.arange(len(ids))
    np.random.RandomState(ds.seed).shuffle(shuffled)
    fold_of, sizes = np.empty(len(ids), np.int64), np.zeros(folds, np.int64)
    for g in shuffled[np.argsort(-counts[shuffled], kind="stable")]:  # largest first, ties in shuffled order
        fold_of[g] = int(np.argmin(sizes))
        sizes[fold_of[g]] += counts[g]
    left = len(ids) - np.bincount(fold_of, minlength=folds)  # groups outside each fold
    if left.min() < 2:
        raise LimuBertError(f"config.downstream.folds={config.downstream.folds}: fold {int(np.argmin(left)) + 1} "
                            f"leaves {int(left.min())} {by} group for training and validation, which need one each; "
                            "use fewer folds")
    window_fold = fold_of[inverse]
    train_share = ds.train_rate / (ds.train_rate + ds.vali_rate)
    vali_share = 1.0 - train_share
    if train_share + vali_share > 1.0:  # rounding: group_split wants the two to sum to 1 at most
        vali_share = np.nextafter(vali_share, 0.0)
    parts = []
    for k in range(folds):
        rest = np.flatnonzero(window_fold != k)
        # Each fold its own validation groups (a seed per fold), not the same few every time.
        train, vali, _ = splits.group_split(groups[rest], ds.seed + k, train_share, vali_share)
        parts.append((rest[train], rest[vali], np.flatnonzero(window_fold == k)))
    return parts


def _draw(labels: np.ndarray, seed: int, *, rate: float, per_class: int | None, balance: bool,
          where: str) -> np.ndarray:
    """Rows of the labelled subset of training sub-windows with classes `labels` (n,), drawn as
    the reference draws them (`splits.labelled_rows`, docs/reference.md §7) from a
    `RandomState(seed)`; a draw that cannot be made is a `LimuBertError` naming `where`."""
    if per_class is not None:
        smallest = int(np.unique(labels, return_counts=True)[1].min())
        if per_class > smallest:
            raise LimuBertError(f"{where}: labels_per_class={per_class} exceeds the {smallest} training "
                                f"sub-windows of its smallest class")
    n = len(labels)
    rows = splits.labelled_rows(labels, np.random.RandomState(seed), label_rate=rate, balance=balance,
                                per_class=per_class)
    if rows.size == 0:
        raise LimuBertError(f"{where}: label_rate={rate} selects no labelled sub-windows out of {n}")
    return rows


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
