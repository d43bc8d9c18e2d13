"""Puts a run's TFF processes together: each component gets its own settings, never the configuration.

The algorithm comes from `learning.registry`, the aggregation stack from
`aggregation.stack`, an update attack from `attacks.registry`, and how
clients iterate over data from the runtime; `config.components` hands each
its settings and context.
"""

from typing import Any
from collections.abc import Sequence

import tensorflow_federated as tff

from tffpipe.aggregation import registry as aggregation_registry
from tffpipe.aggregation import stack as stack_lib
from tffpipe.attacks import registry as attack_registry
from tffpipe.config import components
from tffpipe.errors import ConfigError
from tffpipe.learning import base
from tffpipe.learning import builder
from tffpipe.learning import compose
from tffpipe.learning import optimizers
from tffpipe.learning import registry
from tffpipe.learning import stacked
from tffpipe.privacy import calibration
from tffpipe.tasks import Task


def build_aggregator(cfg: Any, train_client_ids: Sequence[str]) -> tuple[Any, stack_lib.Stack]:
    """The model-update aggregation factory of the run's layers.

    Args:
      cfg: the run's settings (validated, fitted to the task).
      train_client_ids: the training clients, for privacy calibration.

    Returns:
      The factory (weighted unless the client weighting is uniform) and what
      the stack derived.

    Raises:
      ConfigError: a setting that only fails once the task is known.
    """
    run = components.selection(cfg)
    layers = [aggregation_registry.get(key) for key in run.layers]
    dp_layer = next((layer for layer in layers if layer.dp_mechanism), None)
    noise, solved = (None, False)
    if dp_layer is not None:
        noise, solved = calibration.resolve_noise_multiplier(cfg, dp_layer, train_client_ids)
    return stack_lib.build(components.stack_settings(cfg), run, noise, solved)


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
    model_aggregator, stack = build_aggregator(cfg, train_client_ids)
    algorithm = registry.get(cfg.algorithm.name)
    parts = base.Parts(
        model_fn=builder.build_model_fn(task),
        client_optimizer=optimizers.build_optimizer(cfg.client_optimizer) if algorithm.uses_client_optimizer else None,
        server_optimizer=optimizers.build_optimizer(cfg.server_optimizer),
        model_aggregator=model_aggregator,
        make_aggregator=lambda: build_aggregator(cfg, train_client_ids)[0],
        weighted=stack.weighted,
        loop_implementation=loop_implementation or tff.learning.LoopImplementation.DATASET_REDUCE,
        context=components.algorithm_context(cfg),
        task=task,
    )
    try:
        attack = attack_registry.get(cfg.attack.name) if cfg.attack.name != "none" else None
        if attack is not None and attack.poisons_updates:
            from tffpipe.attacks import client_work

            options = attack.options(components.attack_context(cfg))
            wrapped = client_work.wrap(algorithm.client_work(parts), attack, options)
            process = compose.learning_process(parts, wrapped)
            stacked.attach(process, lambda: "an update attack wraps the client work")
            return process, stack
        process = algorithm.build(parts)
        stacked.attach(process, lambda: algorithm.stacked_form(parts))
        return process, stack
    except ConfigError:
        raise
    except ValueError as e:  # TFF's own checks of aggregator parameters
        raise ConfigError(f"TFF rejected the settings: {e}") from e


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
    if cfg is None:
        return registry.get("fedavg").evaluation_process(task, base.Context(name="fedavg"), loop_implementation)
    algorithm = registry.get(cfg.algorithm.name)
    return algorithm.evaluation_process(task, components.algorithm_context(cfg), loop_implementation)


def initial_weights(task: Task, cfg: Any) -> Any:
    """The seeded initial model weights of the run's algorithm."""
    return registry.get(cfg.algorithm.name).initial_weights(task, components.algorithm_context(cfg))


def keras_model(task: Task, cfg: Any, model_weights: Any) -> Any:
    """A Keras model of the task holding `model_weights`, as the run's algorithm lays them out."""
    return registry.get(cfg.algorithm.name).keras_model(task, components.algorithm_context(cfg), model_weights)
