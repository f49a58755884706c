"""Batches of the pretraining job, read through grain from the views `limubert_jax.data.loading`
opens (`load_pretrain_data(config.dataset)` / `load_data(config)`: a `PretrainData`).

* `train_batches(data, global_batch_size=..., seed=...)` is the infinite training stream:
  a grain `MapDataset` over the training windows, reshuffled every epoch from `seed`,
  batched per epoch with the remainder dropped, so batch k of the stream is global step k
  and `start_step=k` resumes exactly. Each JAX process gets its own rows of every global
  batch: a [global_batch_size // process_count, S, F] float32 array.
* `eval_batches(data, global_batch_size=...)` is one ordered pass over the validation
  windows: (raw [B_local, S, F] float32, weights [B_local] float32, 0 on padding rows).

Windows stay raw (physical units); normalization and masking happen in the train step.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import importlib
import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from limubert_jax.data import index_shuffle
from limubert_jax.data.loading import PretrainData

# Reads done ahead by background threads: blocks of training batches (`train_batches`, a
# block a few milliseconds of NumPy that mostly releases the GIL), or evaluation batches.
NUM_THREADS = 2
PREFETCH_BATCHES = 4
# A training read covers consecutive steps of about this many bytes of windows: one shuffle
# and one gather for dozens of batches, instead of a few dozen NumPy calls per batch.
BLOCK_BYTES = 16 << 20
# Training splits up to this size keep their windows in memory once read (`RowsKeptOnRead`);
# larger corpora are read from their records every epoch.
KEEP_IN_MEMORY_BYTES = 1 << 28


class RowsKeptOnRead:
    """A view whose rows, once read, are kept in memory: later epochs gather them from RAM
    instead of decoding their records again (the same float32 values, so the same stream).

    A batch of 128 UCI-sized windows took 15 ms of host CPU from the records and 5.5 ms from
    memory (the rest is grain's index shuffle), CPU that a 2-core machine otherwise takes from
    the train step running beside it. Kept only while the whole view fits in `limit_bytes`
    (None: KEEP_IN_MEMORY_BYTES); a larger one is read through every time. Safe for the input
    pipeline's reader threads (an epoch's batches hold distinct rows)."""

    def __init__(self, view, limit_bytes: int | None = None):
        self.view = view
        self.limit_bytes = KEEP_IN_MEMORY_BYTES if limit_bytes is None else limit_bytes
        self.rows: np.ndarray | None = None
        self.kept = np.zeros(len(view), bool)
        self.enabled = True
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.view)

    def read(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows `rows` of the view, stacked: [len(rows), S, F] float32."""
        rows = np.asarray(rows, dtype=np.int64)
        if not self.enabled:
            return self.view.read(rows)
        missing = rows[~self.kept[rows]]
        if len(missing):
            values = self.view.read(missing)
            with self._lock:
                if self.rows is None:
                    if len(self.view) * values[0].nbytes > self.limit_bytes:
                        self.enabled = False
                        return values  # nothing kept yet, so `missing` is all of `rows`
                    self.rows = np.empty((len(self.view), *values.shape[1:]), values.dtype)
                self.rows[missing] = values
                self.kept[missing] = True
        return self.rows[rows]


def _read_options(num_threads: int, prefetch: int):
    read_options = getattr(grain, "ReadOptions", None)
    if read_options is None:  # older grain (0.2.6) exports it from grain.python only
        read_options = importlib.import_module("grain.python").ReadOptions
    return read_options(num_threads=num_threads, prefetch_buffer_size=prefetch)


def _iterate(ds, num_threads: int, prefetch: int) -> Iterator:
    """Elements of a MapDataset in order, computed ahead by `num_threads` threads
    (0: in the caller's thread, nothing ahead)."""
    if num_threads <= 0 or prefetch <= 0:
        return (ds[i] for i in range(len(ds)))
    return iter(ds.to_iter_dataset(_read_options(num_threads, prefetch)))


def _shard(shard_options) -> tuple[int, int]:
    """(shard_index, shard_count); default: this JAX process among all of them."""
    if shard_options is None:
        shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    index, count = int(shard_options.shard_index), int(shard_options.shard_count)
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} out of range for {count} shards")
    return index, count


def _local_batch_size(global_batch_size: int, shard_count: int) -> int:
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if global_batch_size % shard_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by the {shard_count} JAX processes"
        )
    return global_batch_size // shard_count


def steps_per_epoch(data: PretrainData, global_batch_size: int) -> int:
    """Full global batches in one pass over the training windows (the remainder is dropped)."""
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    steps = len(data.train) // global_batch_size
    if steps == 0:
        raise ValueError(
            f"global_batch_size {global_batch_size} is larger than the training split of "
            f"{data.name}/{data.version} ({len(data.train)} windows)"
        )
    return steps


def train_rows(steps: np.ndarray, *, num_windows: int, global_batch_size: int, seed: int, lo: int = 0,
               local: int | None = None) -> np.ndarray:
    """The rows of the training split that global steps `steps` read: [len(steps), local] int64.

    Step k is batch k % steps_per_epoch of epoch e = k // steps_per_epoch, whose order is
    grain's `MapDataset.range(n).shuffle(seed).batch(B, drop_remainder=True).repeat()`: position
    p of epoch e holds row `index_shuffle(p, max_index=n - 1, seed=seed + e)` (`index_shuffle`,
    the same function on whole arrays). This process takes positions [lo, lo + local) of each
    global batch (None: all of it)."""
    steps = np.asarray(steps, dtype=np.int64)
    local = global_batch_size if local is None else local
    per_epoch = num_windows // global_batch_size
    epochs = steps // per_epoch
    positions = (steps % per_epoch)[:, None] * global_batch_size + lo + np.arange(local)[None, :]
    rows = np.empty_like(positions)
    for epoch in np.unique(epochs):  # one vectorised shuffle per epoch the steps touch
        at = epochs == epoch
        rows[at] = index_shuffle.shuffled_positions(positions[at], length=num_windows,
                                                    seed=(seed + int(epoch)) % 2**32)
    return rows


def train_batches(
    data: PretrainData,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    shard_options: Any = None,
    num_threads: int = NUM_THREADS,
    prefetch: int = PREFETCH_BATCHES,
) -> Iterator[np.ndarray]:
    """The infinite training stream; batch k is global step k.

    Epoch e is a permutation of the training windows drawn from (seed, e) (grain's
    `shuffle`, seed + e per epoch: `train_rows`), cut into `steps_per_epoch` global batches;
    the last `len(train) % global_batch_size` windows of each epoch's order are dropped.
    Starting at `start_step` yields exactly the batches a run from step 0 yields from there on.

    This process gets rows [i * B_local, (i + 1) * B_local) of every global batch, with
    i / n its shard (default `grain.sharding.ShardByJaxProcess`: the JAX process index and
    count) and B_local = global_batch_size // n: arrays [B_local, S, F] float32.

    Batches are read a block of consecutive steps at a time (`BLOCK_BYTES`): one vectorised
    shuffle and one gather from the split's window store (or a batched read of its records,
    kept in memory when the split is small: `RowsKeptOnRead`). `num_threads` background
    threads read `prefetch` blocks ahead (0: in the caller's thread); neither changes the
    stream.
    """
    shard_index, shard_count = _shard(shard_options)
    local = _local_batch_size(global_batch_size, shard_count)
    steps_per_epoch(data, global_batch_size)  # raises if the batch is larger than the split
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    view = data.train if getattr(data.train, "in_store", False) else RowsKeptOnRead(data.train)
    rows_of = functools.partial(train_rows, num_windows=len(view), global_batch_size=global_batch_size,
                                seed=int(seed), lo=shard_index * local, local=local)
    window_shape = (data.seq_len, data.num_features)
    block = max(1, BLOCK_BYTES // (local * 4 * data.seq_len * data.num_features))  # steps per read

    def read(first_step: int) -> np.ndarray:  # [block, B_local, S, F]
        rows = rows_of(np.arange(first_step, first_step + block))
        return view.read(rows.ravel()).reshape(*rows.shape, *window_shape)

    return _unblocked(_ahead(read, itertools.count(int(start_step), block), num_threads, prefetch))


def _unblocked(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The batches of each block in turn; closing it (or dropping it) stops the reader threads."""
    try:
        for windows in blocks:
            yield from windows
    finally:
        blocks.close()


def _ahead(map_fn: Callable, items: Iterator, num_threads: int, prefetch: int) -> Iterator:
    """map_fn over an infinite iterator, in order, with up to `prefetch` results computed ahead
    by `num_threads` threads (0: in the caller's thread, nothing ahead)."""
    if num_threads <= 0 or prefetch <= 0:
        yield from map(map_fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="limubert-input") as pool:
        pending = collections.deque(pool.submit(map_fn, next(items)) for _ in range(prefetch))
        try:
            while True:
                result = pending.popleft().result()
                pending.append(pool.submit(map_fn, next(items)))
                yield result
        finally:  # the consumer stopped (or failed): drop what was read ahead
            for future in pending:
                future.cancel()


def num_eval_batches(data: PretrainData, global_batch_size: int) -> int:
    """Batches in one pass of `eval_batches` (the last one padded)."""
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    return math.ceil(len(data.vali) / global_batch_size)


def eval_batches(
    data: PretrainData,
    *,
    global_batch_size: int,
    shard_options: Any = None,
    num_threads: int = NUM_THREADS,
    prefetch: int = PREFETCH_BATCHES,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One pass over the validation windows in split order.

    Yields (raw [B_local, S, F] float32, weights [B_local] float32): global batch b holds
    validation windows b * B .. b * B + B - 1, this process its rows [i * B_local,
    (i + 1) * B_local); rows past the end of the split are zeros with weight 0. Every
    process yields the same number of batches, `num_eval_batches(data, global_batch_size)`.
    """
    shard_index, shard_count = _shard(shard_options)
    local = _local_batch_size(global_batch_size, shard_count)
    view, n = data.vali, len(data.vali)
    shape = (local, data.seq_len, data.num_features)

    def batch(b: int) -> tuple[np.ndarray, np.ndarray]:
        rows = b * global_batch_size + shard_index * local + np.arange(local)
        valid = rows < n
        raw = np.zeros(shape, np.float32)
        if valid.any():
            raw[valid] = view.read(rows[valid])
        return raw, valid.astype(np.float32)

    ds = grain.MapDataset.range(num_eval_batches(data, global_batch_size)).map(batch)
    return _iterate(ds, num_threads, prefetch)
