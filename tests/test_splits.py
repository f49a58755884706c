"""Data splits (docs/reference.md §5 and §7): golden UCI indices, hand-checked cases, errors."""

from __future__ import annotations

import numpy as np
import pytest

from limubert_jax.data.splits import (
    REFERENCE_SEED,
    ClassifierSplit,
    classifier_split,
    group_split,
    pretrain_split,
    subwindows,
    window_split,
)

# ---------------------------------------------------------------------------------------
# Golden: the real UCI label array (2088, 120, 2), task column 0 (activity).


@pytest.fixture(scope="module")
def uci(reference):
    golden = np.load(reference / "golden" / "splits_uci.npz")
    labels = np.load(reference / "uci_label_20_120.npy")
    return golden, labels


def test_pretrain_split_matches_golden(uci):
    golden, labels = uci
    train, vali, test = pretrain_split(labels.shape[0])
    # The golden stores original window indices (not sample * 120).
    np.testing.assert_array_equal(train, golden["pretrain_train_first_id"])
    np.testing.assert_array_equal(vali, golden["pretrain_vali_first_id"])
    assert len(train) + len(vali) + len(test) == labels.shape[0]


@pytest.mark.parametrize("rate", ["0.01", "0.1"])
def test_classifier_split_matches_golden(uci, rate):
    golden, labels = uci
    split = classifier_split(labels, 0, label_rate=float(rate))
    prefix = f"classifier_rate{rate}_"
    np.testing.assert_array_equal(split.train.ids, golden[prefix + "train_ids"])
    np.testing.assert_array_equal(split.train.labels, golden[prefix + "train_labels"])
    np.testing.assert_array_equal(split.vali.ids, golden[prefix + "vali_ids"])
    np.testing.assert_array_equal(split.test.ids, golden[prefix + "test_ids"])
    # Balanced: the same number of labelled sub-windows per class.
    _, counts = np.unique(split.train.labels, return_counts=True)
    assert len(set(counts.tolist())) == 1


def test_classifier_index_slices_data_like_ids(uci):
    _, labels = uci
    split = classifier_split(labels, 0)
    # Row `index` of the sub-window array must start at flat step `id` of the window array.
    steps = np.arange(labels.shape[0] * labels.shape[1]).reshape(labels.shape[:2])
    for part in (split.train, split.vali, split.test):
        np.testing.assert_array_equal(subwindows(steps)[part.index][:, 0], part.ids)
        np.testing.assert_array_equal(
            subwindows(labels[..., 0])[part.index][:, 0] - labels[..., 0].min(), part.labels
        )


# ---------------------------------------------------------------------------------------
# RNG equivalence and state hygiene.


def _legacy_global_shuffle(n: int, seed: int) -> np.ndarray:
    """The reference's own draw, run on the global generator and then undone."""
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        arr = np.arange(n)
        np.random.shuffle(arr)
        return arr
    finally:
        np.random.set_state(saved)


@pytest.mark.parametrize("n,seed", [(10, REFERENCE_SEED), (2088, REFERENCE_SEED), (777, 0), (50, 12345)])
def test_pretrain_split_equals_legacy_global_generator(n, seed):
    arr = _legacy_global_shuffle(n, seed)
    n_train, n_vali = int(n * 0.8), int(n * 0.1)
    train, vali, test = pretrain_split(n, seed=seed)
    np.testing.assert_array_equal(train, arr[:n_train])
    np.testing.assert_array_equal(vali, arr[n_train : n_train + n_vali])
    np.testing.assert_array_equal(test, arr[n_train + n_vali :])


def test_splits_leave_global_rng_untouched():
    saved = np.random.get_state()
    try:
        np.random.seed(99)
        before = np.random.get_state()
        pretrain_split(100)
        labels = _random_labels(np.random.RandomState(1))
        classifier_split(labels, 1, label_rate=0.5, merge=4)
        classifier_split(labels, 1, label_rate=0.5, merge=4, balance=False)
        after = np.random.get_state()
    finally:
        np.random.set_state(saved)
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2:] == after[2:]


def test_sizes_disjoint_and_deterministic():
    for n in (10, 11, 99, 1000, 2088):
        train, vali, test = pretrain_split(n)
        assert (len(train), len(vali)) == (int(n * 0.8), int(n * 0.1))
        joined = np.concatenate([train, vali, test])
        np.testing.assert_array_equal(np.sort(joined), np.arange(n))  # a partition of 0..n-1
        again = pretrain_split(n)
        for a, b in zip((train, vali, test), again):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(pretrain_split(100, seed=1)[0], pretrain_split(100, seed=2)[0])


# ---------------------------------------------------------------------------------------
# A tiny hand-made case: N = 10 windows of S = 4 steps, merge = 2 (two sub-windows each).
# pretrain_split(10) gives train [7, 0, 4, 6, 3, 9, 2, 1], vali [5], test [8].
# Task labels start at 3 so the offset by the dataset minimum is visible.

HAND_TASK = np.array(
    [
        [3, 3, 4, 4],  # 0: both constant -> classes 0, 1
        [3, 4, 4, 4],  # 1: second only   -> 1
        [5, 5, 5, 3],  # 2: first only    -> 2
        [3, 4, 5, 3],  # 3: none
        [4, 4, 4, 4],  # 4: both          -> 1, 1
        [5, 5, 3, 3],  # 5: both          -> 2, 0   (vali)
        [3, 3, 3, 3],  # 6: both          -> 0, 0
        [4, 5, 5, 5],  # 7: second only   -> 2
        [4, 3, 5, 5],  # 8: second only   -> 2     (test)
        [5, 5, 4, 4],  # 9: both          -> 2, 1
    ]
)
# Constant sub-windows in split order, worked out by hand: (index = w*2 + j, id = w*4 + 2j, label).
HAND_TRAIN = np.array(
    [
        (15, 30, 2),  # window 7
        (0, 0, 0), (1, 2, 1),  # window 0
        (8, 16, 1), (9, 18, 1),  # window 4
        (12, 24, 0), (13, 26, 0),  # window 6
        # window 3 has no constant sub-window
        (18, 36, 2), (19, 38, 1),  # window 9
        (4, 8, 2),  # window 2
        (3, 6, 1),  # window 1
    ]
)
HAND_VALI = np.array([(10, 20, 2), (11, 22, 0)])  # window 5
HAND_TEST = np.array([(17, 34, 2)])  # window 8


def _hand_labels() -> np.ndarray:
    # A second, irrelevant label column checks that label_index picks the task.
    other = np.full_like(HAND_TASK, 7)
    return np.stack([other, HAND_TASK], axis=-1).astype(np.float64)


def _rows(part) -> np.ndarray:
    return np.stack([part.index, part.ids, part.labels], axis=1)


def test_hand_case_precondition():
    train, vali, test = pretrain_split(10)
    np.testing.assert_array_equal(train, [7, 0, 4, 6, 3, 9, 2, 1])
    np.testing.assert_array_equal(vali, [5])
    np.testing.assert_array_equal(test, [8])


def test_hand_case_filtering_and_offset():
    split = classifier_split(_hand_labels(), 1, merge=2, label_rate=1.0, balance=False)
    assert isinstance(split, ClassifierSplit) and split.merge == 2
    np.testing.assert_array_equal(_rows(split.vali), HAND_VALI)
    np.testing.assert_array_equal(_rows(split.test), HAND_TEST)
    # Unbalanced, rate 1: every training sub-window, in the order of one shuffle drawn
    # from a generator re-seeded to the seed.
    order = np.arange(len(HAND_TRAIN))
    np.random.RandomState(REFERENCE_SEED).shuffle(order)
    np.testing.assert_array_equal(_rows(split.train), HAND_TRAIN[order])


def test_hand_case_unbalanced_takes_prefix_of_shuffle():
    split = classifier_split(_hand_labels(), 1, merge=2, label_rate=0.5, balance=False)
    order = np.arange(len(HAND_TRAIN))
    np.random.RandomState(REFERENCE_SEED).shuffle(order)
    np.testing.assert_array_equal(_rows(split.train), HAND_TRAIN[order[: int(11 * 0.5)]])


def test_hand_case_balance():
    # 11 training sub-windows, class counts 3 / 5 / 3.
    # rate 1.0: k = min(3, int(11 * 1.0 / 3) = 3) = 3, capped by the smallest class.
    split = classifier_split(_hand_labels(), 1, merge=2, label_rate=1.0)
    rows = _rows(split.train)
    np.testing.assert_array_equal(np.unique(rows[:, 2], return_counts=True)[1], [3, 3, 3])
    # Classes 0 and 2 are kept whole; kept rows keep training-split order.
    positions = [int(np.flatnonzero((HAND_TRAIN == r).all(axis=1))[0]) for r in rows]
    assert positions == sorted(positions)
    for c in (0, 2):
        np.testing.assert_array_equal(rows[rows[:, 2] == c], HAND_TRAIN[HAND_TRAIN[:, 2] == c])
    # rate 0.5: k = int(11 * 0.5 / 3) = 1 per class.
    small = classifier_split(_hand_labels(), 1, merge=2, label_rate=0.5)
    np.testing.assert_array_equal(np.sort(small.train.labels), [0, 1, 2])


def test_balance_draw_order():
    # Each class's ascending row list is shuffled in turn (ascending class order) by one
    # generator re-seeded to the seed; the first k of each are kept.
    split = classifier_split(_hand_labels(), 1, merge=2, label_rate=0.5)
    rng = np.random.RandomState(REFERENCE_SEED)
    kept = []
    for c in (0, 1, 2):
        rows = np.flatnonzero(HAND_TRAIN[:, 2] == c)
        rng.shuffle(rows)
        kept.append(rows[0])
    np.testing.assert_array_equal(_rows(split.train), HAND_TRAIN[np.sort(kept)])


def test_labelled_subset_shifted_by_training_minimum():
    # Reference quirk: if the training split lacks the dataset's smallest class, the
    # labelled subset's labels are shifted again by the training minimum (vali/test are not).
    task = np.full((10, 4), 5.0)
    task[5] = 2.0  # the only windows with the minimum label are vali (5) and test (8)
    task[8] = 2.0
    task[[7, 0, 4]] = 6.0
    split = classifier_split(task[..., None], 0, merge=4, label_rate=1.0)
    assert set(split.vali.labels.tolist()) == {0} and set(split.test.labels.tolist()) == {0}
    np.testing.assert_array_equal(np.unique(split.train.labels), [0, 1])  # 3 and 4, shifted by 3


# ---------------------------------------------------------------------------------------
# An independent transcription of the reference procedure on the global generator, on
# labels where filtering matters (UCI's sub-windows are all constant, so the golden file
# alone cannot show that vali and test are filtered too).


def _random_labels(rng: np.random.RandomState, n: int = 60, s: int = 12) -> np.ndarray:
    # Piecewise-constant activity with occasional changes, plus a user column.
    change = rng.rand(n, s) < 0.08
    act = (np.cumsum(change, axis=1) + rng.randint(0, 4, size=(n, 1))) % 4 + 1
    user = np.repeat(rng.randint(0, 9, size=(n, 1)), s, axis=1)
    return np.stack([user, act], axis=-1).astype(np.float64)


def _reference_like(labels, label_index, rate, seed, merge, balance):
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        n, s, _ = labels.shape
        perm = np.arange(n)
        np.random.shuffle(perm)
        lab = labels[perm][..., label_index] - labels[..., label_index].min()
        ids = perm[:, None] * s + np.arange(s)[None, :]
        a, b = int(n * 0.8), int(n * 0.1)
        parts = []
        for lo, hi in ((0, a), (a, a + b), (a + b, n)):
            sub_lab = lab[lo:hi].reshape(-1, merge)
            sub_ids = ids[lo:hi].reshape(-1, merge)[:, 0]
            ok = np.array([np.unique(r).size == 1 for r in sub_lab], dtype=bool)
            parts.append((sub_ids[ok], sub_lab[ok, 0]))
        (tr_ids, tr_lab), vali, test = parts
        np.random.seed(seed)
        if balance:
            classes = np.unique(tr_lab)
            k = min(min(np.sum(tr_lab == c) for c in classes), int(len(tr_lab) * rate / len(classes)))
            mask = np.zeros(len(tr_lab), dtype=bool)
            for c in classes:
                idx = np.argwhere(tr_lab == c).reshape(-1)
                np.random.shuffle(idx)
                mask[idx[:k]] = True
            sel = mask
        else:
            order = np.arange(len(tr_lab))
            np.random.shuffle(order)
            sel = order[: int(len(tr_lab) * rate)]
        return (tr_ids[sel], tr_lab[sel] - tr_lab.min()), vali, test
    finally:
        np.random.set_state(saved)


@pytest.mark.parametrize("balance", [True, False])
@pytest.mark.parametrize("rate,merge,seed", [(0.3, 4, REFERENCE_SEED), (1.0, 3, 7), (0.5, 6, 2024)])
def test_matches_reference_procedure_with_filtering(balance, rate, merge, seed):
    labels = _random_labels(np.random.RandomState(seed))
    expected = _reference_like(labels, 1, rate, seed, merge, balance)
    split = classifier_split(labels, 1, label_rate=rate, seed=seed, merge=merge, balance=balance)
    sub = subwindows(labels[..., 1], merge)
    assert (sub != sub[:, :1]).any(axis=1).sum() > 0  # filtering really drops something here
    for part, (ids, lab) in zip((split.train, split.vali, split.test), expected):
        np.testing.assert_array_equal(part.ids, ids)
        np.testing.assert_array_equal(part.labels, lab)


# ---------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("label_index", [-1, 2, 5])
def test_bad_label_index(label_index):
    with pytest.raises(ValueError, match="label_index"):
        classifier_split(_hand_labels(), label_index, merge=2)


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_bad_label_rate(rate):
    with pytest.raises(ValueError, match="label_rate"):
        classifier_split(_hand_labels(), 1, merge=2, label_rate=rate)


def test_label_rate_selecting_nothing():
    with pytest.raises(ValueError, match="selects no labelled"):
        classifier_split(_hand_labels(), 1, merge=2, label_rate=0.01)


@pytest.mark.parametrize("n", [0, 1, 5, 9])
def test_too_few_windows(n):
    with pytest.raises(ValueError, match="too small"):
        pretrain_split(n)
    with pytest.raises(ValueError, match="too small"):
        classifier_split(np.zeros((n, 4, 1)), 0, merge=2, label_rate=1.0)


def test_split_without_constant_subwindows():
    task = np.tile([1.0, 2.0, 1.0, 2.0], (10, 1))[..., None]
    with pytest.raises(ValueError, match="no constant-label"):
        classifier_split(task, 0, merge=2, label_rate=1.0)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="merge"):
        classifier_split(_hand_labels(), 1, merge=3)
    with pytest.raises(ValueError, match="merge"):
        subwindows(np.zeros((2, 4, 6)), 3)
    with pytest.raises(ValueError, match="shape"):
        classifier_split(HAND_TASK, 0, merge=2)
    with pytest.raises(ValueError, match="integer"):
        classifier_split(_hand_labels() + 0.5 * (np.arange(4) == 1)[None, :, None], 1, merge=2)
    with pytest.raises(ValueError, match="train_rate"):
        pretrain_split(100, train_rate=1.0)
    with pytest.raises(ValueError, match="<= 1"):
        pretrain_split(100, train_rate=0.8, vali_rate=0.3)


# ---------------------------------------------------------------------------------------
# Splits by group (config.dataset.split_by 'recording' / 'user') and missing labels.


def test_group_split_keeps_groups_whole_and_follows_the_rates():
    sizes = [30, 5, 12, 40, 8, 22, 17, 9, 25, 11, 3, 18]
    groups = np.repeat(np.arange(len(sizes)) * 7 + 100, sizes)  # arbitrary ids
    train, vali, test = group_split(groups, seed=3431, train_rate=0.6, vali_rate=0.2)
    parts = [set(groups[p]) for p in (train, vali, test)]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    np.testing.assert_array_equal(np.sort(np.concatenate([train, vali, test])), np.arange(len(groups)))
    # The rule: groups in a seeded shuffle; train while the windows before a group are < 60 %.
    order = np.unique(groups)
    shuffled = order[np.random.RandomState(3431).permutation(len(order))]
    before = np.cumsum([sizes[(g - 100) // 7] for g in shuffled]) - [sizes[(g - 100) // 7] for g in shuffled]
    assert parts[0] == set(shuffled[before < 0.6 * len(groups)])
    assert parts[1] == set(shuffled[(before >= 0.6 * len(groups)) & (before < 0.8 * len(groups))])
    # Windows follow their group's shuffled position, then their index.
    first = shuffled[0]
    np.testing.assert_array_equal(train[: sizes[(first - 100) // 7]], np.flatnonzero(groups == first))
    # Deterministic, and window_split dispatches on groups.
    for a, b in zip(window_split(len(groups), 3431, 0.6, 0.2, groups), (train, vali, test)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(window_split(len(groups), 3431, 0.8, 0.1), pretrain_split(len(groups))):
        np.testing.assert_array_equal(a, b)


def test_group_split_gives_every_split_a_group():
    # One huge group first would take all of train; the others still reach vali and test.
    groups = np.repeat([0, 1, 2], [100, 1, 1])
    train, vali, test = group_split(groups, seed=0)
    assert len(train) and len(vali) and len(test)
    with pytest.raises(ValueError, match=r"at least 3 groups \(train, validation, test\); the data has 2"):
        group_split(np.array([0, 0, 1]))
    assert all(len(p) for p in group_split(np.array([0, 1]), train_rate=0.5, vali_rate=0.5)[:2])
    with pytest.raises(ValueError, match="3 group ids for 4 windows"):
        window_split(4, groups=np.zeros(3))


def test_classifier_split_by_group_and_missing_labels():
    n, s = 60, 40
    rng = np.random.RandomState(1)
    labels = np.repeat(rng.randint(0, 3, (n, 1, 1)), s, axis=1)
    labels[5, :, 0] = -1  # a window without a label
    labels[7, 25:, 0] = -1  # half a window without
    groups = np.arange(n) // 6  # 10 groups of 6 windows
    split = classifier_split(labels, 0, label_rate=1.0, merge=20, groups=groups, missing=-1, balance=False)
    train_w, vali_w, test_w = group_split(groups)
    for part, windows in ((split.train, train_w), (split.vali, vali_w), (split.test, test_w)):
        assert set(part.index // 2) <= set(windows)  # sub-windows of the group split's windows
        assert (part.labels >= 0).all()
    kept = np.concatenate([split.train.index, split.vali.index, split.test.index])
    assert 10 not in kept and 11 not in kept and 14 in kept and 15 not in kept  # window 5 gone, 7 keeps [0, 20)
    assert len(kept) == 2 * n - 3
    with pytest.raises(ValueError, match="no window has a label"):
        classifier_split(np.full((n, s, 1), -1), 0, missing=-1)
