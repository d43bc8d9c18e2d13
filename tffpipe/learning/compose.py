"""A learning process from a client work, composed as TFF's FedAvg and FedProx builders compose theirs.

TFF's `build_weighted_fed_avg` takes no client work of the caller's, so a
run whose client work is wrapped (update-poisoning attacks) is composed
here from the same TFF pieces: the broadcast distributor, the aggregation
stack, the client work and the optimizer finalizer.
"""

from typing import Any

import numpy as np
import tensorflow_federated as tff

from tffpipe.learning import base


def learning_process(parts: base.Parts, client_work: Any) -> tff.learning.templates.LearningProcess:
    """Composes `client_work` with the distributor, the stack and the server optimizer.

    Args:
      parts: what the algorithm is built from (model, server optimizer, stack).
      client_work: a `ClientWorkProcess` whose result is the model delta.
    """

    @tff.tensorflow.computation
    def initial_model_weights():
        return tff.learning.models.ModelWeights.from_model(parts.model_fn())

    weights_type = initial_model_weights.type_signature.result
    aggregator = parts.model_aggregator
    if not parts.weighted:
        aggregator = tff.aggregators.as_weighted_aggregator(aggregator)
    return tff.learning.templates.compose_learning_process(
        initial_model_weights,
        tff.learning.templates.build_broadcast_process(weights_type),
        client_work,
        aggregator.create(weights_type.trainable, tff.TensorType(np.float32)),
        tff.learning.templates.build_apply_optimizer_finalizer(parts.server_optimizer, weights_type),
    )
