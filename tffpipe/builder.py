"""Builds the TFF learning and evaluation processes for a task and a config."""

import tensorflow as tf
import tensorflow_federated as tff

from tffpipe import config as config_lib
from tffpipe.tasks import Task

_OPTIMIZER_BUILDERS = {
    "sgd": lambda lr: tff.learning.optimizers.build_sgdm(learning_rate=lr),
    "sgdm": lambda lr: tff.learning.optimizers.build_sgdm(learning_rate=lr, momentum=0.9),
    "adam": lambda lr: tff.learning.optimizers.build_adam(learning_rate=lr),
}


def build_optimizer(cfg: config_lib.OptimizerConfig) -> tff.learning.optimizers.Optimizer:
    """A `tff.learning.optimizers` optimizer from its config."""
    if cfg.name not in _OPTIMIZER_BUILDERS:
        raise config_lib.ConfigError(
            f"unknown optimizer {cfg.name!r}; valid: {', '.join(_OPTIMIZER_BUILDERS)}"
        )
    return _OPTIMIZER_BUILDERS[cfg.name](cfg.learning_rate)


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


def build_learning_process(
    task: Task, cfg: config_lib.RunConfig
) -> tff.learning.templates.LearningProcess:
    """Weighted FedAvg (McMahan et al. 2017) with the configured optimizers."""
    return tff.learning.algorithms.build_weighted_fed_avg(
        build_model_fn(task),
        client_optimizer_fn=build_optimizer(cfg.client_optimizer),
        server_optimizer_fn=build_optimizer(cfg.server_optimizer),
    )


def build_evaluation_process(task: Task) -> tff.learning.templates.LearningProcess:
    """Federated evaluation of given model weights on held-out clients."""
    return tff.learning.algorithms.build_fed_eval(build_model_fn(task))


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
