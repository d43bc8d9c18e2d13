"""Builds the TFF learning and evaluation processes for a task and a config.

Every algorithm is a `tff.learning.algorithms` builder; the server optimizer
turns FedAvg into FedAdam, FedYogi or FedAdagrad (Reddi et al. 2021).
"""

from typing import Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tffpipe import config as config_lib
from tffpipe.aggregation.stack import AggregatorParams, build_aggregator  # re-exported
from tffpipe.tasks import Task

_OPTIMIZER_BUILDERS = {
    "sgd": tff.learning.optimizers.build_sgdm,
    "sgdm": tff.learning.optimizers.build_sgdm,
    "adam": tff.learning.optimizers.build_adam,
    "yogi": tff.learning.optimizers.build_yogi,
    "adagrad": tff.learning.optimizers.build_adagrad,
}


def build_optimizer(cfg: config_lib.OptimizerConfig) -> tff.learning.optimizers.Optimizer:
    """A `tff.learning.optimizers` optimizer from its config.

    Hyperparameters left at None keep TFF's defaults, except sgdm's momentum
    (0.9).
    """
    if cfg.name not in _OPTIMIZER_BUILDERS:
        raise config_lib.ConfigError(
            f"unknown optimizer {cfg.name!r}; valid: {', '.join(_OPTIMIZER_BUILDERS)}"
        )
    kwargs = {"learning_rate": cfg.learning_rate}
    if cfg.name == "sgdm":
        kwargs["momentum"] = 0.9 if cfg.momentum is None else cfg.momentum
    for field in ("beta_1", "beta_2", "epsilon"):
        if getattr(cfg, field) is not None:
            kwargs[field] = getattr(cfg, field)
    return _OPTIMIZER_BUILDERS[cfg.name](**kwargs)


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
    task: Task, cfg: config_lib.RunConfig, train_client_ids: Sequence[str]
) -> tuple[tff.learning.templates.LearningProcess, AggregatorParams]:
    """The configured algorithm with the configured aggregation stack.

    Args:
      task: the task.
      cfg: the run's settings.
      train_client_ids: the training clients (for DP noise calibration).

    Returns:
      The learning process and the aggregator's derived parameters.
    """
    try:
        return _build_learning_process(task, cfg, train_client_ids)
    except config_lib.ConfigError:
        raise
    except ValueError as e:  # TFF's own checks of aggregator parameters
        raise config_lib.ConfigError(f"TFF rejected the settings: {e}") from e


def loop_implementation(runtime_cfg: config_lib.RuntimeConfig) -> tff.learning.LoopImplementation:
    """How client training iterates over a dataset on the given runtime.

    TFF's default, `DATASET_REDUCE`, runs each batch inside a `ReduceDataset`
    op; run in-process that took 4.4x as long per client as `DATASET_ITERATOR`
    (digits CNN: 0.95 vs 0.22 s for 10 clients), which is also the loop GPUs
    need. The C++ runtime keeps TFF's default. Both loops compute the same
    updates, so checkpoints move between runtimes.
    """
    if runtime_cfg.name == "inprocess":
        return tff.learning.LoopImplementation.DATASET_ITERATOR
    return tff.learning.LoopImplementation.DATASET_REDUCE


def _build_learning_process(task, cfg, train_client_ids):
    model_aggregator, params = build_aggregator(cfg, train_client_ids)
    model_fn = build_model_fn(task)
    name = cfg.algorithm.name
    loop = loop_implementation(cfg.runtime)
    weighting = (
        tff.learning.ClientWeighting.NUM_EXAMPLES
        if params.weighted
        else tff.learning.ClientWeighting.UNIFORM
    )
    if name == "fedsgd":
        # FedSGD only takes a weighted aggregator; a uniform one ignores weights.
        if not params.weighted:
            model_aggregator = tff.aggregators.as_weighted_aggregator(model_aggregator)
        process = tff.learning.algorithms.build_fed_sgd(
            model_fn,
            server_optimizer_fn=build_optimizer(cfg.server_optimizer),
            model_aggregator=model_aggregator,
            loop_implementation=loop,
        )
        return process, params
    client_optimizer = build_optimizer(cfg.client_optimizer)
    server_optimizer = build_optimizer(cfg.server_optimizer)
    if name == "mime_lite":
        # Mime-lite also uploads full-batch gradients: same stack, own state.
        gradient_aggregator, _ = build_aggregator(cfg, train_client_ids)
        builder_fn = (
            tff.learning.algorithms.build_weighted_mime_lite
            if params.weighted
            else tff.learning.algorithms.build_unweighted_mime_lite
        )
        kwargs = {"client_weighting": weighting} if params.weighted else {}
        process = builder_fn(
            model_fn,
            base_optimizer=client_optimizer,
            server_optimizer=server_optimizer,
            model_aggregator=model_aggregator,
            full_gradient_aggregator=gradient_aggregator,
            loop_implementation=loop,
            **kwargs,
        )
        return process, params
    common = dict(
        client_optimizer_fn=client_optimizer,
        server_optimizer_fn=server_optimizer,
        model_aggregator=model_aggregator,
        loop_implementation=loop,
    )
    if params.weighted:
        common["client_weighting"] = weighting
    if name == "fedprox":
        builder_fn = (
            tff.learning.algorithms.build_weighted_fed_prox
            if params.weighted
            else tff.learning.algorithms.build_unweighted_fed_prox
        )
        process = builder_fn(
            model_fn, proximal_strength=cfg.algorithm.resolved_proximal_strength, **common
        )
    else:
        builder_fn = (
            tff.learning.algorithms.build_weighted_fed_avg
            if params.weighted
            else tff.learning.algorithms.build_unweighted_fed_avg
        )
        process = builder_fn(model_fn, **common)
    return process, params


def build_evaluation_process(
    task: Task, runtime_cfg: config_lib.RuntimeConfig = config_lib.RuntimeConfig()
) -> tff.learning.templates.LearningProcess:
    """Federated evaluation of given model weights on held-out clients."""
    return tff.learning.algorithms.build_fed_eval(
        build_model_fn(task), loop_implementation=loop_implementation(runtime_cfg)
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
