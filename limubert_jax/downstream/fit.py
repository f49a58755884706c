"""Training a classifier on device: whole epochs as compiled programs (`fit`; several draws
of one classifier through one program, `fit_many`), and batched prediction (`predict`,
`predict_many`)."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from limubert_jax.pretraining import optim
from limubert_jax.runtime.errors import LimuBertError

EPOCHS_PER_CALL = 50  # epochs per compiled call: one progress-bar tick, one host round trip



ApplyFn = Callable[[Any, jax.Array, bool, jax.Array], jax.Array]  # (params, x, train, key) -> logits
PredictFn = Callable[[Any, Any], jax.Array]  # (params, vali_inputs) -> predicted classes


def _optimizer(learning_rate: float, trainable: Any) -> optax.GradientTransformation:
    """Adam; `trainable` (a pytree of bools like the parameters, or None: all) freezes the rest."""
    tx = optax.adam(learning_rate)
    if trainable is not None:
        tx = optim.freeze(tx, jax.tree.map(operator.not_, trainable))
    return tx


def _argmax_fn(apply_fn: ApplyFn) -> PredictFn:
    """The classes a classifier predicts (eval mode): (params, x [N, ...]) -> [N]."""
    return lambda p, x: jnp.argmax(apply_fn(p, x, False, jax.random.key(0)), -1)


def _epoch_fn(apply_fn: ApplyFn, tx: optax.GradientTransformation, predict_fn: PredictFn, n: int,
              batch_size: int) -> Callable:
    """One epoch of one classifier over its `n` labelled rows: `epoch(carry, key, fetch,
    train_y, vali_inputs, vali_y) -> (carry, (mean loss, validation accuracy))`, where
    `fetch(rows)` gives the inputs of labelled rows `rows` (B,) and carry is (params, optimizer
    state, best params, best accuracy, best epoch, epoch index). Shuffled batches of
    min(`batch_size`, n), the last one padded and masked; then a validation pass."""
    batch_size = min(batch_size, n)
    num_batches = -(-n // batch_size)

    def loss_fn(p, x, y, weights, key):
        losses = optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x, True, key), y)
        return jnp.sum(losses * weights) / jnp.sum(weights)

    def epoch(carry, key, fetch, train_y, vali_inputs, vali_y):
        p, o, best_p, best_acc, best_epoch, index = carry
        perm_key, drop_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, n)
        padded = jnp.concatenate([order, jnp.zeros(num_batches * batch_size - n, order.dtype)])
        weights = (jnp.arange(num_batches * batch_size) < n).astype(jnp.float32)

        def step(state, inputs):
            p, o = state
            rows, w, k = inputs
            loss, grads = jax.value_and_grad(loss_fn)(p, fetch(rows), train_y[rows], w, k)
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

    return epoch


def _chunk(num_epochs: int) -> int:
    """Epochs per compiled call: equal chunks, so that one compilation serves every call."""
    return max(d for d in range(1, min(EPOCHS_PER_CALL, num_epochs) + 1) if num_epochs % d == 0)


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
    tx = _optimizer(learning_rate, trainable)
    if predict_fn is None:
        predict_fn = _argmax_fn(apply_fn)
    data = jax.device_put((jnp.asarray(train_x), jnp.asarray(train_y, jnp.int32), vali_inputs,
                           jnp.asarray(vali_y, jnp.int32)))
    n = data[0].shape[0]
    one_epoch = _epoch_fn(apply_fn, tx, predict_fn, n, batch_size)

    def epoch(carry, key, data):
        train_x, train_y, vali_inputs, vali_y = data
        return one_epoch(carry, key, lambda rows: train_x[rows], train_y, vali_inputs, vali_y)

    @jax.jit
    def run_epochs(carry, keys, data):
        return jax.lax.scan(lambda c, k: epoch(c, k, data), carry, keys)

    keys = jax.random.split(jax.random.key(seed), num_epochs)
    per_call = _chunk(num_epochs)
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


def vectorized_default() -> bool:
    """Whether draws train side by side (`jax.vmap`) by default: on an accelerator, where
    small classifiers leave the chip mostly idle. On a CPU, XLA's batched matrix products over
    the draws' own weights gained nothing over the same products draw after draw (the
    quickstart's report of 2 methods x 3 draws x 2 label rates on 2 shared cores: 98 vs 97
    CPU-seconds, 98 vs 83 s), so there the draws train in turn, through one compiled program."""
    return jax.default_backend() != "cpu"


def fit_many(apply_fn: ApplyFn, params, pool_x, train_rows, train_y, vali_inputs, vali_y, *, num_epochs: int,
             batch_size: int, learning_rate: float, seeds: Sequence[int], predict_fn: PredictFn | None = None,
             trainable: Any = None, desc: str = "classifier", vectorize: bool | None = None) -> list[FitResult]:
    """`fit` of D classifiers, one per draw, compiled once for all of them: side by side
    (`jax.vmap` over the draws) where `vectorize` (default `vectorized_default()`), else one
    draw after another through the same program.

    params: a pytree whose leaves have a leading axis D (draw d starts from `params[d]`);
    pool_x [M, ...]: the inputs the draws' labelled rows index; train_rows [D, n] and
    train_y [D, n]: each draw's labelled rows of `pool_x` and their classes (the same n for
    all: a balanced draw at one rate has the same size whatever its seed); seeds (D,): each
    draw's random stream (shuffles, dropout), as `fit(..., seed=seeds[d])` draws it. The
    validation inputs and labels are the same for every draw. Returns one `FitResult` per
    draw, in order.
    """
    train_rows = np.asarray(train_rows)
    num_draws, n = train_rows.shape
    if len(seeds) != num_draws or np.shape(train_y) != train_rows.shape:
        raise ValueError(f"fit_many: {num_draws} draws of {n} rows, {np.shape(train_y)} labels, {len(seeds)} seeds")
    vectorize = vectorized_default() if vectorize is None else vectorize
    tx = _optimizer(learning_rate, trainable)
    if predict_fn is None:
        predict_fn = _argmax_fn(apply_fn)
    data = jax.device_put((jnp.asarray(pool_x), jnp.asarray(train_rows, jnp.int32), jnp.asarray(train_y, jnp.int32),
                           vali_inputs, jnp.asarray(vali_y, jnp.int32)))
    one_epoch = _epoch_fn(apply_fn, tx, predict_fn, n, batch_size)

    def epoch(carry, key, rows, train_y, pool_x, vali_inputs, vali_y):  # one draw's
        return one_epoch(carry, key, lambda batch: pool_x[rows[batch]], train_y, vali_inputs, vali_y)

    draws_epoch = jax.vmap(epoch, in_axes=(0, 0, 0, 0, None, None, None)) if vectorize else epoch

    @jax.jit
    def run_epochs(carry, keys, data):  # keys [epochs, D] side by side, [epochs] in turn
        pool_x, rows, train_y, vali_inputs, vali_y = data
        return jax.lax.scan(lambda c, k: draws_epoch(c, k, rows, train_y, pool_x, vali_inputs, vali_y), carry, keys)

    keys = jnp.stack([jax.random.split(jax.random.key(int(s)), num_epochs) for s in seeds], axis=1)  # [epochs, D]
    per_call = _chunk(num_epochs)

    def start(p, num):  # the initial carry of `num` draws (a leading axis) or of one (num None)
        shape = () if num is None else (num,)
        init = tx.init if num is None else jax.vmap(tx.init)
        return (p, init(p), p, jnp.full(shape, -1.0, jnp.float32), jnp.zeros(shape, jnp.int32),
                jnp.zeros(shape, jnp.int32))

    if vectorize:
        runs = [(start(params, num_draws), keys, data, list(range(num_draws)))]
    else:
        pool, rows, ys, vali, vali_y = data
        runs = [(start(jax.tree.map(lambda leaf: leaf[d], params), None), keys[:, d], (pool, rows[d], ys[d], vali,
                                                                                          vali_y), [d])
                for d in range(num_draws)]
    results: list[FitResult] = []
    with tqdm(total=num_epochs * len(runs), desc=f"{desc} x{num_draws}", unit="epoch", leave=False) as progress:
        for carry, draw_keys, draw_data, draws in runs:
            losses_seen, accuracies_seen = [], []
            for first in range(0, num_epochs, per_call):
                carry, (losses, accuracies) = run_epochs(carry, draw_keys[first : first + per_call], draw_data)
                losses = np.asarray(losses).reshape(per_call, len(draws))  # [epochs, draws of this run]
                accuracies = np.asarray(accuracies).reshape(per_call, len(draws))
                if not np.isfinite(losses).all():
                    epoch_index, draw = np.argwhere(~np.isfinite(losses))[0]
                    raise LimuBertError(f"{desc}: the training loss of draw {draws[draw]} (seed {seeds[draws[draw]]}) "
                                        f"became non-finite at epoch {first + epoch_index + 1}")
                losses_seen.append(losses)
                accuracies_seen.append(accuracies)
                progress.update(per_call)
                progress.set_postfix(loss=f"{losses[-1].mean():.3f}",
                                     vali_acc=f"{np.concatenate(accuracies_seen).max(axis=0).mean():.3f}")
            losses, accuracies = np.concatenate(losses_seen), np.concatenate(accuracies_seen)
            _, _, best_params, best_acc, best_epoch, _ = jax.device_get(carry)
            for i in range(len(draws)):
                pick = (lambda leaf, i=i: leaf[i]) if vectorize else (lambda leaf: leaf)
                history = {"train_loss": losses[:, i].tolist(), "vali_accuracy": accuracies[:, i].tolist()}
                results.append(FitResult(jax.tree.map(pick, best_params), int(np.ravel(best_epoch)[i]) + 1,
                                         float(np.ravel(best_acc)[i]), history))
    return results


def predict_many(apply_fn: ApplyFn, params, x: np.ndarray, batch_size: int = 2048,
                 vectorize: bool | None = None) -> np.ndarray:
    """Predicted classes [D, N] of D classifiers (`params` leaves with a leading axis D) on
    the rows of `x` [N, ...] (eval mode), one compiled program for all of them: side by side
    where `vectorize` (default `vectorized_default()`), else one after another."""
    one = _argmax_fn(apply_fn)
    if vectorize if vectorize is not None else vectorized_default():
        apply = jax.jit(jax.vmap(one, in_axes=(0, None)))
        return np.moveaxis(map_batches(lambda xb: np.moveaxis(np.asarray(apply(params, xb)), 0, 1), x, batch_size),
                           1, 0)
    apply = jax.jit(one)
    count = jax.tree.leaves(params)[0].shape[0]
    return np.stack([map_batches(lambda xb, d=d: apply(jax.tree.map(lambda leaf: leaf[d], params), xb), x, batch_size)
                     for d in range(count)])


def predict(apply_fn: ApplyFn, params, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Predicted classes [N] of the rows of `x` [N, ...] (eval mode), `batch_size` rows a call."""
    apply = jax.jit(_argmax_fn(apply_fn))
    return map_batches(lambda xb: apply(params, xb), x, batch_size)


def map_batches(fn: Callable[[np.ndarray], jax.Array], x: np.ndarray, batch_size: int) -> np.ndarray:
    """`fn` over the rows of `x` [N, ...] in batches of min(`batch_size`, N) rows, the last
    one padded with zeros (every call has one shape: one compiled program); the results'
    rows concatenated [N, ...]. `fn` must treat rows independently."""
    x = np.asarray(x)
    size = max(1, min(batch_size, len(x)))
    outputs = []
    for start in range(0, len(x), size):
        chunk = x[start : start + size]
        rows = len(chunk)
        if rows < size:
            chunk = np.concatenate([chunk, np.zeros((size - rows, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(np.asarray(fn(chunk))[:rows])
    return np.concatenate(outputs)
