"""Exact t-SNE in JAX, for looking at embeddings in 2-D.

Shapes: N points, D input features. Cost is O(N^2) memory and time per iteration (the full
N x N affinity matrices), fine on CPU for N up to a few thousand; for more points take a
`subsample` first.

The method (van der Maaten & Hinton, 2008):
  * conditional affinities p_{j|i} ∝ exp(-beta_i ||x_i - x_j||^2), with each beta_i found
    by bisection so that the row's perplexity 2^H (here exp of the entropy in nats) equals
    the target. The bisection runs a fixed number of steps on log(beta_i) for all rows at
    once (array ops, no Python loop over points);
  * joint P = (P_cond + P_cond^T) / (2N);
  * Student-t (one degree of freedom) similarities Q in the embedding;
  * gradient descent on KL(P || Q) with early exaggeration (P x 12 for the first 250
    iterations), momentum 0.5 then 0.8 (switching when the exaggeration ends), and the
    per-coordinate adaptive gains of the original method (+0.2 when the gradient's sign
    flips relative to the last update, x0.8 otherwise, floor 0.01).
  * initialisation: PCA by default (the first two principal components, scaled so the first
    has standard deviation 1e-4); `init="random"` draws N(0, 1e-4^2) from `seed` instead.
    With the PCA start nothing is random, so the result does not depend on `seed`.

The whole optimisation is one jitted `jax.lax.fori_loop`; the result is deterministic for
a given input, settings and seed (on the same backend).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from limubert_jax.runtime.precision import dot

_BISECTION_STEPS = 64
_LOG_BETA_RANGE = 30.0  # bisection over log(beta * scale) in [-30, 30]
_MIN_GAIN = 0.01
_P_FLOOR = 1e-12
_BLOCK_ROWS = 256  # rows of P per gradient block ([256, N] temporaries stay in cache)


def _squared_distances(x: jax.Array) -> jax.Array:
    """[N, N] squared Euclidean distances (clipped at 0, exact zeros on the diagonal).

    The points are centred first (less cancellation in the Gram-matrix form), and the
    matmul runs at full float32 precision (no TF32/bf16 passes on accelerators).
    """
    x = x - jnp.mean(x, axis=0)
    sq = jnp.sum(x * x, axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * dot(x, x.T)
    d = jnp.maximum(d, 0.0)
    return d * (1.0 - jnp.eye(x.shape[0], dtype=d.dtype))


def _row_entropy(shifted: jax.Array, beta: jax.Array, off_diagonal: jax.Array):
    """Entropy (nats) and normalised row of exp(-beta * shifted) without the diagonal.

    shifted: [N] distances minus the row's smallest off-diagonal one (so the largest term is
    exp(0) = 1 and the sum never underflows).
    """
    weights = jnp.where(off_diagonal, jnp.exp(-beta * shifted), 0.0)
    total = jnp.sum(weights)
    p = weights / total
    entropy = jnp.log(total) + beta * jnp.sum(p * jnp.where(off_diagonal, shifted, 0.0))
    return entropy, p


def _calibrate(sq_dists: jax.Array, perplexity: jax.Array, steps: int = _BISECTION_STEPS):
    n = sq_dists.shape[0]
    target = jnp.log(perplexity)
    off_diagonal = ~jnp.eye(n, dtype=bool)
    masked = jnp.where(off_diagonal, sq_dists, jnp.inf)
    row_min = jnp.min(masked, axis=1, keepdims=True)
    shifted = jnp.where(off_diagonal, sq_dists - row_min, 0.0)
    # A per-row scale makes beta * scale of order one, so one fixed bracket serves all rows.
    scale = jnp.sum(shifted, axis=1) / (n - 1)
    scale = jnp.where(scale > 0, scale, 1.0)

    def row(shifted_row, scale_row, mask_row):
        def entropy_at(log_beta):
            return _row_entropy(shifted_row, jnp.exp(log_beta) / scale_row, mask_row)[0]

        def step(_, bracket):
            lo, hi = bracket
            mid = 0.5 * (lo + hi)
            # Entropy falls as beta grows: too much entropy means beta must go up.
            too_flat = entropy_at(mid) > target
            return jnp.where(too_flat, mid, lo), jnp.where(too_flat, hi, mid)

        lo, hi = jax.lax.fori_loop(
            0, steps, step, (jnp.float32(-_LOG_BETA_RANGE), jnp.float32(_LOG_BETA_RANGE))
        )
        beta = jnp.exp(0.5 * (lo + hi)) / scale_row
        return _row_entropy(shifted_row, beta, mask_row)[1], beta

    return jax.vmap(row)(shifted, scale, off_diagonal)


@jax.jit
def _conditional(x: jax.Array, perplexity: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _calibrate(_squared_distances(x), perplexity)


def _joint(x: jax.Array, perplexity: jax.Array) -> jax.Array:
    p_cond, _ = _conditional(x, perplexity)
    return (p_cond + p_cond.T) / (2.0 * x.shape[0])


def conditional_affinities(x, perplexity: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Row-stochastic p_{j|i} [N, N] (zero diagonal) and the precisions beta_i [N].

    Each row's perplexity exp(-sum_j p_{j|i} log p_{j|i}) equals `perplexity` (to float32
    precision) unless the row cannot reach it (e.g. many exact duplicates).
    """
    x = jnp.asarray(np.asarray(x, np.float32))
    _check(x, perplexity)
    p, beta = _conditional(x, jnp.float32(perplexity))
    return np.asarray(p), np.asarray(beta)


def joint_probabilities(x, perplexity: float = 30.0) -> np.ndarray:
    """Symmetric P [N, N] = (P_cond + P_cond^T) / (2N), summing to 1."""
    x = jnp.asarray(np.asarray(x, np.float32))
    _check(x, perplexity)
    return np.asarray(_joint(x, jnp.float32(perplexity)))


def _check(x: jax.Array, perplexity: float) -> None:
    if x.ndim != 2:
        raise ValueError(f"t-SNE input must be [N, D], got shape {tuple(x.shape)}")
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}")
    if not np.all(np.isfinite(np.asarray(x))):
        raise ValueError("t-SNE input has non-finite values")
    if not 1.0 <= float(perplexity) < n - 1:
        raise ValueError(f"perplexity must be in [1, N - 1) = [1, {n - 1}), got {perplexity}")


def _pca_init(x: jax.Array) -> jax.Array:
    centered = x - jnp.mean(x, axis=0)
    _, _, vt = jnp.linalg.svd(centered, full_matrices=False)
    k = min(2, vt.shape[0])
    components = vt[:k]
    # Fix the SVD's sign ambiguity: the largest-magnitude loading of each component is positive.
    signs = jnp.sign(components[jnp.arange(k), jnp.argmax(jnp.abs(components), axis=1)])
    y = dot(centered, (components * jnp.where(signs == 0, 1.0, signs)[:, None]).T)
    if y.shape[1] < 2:  # D == 1: pad a zero column.
        y = jnp.pad(y, ((0, 0), (0, 2 - y.shape[1])))
    std = jnp.std(y[:, 0])
    return y / jnp.where(std > 0, std, 1.0) * 1e-4


def _block_size(n: int) -> int:
    return n if n <= _BLOCK_ROWS else _BLOCK_ROWS


def _gradient_sums(p_blocks: jax.Array, y: jax.Array, n: int):
    """Row sums that make up the KL gradient, in blocks of rows (kept in cache).

    With num_ij = 1 / (1 + ||y_i - y_j||^2) and Z = sum_{i != j} num_ij, the gradient
    4 sum_j (p_ij - num_ij / Z) num_ij (y_i - y_j) splits into
      a_i = sum_j p_ij num_ij [1, y_j]   and   b_i = sum_j num_ij^2 [1, y_j],
    neither of which needs Z, so one pass over P gives a, b and Z together. Diagonal terms
    (num_ii = 1) cancel in the gradient and are subtracted from Z.
    p_blocks: [nb, B, N] (rows zero-padded to nb * B). Returns a, b [N, 3] and Z.
    """
    num_blocks, rows, _ = p_blocks.shape
    pad = num_blocks * rows - n
    y_blocks = jnp.pad(y, ((0, pad), (0, 0))).reshape(num_blocks, rows, 2)
    y_aug = jnp.concatenate([jnp.ones((n, 1), y.dtype), y], axis=1)

    def block(args):
        p_block, y_block = args
        d = (y_block[:, None, 0] - y[None, :, 0]) ** 2 + (y_block[:, None, 1] - y[None, :, 1]) ** 2
        num = 1.0 / (1.0 + d)  # [B, N]
        return (dot(p_block * num, y_aug),
                dot(num * num, y_aug), jnp.sum(num, axis=1))

    a, b, z_rows = jax.lax.map(block, (p_blocks, y_blocks))
    a = a.reshape(-1, 3)[:n]
    b = b.reshape(-1, 3)[:n]
    z = jnp.sum(z_rows.reshape(-1)[:n]) - n
    return a, b, z


def _kl_gradient(p_blocks: jax.Array, y: jax.Array, exaggeration: jax.Array) -> jax.Array:
    """dKL(exaggeration * P || Q)/dy, [N, 2]."""
    n = y.shape[0]
    a, b, z = _gradient_sums(p_blocks, y, n)
    attraction = a[:, :1] * y - a[:, 1:]
    repulsion = (b[:, :1] * y - b[:, 1:]) / z
    return 4.0 * (exaggeration * attraction - repulsion)


@functools.partial(jax.jit, static_argnames=("num_iters", "exaggeration_iters"))
def _optimise(p: jax.Array, y0: jax.Array, learning_rate: jax.Array, early_exaggeration: jax.Array,
              num_iters: int, exaggeration_iters: int) -> jax.Array:
    n = p.shape[0]
    rows = _block_size(n)
    num_blocks = -(-n // rows)
    p_blocks = jnp.pad(p, ((0, num_blocks * rows - n), (0, 0))).reshape(num_blocks, rows, n)

    def step(i, state):
        y, update, gains = state
        early = i < exaggeration_iters
        exaggeration = jnp.where(early, early_exaggeration, 1.0)
        momentum = jnp.where(early, 0.5, 0.8)
        grad = _kl_gradient(p_blocks, y, exaggeration)
        same_sign = (grad > 0) == (update > 0)
        gains = jnp.maximum(jnp.where(same_sign, gains * 0.8, gains + 0.2), _MIN_GAIN)
        update = momentum * update - learning_rate * gains * grad
        y = y + update
        return y - jnp.mean(y, axis=0), update, gains

    y, _, _ = jax.lax.fori_loop(0, num_iters, step, (y0, jnp.zeros_like(y0), jnp.ones_like(y0)))
    return y


def tsne(x, *, perplexity: float = 30.0, num_iters: int = 1000, seed: int = 0,
         learning_rate: float | str = "auto", init: str = "pca", early_exaggeration: float = 12.0,
         exaggeration_iters: int = 250) -> np.ndarray:
    """Exact t-SNE of x [N, D] -> float32 [N, 2] (see the module docstring).

    learning_rate "auto" is max(N / early_exaggeration / 4, 50) (Belkina et al., 2019).
    `seed` matters only with init="random".
    """
    x = jnp.asarray(np.asarray(x, np.float32))
    _check(x, perplexity)
    n = x.shape[0]
    if num_iters < 0:
        raise ValueError(f"num_iters must be >= 0, got {num_iters}")
    if learning_rate == "auto":
        learning_rate = max(n / early_exaggeration / 4.0, 50.0)
    elif isinstance(learning_rate, str) or not float(learning_rate) > 0:
        raise ValueError(f"learning_rate must be 'auto' or a positive number, got {learning_rate!r}")
    if init == "pca":
        y0 = _pca_init(x)
    elif init == "random":
        y0 = 1e-4 * jax.random.normal(jax.random.PRNGKey(seed), (n, 2), jnp.float32)
    else:
        raise ValueError(f"init must be 'pca' or 'random', got {init!r}")
    p = jnp.maximum(_joint(x, jnp.float32(perplexity)), _P_FLOOR)
    y = _optimise(p, y0, jnp.float32(learning_rate), jnp.float32(early_exaggeration),
                  num_iters=int(num_iters), exaggeration_iters=int(exaggeration_iters))
    return np.asarray(y, np.float32)


MIN_POINTS = 5  # fewer points make no picture worth drawing (and the bisection has little to fit)
DEFAULT_PERPLEXITY = 30.0


def perplexity_for(n: int, target: float = DEFAULT_PERPLEXITY) -> float | None:
    """The perplexity for `n` points: `target`, bounded by (n - 1) / 3 as small sets need
    (each point's neighbourhood must fit in the others, and the exact method needs it below
    n - 1); None when `n` < MIN_POINTS, too few for a plot."""
    if n < MIN_POINTS:
        return None
    return float(min(target, max(1.0, (n - 1) / 3.0)))


def subsample(n: int, max_points: int, seed: int = 0, labels=None) -> np.ndarray:
    """Sorted indices of at most `max_points` of `n` items, all of them when n <= max_points.

    With `labels` ([n]) the draw is stratified: each class keeps its share of the points
    (largest-remainder rounding), and every class keeps at least one point when
    max_points allows it.
    """
    if n < 0 or max_points < 1:
        raise ValueError(f"need n >= 0 and max_points >= 1, got n={n}, max_points={max_points}")
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, size=max_points, replace=False)).astype(np.int64)
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * (max_points / n)
    quota = np.floor(exact).astype(np.int64)
    if len(classes) <= max_points:
        quota = np.maximum(quota, 1)  # every class shows up
    spare = max_points - int(quota.sum())
    if spare > 0:  # largest remainders first (ties: the earlier class)
        order = np.argsort(-(exact - np.floor(exact)), kind="stable")
        room = counts - quota
        for c in order:
            if spare == 0:
                break
            if room[c] > 0:
                quota[c] += 1
                spare -= 1
    elif spare < 0:  # the at-least-one floor overshot: trim the biggest quotas
        while spare < 0:
            c = int(np.argmax(quota))
            quota[c] -= 1
            spare += 1
    chosen = [
        rng.choice(np.flatnonzero(inverse == c), size=int(quota[c]), replace=False)
        for c in range(len(classes))
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)
