"""grain's epoch permutation (`MapDataset.shuffle`), computed for many positions at once.

The training stream orders each epoch with grain's index shuffle: position p of epoch e
holds window `index_shuffle(p, max_index=n - 1, seed=seed + e, rounds=4)` of the split, a
4-round Simon-style Feistel cipher on the smallest even bit width (at least 16) that holds
n - 1, walked until the result falls inside [0, n). grain evaluates it one position per
Python call (a few microseconds each): at a million windows per second that call alone
would be several cores. `shuffled_positions` is the same function on a NumPy array, so
the fast reader yields exactly the stream grain yields (tests/test_index_shuffle.py checks
it against grain's own function); the round keys come from C++'s `std::seed_seq`, whose
generation algorithm the C++ standard fixes ([rand.util.seedseq]).
"""

from __future__ import annotations

import functools
import math

import numpy as np

ROUNDS = 4  # what grain's MapDataset.shuffle uses
_MIN_BLOCK_BITS = 16
_MASK32 = 0xFFFFFFFF


@functools.lru_cache(maxsize=64)
def round_keys(seed: int, rounds: int = ROUNDS) -> tuple[int, ...]:
    """`std::seed_seq{seed}.generate(keys, keys + rounds)`: the cipher's per-round keys."""
    n, v = rounds, [seed & _MASK32]
    keys = [0x8B8B8B8B] * n
    s = len(v)
    t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
    p = (n - t) // 2
    q = p + t
    m = max(s + 1, n)

    def mix(x: int) -> int:
        return x ^ (x >> 27)

    for k in range(m):
        r1 = (1664525 * mix(keys[k % n] ^ keys[(k + p) % n] ^ keys[(k - 1) % n])) & _MASK32
        r2 = (r1 + (s if k == 0 else (k % n + v[k - 1]) if k <= s else k % n)) & _MASK32
        keys[(k + p) % n] = (keys[(k + p) % n] + r1) & _MASK32
        keys[(k + q) % n] = (keys[(k + q) % n] + r2) & _MASK32
        keys[k % n] = r2
    for k in range(m, m + n):
        r3 = (1566083941 * mix((keys[k % n] + keys[(k + p) % n] + keys[(k - 1) % n]) & _MASK32)) & _MASK32
        r4 = (r3 - k % n) & _MASK32
        keys[(k + p) % n] ^= r3
        keys[(k + q) % n] ^= r4
        keys[k % n] = r4
    return tuple(keys)


def block_bits(max_index: int) -> int:
    """The cipher's block width for permutations of [0, max_index]: ceil(log2(max_index))
    rounded up to even, at least 16 (grain computes it in double precision, as here)."""
    bits = int(math.ceil(math.log2(max_index)))
    return max(bits + bits % 2, _MIN_BLOCK_BITS)


def _encrypt(values: np.ndarray, keys: tuple[int, ...], word: int) -> np.ndarray:
    mask = np.uint64((1 << word) - 1)
    w = np.uint64(word)

    def rotl(x, r):
        r = np.uint64(r)
        return ((x << r) | (x >> (w - r))) & mask

    def f(x):
        return (rotl(x, 1) & rotl(x, 8)) ^ rotl(x, 2)

    left, right = (values >> w) & mask, values & mask
    for i in range(0, len(keys), 2):
        left ^= f(right)
        left ^= np.uint64(keys[i]) & mask
        right ^= f(left)
        right ^= np.uint64(keys[i + 1]) & mask
    return (left << w) | right


@functools.lru_cache(maxsize=4)
def _small_permutation(length: int, keys: tuple[int, ...], word: int) -> np.ndarray:
    """The whole permutation of [0, length) for a length far below the 16-bit minimum block:
    cycle walking would take up to thousands of steps per position there, so the cipher runs
    once over its whole domain and the walks are resolved by pointer doubling."""
    domain = np.arange(1 << (2 * word), dtype=np.int64)
    step = _encrypt(domain.astype(np.uint64), keys, word).astype(np.int64)
    # stop[y]: y inside [0, length), else where the cipher sends it; squaring the map doubles
    # the walked steps. Walks from the positions' first images end inside (each lies on a
    # cycle through its position); cycles wholly outside never do, and are never asked for.
    stop = np.where(domain < length, domain, step)
    starts = step[:length]
    while (stop[starts] >= length).any():
        stop = stop[stop]
    return stop[starts]


def shuffled_positions(positions: np.ndarray, *, length: int, seed: int, rounds: int = ROUNDS) -> np.ndarray:
    """grain's `index_shuffle(p, max_index=length - 1, seed=seed, rounds=rounds)` for every
    p of `positions` (ints in [0, length)): int64 array of the same shape."""
    positions = np.asarray(positions, dtype=np.int64)
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if positions.size and (positions.min() < 0 or positions.max() >= length):
        raise ValueError(f"positions must lie in [0, {length})")
    if length == 1:
        return np.zeros_like(positions)
    keys = round_keys(int(seed) % 2**32, rounds)
    word = block_bits(length - 1) // 2
    if length <= 1 << (2 * word - 2):  # only below the minimum block: wider blocks hold under 4 x length
        return _small_permutation(length, keys, word)[positions]
    out = positions.astype(np.uint64).ravel()
    todo = np.arange(out.size)
    while todo.size:  # cycle walking: encrypt again what fell outside [0, length)
        out[todo] = _encrypt(out[todo], keys, word)
        todo = todo[out[todo] >= np.uint64(length)]
    return out.astype(np.int64).reshape(positions.shape)
