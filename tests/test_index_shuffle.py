"""`data.index_shuffle` is grain's epoch permutation, computed for whole arrays."""

from __future__ import annotations

import numpy as np
import pytest
from grain._src.python.experimental.index_shuffle.python import index_shuffle_module as grain_index_shuffle

from limubert_jax.data import index_shuffle


# Lengths around the cipher's block widths (16 bits at least, even widths, a power of two whose
# last index needs one bit more; tiny ones, resolved by a table) and LIMU-BERT-X's corpus size.
@pytest.mark.parametrize("length", [2, 3, 17, 1670, 2**14 + 1, 2**16, 2**16 + 1, 2**20 + 1, 5 * 10**9])
def test_positions_are_graines(length):
    rng = np.random.default_rng(length % 1000)
    for seed in (0, 7, 2**32 - 1):
        positions = rng.integers(0, length, 50)
        want = [grain_index_shuffle.index_shuffle(int(p), max_index=length - 1, seed=seed, rounds=4)
                for p in positions]
        np.testing.assert_array_equal(index_shuffle.shuffled_positions(positions, length=length, seed=seed), want)


@pytest.mark.parametrize("length", [5, 70_001])
def test_a_whole_epoch_is_a_permutation(length):
    got = index_shuffle.shuffled_positions(np.arange(length), length=length, seed=3)
    np.testing.assert_array_equal(np.sort(got), np.arange(length))
    assert not np.array_equal(got, np.arange(length))


def test_seed_seq_keys():
    # std::seed_seq's generation for one 32-bit seed (the C++ standard fixes the algorithm):
    # deterministic, four distinct words, and the seed read modulo 2**32 as grain passes it.
    keys = index_shuffle.round_keys(0)
    assert len(keys) == 4 and len(set(keys)) == 4 and all(0 <= k < 2**32 for k in keys)
    assert keys != index_shuffle.round_keys(1)
    positions = np.arange(100)
    np.testing.assert_array_equal(index_shuffle.shuffled_positions(positions, length=100, seed=5),
                                  index_shuffle.shuffled_positions(positions, length=100, seed=5 + 2**32))


def test_bad_positions():
    with pytest.raises(ValueError, match="positions"):
        index_shuffle.shuffled_positions(np.array([5]), length=5, seed=0)
    assert index_shuffle.shuffled_positions(np.array([0, 0]), length=1, seed=9).tolist() == [0, 0]
