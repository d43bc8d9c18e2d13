"""A round's clients trained on stacked copies of the model, many per TensorFlow call.

Before the round's per-client work (`client_half.ClientHalf`, over the
stacked form's process: aggregation only), each chunk of clients is read
into padded example tensors and trained in one call
(`stacked_training.StackedTrainer`); each client's result becomes its data
for that work. Chunks are as large as memory allows
(`STACKED_VALUES_PER_CALL`).
"""

from typing import Any
from collections.abc import Sequence

import tensorflow as tf

from tffpipe.learning import stacked
from tffpipe.runtimes import client_half
from tffpipe.runtimes import stacked_training

# Values one layer may hold for a whole call (all its clients' batches), 64
# MiB of float32: the digits CNN (4,608 values an example in its second
# convolution's patches) at batch 20 fits 182 clients a call; the EMNIST CNN
# (165,888) 5.
STACKED_VALUES_PER_CALL = 1 << 24

# Rounds with fewer clients run TFF's client work, grouped, instead: reading
# a round's examples costs about 40-70 ms whatever its size (tf.data sets up
# the pipeline for every call). benchmarks/cohort_throughput.py, digits,
# wall seconds a round, stacked against grouped: 10 clients 0.102/0.055, 50
# 0.207/0.300, 200 0.665/1.111, 1,000 2.451/4.808; the lines cross near 23.
STACKED_MIN_CLIENTS = 24


class StackedClients:
    """Turns a round's client datasets into their training results, a chunk of clients per call.

    Args:
      form: the process's stacked form.
      clients_per_call: clients trained per call; 0 picks as many as
        `STACKED_VALUES_PER_CALL` allows.
    """

    def __init__(self, form: stacked.StackedForm, clients_per_call: int = 0):
        self.form = form
        self.trainer = form.make_trainer()
        per_client = self.trainer.model.largest_per_example * self.trainer.batch_size
        self.clients_per_call = clients_per_call or max(1, STACKED_VALUES_PER_CALL // per_client)
        self._gather: dict[int, Any] = {}

    def client_results(self, state: Any, client_data: Sequence[Any]) -> list[Any]:
        """Each client's data for the stacked form's process: its trained delta, weight and metrics.

        Raises:
          client_half.ClientWorkFailed: naming a client whose data fails to build.
        """
        weights, learning_rate = self.form.client_inputs(state)
        x, y, counts = self._examples(client_data)
        results: list[Any] = []
        for start in range(0, len(client_data), self.clients_per_call):
            end = min(len(client_data), start + self.clients_per_call)
            longest = int(tf.reduce_max(counts[start:end]))
            deltas, client_weights, metrics = self.trainer.train(
                weights, x[start:end, :longest], y[start:end, :longest], counts[start:end], learning_rate
            )
            results.extend(_per_client(deltas, client_weights, metrics, end - start))
        return results

    def _examples(self, client_data: Sequence[Any]):
        """(x, y, counts) of every client, padded; built in one call when the data allows."""
        keyed = getattr(client_data, "traced_builder", None)
        keyed = keyed() if keyed is not None else None
        if keyed is not None:
            build, ids, seeds = keyed
            try:
                return self._gather_function(build)(tf.constant(ids), tf.constant(seeds, tf.int64))
            except (tf.errors.OpError, ValueError, TypeError):
                pass  # built again one at a time below, which names the client that fails
        datasets = []
        for i in range(len(client_data)):
            try:
                datasets.append(client_data[i])
            except (tf.errors.OpError, ValueError, TypeError) as error:
                raise client_half.ClientWorkFailed(i, error) from error
        return stacked_training.padded_examples(datasets)

    def _gather_function(self, build: Any):
        """A traced function: (client ids, seeds) -> the clients' padded examples, built inside the call."""
        key = id(build)
        if key not in self._gather:
            traced = tf.function(
                lambda ids, seeds: stacked_training.keyed_examples(build, ids, seeds),
                input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int64)],
            )
            # Keeps `build` alive with its entry, so its id is never reused.
            self._gather[key] = (traced, build)
        return self._gather[key][0]


def _per_client(deltas: list[tf.Tensor], weights: tf.Tensor, metrics: Any, size: int) -> list[Any]:
    """The trainer's stacked results as one value per client."""
    split_deltas = [tf.unstack(d, num=size) for d in deltas]
    split_weights = tf.unstack(weights, num=size)
    split_metrics = {name: [tf.unstack(v, num=size) for v in values] for name, values in metrics.items()}
    return [
        stacked.StackedForm.client_data(
            [d[k] for d in split_deltas],
            split_weights[k],
            type(metrics)((name, [v[k] for v in values]) for name, values in split_metrics.items()),
        )
        for k in range(size)
    ]
