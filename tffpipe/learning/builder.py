"""What every algorithm builds from a task: the model function, the seeded initial weights, a one-client trainer.

`tffpipe/program/assembly.py` puts a run's processes together from these, the
algorithm, the aggregation stack and the runtime's choices.
"""

from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

from tffpipe.tasks import Task


def build_model_fn(task: Task):
    """A no-argument function returning a fresh `tff.learning` model of the task."""
    input_spec = task.input_spec

    def model_fn() -> tff.learning.models.VariableModel:
        return tff.learning.models.from_keras_model(
            task.model_builder(),
            loss=task.loss_builder(),
            input_spec=input_spec,
            metrics=task.metrics_builder(),
        )

    return model_fn


def build_single_client_trainer(model_fn, client_optimizer: Any, loop_implementation: Any) -> Any:
    """A process whose round on one client returns that client's locally trained model.

    FedAvg with a plain mean and server SGD at learning rate 1: the server's
    new model is the one client's model after local training (for
    personalization's fine-tuning and FedBuff's client updates).
    """
    return tff.learning.algorithms.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=client_optimizer,
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0),
        model_aggregator=tff.aggregators.MeanFactory(),
        loop_implementation=loop_implementation,
    )


def initial_model_weights(task: Task, seed: int) -> tff.learning.models.ModelWeights:
    """Seeded initial weights, built eagerly so a seed gives the same model.

    `process.initialize()` runs the Keras initializers inside the TFF runtime,
    where the Python seed does not reach them; building the model here with
    `tf.keras.utils.set_random_seed` makes runs reproducible.
    """
    tf.keras.utils.set_random_seed(seed)
    model = task.model_builder()
    return tff.learning.models.ModelWeights(
        trainable=[v.numpy() for v in model.trainable_variables],
        non_trainable=[v.numpy() for v in model.non_trainable_variables],
    )
