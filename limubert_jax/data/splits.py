"""Data splits of the reference (docs/reference.md §5 and §7), reproduced index for index.

NumPy only. The reference draws every split from NumPy's legacy *global* generator
(`np.random.seed(seed)` followed by `np.random.shuffle`). A fresh
`np.random.RandomState(seed)` runs the same Mersenne Twister from the same state, so the
functions here draw identical permutations without reading or changing the global state.

Pinned-down semantics of the classifier protocol (checked against
the original code's split indices on UCI, `tests/reference/golden/splits_uci.npz`, and its
`prepare_classifier_dataset`):

* Windows are split once, 80/10/10 as in `pretrain_split`; the windows are then cut into
  `S // merge` sub-windows and **all three** splits keep only constant-label sub-windows.
* The generator is re-seeded to `seed` after the window shuffle; the labelled draw is the
  only draw from the re-seeded generator.
* `n_train` is the number of training **sub-windows after filtering**; the number of
  classes is the number of distinct labels among them.
* Quirk kept for exactness: the labelled subset's labels are additionally shifted by the
  minimum training label (the reference subtracts `min(labels)` a second time there). This
  is a no-op unless the training split lacks the dataset's smallest class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REFERENCE_SEED = 3431
TRAIN_RATE = 0.8
VALI_RATE = 0.1
MERGE = 20


def _split_sizes(num_windows: int, train_rate: float, vali_rate: float) -> tuple[int, int]:
    # Same float expressions as the reference, so rounding at the boundaries agrees.
    return int(num_windows * train_rate), int(num_windows * vali_rate)


def _check_rates(train_rate: float, vali_rate: float) -> None:
    if not 0.0 < train_rate < 1.0:
        raise ValueError(f"train_rate must be in (0, 1), got {train_rate}")
    if not 0.0 < vali_rate < 1.0:
        raise ValueError(f"vali_rate must be in (0, 1), got {vali_rate}")
    if train_rate + vali_rate > 1.0:
        raise ValueError(f"train_rate + vali_rate must be <= 1, got {train_rate} + {vali_rate}")


def labelled_rows(labels: np.ndarray, rng: np.random.RandomState, *, label_rate: float, balance: bool,
                  per_class: int | None = None) -> np.ndarray:
    """Rows of the labelled subset of training sub-windows of classes `labels` (n,), in their
    order, drawn as the reference draws them from `rng`: balanced (or `per_class`), k rows per
    class, each class's rows shuffled in class order and the first k kept, k = `per_class` or
    min(smallest class count, int(n x label_rate / classes)); unbalanced, the first
    int(n x label_rate) rows of one shuffle. May be empty (the caller says why)."""
    n = len(labels)
    if balance or per_class is not None:
        classes, counts = np.unique(labels, return_counts=True)
        k = per_class if per_class is not None else min(int(counts.min()), int(n * label_rate / len(classes)))
        keep = np.zeros(n, dtype=bool)
        for c in classes:
            rows = np.flatnonzero(labels == c)
            rng.shuffle(rows)
            keep[rows[:k]] = True
        return np.flatnonzero(keep)
    order = np.arange(n)
    rng.shuffle(order)
    return order[: int(n * label_rate)]


def pretrain_split(
    num_windows: int,
    seed: int = REFERENCE_SEED,
    train_rate: float = TRAIN_RATE,
    vali_rate: float = VALI_RATE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffles window indices and cuts them into train / validation / test.

    Equivalent to the reference's `np.random.seed(seed); arr = np.arange(N);
    np.random.shuffle(arr)` followed by `arr[:int(N*train_rate)]`,
    `arr[int(N*train_rate):int(N*train_rate)+int(N*vali_rate)]` and the rest, but leaves
    NumPy's global generator untouched.

    Returns three int64 arrays of original window indices, in split order, with sizes
    (int(N*train_rate),), (int(N*vali_rate),) and the remainder (which may be empty).
    Raises ValueError when a rate is out of range or N is too small to give a non-empty
    training and validation split.
    """
    num_windows = int(num_windows)
    _check_rates(train_rate, vali_rate)
    n_train, n_vali = _split_sizes(num_windows, train_rate, vali_rate)
    if n_train < 1 or n_vali < 1:
        raise ValueError(
            f"num_windows={num_windows} is too small: train {n_train}, vali {n_vali} windows"
        )
    order = np.arange(num_windows)
    np.random.RandomState(seed).shuffle(order)
    return order[:n_train], order[n_train : n_train + n_vali], order[n_train + n_vali :]


def group_split(
    groups: np.ndarray,
    seed: int = REFERENCE_SEED,
    train_rate: float = TRAIN_RATE,
    vali_rate: float = VALI_RATE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test window indices with every group (recording, user) in one split.

    groups: (N,) one id per window. The distinct ids are shuffled by a `RandomState(seed)`
    and taken in that order: a group goes to train while the windows before it number less
    than N * train_rate, then to validation while less than N * (train_rate + vali_rate),
    then to test; train and validation get at least one group each, and test one when the
    rates leave room for it. Windows keep their group's order, then their own. Raises
    ValueError for too few groups.
    """
    groups = np.asarray(groups)
    _check_rates(train_rate, vali_rate)
    if groups.ndim != 1:
        raise ValueError(f"groups must have shape (N,), got {groups.shape}")
    order, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    num_groups, needed = len(order), 2 if train_rate + vali_rate >= 1.0 else 3
    if num_groups < needed:
        raise ValueError(f"a split by group needs at least {needed} groups (train, validation"
                         f"{', test' if needed == 3 else ''}); the data has {num_groups}")
    shuffled = np.arange(num_groups)
    np.random.RandomState(seed).shuffle(shuffled)
    starts = np.cumsum(counts[shuffled]) - counts[shuffled]  # windows before each group, in shuffled order
    n = len(groups)
    k_train = int(np.clip(np.count_nonzero(starts < n * train_rate), 1, num_groups - needed + 1))
    k_vali = int(np.clip(np.count_nonzero(starts < n * (train_rate + vali_rate)) - k_train, 1,
                         num_groups - k_train - (needed - 2)))
    rank = np.empty(num_groups, np.int64)
    rank[shuffled] = np.arange(num_groups)  # position of each group in the shuffled order
    window_rank = rank[inverse]
    ordered = np.argsort(window_rank, kind="stable")  # by group position, then window index
    ranks = window_rank[ordered]
    return (ordered[ranks < k_train], ordered[(ranks >= k_train) & (ranks < k_train + k_vali)],
            ordered[ranks >= k_train + k_vali])


def window_split(
    num_windows: int,
    seed: int = REFERENCE_SEED,
    train_rate: float = TRAIN_RATE,
    vali_rate: float = VALI_RATE,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`pretrain_split` (the reference's window shuffle), or `group_split` when `groups` is given."""
    if groups is None:
        return pretrain_split(num_windows, seed, train_rate, vali_rate)
    if len(groups) != num_windows:
        raise ValueError(f"{len(groups)} group ids for {num_windows} windows")
    return group_split(groups, seed, train_rate, vali_rate)


@dataclass(frozen=True)
class SubwindowSplit:
    """One split of the classifier protocol (all arrays have the same length M).

    index:  (M,) int64, rows of `subwindows(x, merge)` (i.e. `sample * (S // merge) + j`).
    ids:    (M,) int64, reference ids `sample * S + j * merge` of each sub-window's first step.
    labels: (M,) int64, class labels (task label minus the dataset's minimum label).
    """

    index: np.ndarray
    ids: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.index.shape[0])


@dataclass(frozen=True)
class ClassifierSplit:
    """Labelled training subset, validation and test splits of the classifier protocol."""

    train: SubwindowSplit
    vali: SubwindowSplit
    test: SubwindowSplit
    merge: int


def subwindows(x: np.ndarray, merge: int = MERGE) -> np.ndarray:
    """Re-cuts windows (N, S, ...) into sub-windows (N * S // merge, merge, ...).

    Sub-window `sample * (S // merge) + j` covers steps `j*merge : (j+1)*merge` of window
    `sample`; `SubwindowSplit.index` indexes this array.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"expected (N, S, ...) windows, got shape {x.shape}")
    if merge < 1 or x.shape[1] % merge:
        raise ValueError(f"merge={merge} must be >= 1 and divide the window length {x.shape[1]}")
    return x.reshape(x.shape[0] * (x.shape[1] // merge), merge, *x.shape[2:])


def _to_class_labels(values: np.ndarray) -> np.ndarray:
    rounded = np.rint(values)
    if not np.array_equal(rounded, values):
        raise ValueError("task labels must be integer-valued")
    return rounded.astype(np.int64)


def constant_subwindows(
    windows: np.ndarray, task: np.ndarray, merge: int
) -> SubwindowSplit:
    """The `merge`-step sub-windows of `windows` (original indices, in split order) whose
    label in `task` (N, S) is the same known class (>= 0) at each of their steps, in split
    order and then step order, as the reference cuts them."""
    per_window = task.shape[1] // merge
    cut = task[windows].reshape(len(windows), per_window, merge)
    constant = np.all(cut == cut[..., :1], axis=-1) & (cut[..., 0] >= 0)  # negative: no label (see classifier_split)
    sample, j = np.nonzero(constant)  # row-major: split order, then step order, as the reference
    sample = windows[sample]
    return SubwindowSplit(
        index=(sample * per_window + j).astype(np.int64),
        ids=(sample * task.shape[1] + j * merge).astype(np.int64),
        labels=task[sample, j * merge],
    )


def _take(split: SubwindowSplit, rows: np.ndarray, label_shift: int) -> SubwindowSplit:
    return SubwindowSplit(split.index[rows], split.ids[rows], split.labels[rows] - label_shift)


def classifier_split(
    labels: np.ndarray,
    label_index: int,
    *,
    label_rate: float = 0.01,
    seed: int = REFERENCE_SEED,
    merge: int = MERGE,
    balance: bool = True,
    train_rate: float = TRAIN_RATE,
    vali_rate: float = VALI_RATE,
    groups: np.ndarray | None = None,
    missing: int | None = None,
) -> ClassifierSplit:
    """The classifier data protocol of docs/reference.md §7 (the reference's
    `prepare_classifier_dataset` with `merge_mode='all'`).

    labels: (N, S, L) label array; column `label_index` is the task.
    Windows are split as in `pretrain_split` (same seed), each split is cut into
    `S // merge` sub-windows of `merge` steps and only constant-label sub-windows are kept;
    the labelled training subset is then drawn from the training sub-windows by a generator
    re-seeded to `seed`:

    * balance=True: k = min(smallest class count, int(n_train * label_rate / n_classes))
      per class; each class's ascending row list is shuffled in ascending class order and
      its first k rows kept; the kept rows stay in training-split order.
    * balance=False: the first int(n_train * label_rate) rows of one shuffle, in shuffled order.

    groups: (N,) split groups (`group_split`: no recording or user in two splits); None: the
    reference's window shuffle. missing: a label value meaning "no label" (below every class);
    sub-windows holding it are dropped like those whose label changes.

    Returns a ClassifierSplit; slice sub-window data with `subwindows(x, merge)[split.index]`
    (or embeddings (N, S, H) the same way). Raises ValueError for a bad `label_index`,
    `label_rate` outside (0, 1], a `merge` that does not divide S, non-integer labels, or data
    too small to give a non-empty labelled subset, validation and test split.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must have shape (N, S, L), got {labels.shape}")
    num_windows, seq_len, num_tasks = labels.shape
    if not 0 <= label_index < num_tasks:
        raise ValueError(f"label_index={label_index} out of range for {num_tasks} label columns")
    if not 0.0 < label_rate <= 1.0:
        raise ValueError(f"label_rate must be in (0, 1], got {label_rate}")
    if merge < 1 or seq_len % merge:
        raise ValueError(f"merge={merge} must be >= 1 and divide the window length {seq_len}")

    train_w, vali_w, test_w = window_split(num_windows, seed, train_rate, vali_rate, groups)
    task = labels[..., label_index]
    known = task if missing is None else task[task != missing]
    if known.size == 0:
        raise ValueError("no window has a label for this task")
    if missing is not None and missing >= known.min():
        raise ValueError(f"the missing-label value {missing} must be below every label")
    # The offset uses the whole dataset, not one split, so classes line up across splits;
    # missing labels fall below 0 and their sub-windows are dropped.
    task = _to_class_labels(task - known.min())
    train, vali, test = (constant_subwindows(w, task, merge) for w in (train_w, vali_w, test_w))
    for name, split in (("train", train), ("vali", vali), ("test", test)):
        if len(split) == 0:
            raise ValueError(f"no constant-label sub-windows in the {name} split; too few windows")

    # the reference re-seeds before the labelled draw
    rows = labelled_rows(train.labels, np.random.RandomState(seed), label_rate=label_rate, balance=balance)
    if rows.size == 0:
        raise ValueError(
            f"label_rate={label_rate} selects no labelled sub-windows out of {len(train)}"
        )
    labelled = _take(train, rows, int(train.labels.min()))
    return ClassifierSplit(train=labelled, vali=vali, test=test, merge=merge)
