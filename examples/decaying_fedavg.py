"""A user's algorithm: FedAvg whose client learning rate decays every round."""

import tensorflow as tf
import tensorflow_federated as tff


def decaying_fedavg(
    model_fn,
    *,
    client_optimizer,
    server_optimizer,
    model_aggregator,
    loop_implementation,
    initial_rate: float = 0.1,
    decay: float = 0.9,
):
    """Client SGD at initial_rate x decay^round (TFF's optimizer schedule).

    Args:
      initial_rate: the client learning rate of round 0.
      decay: the factor applied to it every round.
    """
    del client_optimizer  # the schedule builds the clients' SGD itself
    return tff.learning.algorithms.build_weighted_fed_avg_with_optimizer_schedule(
        model_fn,
        client_learning_rate_fn=lambda r: initial_rate * decay ** tf.cast(r, tf.float32),
        client_optimizer_fn=tff.learning.optimizers.build_sgdm,
        server_optimizer_fn=server_optimizer,
        model_aggregator=model_aggregator,
        loop_implementation=loop_implementation,
    )
