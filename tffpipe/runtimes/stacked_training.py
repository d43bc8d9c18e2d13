"""FedAvg's local training of K clients at once, on stacked copies of the model.

What TFF's client work (`tff.learning.templates.build_model_delta_client_work`)
computes for one client, computed here for K clients in one TensorFlow call:
starting from the broadcast weights, one SGD step per batch of the client's
data, then its model delta (initial minus trained), its weight and its
training metrics' unfinalized values. Clients' examples come padded to a
common length with a count each; the step at batch index j trains every
client that has a j-th batch, and a client's loss is the mean over its own
examples of that batch, so each client follows exactly the steps it would
alone (a client with no j-th batch gets a zero gradient, which plain SGD
turns into no change).

As in TFF: a client whose delta holds a NaN or an infinity sends a zero
delta with weight 0 and zeroed metrics.
"""

import collections
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from tffpipe.runtimes import stacked_model
from tffpipe.runtimes.stacked_model import NotStackable

# One client's unfinalized metric variables, updated for one step:
# (its current values [K] each, predictions [K, b, ...], y [K, b, ...],
# mask [K, b], batch sizes [K], batch losses [K]) -> new values.
MetricStep = Callable[..., list[tf.Tensor]]


def _mean_of(per_example: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> MetricStep:
    """A Keras mean metric of `per_example(y_true, y_pred)`: total and count of its values."""

    def step(values, predictions, y, mask, sizes, losses):
        k, b = tf.shape(mask)[0], tf.shape(mask)[1]
        flat_y, flat_p = _merge_clients(y), _merge_clients(predictions)
        # The metric sees the K clients' batches as one batch of K*b; its
        # per-example values are the same, then summed per client.
        per = tf.cast(tf.reshape(per_example(flat_y, flat_p), [k, b, -1]), tf.float32)
        inner = tf.cast(tf.shape(per)[2], tf.float32)
        return [values[0] + tf.reduce_sum(tf.where(mask[:, :, None], per, 0.0), [1, 2]), values[1] + sizes * inner]

    return step


def _loss_mean(values, predictions, y, mask, sizes, losses):
    return [values[0] + losses * sizes, values[1] + sizes]


def _count_examples(values, predictions, y, mask, sizes, losses):
    return [values[0] + tf.cast(sizes, values[0].dtype)]


def _count_batches(values, predictions, y, mask, sizes, losses):
    return [values[0] + tf.cast(sizes > 0, values[0].dtype)]


# Keras mean metrics (no options that change them) by class name.
_MEAN_METRICS = {
    "SparseCategoricalAccuracy": tf.keras.metrics.sparse_categorical_accuracy,
    "MeanSquaredError": tf.keras.metrics.mean_squared_error,
    "MeanAbsoluteError": tf.keras.metrics.mean_absolute_error,
}


def _metric_step(metric: tf.keras.metrics.Metric) -> MetricStep:
    """How one of TFF's Keras-model metrics accumulates a step (`NotStackable` if unknown)."""
    kind = type(metric).__name__
    if kind == "_WeightedMeanLossMetric":
        return _loss_mean
    if kind == "NumExamplesCounter":
        return _count_examples
    if kind == "NumBatchesCounter":
        return _count_batches
    if kind in _MEAN_METRICS:
        return _mean_of(_MEAN_METRICS[kind])
    raise NotStackable(f"metric {metric.name!r} ({kind}) has no stacked form")


class StackedTrainer:
    """Trains K clients of one Keras model with SGD in one call.

    Args:
      keras_model: a model of the task (its architecture; weights unused).
      loss: the task's Keras loss (reduced over the batch as Keras does).
      metrics: the TFF model's metrics, in the order of its
        `report_local_unfinalized_metrics` (`get_metrics()`).
      batch_size: the clients' batch size.
      weight_by_examples: a client's weight is its number of examples
        (FedAvg's default); otherwise 1.

    Raises:
      NotStackable: the model, loss or a metric has no stacked form.
    """

    def __init__(
        self,
        keras_model: tf.keras.Model,
        loss: tf.keras.losses.Loss,
        metrics: Sequence[tf.keras.metrics.Metric],
        batch_size: int,
        weight_by_examples: bool,
    ):
        self.model = stacked_model.stack_model(keras_model)
        if not isinstance(loss, tf.keras.losses.Loss) or loss.reduction not in ("auto", "sum_over_batch_size"):
            raise NotStackable(f"loss {loss!r} is not a Keras loss averaged over the batch")
        config = dict(loss.get_config(), reduction="none")
        self._per_example_loss = type(loss).from_config(config)
        self._metrics = [(m.name, _metric_step(m), [v.dtype for v in m.variables]) for m in metrics]
        self._weight_shapes = [tuple(w.shape) for w in keras_model.trainable_weights]
        self.batch_size = batch_size
        self._weight_by_examples = weight_by_examples
        self._train: Any = None  # traced at the first call, for any number of clients and examples

    def train(
        self, initial: Sequence[tf.Tensor], x: tf.Tensor, y: tf.Tensor, counts: tf.Tensor, learning_rate: tf.Tensor
    ) -> tuple[list[tf.Tensor], tf.Tensor, collections.OrderedDict]:
        """Each client's FedAvg client update.

        Args:
          initial: the broadcast trainable weights, unstacked.
          x, y: every client's examples, [K, N, ...], padded after its count.
          counts: each client's number of examples, [K].
          learning_rate: the client SGD learning rate (scalar).

        Returns:
          (deltas: per weight, [K, *shape], initial minus trained;
           weights: [K] float32;
           metrics: name -> list of [K] tensors, the clients' unfinalized
           values in the TFF model's order).
        """
        initial = [tf.convert_to_tensor(w) for w in initial]
        x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
        if self._train is None:

            def clients_of(t: tf.Tensor) -> tf.TensorSpec:
                return tf.TensorSpec([None, None, *t.shape[2:]], t.dtype)

            self._train = tf.function(
                self._train_body,
                input_signature=[
                    [tf.TensorSpec(w.shape, w.dtype) for w in initial],
                    clients_of(x),
                    clients_of(y),
                    tf.TensorSpec([None], tf.int32),
                    tf.TensorSpec([], tf.float32),
                ],
            )
        return self._train(initial, x, y, tf.cast(counts, tf.int32), tf.cast(learning_rate, tf.float32))

    def _train_body(self, initial, x, y, counts, learning_rate):
        k = tf.shape(counts)[0]
        batch = self.batch_size
        start_params = [tf.tile(w[None], tf.concat([[k], tf.ones_like(tf.shape(w))], 0)) for w in initial]
        params = list(start_params)
        values = [[tf.zeros([k], dtype) for dtype in dtypes] for _, _, dtypes in self._metrics]
        steps = (tf.reduce_max(tf.concat([counts, [0]], 0)) + batch - 1) // batch
        for step in tf.range(steps):
            start = step * batch
            xb, yb = x[:, start : start + batch], y[:, start : start + batch]
            mask = (start + tf.range(tf.shape(xb)[1]))[None, :] < counts[:, None]
            sizes = tf.reduce_sum(tf.cast(mask, tf.float32), 1)
            with tf.GradientTape() as tape:
                tape.watch(params)
                predictions = self.model.forward(params, xb)
                losses = self._client_losses(yb, predictions, mask, sizes)
                total = tf.reduce_sum(losses)
            gradients = tape.gradient(total, params)
            params = [p - learning_rate * g for p, g in zip(params, gradients)]
            values = [
                step_fn(v, predictions, yb, mask, sizes, losses) for (_, step_fn, _), v in zip(self._metrics, values)
            ]
        return self._results(start_params, params, values, k)

    def _client_losses(self, y, predictions, mask, sizes):
        """Each client's loss on its examples of the batch, [K]: Keras' mean over the batch."""
        k, b = tf.shape(mask)[0], tf.shape(mask)[1]
        flat_y, flat_p = _merge_clients(y), _merge_clients(predictions)
        per_example = tf.reshape(self._per_example_loss(flat_y, flat_p), [k, b, -1])
        inner = tf.cast(tf.shape(per_example)[2], tf.float32)
        kept = tf.where(mask[:, :, None], per_example, 0.0)
        return tf.reduce_sum(kept, [1, 2]) / tf.maximum(sizes * inner, 1.0)

    def _results(self, start_params, params, values, k):
        deltas = [s - p for s, p in zip(start_params, params)]
        finite = tf.ones([k], tf.bool)
        for d in deltas:
            finite &= tf.reduce_all(tf.reshape(tf.math.is_finite(d), [k, -1]), 1)
        deltas = [tf.where(_expand(finite, d), d, tf.zeros_like(d)) for d in deltas]
        examples = next(
            (v[0] for (name, _, _), v in zip(self._metrics, values) if name == "num_examples"),
            None,
        )
        if self._weight_by_examples:
            if examples is None:
                raise NotStackable("the model reports no num_examples to weight clients by")
            weights = tf.cast(examples, tf.float32)
        else:
            weights = tf.ones([k], tf.float32)
        weights = tf.where(finite, weights, 0.0)
        metrics = collections.OrderedDict(
            (name, [tf.where(finite, v, tf.zeros_like(v)) for v in vs])
            for (name, _, _), vs in zip(self._metrics, values)
        )
        return deltas, weights, metrics


def _merge_clients(t: tf.Tensor) -> tf.Tensor:
    """[K, b, ...] as one batch [K*b, ...]."""
    return tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0))


def _expand(flags: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """[K] flags broadcastable against a [K, ...] tensor."""
    return tf.reshape(flags, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], 0))


def padded_examples(datasets: Sequence[tf.data.Dataset]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Clients' batched (x, y) datasets as padded examples: (x [K, N, ...], y [K, N, ...], counts [K]).

    A dataset's batches, in order, are its examples in the order training
    reads them (shuffles and epochs included: they come before the
    batching), so batching them again by the batch size gives the same
    batches. Also works inside a `tf.function`.

    Raises:
      NotStackable: an element is not an (x, y) pair of tensors.
    """
    spec = datasets[0].element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(s, tf.TensorSpec) for s in spec)):
        raise NotStackable(f"client data must be (x, y) pairs of tensors, not {spec}")
    empty = tuple(tf.zeros([0, *s.shape[1:]], s.dtype) for s in spec)
    flat = [d.reduce(empty, lambda a, b: (tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0))) for d in datasets]
    counts = tf.stack([tf.shape(x)[0] for x, _ in flat])
    longest = tf.reduce_max(counts)

    def pad(t: tf.Tensor) -> tf.Tensor:
        rest = tf.zeros([len(t.shape) - 1, 2], tf.int32)
        return tf.pad(t, tf.concat([[[0, longest - tf.shape(t)[0]]], rest], 0))

    return tf.stack([pad(x) for x, _ in flat]), tf.stack([pad(y) for _, y in flat]), counts


def keyed_examples(build: Callable[[tf.Tensor, tf.Tensor], tf.data.Dataset], ids: tf.Tensor, seeds: tf.Tensor):
    """Like `padded_examples`, for the datasets `build(ids[k], seeds[k])`, in one tf.data pipeline.

    One pipeline over every client (`flat_map`) instead of one reduce per
    client: 200 digits clients took 2.5 s as 200 reductions in one graph.
    Call it inside a `tf.function`; `build` is a traced dataset function.
    """
    k = tf.shape(ids)[0]

    def client(index):
        return build(ids[index], seeds[index]).unbatch().map(lambda x, y: (index, x, y))

    every = tf.data.Dataset.range(tf.cast(k, tf.int64)).flat_map(client)
    spec = every.element_spec
    empty = tuple(tf.zeros([0, *s.shape], s.dtype) for s in spec)
    # Batches of 2^16: TensorFlow reserves room for a whole batch up front.
    owner, x, y = every.batch(1 << 16).reduce(
        empty, lambda a, b: tuple(tf.concat([old, new], 0) for old, new in zip(a, b))
    )
    owner = tf.cast(owner, tf.int32)
    counts = tf.math.bincount(owner, minlength=k, maxlength=k, dtype=tf.int32)
    position = tf.range(tf.shape(owner)[0]) - tf.gather(tf.cumsum(counts, exclusive=True), owner)
    where = tf.stack([owner, position], 1)
    longest = tf.reduce_max(tf.concat([counts, [0]], 0))

    def scatter(t: tf.Tensor) -> tf.Tensor:
        return tf.scatter_nd(where, t, tf.concat([[k, longest], tf.shape(t)[1:]], 0))

    return scatter(x), scatter(y), counts
