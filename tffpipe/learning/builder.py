"""Builds the TFF learning and evaluation processes for a task and a config.

The algorithm comes from `learning.registry`, the aggregation stack from
`aggregation.stack`, and how clients iterate over data from the runtime.
"""

from typing import Any
from collections.abc import Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tffpipe.aggregation import stack as stack_lib
from tffpipe.attacks import registry as attack_registry
from tffpipe.errors import ConfigError
from tffpipe.learning import base
from tffpipe.learning import compose
from tffpipe.learning import optimizers
from tffpipe.learning import registry
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


def build_learning_process(
    task: Task, cfg: Any, train_client_ids: Sequence[str], loop_implementation: Any = None
) -> tuple[tff.learning.templates.LearningProcess, stack_lib.Stack]:
    """The configured algorithm with the configured aggregation stack.

    Args:
      task: the task.
      cfg: the run's settings.
      train_client_ids: the training clients (for DP noise calibration).
      loop_implementation: how clients iterate over data (the runtime's
        choice); None: TFF's default.

    Returns:
      The learning process and what the aggregation stack derived.

    Raises:
      ConfigError: TFF (or a user's plug-in) rejected the settings.
    """
    model_aggregator, stack = stack_lib.build_aggregator(cfg, train_client_ids)
    algorithm = registry.get(cfg.algorithm.name)
    parts = base.Parts(
        model_fn=build_model_fn(task),
        client_optimizer=optimizers.build_optimizer(cfg.client_optimizer) if algorithm.uses_client_optimizer else None,
        server_optimizer=optimizers.build_optimizer(cfg.server_optimizer),
        model_aggregator=model_aggregator,
        make_aggregator=lambda: stack_lib.build_aggregator(cfg, train_client_ids)[0],
        weighted=stack.weighted,
        loop_implementation=loop_implementation or tff.learning.LoopImplementation.DATASET_REDUCE,
        config=cfg,
        task=task,
    )
    try:
        attack = attack_registry.get(cfg.attack.name) if cfg.attack.name != "none" else None
        if attack is not None and attack.poisons_updates:
            from tffpipe.attacks import client_work

            wrapped = client_work.wrap(algorithm.client_work(parts), attack, attack.options(cfg))
            return compose.learning_process(parts, wrapped), stack
        return algorithm.build(parts), stack
    except ConfigError:
        raise
    except ValueError as e:  # TFF's own checks of aggregator parameters
        raise ConfigError(f"TFF rejected the settings: {e}") from e


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


def build_evaluation_process(
    task: Task, loop_implementation: Any = None, cfg: Any = None
) -> tff.learning.templates.LearningProcess:
    """Federated evaluation of the algorithm's model weights on held-out clients.

    Args:
      task: the task.
      loop_implementation: how clients iterate over data; None: TFF's default.
      cfg: the run's settings (their algorithm decides how to evaluate); None:
        TFF's `build_fed_eval`, as for FedAvg.
    """
    loop_implementation = loop_implementation or tff.learning.LoopImplementation.DATASET_REDUCE
    algorithm = registry.get(cfg.algorithm.name if cfg is not None else "fedavg")
    return algorithm.evaluation_process(task, cfg, loop_implementation)


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
