"""Training a classifier on device: whole epochs as compiled programs (`fit`), and batched
prediction (`predict`)."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
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
    tx = optax.adam(learning_rate)
    if trainable is not None:
        tx = optim.freeze(tx, jax.tree.map(operator.not_, trainable))
    if predict_fn is None:
        predict_fn = lambda p, x: jnp.argmax(apply_fn(p, x, False, jax.random.key(0)), -1)  # noqa: E731
    data = jax.device_put((jnp.asarray(train_x), jnp.asarray(train_y, jnp.int32), vali_inputs,
                           jnp.asarray(vali_y, jnp.int32)))
    n = data[0].shape[0]
    batch_size = min(batch_size, n)
    num_batches = -(-n // batch_size)

    def loss_fn(p, x, y, weights, key):
        losses = optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x, True, key), y)
        return jnp.sum(losses * weights) / jnp.sum(weights)

    def epoch(carry, key, data):
        train_x, train_y, vali_inputs, vali_y = data
        p, o, best_p, best_acc, best_epoch, index = carry
        perm_key, drop_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, n)
        padded = jnp.concatenate([order, jnp.zeros(num_batches * batch_size - n, order.dtype)])
        weights = (jnp.arange(num_batches * batch_size) < n).astype(jnp.float32)

        def step(state, inputs):
            p, o = state
            rows, w, k = inputs
            loss, grads = jax.value_and_grad(loss_fn)(p, train_x[rows], train_y[rows], w, k)
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

    @jax.jit
    def run_epochs(carry, keys, data):
        return jax.lax.scan(lambda c, k: epoch(c, k, data), carry, keys)

    keys = jax.random.split(jax.random.key(seed), num_epochs)
    # Equal chunks, so that one compilation serves every call.
    per_call = max(d for d in range(1, min(EPOCHS_PER_CALL, num_epochs) + 1) if num_epochs % d == 0)
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


def predict(apply_fn: ApplyFn, params, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Predicted classes [N] of the rows of `x` [N, ...] (eval mode), `batch_size` rows a call."""
    apply = jax.jit(lambda p, xb: jnp.argmax(apply_fn(p, xb, False, jax.random.key(0)), -1))
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
