import numpy as np
import pytest

from tffpipe.tasks import partition


def _labels(n=1000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, size=n)


def test_every_example_is_assigned_exactly_once():
    labels = _labels()
    parts = partition.dirichlet_label_skew(labels, 20, 0.5, seed=1)
    assert len(parts) == 20
    together = np.concatenate(parts)
    assert sorted(together.tolist()) == list(range(len(labels)))


def test_same_seed_same_partition_other_seed_other_partition():
    labels = _labels()
    a = partition.dirichlet_label_skew(labels, 10, 0.5, seed=3)
    b = partition.dirichlet_label_skew(labels, 10, 0.5, seed=3)
    c = partition.dirichlet_label_skew(labels, 10, 0.5, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_smaller_alpha_gives_more_label_skew():
    labels = _labels(5000)

    def mean_top_class_share(alpha):
        parts = partition.dirichlet_label_skew(labels, 20, alpha, seed=0, min_examples=1)
        shares = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
        return float(np.mean(shares))

    skewed, near_iid = mean_top_class_share(0.1), mean_top_class_share(100.0)
    assert skewed > 0.5
    assert near_iid < 0.2
    assert skewed > near_iid


@pytest.mark.parametrize("alpha", [0.05, 0.3, 10.0])
def test_every_client_gets_the_minimum_even_at_small_alpha(alpha):
    labels = _labels(1797)
    parts = partition.dirichlet_label_skew(labels, 50, alpha, seed=0, min_examples=5)
    assert min(len(p) for p in parts) >= 5
    assert sorted(np.concatenate(parts).tolist()) == list(range(1797))
    if alpha < 1:
        # Topping up keeps most clients dominated by few classes.
        top_share = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
        assert np.median(top_share) > 0.4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_clients=0, alpha=1.0), "num_clients must be at least 1"),
        (dict(num_clients=5, alpha=0.0), "alpha must be positive"),
        (dict(num_clients=500, alpha=1.0), "cannot give 500 clients"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        partition.dirichlet_label_skew(_labels(), seed=0, **kwargs)


def test_to_client_data_holds_the_chosen_examples():
    x = np.arange(10, dtype=np.float32)
    y = np.arange(10, dtype=np.int32) % 2
    data = partition.to_client_data({"x": x, "y": y}, [np.array([0, 2]), np.array([5])], ["a", "b"])
    assert sorted(data.client_ids) == ["a", "b"]
    got = [e["x"].numpy() for e in data.create_tf_dataset_for_client("a")]
    assert got == [0.0, 2.0]


def _covers_once(parts, n):
    return sorted(np.concatenate(parts).tolist()) == list(range(n))


def test_iid_gives_near_equal_clients_with_the_global_label_mix():
    labels = _labels(1000)
    parts = partition.iid(1000, 8, seed=0)
    assert _covers_once(parts, 1000)
    assert {len(p) for p in parts} == {125}
    shares = np.array([np.bincount(labels[p], minlength=10) / len(p) for p in parts])
    assert np.abs(shares - np.bincount(labels) / 1000).max() < 0.1


def test_shards_give_each_client_about_two_labels():
    labels = _labels(1000)
    parts = partition.label_shards(labels, 50, seed=0)
    assert _covers_once(parts, 1000)
    assert {len(p) for p in parts} == {20}
    # Two shards a client; a shard straddles a label boundary at most once.
    label_counts = [len(np.unique(labels[p])) for p in parts]
    assert max(label_counts) <= 4
    assert np.mean(label_counts) < 2.6
    other = partition.label_shards(labels, 50, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    with pytest.raises(ValueError, match="10 examples cannot give 20 shards"):
        partition.label_shards(np.zeros(10, int), 10, seed=0)


def test_quantity_skew_varies_sizes_not_labels():
    labels = _labels(5000)
    parts = partition.quantity_skew(5000, 10, 0.3, seed=0, min_examples=5)
    assert _covers_once(parts, 5000)
    sizes = sorted(len(p) for p in parts)
    assert sizes[0] >= 5
    assert sizes[-1] > 20 * sizes[2]  # very unequal sites
    big = max(parts, key=len)
    assert np.abs(np.bincount(labels[big], minlength=10) / len(big) - 0.1).max() < 0.05
    even = sorted(len(p) for p in partition.quantity_skew(5000, 10, 1000.0, seed=0))
    assert even[-1] < 1.2 * even[0]
