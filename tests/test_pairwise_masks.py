"""Pairwise masking: the server's sum is exact, a single masked vector is noise."""

import numpy as np
import pytest
from scipy import stats

from tffpipe.aggregation.protocols import pairwise_masks


@pytest.mark.parametrize(
    "kind, bound, num_clients",
    [("bitwidth", 8, 7), ("max_input", 1000, 5), ("modular", 97, 6), ("bitwidth", 30, 50)],
)
def test_the_masked_sum_equals_the_plain_sum(kind, bound, num_clients):
    rng = np.random.default_rng(0)
    high = {"bitwidth": 2**bound, "max_input": bound + 1, "modular": bound}[kind]
    values = [rng.integers(0, high, size=(40, 3)) for _ in range(num_clients)]
    modulus = pairwise_masks.exact_sum_modulus(kind, bound, num_clients)
    masks = pairwise_masks.PairwiseMasks(num_clients)
    masked = [masks.mask(i, 0, v, modulus) for i, v in enumerate(values)]
    total = pairwise_masks.masked_sum(masked, modulus)
    plain = np.sum(values, axis=0)
    expected = plain % bound if kind == "modular" else plain
    np.testing.assert_array_equal(total.astype(np.int64), expected)
    # Each client's vector really changed, and the masks do not cancel alone.
    assert all(not np.array_equal(m.astype(np.int64), v) for m, v in zip(masked, values))


def test_the_sum_needs_every_client():
    masks = pairwise_masks.PairwiseMasks(4)
    values = [np.full(1000, 5) for _ in range(4)]
    masked = [masks.mask(i, 0, v, 2**20) for i, v in enumerate(values)]
    partial = pairwise_masks.masked_sum(masked[:3], 2**20)
    assert not np.array_equal(partial, np.full(1000, 15))


def test_a_masked_vector_is_indistinguishable_from_uniform():
    """Chi-square goodness of fit of one client's masked zeros to uniform on Z_m."""
    modulus, size = 64, 64_000
    masks = pairwise_masks.PairwiseMasks(5, seeds={(i, j): 1000 * i + j for i in range(5) for j in range(i + 1, 5)})
    masked = masks.mask(2, 0, np.zeros(size, dtype=np.int64), modulus)
    counts = np.bincount(masked.astype(np.int64), minlength=modulus)
    _, p_value = stats.chisquare(counts)
    assert p_value > 0.01, counts
    # The plain input (all zeros) would fail the same test outright.
    zeros = np.bincount(np.zeros(size, dtype=np.int64), minlength=modulus)
    assert stats.chisquare(zeros)[1] < 1e-10


def test_different_leaves_get_different_masks():
    masks = pairwise_masks.PairwiseMasks(3, seeds={(0, 1): 1, (0, 2): 2, (1, 2): 3})
    a = masks.mask(0, 0, np.zeros(50, dtype=np.int64), 2**16)
    b = masks.mask(0, 1, np.zeros(50, dtype=np.int64), 2**16)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    "values, modulus, message",
    [
        (np.array([-1, 2]), 16, "outside \\[0, 16\\)"),
        (np.array([16]), 16, "outside \\[0, 16\\)"),
        (np.array([1]), 2**64, "modulus"),
    ],
)
def test_out_of_range_inputs_are_refused(values, modulus, message):
    with pytest.raises(ValueError, match=message):
        pairwise_masks.PairwiseMasks(2).mask(0, 0, values, modulus)
