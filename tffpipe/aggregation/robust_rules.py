"""Byzantine-robust aggregation rules over a round's client updates, in TensorFlow.

Each rule takes the round's updates as one matrix (a row per client, the
update's tensors flattened and concatenated) and returns the aggregate row
and what it did (`RuleOutput`). They run at the server inside a TFF
computation (`tffpipe.aggregation.collect`). TFF offers none of them (its
robust aggregation is clipping and zeroing); the references are given with
each rule.

`n` is the number of updates, `f` the number of Byzantine clients the rule
is told to tolerate (`--robust_num_byzantine`).
"""

import dataclasses
from collections.abc import Callable

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class RuleOutput:
    """An aggregate row and the rule's per-round figures (`robust/<name>`, float32)."""

    aggregate: tf.Tensor
    figures: dict[str, tf.Tensor]


def _count(x) -> tf.Tensor:
    return tf.cast(x, tf.float32)


def coordinate_median(updates: tf.Tensor, **_) -> RuleOutput:
    """Coordinate-wise median (Yin et al., ICML 2018); the mean of the two middle values for even n."""
    n = tf.shape(updates)[0]
    ordered = tf.sort(updates, axis=0)
    low, high = ordered[(n - 1) // 2], ordered[n // 2]
    return RuleOutput((low + high) / 2, {"clients": _count(n)})


def trimmed_mean(updates: tf.Tensor, *, trim_fraction: float, **_) -> RuleOutput:
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018).

    Drops the floor(trim_fraction * n) largest and smallest values of every
    coordinate and averages the rest.
    """
    n = tf.shape(updates)[0]
    k = tf.cast(tf.floor(trim_fraction * tf.cast(n, tf.float32)), tf.int32)
    ordered = tf.sort(updates, axis=0)
    kept = ordered[k : n - k]
    return RuleOutput(tf.reduce_mean(kept, axis=0), {"trimmed_per_side": _count(k), "clients": _count(n)})


def _pairwise_sq_distances(updates: tf.Tensor) -> tf.Tensor:
    norms = tf.reduce_sum(tf.square(updates), axis=1)
    sq = norms[:, None] + norms[None, :] - 2.0 * tf.matmul(updates, updates, transpose_b=True)
    return tf.maximum(sq, 0.0)


def krum_scores(updates: tf.Tensor, num_byzantine: int) -> tf.Tensor:
    """Krum's score of each update: the sum of its n - f - 2 smallest squared
    distances to the others (Blanchard et al., NeurIPS 2017)."""
    n = tf.shape(updates)[0]
    distances = _pairwise_sq_distances(updates)
    # Leave each update's distance to itself out by making it the largest.
    distances += tf.linalg.diag(tf.fill([n], float("inf")))
    neighbours = tf.maximum(n - num_byzantine - 2, 1)
    nearest = -tf.math.top_k(-distances, k=neighbours).values
    return tf.reduce_sum(nearest, axis=1)


def krum(updates: tf.Tensor, *, num_byzantine: int, **_) -> RuleOutput:
    """Krum: the one update with the lowest score (Blanchard et al., NeurIPS 2017)."""
    n = tf.shape(updates)[0]
    best = tf.argmin(krum_scores(updates, num_byzantine))
    return RuleOutput(updates[best], {"selected": _count(1), "rejected": _count(n - 1)})


def multi_krum(updates: tf.Tensor, *, num_byzantine: int, **_) -> RuleOutput:
    """Multi-Krum: the mean of the n - f updates with the lowest scores."""
    n = tf.shape(updates)[0]
    m = tf.maximum(n - num_byzantine, 1)
    chosen = tf.math.top_k(-krum_scores(updates, num_byzantine), k=m).indices
    return RuleOutput(
        tf.reduce_mean(tf.gather(updates, chosen), axis=0),
        {"selected": _count(m), "rejected": _count(n - m)},
    )


def bulyan(updates: tf.Tensor, *, num_byzantine: int, **_) -> RuleOutput:
    """Bulyan (El Mhamdi et al., ICML 2018) over Krum.

    Picks theta = n - 2f updates by Krum one at a time (each pick leaves the
    pool), then per coordinate averages the beta = theta - 2f values closest
    to that coordinate's median. Needs n >= 4f + 3.
    """
    n = tf.shape(updates)[0]
    f = num_byzantine
    theta = n - 2 * f
    pool = tf.range(n)

    def pick(_, state):
        pool, chosen = state
        scores = krum_scores(tf.gather(updates, pool), f)
        best = tf.argmin(scores, output_type=tf.int32)
        chosen = tf.concat([chosen, pool[best : best + 1]], axis=0)
        pool = tf.concat([pool[:best], pool[best + 1 :]], axis=0)
        return pool, chosen

    _, chosen = _repeat(pick, theta, (pool, tf.zeros([0], tf.int32)))
    selected = tf.gather(updates, chosen)  # [theta, d]
    beta = theta - 2 * f
    median = coordinate_median(selected).aggregate
    closest = tf.math.top_k(-tf.transpose(tf.abs(selected - median)), k=beta).indices  # [d, beta]
    values = tf.gather(tf.transpose(selected), closest, batch_dims=1)
    return RuleOutput(
        tf.reduce_mean(values, axis=1),
        {"selected": _count(theta), "rejected": _count(n - theta), "kept_per_coordinate": _count(beta)},
    )


def _repeat(step, times, state):
    """`state = step(i, state)` for i < times, with shapes that may change."""
    i = tf.constant(0)
    pool, chosen = state
    _, pool, chosen = tf.while_loop(
        lambda i, *_: i < times,
        lambda i, pool, chosen: (i + 1, *step(i, (pool, chosen))),
        (i, pool, chosen),
        shape_invariants=(i.shape, tf.TensorShape([None]), tf.TensorShape([None])),
    )
    return pool, chosen


def geometric_median(
    updates: tf.Tensor, *, iterations: int = 100, smoothing: float = 1e-6, tolerance: float = 1e-7, **_
) -> RuleOutput:
    """RFA: the smoothed Weiszfeld geometric median (Pillutla et al., IEEE TSP 2022).

    Repeats z <- sum_i w_i x_i / sum_i w_i with w_i = 1 / max(smoothing,
    |z - x_i|), from the mean, until z moves less than `tolerance` (relative)
    or `iterations` are done.
    """
    z0 = tf.reduce_mean(updates, axis=0)

    def step(i, z, _):
        distances = tf.maximum(tf.norm(updates - z, axis=1), smoothing)
        w = 1.0 / distances
        new = tf.reduce_sum(w[:, None] * updates, axis=0) / tf.reduce_sum(w)
        moved = tf.norm(new - z) / tf.maximum(tf.norm(z), smoothing)
        return i + 1, new, moved

    steps, z, _ = tf.while_loop(
        lambda i, z, moved: tf.logical_and(i < iterations, moved > tolerance),
        step,
        (tf.constant(0), z0, tf.constant(float("inf"))),
    )
    return RuleOutput(z, {"iterations": _count(steps)})


RULES: dict[str, Callable[..., RuleOutput]] = {
    "median": coordinate_median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
    "bulyan": bulyan,
    "geometric_median": geometric_median,
}
