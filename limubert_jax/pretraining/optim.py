"""Optimizers of the reference code as optax transformations (docs/reference.md §6).

- `adam`: the public release's `torch.optim.Adam(lr=1e-3)` (bias-corrected, eps 1e-8, no decay).
- `bert_adam`: the seed's BertAdam (pytorchic / Hugging Face BERT lineage): per-tensor gradient
  clipping, Adam moments without bias correction, decoupled weight decay and the
  `warmup_linear` learning-rate schedule, evaluated at the step count before the update.
- `freeze` / `pretrain_optimizer`: PyTorch leaves the gradient of the unused pretraining head
  `fc` as None, so both reference optimizers skip it entirely (no moments, no decay). In JAX its
  gradient is an exact zero, which BertAdam's decay would still act on, so it is frozen
  explicitly.

Masks follow optax: a pytree of bools shaped like the parameters, or a callable mapping the
parameters (or updates) to one. For `weight_decay_mask`, True means "decay this tensor"; for
`freeze`, True means "never touch this tensor".
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

# BertAdam's clipping uses torch's `clip_grad_norm_`, which adds this to the norm.
CLIP_NORM_EPS = 1e-6
# Leaf names the reference's parameter grouping meant to exempt from weight decay.
NO_DECAY_NAMES = ("bias", "gamma", "beta")
# Top-level parameter subtrees of LimuBertModel4Pretrain that never receive a gradient.
PRETRAIN_FROZEN = ("fc",)

Mask = Any  # pytree of bools, or a callable from a params/updates pytree to one


def _warmup_steps(warmup: float, total_steps: int) -> int:
    """Number of steps s >= 0 with `s / total_steps < warmup`, in Python float64 as the reference.

    Deciding the warmup branch on integers keeps it identical to the reference's float64
    comparison, whatever precision the schedule's arithmetic runs in.
    """
    steps = max(0, math.ceil(warmup * total_steps))
    while steps > 0 and (steps - 1) / total_steps >= warmup:
        steps -= 1
    while steps / total_steps < warmup:
        steps += 1
    return steps


def warmup_linear_schedule(learning_rate: float, *, warmup: float, total_steps: int) -> optax.Schedule:
    """`learning_rate * warmup_linear(step / total_steps)`, the reference's BertAdam schedule.

    `warmup_linear(x) = x / warmup if x < warmup else 1 - x`; `warmup` is a fraction of
    `total_steps`. optax evaluates a schedule at the count before the update, as the reference
    does, so the first update (step 0) uses learning rate 0, the peak (about `learning_rate *
    (1 - warmup)`) comes at the first step with `step / total_steps >= warmup`, and the rate falls
    linearly to 0 at `total_steps`. Like the reference, it is not clamped: past `total_steps`
    it turns negative, so run at most `total_steps` updates.
    """
    if not isinstance(total_steps, numbers.Integral) or isinstance(total_steps, bool) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    total_steps = int(total_steps)
    warmup = float(warmup)
    if not 0.0 <= warmup <= 1.0:
        raise ValueError(f"warmup must be a fraction of total_steps in [0, 1], got {warmup!r}")
    learning_rate = float(learning_rate)
    warmup_steps = _warmup_steps(warmup, total_steps)

    # x / warmup == step / (warmup * total_steps) and 1 - x == (total_steps - step) / total_steps;
    # the second form keeps the rate exactly 0 at total_steps and avoids cancellation near it.
    ramp_steps = warmup * total_steps if warmup > 0 else 1.0  # the ramp is unused when warmup == 0

    def schedule(count):
        step = jnp.asarray(count, jnp.float32)
        ramp = step / ramp_steps
        decay = (total_steps - step) / total_steps
        return learning_rate * jnp.where(jnp.asarray(count) < warmup_steps, ramp, decay)

    return schedule


def clip_by_tensor_norm(max_norm: float) -> optax.GradientTransformation:
    """Clips every tensor on its own: `g * min(1, max_norm / (||g||_2 + 1e-6))`.

    This is torch's `clip_grad_norm_` applied to one parameter at a time, as BertAdam does;
    unlike `optax.clip_by_global_norm`, a large gradient in one tensor does not shrink the others.
    """

    def update_fn(updates, state, params=None):
        del params

        def clip(g):
            norm = jnp.sqrt(jnp.sum(jnp.square(g)))
            return g * jnp.minimum(1.0, max_norm / (norm + CLIP_NORM_EPS)).astype(g.dtype)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class ScaleByBertAdamState(NamedTuple):
    mu: optax.Updates
    nu: optax.Updates


def scale_by_bert_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6) -> optax.GradientTransformation:
    """`m / (sqrt(v) + eps)` with Adam moments m, v and **no bias correction** (BertAdam).

    optax's `scale_by_adam` always bias-corrects, so BertAdam needs this small transformation.
    """

    def init_fn(params):
        return ScaleByBertAdamState(
            mu=jax.tree.map(jnp.zeros_like, params), nu=jax.tree.map(jnp.zeros_like, params)
        )

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * (g * g), state.nu, updates)
        scaled = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return scaled, ScaleByBertAdamState(mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def bert_adam(
    learning_rate: float | optax.Schedule,
    *,
    warmup: float | None = None,
    total_steps: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    weight_decay_mask: Mask | None = None,
) -> optax.GradientTransformation:
    """The reference's BertAdam (docs/reference.md §6), per tensor p with gradient g:

    1. `g *= min(1, max_grad_norm / (||g||_2 + 1e-6))` (per tensor; skipped if max_grad_norm <= 0),
    2. `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`, no bias correction,
    3. `u = m / (sqrt(v) + eps) + weight_decay * p` (decoupled; only where `weight_decay_mask`),
    4. `p -= lr_t * u` with `lr_t = warmup_linear_schedule(learning_rate, ...)(t)`, t from 0.

    `learning_rate` is a float, scheduled with `warmup_linear_schedule` when `total_steps` is
    given (the reference's `t_total`) and constant otherwise, or an optax schedule used as is.
    `weight_decay_mask=None` decays every tensor: the reference's grouping compared full
    parameter names with 'bias'/'gamma'/'beta' and so exempted nothing. Pass
    `no_decay_for_bias_and_norm` for the grouping it meant.
    """
    if callable(learning_rate):
        if total_steps is not None or warmup is not None:
            raise ValueError("pass warmup/total_steps with a float learning_rate, not with a schedule")
        lr = learning_rate
    elif total_steps is not None:
        lr = warmup_linear_schedule(learning_rate, warmup=0.0 if warmup is None else warmup,
                                    total_steps=total_steps)
    else:
        lr = float(learning_rate)
    parts = []
    if max_grad_norm > 0:
        parts.append(clip_by_tensor_norm(max_grad_norm))
    parts.append(scale_by_bert_adam(b1, b2, eps))
    if weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay, weight_decay_mask))
    parts.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*parts)


def adam(learning_rate: float | optax.Schedule = 1e-3) -> optax.GradientTransformation:
    """`torch.optim.Adam(lr)` defaults: betas 0.9/0.999, eps 1e-8, bias correction, no decay."""
    return optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8)


def _leaf_name(path) -> str:
    key = path[-1]
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def no_decay_for_bias_and_norm(params) -> Any:
    """Weight-decay mask (True = decay) exempting every `bias`, `gamma` and `beta` leaf."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _leaf_name(path) not in NO_DECAY_NAMES, params)


def pretrain_frozen_mask(params) -> Any:
    """Freeze mask (True = frozen) selecting the unused head `params['fc']` of LimuBertModel4Pretrain."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: len(path) > 0 and _leaf_name(path[:1]) in PRETRAIN_FROZEN, params
    )


def freeze(tx: optax.GradientTransformation, frozen_mask: Mask) -> optax.GradientTransformation:
    """Wraps `tx` so that tensors selected by `frozen_mask` (True = frozen) get zero updates.

    Frozen tensors are hidden from `tx` (no optimizer state, no decay, no schedule effect),
    which is what PyTorch optimizers do for parameters whose `.grad` stays None.
    """

    def labels(tree):
        mask = frozen_mask(tree) if callable(frozen_mask) else frozen_mask
        return jax.tree.map(lambda frozen: "frozen" if frozen else "trainable", mask)

    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)


OPTIMIZERS = ("adam", "bert_adam")
DECAY_GROUPINGS = ("reference", "no_decay_for_bias_and_norm")


def pretrain_optimizer(
    name: str = "adam",
    *,
    learning_rate: float = 1e-3,
    total_steps: int | None = None,
    warmup: float = 0.1,
    decay_grouping: str = "reference",
    frozen_mask: Mask = pretrain_frozen_mask,
    **bert_adam_kwargs,
) -> optax.GradientTransformation:
    """An optimizer for LimuBertModel4Pretrain params with the unused head `fc` frozen.

    name: 'adam' (the public release: constant `learning_rate`; `total_steps` and `warmup` are
    ignored) or 'bert_adam' (the seed; needs `total_steps`, its `t_total`, for the
    warmup-linear schedule). decay_grouping (BertAdam only): 'reference'
    decays every tensor as the reference effectively did; 'no_decay_for_bias_and_norm' exempts
    biases and LayerNorm parameters as it meant to.
    """
    if name == "adam":
        if decay_grouping != "reference" or bert_adam_kwargs:
            raise ValueError("'adam' takes no weight-decay options")
        tx = adam(learning_rate)
    elif name == "bert_adam":
        if total_steps is None:
            raise ValueError("'bert_adam' needs total_steps for its warmup-linear schedule")
        if decay_grouping not in DECAY_GROUPINGS:
            raise ValueError(f"decay_grouping must be one of {DECAY_GROUPINGS}, got {decay_grouping!r}")
        mask = no_decay_for_bias_and_norm if decay_grouping == "no_decay_for_bias_and_norm" else None
        tx = bert_adam(learning_rate, warmup=warmup, total_steps=total_steps,
                       weight_decay_mask=mask, **bert_adam_kwargs)
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
    return freeze(tx, frozen_mask)
