"""The masked-reconstruction objective and its jitted, sharded train and eval steps.

Raw windows in physical units go in; normalization (SPEC 1) and span masking (SPEC 4)
happen on device inside the compiled step, with randomness derived from
`jax.random.fold_in(rng, step)` so that a resumed run draws the same masks.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from limubert_jax import masking
from limubert_jax.model import LimuBertConfig, LimuBertModel4Pretrain
from limubert_jax.normalization import normalize
from limubert_jax.sharding import batch_sharded, replicated


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """Span-masking parameters (the reference's `mask.json`)."""

    mask_ratio: float = 0.15  # fraction of time steps predicted per window (18 of 120)
    max_gram: int = 10  # longest span
    p: float = 0.2  # geometric parameter of the span-length distribution
    mask_prob: float = 0.8  # per window: zero the selected steps with this probability
    replace_prob: float = 0.0  # else: replace them with U[0, 1) noise with this probability
    exclude_last: bool = True  # reference quirk: the last time step is never masked


@flax.struct.dataclass
class TrainState:
    """Everything a train step changes: the step counter, parameters and optimizer state."""

    step: jax.Array
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def mask_batch(key: jax.Array, raw: jax.Array, model_config: LimuBertConfig, mask_config: MaskConfig):
    """Normalizes and masks raw windows.

    raw: [B, S, F_raw] -> (masked inputs [B, S, F], positions int32 [B, M], targets [B, M, F]).
    """
    x = normalize(raw.astype(jnp.float32), model_config.feature_num)
    batch, seq, _ = x.shape
    pos_key, mask_key = jax.random.split(key)
    positions = masking.span_mask_positions(
        pos_key, batch, seq, mask_ratio=mask_config.mask_ratio, max_gram=mask_config.max_gram,
        p=mask_config.p, exclude_last=mask_config.exclude_last,
    )
    masked, targets = masking.mask_windows(
        mask_key, x, positions, mask_prob=mask_config.mask_prob, replace_prob=mask_config.replace_prob
    )
    return masked, positions, targets


def squared_errors(params, model_config: LimuBertConfig, masked, positions, targets) -> jax.Array:
    """Per-window sum of squared reconstruction errors over the masked positions: [B]."""
    predictions = LimuBertModel4Pretrain(model_config).apply({"params": params}, masked, positions)
    return jnp.sum(jnp.square(predictions - targets), axis=(1, 2))


def train_step(state: TrainState, raw: jax.Array, rng: jax.Array, *, model_config: LimuBertConfig,
               mask_config: MaskConfig, tx: optax.GradientTransformation):
    """One optimizer step on the mean squared error over all masked (B, M, F) targets.

    raw: [B, S, F_raw] raw windows. Returns (new state, {"loss": loss before the update}).
    """
    masked, positions, targets = mask_batch(jax.random.fold_in(rng, state.step), raw, model_config, mask_config)

    def loss_fn(params):
        return jnp.sum(squared_errors(params, model_config, masked, positions, targets)) / targets.size

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {"loss": loss}


def eval_step(params, raw: jax.Array, weights: jax.Array, key: jax.Array, *, model_config: LimuBertConfig,
              mask_config: MaskConfig):
    """Masked squared error of a validation batch with masks drawn from a fixed `key`.

    raw: [B, S, F_raw]; weights: [B], 1 for real windows and 0 for padding.
    Returns (sum of squared errors, number of target values), to be summed over batches.
    """
    masked, positions, targets = mask_batch(key, raw, model_config, mask_config)
    errors = squared_errors(params, model_config, masked, positions, targets)
    per_window = targets.shape[1] * targets.shape[2]
    return jnp.sum(errors * weights), jnp.sum(weights) * per_window


def jit_train_step(mesh: Mesh, *, model_config: LimuBertConfig, mask_config: MaskConfig,
                   tx: optax.GradientTransformation):
    """`train_step(state, raw, rng)` compiled for `mesh`: state replicated (and donated),
    batch split on `data`."""
    step = functools.partial(train_step, model_config=model_config, mask_config=mask_config, tx=tx)
    rep = replicated(mesh)
    return jax.jit(step, in_shardings=(rep, batch_sharded(mesh), rep), out_shardings=(rep, rep),
                   donate_argnums=(0,))


def jit_eval_step(mesh: Mesh, *, model_config: LimuBertConfig, mask_config: MaskConfig):
    """`eval_step(params, raw, weights, key)` compiled for `mesh`."""
    step = functools.partial(eval_step, model_config=model_config, mask_config=mask_config)
    rep, data = replicated(mesh), batch_sharded(mesh)
    return jax.jit(step, in_shardings=(rep, data, data, rep), out_shardings=(rep, rep))
