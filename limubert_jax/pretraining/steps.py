"""The masked-reconstruction objective and its jitted, sharded train and eval steps.

Raw windows in physical units go in; normalization (docs/reference.md §1) and span masking (docs/reference.md §4)
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
from jax.sharding import Mesh, PartitionSpec

from limubert_jax.data import masking
from limubert_jax.data.normalization import normalize
from limubert_jax.models import encoder as encoder_lib
from limubert_jax.models.encoder import LimuBertConfig, LimuBertModel4Pretrain
from limubert_jax.runtime import cpu_devices, precision
from limubert_jax.runtime.sharding import DATA_AXIS, batch_sharded, replicated, stacked_batch_sharded


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


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype_of(name: str):
    """The jnp dtype of `config.train.compute_dtype`; unknown names are a ValueError."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype {name!r}: use one of {', '.join(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


def cast_floats(tree, dtype):
    """Every float32 leaf of `tree` as `dtype` (the identity for float32)."""
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if x.dtype == jnp.float32 else x, tree)


def squared_errors(params, model_config: LimuBertConfig, masked, positions, targets,
                   compute_dtype=jnp.float32, encoder_chunk: int | None = None) -> jax.Array:
    """Per-window sum of squared reconstruction errors over the masked positions: [B].

    `compute_dtype` bfloat16 runs the model on bfloat16 copies of the parameters and inputs
    (LayerNorm and softmax statistics stay float32); the gradient of the cast returns float32
    gradients to the float32 parameters, and the error is summed in float32.
    `encoder_chunk`: the encoder's work split (`encoder.encode`'s `chunk`; None: the backend's).
    """
    predictions = LimuBertModel4Pretrain(model_config).apply(
        {"params": cast_floats(params, compute_dtype)}, masked.astype(compute_dtype), positions, encoder_chunk)
    return jnp.sum(jnp.square(predictions.astype(jnp.float32) - targets), axis=(1, 2))


# The train step's work split on CPU (see `loss_and_grads`), measured on 2 cores with base_v1
# and BertAdam: chunks of 8 windows train 13% faster than chunks of 16 at batch 32 and as fast
# at batch 128. Forward passes alone (validation, embeddings) keep the encoder's 16
# (`encoder.ENCODER_CHUNK`: 8 is 25% slower there).
GRADIENT_CHUNK = 8
# Chunk gradients taken side by side in each iteration of the loop over chunks, on a CPU device
# with more than one core: two independent gradients that XLA:CPU's runtime puts on two cores.
# At batch 128 on one device of 2 cores this ran 4-7% faster than two encoder streams inside
# each chunk (`encoder.encode_streams`), and as fast at 32; four side by side, or two of 4 or 16
# windows, were slower. A device with one core (`runtime.cpu_devices`) takes one chunk at a
# time: two were 10-20% slower there.
GRADIENT_CHUNKS_PER_ITERATION = 2


def chunks_per_iteration() -> int:
    """GRADIENT_CHUNKS_PER_ITERATION where a CPU device has several cores (or off CPU), else 1."""
    if jax.default_backend() == "cpu" and cpu_devices.cores_per_device() == 1:
        return 1
    return GRADIENT_CHUNKS_PER_ITERATION


def loss_and_grads(params, masked, positions, targets, *, model_config: LimuBertConfig,
                   compute_dtype=jnp.float32, encoder_chunk: int | None = None):
    """(mean squared error over all masked targets, its gradient) for masked [B, S, F],
    positions [B, M], targets [B, M, F].

    With chunks (`encoder_chunk` windows, None: GRADIENT_CHUNK on CPU, else 0)
    and more windows than a chunk, the gradient is taken chunk by chunk in a `lax.scan` and
    summed: each chunk's backward pass runs right after its forward pass, on activations
    still in cache, instead of recomputing them later (`encoder.encode`'s loop does that
    when differentiated as a whole). Same values up to the order of float32 sums; ~20%
    faster on 2 CPU cores. Each loop iteration takes `chunks_per_iteration()` chunks'
    gradients, independent of each other, each chunk's encoder whole (no streams). Chunk k
    holds rows k, k + n, k + 2n, ... (n chunks), so a batch that a caller hands over split
    across devices stays split inside every chunk (the jitted steps hand each device its own
    rows instead, `over_devices`). The batch is padded to whole chunks by repeating its
    windows at weight 0.
    """
    chunk = encoder_lib.default_chunk(GRADIENT_CHUNK) if encoder_chunk is None else encoder_chunk
    batch = masked.shape[0]
    total = targets.size

    def loss_of(params, masked, positions, targets, weights=None, encoder_chunk=chunk):
        errors = squared_errors(params, model_config, masked, positions, targets, compute_dtype, encoder_chunk)
        return jnp.sum(errors if weights is None else errors * weights) / total

    if chunk <= 0 or batch <= chunk:
        return jax.value_and_grad(loss_of)(params, masked, positions, targets)
    n = -(-batch // chunk)
    rows = jnp.arange(n * chunk)

    def chunked(a):
        return a.reshape(chunk, n, *a.shape[1:]).swapaxes(0, 1)

    def padded(a):
        return a if n * chunk == batch else a[rows % batch]

    def add_chunk(totals, chunk_inputs):
        value_and_grads = jax.value_and_grad(loss_of)(params, *chunk_inputs, encoder_chunk=0)
        return jax.tree_util.tree_map(jnp.add, totals, value_and_grads), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, params))
    weights = (rows < batch).astype(jnp.float32)
    inputs = tuple(chunked(padded(a)) for a in (masked, positions, targets)) + (chunked(weights),)
    (loss, grads), _ = jax.lax.scan(add_chunk, zeros, inputs, unroll=chunks_per_iteration())
    return loss, grads


def over_devices(fn, mesh: Mesh | None, reduce):
    """`fn(params, *batch)` run on each device's rows of the batch arrays (a `shard_map` over
    the mesh's `data` axis, params replicated) and its outputs combined over the devices by
    `reduce` (`jax.lax.pmean` or `psum`); `fn` itself without a mesh.

    Each device runs its part on its own, instead of XLA partitioning one program across
    them: on CPU, with one device per core (`runtime.cpu_devices`), each core computes its
    rows' gradient without sharing ops with the other, and the devices combine their results
    once. Elsewhere it is the same data parallelism that XLA's partitioner would compile.
    """
    if mesh is None:
        return fn

    def per_device(params, *batch):
        return reduce(fn(params, *batch), DATA_AXIS)

    def run(params, *batch):
        in_specs = (PartitionSpec(),) + (PartitionSpec(DATA_AXIS),) * len(batch)
        # check_vma off: the chunk loop's carry starts replicated (zeros) and becomes per-device.
        return jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=PartitionSpec(),
                             check_vma=False)(params, *batch)

    return run


def train_step(state: TrainState, raw: jax.Array, rng: jax.Array, *, model_config: LimuBertConfig,
               mask_config: MaskConfig, tx: optax.GradientTransformation, compute_dtype=jnp.float32,
               matmul_precision: str = "highest", encoder_chunk: int | None = None, mesh: Mesh | None = None):
    """One optimizer step on the mean squared error over all masked (B, M, F) targets.

    raw: [B, S, F_raw] raw windows. Returns (new state, {"loss": loss before the update}).
    Parameters and optimizer state stay float32 whatever `compute_dtype` (see `squared_errors`).
    The forward and backward matmuls run at `matmul_precision` (see `limubert_jax.runtime.precision`);
    `encoder_chunk`: see `loss_and_grads`. With a `mesh`, each device takes the loss and
    gradient of its rows of the batch (every device the same number) and the devices average
    them (`over_devices`).
    """
    masked, positions, targets = mask_batch(jax.random.fold_in(rng, state.step), raw, model_config, mask_config)
    gradient = functools.partial(loss_and_grads, model_config=model_config, compute_dtype=compute_dtype,
                                 encoder_chunk=encoder_chunk)
    with precision.matmul_precision(matmul_precision):
        loss, grads = over_devices(gradient, mesh, jax.lax.pmean)(state.params, masked, positions, targets)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {"loss": loss}


def train_steps(state: TrainState, raws: jax.Array, rng: jax.Array, **step_kwargs):
    """`train_step` over a stack of batches raws [K, B, S, F_raw] as one `lax.scan`: the same
    K updates as K calls, one dispatch. Returns (new state, {"loss": [K]})."""

    def one(state, raw):
        state, metrics = train_step(state, raw, rng, **step_kwargs)
        return state, metrics["loss"]

    state, losses = jax.lax.scan(one, state, raws)
    return state, {"loss": losses}


def epoch_order(key: jax.Array, num_windows: int, steps: int, batch_size: int) -> jax.Array:
    """The windows of one device-resident epoch: a permutation of `num_windows` under `key`,
    cut into `steps` batches [steps, batch_size] (the remainder dropped, as the host pipeline does)."""
    return jax.random.permutation(key, num_windows)[: steps * batch_size].reshape(steps, batch_size)


def resident_epoch(state: TrainState, windows: jax.Array, epoch_key: jax.Array, rng: jax.Array, *,
                   steps: int, batch_size: int, batch_sharding=None, **step_kwargs):
    """One epoch on training windows held on device, windows [N, S, F_raw], as one program:
    the shuffle (`epoch_order(epoch_key, ...)`), the batch gathers, masking and `steps`
    train steps. Returns (new state, {"loss": [steps]}). `batch_sharding` lays each gathered
    batch out over the mesh's `data` axis."""
    order = epoch_order(epoch_key, windows.shape[0], steps, batch_size)

    def one(state, rows):
        raw = windows[rows]
        if batch_sharding is not None:
            raw = jax.lax.with_sharding_constraint(raw, batch_sharding)
        state, metrics = train_step(state, raw, rng, **step_kwargs)
        return state, metrics["loss"]

    state, losses = jax.lax.scan(one, state, order)
    return state, {"loss": losses}


def eval_step(params, raw: jax.Array, weights: jax.Array, key: jax.Array, *, model_config: LimuBertConfig,
              mask_config: MaskConfig, encoder_chunk: int | None = None, mesh: Mesh | None = None):
    """Masked squared error of a validation batch with masks drawn from a fixed `key`.

    raw: [B, S, F_raw]; weights: [B], 1 for real windows and 0 for padding.
    Returns (sum of squared errors, number of target values), to be summed over batches.
    With a `mesh`, each device computes its rows' sums (`over_devices`).
    """
    masked, positions, targets = mask_batch(key, raw, model_config, mask_config)

    def sums(params, masked, positions, targets, weights):
        errors = squared_errors(params, model_config, masked, positions, targets, encoder_chunk=encoder_chunk)
        per_window = targets.shape[1] * targets.shape[2]
        return jnp.sum(errors * weights), jnp.sum(weights) * per_window

    return over_devices(sums, mesh, jax.lax.psum)(params, masked, positions, targets, weights)


# The jit_* factories below are memoized on their (hashable) arguments: another run in the
# same process with the same settings (a sweep, a notebook, a resume, the tests) gets the
# program already traced and compiled instead of tracing, lowering and loading it again.
_PROGRAMS_KEPT = 32


@functools.lru_cache(maxsize=_PROGRAMS_KEPT)
def jit_train_step(mesh: Mesh, **step_kwargs):
    """`train_step(state, raw, rng, **step_kwargs)` compiled for `mesh`: state replicated
    (and donated), batch split on `data`."""
    step = functools.partial(train_step, mesh=mesh, **step_kwargs)
    rep = replicated(mesh)
    return jax.jit(step, in_shardings=(rep, batch_sharded(mesh), rep), out_shardings=(rep, rep),
                   donate_argnums=(0,))


@functools.lru_cache(maxsize=_PROGRAMS_KEPT)
def jit_train_steps(mesh: Mesh, **step_kwargs):
    """`train_steps(state, raws, rng, **step_kwargs)` compiled for `mesh`: raws [K, B, ...]
    split on `data` along B; one compile per distinct K."""
    steps = functools.partial(train_steps, mesh=mesh, **step_kwargs)
    rep = replicated(mesh)
    return jax.jit(steps, in_shardings=(rep, stacked_batch_sharded(mesh), rep), out_shardings=(rep, rep),
                   donate_argnums=(0,))


@functools.lru_cache(maxsize=_PROGRAMS_KEPT)
def jit_resident_epoch(mesh: Mesh, *, steps: int, batch_size: int, **step_kwargs):
    """`resident_epoch(state, windows, epoch_key, rng)` compiled for `mesh` (`step_kwargs`:
    `train_step`'s): the windows replicated on every device (IMU datasets are tens of MB),
    each batch split on `data`."""
    epoch = functools.partial(resident_epoch, steps=steps, batch_size=batch_size,
                              batch_sharding=batch_sharded(mesh), mesh=mesh, **step_kwargs)
    rep = replicated(mesh)
    return jax.jit(epoch, in_shardings=(rep, rep, rep, rep), out_shardings=(rep, rep), donate_argnums=(0,))


@functools.lru_cache(maxsize=_PROGRAMS_KEPT)
def jit_eval_step(mesh: Mesh, *, model_config: LimuBertConfig, mask_config: MaskConfig,
                  encoder_chunk: int | None = None):
    """`eval_step(params, raw, weights, key)` compiled for `mesh`."""
    step = functools.partial(eval_step, model_config=model_config, mask_config=mask_config,
                             encoder_chunk=encoder_chunk, mesh=mesh)
    rep, data = replicated(mesh), batch_sharded(mesh)
    return jax.jit(step, in_shardings=(rep, data, data, rep), out_shardings=(rep, rep))
