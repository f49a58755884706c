"""Span masking (docs/reference.md §4): validity, exact distribution, golden statistics, corruption."""

from __future__ import annotations

import functools
import itertools
from collections import Counter, defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from limubert_jax.data.masking import mask_windows, num_masked, span_mask_positions

SEQ_LEN = 120
GOAL = 18  # max(1, round(120 * 0.15))
DRAWS = 20_000  # as many as the golden file holds, so both samples weigh the same
# Statistical tolerance: p > 1e-3 for every comparison. Draws come from fixed keys, so a run
# always gives the same verdict; the level bounds the chance that a correct sampler fails
# after a change of random stream. Position counts are correlated within a window (spans),
# which makes their chi-square somewhat anticonservative: over 300 keys of 20,000 draws
# against the golden file, 2 gave p < 1e-3 for position counts and none for run lengths.
P_MIN = 1e-3
RUN_POOL = 14  # run lengths >= 14 share one bin (golden: 63 runs of 14, fewer than 40 beyond)


def chosen_matrix(positions: np.ndarray, seq_len: int) -> np.ndarray:
    """bool [draws, seq_len] membership of int [draws, M] positions."""
    chosen = np.zeros((positions.shape[0], seq_len), bool)
    np.put_along_axis(chosen, positions, True, axis=1)
    return chosen


def run_length_hist(chosen: np.ndarray) -> np.ndarray:
    """Histogram (index = length) of the contiguous runs of chosen positions, as in the golden file."""
    edges = np.diff(np.pad(chosen.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    lengths = np.nonzero(edges == -1)[1] - np.nonzero(edges == 1)[1]  # row-major: starts/ends pair up
    return np.bincount(lengths, minlength=chosen.shape[1] + 1)


def homogeneity_p(ours: np.ndarray, golden: np.ndarray) -> float:
    """Chi-square homogeneity p-value of two count vectors; bins empty in both are dropped."""
    keep = (ours + golden) > 0
    return float(stats.chi2_contingency(np.stack([ours[keep], golden[keep]]))[1])


def golden_p_values(positions: np.ndarray, golden) -> tuple[float, float]:
    """(position counts p, run-length histogram p) of JAX draws against the golden draws."""
    chosen = chosen_matrix(positions, SEQ_LEN)
    runs, golden_runs = run_length_hist(chosen), golden["run_length_hist"]

    def pool(hist):
        return np.concatenate([hist[1:RUN_POOL], [hist[RUN_POOL:].sum()]])

    return homogeneity_p(chosen.sum(0), golden["position_counts"]), homogeneity_p(pool(runs), pool(golden_runs))


@functools.lru_cache(maxsize=None)
def sample(seed: int, batch: int = DRAWS, seq_len: int = SEQ_LEN, **kwargs) -> np.ndarray:
    """span_mask_positions as NumPy, cached: tests share draws and compiled configurations."""
    positions = np.asarray(span_mask_positions(jax.random.key(seed), batch, seq_len, **kwargs))
    positions.flags.writeable = False
    return positions


@pytest.fixture(scope="module")
def golden(reference):
    return np.load(reference / "golden" / "span_mask_stats.npz")


# ----------------------------------------------------------------------------- validity


def test_num_masked():
    assert num_masked(120) == GOAL
    assert num_masked(120, 0.0) == 1  # at least one position to predict
    assert num_masked(5, 0.1) == 1  # round(0.5) == 0 (ties to even), then the floor of 1
    assert num_masked(25, 0.1) == 2  # round(2.5) == 2, as Python rounds in the reference


# Negative controls for the statistical tests below: plausible mistakes in the sampler.
WRONG_SAMPLERS = {
    "no-last-position-quirk": dict(exclude_last=False),
    "uniform-span-lengths": dict(p=1e-9),  # (1 - p)^(n-1) ~ 1: every n in 1..10 equally likely
    "p-0.25": dict(p=0.25),
}
CONFIGS = {
    "default": {},
    "p-1": dict(p=1.0),  # every span has length 1
    "max-gram-500": dict(max_gram=500),  # spans longer than the window
} | WRONG_SAMPLERS


@pytest.mark.parametrize("kwargs", CONFIGS.values(), ids=CONFIGS.keys())
def test_rows_hold_goal_distinct_positions_in_range(kwargs):
    positions = sample(0, **kwargs)
    assert positions.shape == (DRAWS, GOAL) and positions.dtype == np.int32
    assert (np.diff(positions, axis=1) > 0).all()  # strictly ascending: distinct and sorted
    assert positions.min() == 0
    last_chosen = (positions == SEQ_LEN - 1).sum()
    if kwargs.get("exclude_last", True):
        assert last_chosen == 0  # the reference's quirk: the last position is never masked ...
        assert (positions == SEQ_LEN - 2).any()  # ... but the one before it is
    else:
        # Without the quirk each window holds the last position with probability ~0.15.
        assert 0.1 * DRAWS < last_chosen < 0.2 * DRAWS


def test_deterministic_for_a_key_and_different_across_keys():
    np.testing.assert_array_equal(sample(0), span_mask_positions(jax.random.key(0), DRAWS, SEQ_LEN))
    assert (sample(0) != sample(1)).any(axis=1).mean() > 0.99
    # A legacy uint32 key holds the same threefry key data, hence the same draws.
    np.testing.assert_array_equal(span_mask_positions(jax.random.PRNGKey(0), DRAWS, SEQ_LEN), sample(0))


def test_jits_inside_a_train_step():
    traces = []

    @jax.jit
    def step(key, x, mask_prob):
        traces.append(mask_prob)
        key_positions, key_mask = jax.random.split(key)
        positions = span_mask_positions(key_positions, x.shape[0], x.shape[1])
        return positions, *mask_windows(key_mask, x, positions, mask_prob=mask_prob)

    x = jnp.ones((4, SEQ_LEN, 6))
    for mask_prob in (1.0, 0.0):  # traced: one compilation for both
        positions, masked, targets = map(np.asarray, step(jax.random.key(0), x, mask_prob))
        assert positions.shape == (4, GOAL) and (np.diff(positions, axis=1) > 0).all()
        assert masked.shape == (4, SEQ_LEN, 6) and (targets == 1).all()
        at = np.take_along_axis(masked, positions[:, :, None], axis=1)
        assert (at == (1 - mask_prob)).all()
    assert len(traces) == 1


@pytest.mark.parametrize(
    ("seq_len", "mask_ratio", "exclude_last"),
    [(10, 1.0, False), (SEQ_LEN, 119 / 120, True)],
)
def test_every_selectable_position_when_the_goal_is_all_of_them(seq_len, mask_ratio, exclude_last):
    # The edge of reachability: all selectable positions, every time, and the sampler ends.
    positions = span_mask_positions(jax.random.key(0), 16, seq_len, mask_ratio=mask_ratio, exclude_last=exclude_last)
    selectable = seq_len - 1 if exclude_last else seq_len
    np.testing.assert_array_equal(positions, np.tile(np.arange(selectable), (16, 1)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(seq_len=1), "cannot choose 1 distinct positions"),  # position 0 is the last one
        (dict(mask_ratio=1.0), "cannot choose 120 distinct positions"),  # 119 selectable
        (dict(mask_ratio=1.5, exclude_last=False), "mask_ratio"),
        (dict(mask_ratio=-0.1), "mask_ratio"),
        (dict(mask_ratio=float("nan")), "mask_ratio"),
        (dict(p=0.0), "p must be"),
        (dict(p=1.5), "p must be"),
        (dict(max_gram=0), "max_gram"),
        (dict(max_gram=2.5), "max_gram"),
        (dict(batch_size=0), "batch_size"),
        (dict(seq_len=0), "seq_len"),
        (dict(seq_len=12.0), "seq_len"),
        (dict(exclude_last="yes"), "exclude_last"),
    ],
)
def test_impossible_arguments_raise(kwargs, message):
    args = dict(batch_size=4, seq_len=SEQ_LEN) | kwargs
    with pytest.raises(ValueError, match=message):
        span_mask_positions(jax.random.key(0), **args)


# ----------------------------------------------------------------------------- distribution


def reference_set_distribution(seq_len: int, goal: int, max_gram: int, p: float, exclude_last: bool) -> dict:
    """Exact probability of each final position set under the reference loop, as written.

    Every iteration draws n and an anchor; an iteration that leaves the set unchanged (a
    redrawn anchor, or an empty span) is simply repeated, so the next distinct set has the
    probabilities of the changing outcomes, renormalized.
    """
    pvals = p * (1 - p) ** np.arange(max_gram)
    pvals = pvals / pvals.sum()
    end_cut = seq_len - 1 if exclude_last else seq_len
    by_size = defaultdict(lambda: defaultdict(float))
    by_size[0][frozenset()] = 1.0
    for size in range(goal):
        for state, prob in by_size[size].items():
            moves, stay = defaultdict(float), 0.0
            for n, anchor in itertools.product(range(1, max_gram + 1), range(seq_len)):
                weight = pvals[n - 1] / seq_len
                n = min(n, goal - size)
                new = state | frozenset(range(anchor, min(anchor + n, end_cut)))
                if anchor in state or new == state:
                    stay += weight
                else:
                    moves[new] += weight
            for new, weight in moves.items():
                by_size[len(new)][new] += prob * weight / (1.0 - stay)
    return dict(by_size[goal])


def goodness_of_fit_p(positions: np.ndarray, exact: dict) -> float:
    """Chi-square goodness-of-fit p of drawn sets against exact set probabilities.

    A set outside the support gives p = 0. Sets expected fewer than 5 times share one bin.
    """
    counts = Counter(frozenset(row.tolist()) for row in positions)
    if set(counts) - set(exact):
        return 0.0
    outcomes = list(exact)
    observed = np.array([counts[s] for s in outcomes], float)
    expected = np.array([exact[s] for s in outcomes]) * len(positions)
    rare = expected < 5
    if rare.any():
        observed = np.append(observed[~rare], observed[rare].sum())
        expected = np.append(expected[~rare], expected[rare].sum())
    return float(stats.chisquare(observed, expected).pvalue)


SMALL = dict(seq_len=10, goal=4, max_gram=3, p=0.3)  # 126 possible sets, all well populated


@pytest.mark.parametrize("exclude_last", [True, False])
def test_exact_set_distribution_on_a_short_window(exclude_last):
    # Independent of the golden file: the full joint law of the positions (not only marginals)
    # against the reference loop's exact law. One set per independent draw: the chi-square
    # assumptions hold exactly here, unlike for position counts.
    exact = reference_set_distribution(**SMALL, exclude_last=exclude_last)
    assert abs(sum(exact.values()) - 1) < 1e-9
    positions = sample(11, seq_len=SMALL["seq_len"], mask_ratio=0.4, max_gram=3, p=0.3, exclude_last=exclude_last)
    assert goodness_of_fit_p(positions, exact) > P_MIN


@pytest.mark.parametrize(
    "wrong",
    [
        dict(exclude_last=False),  # the quirk missing
        dict(exclude_last=True, p=0.5),  # a different span-length law
    ],
    ids=["no-last-position-quirk", "wrong-p"],
)
def test_exact_distribution_test_rejects_a_wrong_sampler(wrong):
    exact = reference_set_distribution(**SMALL, exclude_last=True)
    kwargs = dict(mask_ratio=0.4, max_gram=3, p=0.3, exclude_last=True) | wrong
    positions = sample(11, seq_len=SMALL["seq_len"], **kwargs)
    assert goodness_of_fit_p(positions, exact) < P_MIN


def test_golden_file_is_what_the_statistics_assume(golden):
    assert int(golden["draws"]) == DRAWS
    assert (golden["positions_per_sample"] == GOAL).all()
    assert golden["position_counts"].sum() == DRAWS * GOAL
    assert (np.arange(SEQ_LEN + 1) * golden["run_length_hist"]).sum() == DRAWS * GOAL


def test_matches_golden_position_counts_and_run_lengths(golden):
    p_positions, p_runs = golden_p_values(sample(0), golden)
    assert p_positions > P_MIN, f"position counts differ from the reference (p = {p_positions:.2e})"
    assert p_runs > P_MIN, f"run lengths differ from the reference (p = {p_runs:.2e})"


@pytest.mark.parametrize("wrong", WRONG_SAMPLERS.values(), ids=WRONG_SAMPLERS.keys())
def test_golden_comparison_rejects_a_wrong_sampler(wrong, golden):
    assert min(golden_p_values(sample(0, **wrong), golden)) < P_MIN


# ----------------------------------------------------------------------------- mask_windows


WINDOW = 20  # short windows keep these tests fast; the coin does not depend on the length


def corrupt(seed: int, **kwargs):
    """mask_windows on DRAWS windows x in [5, 6) (never 0, never in [0, 1)) of 3 features.

    Returns NumPy (x, positions, masked_x, targets, values of masked_x at positions).
    """
    x = np.random.default_rng(seed).uniform(5, 6, (DRAWS, WINDOW, 3)).astype(np.float32)
    positions = sample(seed, seq_len=WINDOW)
    masked, targets = mask_windows(jax.random.key(seed), x, positions, **kwargs)
    masked = np.asarray(masked)
    return x, positions, masked, np.asarray(targets), np.take_along_axis(masked, positions[:, :, None], axis=1)


def assert_binomial(flags: np.ndarray, prob: float):
    # 4.5 standard deviations: a correct implementation fails with probability ~7e-6.
    assert abs(flags.mean() - prob) < 4.5 * np.sqrt(prob * (1 - prob) / flags.size), flags.mean()


def test_targets_are_the_unmasked_values_and_only_positions_change():
    x, positions, masked, targets, at = corrupt(0)
    assert masked.shape == x.shape and masked.dtype == x.dtype
    assert targets.shape == (DRAWS, num_masked(WINDOW), 3)
    np.testing.assert_array_equal(targets, np.take_along_axis(x, positions[:, :, None], axis=1))
    off = ~chosen_matrix(positions, WINDOW)
    np.testing.assert_array_equal(masked[off], x[off])
    zeroed = (at == 0).all(axis=(1, 2))
    kept = (at == targets).all(axis=(1, 2))
    assert (zeroed ^ kept).all()  # replace_prob 0: each window is zeroed whole or left as it was
    assert_binomial(zeroed, 0.8)


def test_fraction_zeroed_matches_golden(golden):
    *_, at = corrupt(1, mask_prob=0.8)
    ours = int((at == 0).all(axis=(1, 2)).sum())
    theirs = int(round(float(golden["fraction_zeroed"]) * int(golden["draws"])))
    table = np.array([[ours, DRAWS - ours], [theirs, int(golden["draws"]) - theirs]])
    assert stats.chi2_contingency(table)[1] > P_MIN


def test_replacement_noise_at_positions_only():
    x, positions, masked, targets, at = corrupt(2, mask_prob=0.0, replace_prob=1.0)
    off = ~chosen_matrix(positions, WINDOW)
    np.testing.assert_array_equal(masked[off], x[off])
    assert ((at >= 0) & (at < 1)).all()
    assert stats.kstest(at.ravel(), "uniform").pvalue > P_MIN
    np.testing.assert_array_equal(targets, np.take_along_axis(x, positions[:, :, None], axis=1))


def test_replace_prob_applies_to_windows_not_zeroed():
    # As the reference's `elif rand() < replace_prob`: 0.5 zeroed, 0.5 * 0.5 noise, the rest kept.
    *_, targets, at = corrupt(3, mask_prob=0.5, replace_prob=0.5)
    zeroed = (at == 0).all(axis=(1, 2))
    kept = (at == targets).all(axis=(1, 2))
    noise = ((at >= 0) & (at < 1)).all(axis=(1, 2)) & ~zeroed
    assert (zeroed.astype(int) + kept + noise == 1).all()  # exactly one outcome per window
    for flags, prob in ((zeroed, 0.5), (noise, 0.25), (kept, 0.25)):
        assert_binomial(flags, prob)


def test_mask_prob_one_zeroes_every_window():
    *_, at = corrupt(4, mask_prob=1.0, replace_prob=1.0)
    assert (at == 0).all()


def test_low_precision_noise_stays_below_one():
    x = jnp.full((DRAWS, 4, 2), 5.0, jnp.bfloat16)
    positions = sample(0, seq_len=4, mask_ratio=0.5, exclude_last=False)
    masked, targets = mask_windows(jax.random.key(0), x, positions, mask_prob=0.0, replace_prob=1.0)
    assert masked.dtype == targets.dtype == jnp.bfloat16
    noise = np.take_along_axis(np.asarray(masked).astype(np.float32), positions[:, :, None], axis=1)
    assert ((noise >= 0) & (noise < 1)).all() and abs(noise.mean() - 0.5) < 0.01


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (dict(mask_prob=1.5), "mask_prob"),
        (dict(replace_prob=-0.5), "replace_prob"),
        (dict(x=np.ones((2, 10))), "expected x"),
        (dict(positions=np.zeros((3, 2), np.int32)), "expected x"),
        (dict(x=np.ones((2, 10, 2), np.int32)), "floating"),
        (dict(positions=np.zeros((2, 2), np.float32)), "integers"),
    ],
)
def test_mask_windows_rejects_bad_arguments(args, message):
    call = dict(x=np.ones((2, 10, 2), np.float32), positions=np.zeros((2, 2), np.int32)) | args
    with pytest.raises(ValueError, match=message):
        mask_windows(jax.random.key(0), **call)
