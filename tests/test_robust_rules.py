"""The robust aggregation rules on hand-made update sets with known answers."""

import numpy as np
import pytest
import tensorflow as tf

from tffpipe.aggregation import robust_rules as rules


def _updates(n=7, d=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _run(rule, updates, **kwargs):
    out = rules.RULES[rule](tf.constant(updates), **kwargs)
    return out.aggregate.numpy(), {k: float(v) for k, v in out.figures.items()}


@pytest.mark.parametrize("n", [6, 7])
def test_median_is_numpys(n):
    updates = _updates(n)
    aggregate, figures = _run("median", updates)
    np.testing.assert_allclose(aggregate, np.median(updates, axis=0), atol=1e-6)
    assert figures == {"clients": n}


@pytest.mark.parametrize("fraction, k", [(0.0, 0), (0.2, 2), (0.34, 3)])
def test_trimmed_mean_drops_k_values_from_each_end_of_every_coordinate(fraction, k):
    updates = _updates(10)
    aggregate, figures = _run("trimmed_mean", updates, trim_fraction=fraction)
    expected = np.sort(updates, axis=0)[k : 10 - k].mean(axis=0)
    np.testing.assert_allclose(aggregate, expected, atol=1e-6)
    assert figures["trimmed_per_side"] == k


def _with_attackers(honest=7, attackers=2, d=4, seed=1):
    rng = np.random.default_rng(seed)
    good = rng.normal(0.0, 0.1, size=(honest, d)) + 1.0
    bad = rng.normal(0.0, 0.1, size=(attackers, d)) - 50.0
    return np.concatenate([bad, good]).astype(np.float32), good


def _numpy_krum_scores(x, f):
    n = len(x)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.array([np.sort(np.delete(d[i], i))[: n - f - 2].sum() for i in range(n)])


def test_krum_picks_the_update_with_the_lowest_score_an_honest_one():
    updates, good = _with_attackers()
    aggregate, figures = _run("krum", updates, num_byzantine=2)
    best = int(np.argmin(_numpy_krum_scores(updates, 2)))
    np.testing.assert_allclose(aggregate, updates[best], atol=1e-5)
    assert best >= 2  # an honest one
    assert figures == {"selected": 1, "rejected": 8}


def test_multi_krum_averages_the_n_minus_f_best():
    updates, good = _with_attackers()
    aggregate, figures = _run("multi_krum", updates, num_byzantine=2)
    chosen = np.argsort(_numpy_krum_scores(updates, 2))[:7]
    np.testing.assert_allclose(aggregate, updates[chosen].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(aggregate, good.mean(axis=0), atol=1e-5)
    assert figures == {"selected": 7, "rejected": 2}


def _numpy_bulyan(x, f):
    pool = list(range(len(x)))
    chosen = []
    for _ in range(len(x) - 2 * f):
        scores = _numpy_krum_scores(x[pool], f)
        chosen.append(pool.pop(int(np.argmin(scores))))
    selected = x[chosen]
    beta = len(selected) - 2 * f
    median = np.median(selected, axis=0)
    order = np.argsort(np.abs(selected - median), axis=0)[:beta]
    return np.take_along_axis(selected, order, axis=0).mean(axis=0)


def test_bulyan_matches_a_reference_and_ignores_the_attackers():
    updates, good = _with_attackers(honest=9, attackers=2)  # n = 11 >= 4f + 3
    aggregate, figures = _run("bulyan", updates, num_byzantine=2)
    np.testing.assert_allclose(aggregate, _numpy_bulyan(updates, 2), atol=1e-5)
    assert np.all(np.abs(aggregate - 1.0) < 0.5)
    assert figures == {"selected": 7, "rejected": 4, "kept_per_coordinate": 3}


def _numpy_weiszfeld(x, smoothing=1e-6, iterations=1000):
    z = x.mean(axis=0)
    for _ in range(iterations):
        w = 1 / np.maximum(np.linalg.norm(x - z, axis=1), smoothing)
        z = (w[:, None] * x).sum(0) / w.sum()
    return z


def test_geometric_median_is_weiszfelds():
    updates, _ = _with_attackers(honest=7, attackers=3, seed=2)
    aggregate, figures = _run("geometric_median", updates.astype(np.float32))
    reference = _numpy_weiszfeld(updates.astype(np.float64))
    np.testing.assert_allclose(aggregate, reference, atol=1e-4)
    assert 1 <= figures["iterations"] <= 100
    # The geometric median of collinear points is their median.
    line = np.array([[0.0], [1.0], [2.0], [10.0], [50.0]], np.float32)
    np.testing.assert_allclose(_run("geometric_median", line)[0], [2.0], atol=1e-3)
