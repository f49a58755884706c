"""Span masking of the reference (docs/reference.md §4), jit-able for use inside the train step.

`span_mask_positions` draws the masked time steps of each window; `mask_windows` applies the
per-window corruption (zero / noise / keep) and gathers the reconstruction targets.

The reference draws positions with a sequential rejection loop in Python, per window:

    while |set| < goal:
        n ~ P(n) ∝ p (1-p)^(n-1), n in 1..max_gram;  n = min(n, goal - |set|)
        anchor ~ U{0..S-1};  if anchor in set: redraw
        set |= {anchor .. min(anchor + n, S - 1) - 1}

A data-dependent rejection loop is a poor fit for XLA (batched while loops run until the
slowest row is done). `span_mask_positions` samples the same distribution with a fixed
number of batched steps instead; see its docstring for why the two are equivalent.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["num_masked", "span_mask_positions", "mask_windows", "span_length_probs"]


def _check_int(name: str, value, minimum: int) -> int:
    # bool is an int subclass; True as a seq_len is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(name: str, value, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")
    return value


def _unroll(goal: int) -> int | bool:
    """fori_loop unrolling for the M sampling steps (a performance choice; results are identical).

    XLA:CPU runs the rolled loop as fast as the unrolled one (measured, batch 128, M = 18) and
    compiles it 2-3x faster. On accelerators a rolled loop pays kernel launches and loop control
    per step where unrolled steps can fuse, so M <= 32 is unrolled there (not yet benchmarked).
    """
    return 1 if jax.default_backend() == "cpu" or goal > 32 else True


def num_masked(seq_len: int, mask_ratio: float = 0.15) -> int:
    """M, the number of masked positions per window: max(1, round(seq_len * mask_ratio)).

    Python's `round` (ties to even) on purpose: it is what the reference computes.
    """
    seq_len = _check_int("seq_len", seq_len, 1)
    mask_ratio = _check_float("mask_ratio", mask_ratio, 0.0, 1.0)
    return max(1, round(seq_len * mask_ratio))


def span_length_probs(max_gram: int = 10, p: float = 0.2) -> np.ndarray:
    """P(n) for n = 1..max_gram: p (1-p)^(n-1), truncated at max_gram and renormalized. [max_gram]."""
    max_gram = _check_int("max_gram", max_gram, 1)
    p = _check_float("p", p, 0.0, 1.0, low_open=True)
    # NumPy float64 so that p = 1 gives 0**0 = 1 for n = 1 (a log-space formula would give NaN).
    probs = p * (1.0 - p) ** np.arange(max_gram, dtype=np.float64)
    return probs / probs.sum()


def span_mask_positions(
    key: jax.Array,
    batch_size: int,
    seq_len: int,
    *,
    mask_ratio: float = 0.15,
    max_gram: int = 10,
    p: float = 0.2,
    exclude_last: bool = True,
) -> jax.Array:
    """Masked positions of `batch_size` windows, drawn as the reference's span masking does.

    jit-able with every argument but `key` static, e.g. called with Python values inside a
    jitted train step, or `jax.jit(span_mask_positions, static_argnums=(1, 2))`.

    Args:
      key: a PRNG key (`jax.random.key` or legacy `PRNGKey`).
      batch_size, seq_len: windows are [batch, seq, feat] with seq = `seq_len`.
      mask_ratio: M = max(1, round(seq_len * mask_ratio)) positions per window (18 for 120).
      max_gram, p: span lengths n in 1..max_gram with P(n) ∝ p (1-p)^(n-1).
      exclude_last: True (the reference's quirk) cuts spans at seq_len - 1, so the last time
        step is never masked; False cuts them at seq_len.

    Returns:
      int32 [batch, M]: M distinct positions per row, ascending (the reference returns them
      in Python set order; the order does not matter to the loss).

    Raises:
      ValueError (at trace time under jit) for invalid arguments, or when M exceeds the number of
      selectable positions (seq_len - 1 with `exclude_last`, else seq_len).

    Equivalence with the reference's rejection loop: a redrawn anchor changes no state, and
    with `exclude_last` neither does an anchor at seq_len - 1 (its span is empty), so each
    effective step draws n from P(n) and the anchor uniformly from the selectable positions
    not yet chosen. Such an anchor is drawn here as the not-yet-chosen position of lowest
    rank in one uniform random ranking per row: the history only reveals that every position
    ranked before an earlier anchor was already chosen, so the ranks of the positions still
    free are exchangeable and the lowest of them is uniform among them. Every effective step
    adds at least its anchor and n is clipped to the remaining count, so exactly M steps
    always suffice (steps after completion add nothing): no data-dependent loop, no
    termination question.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    goal = num_masked(seq_len, mask_ratio)
    probs = span_length_probs(max_gram, p)
    if not isinstance(exclude_last, (bool, np.bool_)):
        raise ValueError(f"exclude_last must be a bool, got {exclude_last!r}")
    cut = seq_len - 1 if exclude_last else seq_len  # spans end before `cut`
    if goal > cut:
        why = f"seq_len - 1 = {cut} (the last position is excluded)" if exclude_last else f"seq_len = {cut}"
        raise ValueError(
            f"cannot choose {goal} distinct positions (seq_len {seq_len} * mask_ratio {mask_ratio}) "
            f"from at most {why}"
        )

    # Span lengths by inverse CDF on a 32-bit word, so P(n) is exact up to 2**-32. Thresholds
    # that round to 2**32 (p = 1, or a negligible tail) are never reached and are dropped.
    thresholds = np.round(np.cumsum(probs)[:-1] * 2.0**32)
    thresholds = tuple(int(t) for t in thresholds[thresholds < 2.0**32])
    # One draw of 32-bit words for all the randomness: per row, seq_len anchor-ranking keys,
    # then one word per step for its span length. Drawn outside `_positions_from_bits`, so
    # eager calls of other configurations of the same shape reuse its compiled code.
    bits = jax.random.bits(key, (batch_size, seq_len + goal), jnp.uint32)
    return _positions_from_bits(bits, goal=goal, cut=cut, thresholds=thresholds)


@functools.partial(jax.jit, static_argnames=("goal", "cut", "thresholds"))
def _positions_from_bits(bits, *, goal: int, cut: int, thresholds: tuple[int, ...]):
    """The sampling steps of `span_mask_positions`; bits: uint32 [batch, seq + goal]."""
    batch_size, seq_len = bits.shape[0], bits.shape[1] - goal
    # The anchor ranking: i.i.d. 32-bit keys per position. Ties (argmin takes the lowest index)
    # have probability ~seq_len / 2**32 per step; a sort-based exact permutation costs several
    # times the whole sampler on XLA:CPU, where sorting is slow.
    rank = bits[:, :seq_len]
    # Lengths drawn for steps after completion are clipped to 0 below and have no effect.
    thresholds = jnp.asarray(np.array(thresholds, np.uint32))
    lengths = 1 + jnp.sum(bits[:, seq_len:, None] >= thresholds, axis=2, dtype=jnp.int32)
    never = jnp.uint32(0xFFFFFFFF)

    idx = jnp.arange(seq_len, dtype=jnp.int32)
    selectable = idx < cut

    def step(t, chosen):
        free = selectable & ~chosen
        anchor = jnp.argmin(jnp.where(free, rank, never), axis=1).astype(jnp.int32)
        remaining = goal - jnp.sum(chosen, axis=1, dtype=jnp.int32)
        n = jnp.minimum(lengths[:, t], remaining)
        end = jnp.minimum(anchor + n, cut)
        return chosen | ((idx >= anchor[:, None]) & (idx < end[:, None]))

    chosen = jax.lax.fori_loop(0, goal, step, jnp.zeros((batch_size, seq_len), bool), unroll=_unroll(goal))
    # Exactly `goal` entries are True per row. The j-th chosen position (ascending) is the number
    # of positions before which fewer than j+1 were chosen; counting avoids a sort (slow on CPU).
    count = jnp.cumsum(chosen, axis=1, dtype=jnp.int32)
    slots = jnp.arange(goal, dtype=jnp.int32)[:, None]
    return jnp.sum(count[:, None, :] <= slots, axis=2, dtype=jnp.int32)


def mask_windows(
    key: jax.Array,
    x: jax.Array,
    positions: jax.Array,
    *,
    mask_prob: float = 0.8,
    replace_prob: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Corrupts the selected time steps of each window; returns (masked_x, targets).

    Args:
      key: a PRNG key.
      x: [batch, seq, feat] float, normalized windows.
      positions: int [batch, M] distinct positions in [0, seq) per window (from
        `span_mask_positions`); not range-checked, as they are usually traced.
      mask_prob: probability that a window's selected steps are set to 0 in every feature.
      replace_prob: probability, for a window that is not zeroed, that its selected steps are
        replaced by U[0,1) noise; otherwise they keep their values (and are still predicted).
        Conditional on "not zeroed", as the reference's `elif rand() < replace_prob` is; the
        overall noise rate is (1 - mask_prob) * replace_prob.

    Returns:
      masked_x: [batch, seq, feat], x with the corruption applied (unchanged off `positions`).
      targets: [batch, M, feat], the unmasked x at `positions`.

    jit-able (`jax.jit(mask_windows)`); mask_prob and replace_prob may be traced, so changing
    them does not recompile.
    """
    for name, value in (("mask_prob", mask_prob), ("replace_prob", replace_prob)):
        if isinstance(value, numbers.Real):  # traced values cannot be checked here
            _check_float(name, value, 0.0, 1.0)
    x, positions = jnp.asarray(x), jnp.asarray(positions)
    if len(x.shape) != 3 or len(positions.shape) != 2 or positions.shape[0] != x.shape[0]:
        raise ValueError(
            f"expected x [batch, seq, feat] and positions [batch, M], got {tuple(x.shape)} and {tuple(positions.shape)}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating point, got {x.dtype}")
    if not jnp.issubdtype(positions.dtype, jnp.integer):
        raise ValueError(f"positions must be integers, got {positions.dtype}")
    return _mask_windows(key, x, positions, mask_prob, replace_prob)


def _unit_floats(bits, dtype):
    """U[0,1) in `dtype` from uint32 words: the top bits as a fraction, exact in `dtype`.

    (jax.random.uniform in bfloat16 has 7-bit resolution, too coarse for a 0.8 coin.)
    """
    nbits = min(jnp.finfo(dtype).nmant + 1, 32)
    return (bits >> (32 - nbits)).astype(dtype) * (2.0**-nbits)


@jax.jit
def _mask_windows(key, x, positions, mask_prob, replace_prob):
    batch, m = positions.shape
    feat = x.shape[2]
    # Gather and scatter only the M selected steps: cheaper than building [batch, seq] masks,
    # and the noise is drawn for the selected steps only, as in the reference.
    targets = jnp.take_along_axis(x, positions[:, :, None], axis=1)
    # One 2-D draw of words for the two coins and the noise: each threefry draw costs ~1 s of
    # XLA:CPU compile time, and a 3-D one several seconds.
    bits = jax.random.bits(key, (batch, 2 + m * feat), jnp.uint32)
    # Two independent coins, as in the reference: replace_prob applies only to windows not zeroed.
    coins = _unit_floats(bits[:, :2], jnp.float32)  # float32 even for low-precision x
    zero = coins[:, 0] < mask_prob
    replace = ~zero & (coins[:, 1] < replace_prob)
    noise = _unit_floats(bits[:, 2:], x.dtype).reshape(batch, m, feat)
    values = jnp.where(zero[:, None, None], jnp.zeros_like(targets), targets)
    values = jnp.where(replace[:, None, None], noise, values)
    rows = jnp.arange(batch)[:, None]
    masked_x = x.at[rows, positions].set(values)
    return masked_x, targets
