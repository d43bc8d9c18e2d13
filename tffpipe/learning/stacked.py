"""The stacked form of a FedAvg process: its clients trained outside TFF's client work.

A runtime that trains many clients at once on stacked copies of the model
(`tffpipe/runtimes/stacked_training.py`) hands each client's result (its
model delta, weight and unfinalized training metrics) to a second learning
process, composed here from the same broadcast, aggregation stack and server
optimizer as the run's, whose client work only passes those results on.
Both processes have the same state, so rounds of either continue each other
and checkpoints are the same; everything after training (clipping, noise,
secure sums, robust rules, the server optimizer) is TFF's work, unchanged.
"""

import collections
import dataclasses
from typing import Any
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe import compat
from tffpipe.learning import base
from tffpipe.learning import compose

_ATTRIBUTE = "_tffpipe_stacked_form"


@dataclasses.dataclass(frozen=True)
class StackedForm:
    """What a runtime needs to train a process's clients stacked.

    Attributes:
      process: the process whose clients' data are their training results
        (`OrderedDict(update=..., update_weight=..., metrics=...)`).
      make_trainer: builds the `stacked_training.StackedTrainer`.
    """

    process: tff.learning.templates.LearningProcess
    make_trainer: Callable[[], Any]

    @staticmethod
    def client_inputs(state: Any) -> tuple[list[Any], Any]:
        """(the broadcast trainable weights, the client learning rate) of a FedAvg state."""
        return list(state.global_model_weights.trainable), state.client_work["learning_rate"]

    @staticmethod
    def client_data(update: list[Any], weight: Any, metrics: collections.OrderedDict) -> collections.OrderedDict:
        """One client's data for `process`."""
        return collections.OrderedDict(update=update, update_weight=weight, metrics=metrics)


def attach(process: Any, make_form: Callable[[], "StackedForm | str"]) -> None:
    """Lets a runtime ask for `process`'s stacked form (built on first request: it compiles a second process)."""
    setattr(process, _ATTRIBUTE, make_form)


def form_of(process: Any) -> "StackedForm | str":
    """`process`'s stacked form, or why it has none."""
    made = getattr(process, _ATTRIBUTE, None)
    if made is None:
        return "the process was not built with a stacked form"
    if callable(made):
        made = made()
        setattr(process, _ATTRIBUTE, made)
    return made


def build(parts: base.Parts, client_work: Any, weighting: Any) -> "StackedForm | str":
    """The stacked form of a FedAvg process built from `parts`, or why there is none.

    Args:
      parts: the algorithm's parts (plain SGD client optimizer required).
      client_work: the run's `build_model_delta_client_work` (its state and
        hyperparameters are kept).
      weighting: the `tff.learning.ClientWeighting`.
    """
    from tffpipe.runtimes import stacked_training

    if parts.task is None:
        return "the task is not known to the algorithm"
    optimizer = parts.client_optimizer
    if optimizer is None or set(optimizer.get_hparams(optimizer.initialize(tf.TensorSpec([], tf.float32)))) != {
        "learning_rate"
    }:
        return "the client optimizer is not plain SGD"
    task = parts.task
    spec = task.input_spec
    if not (isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(s, tf.TensorSpec) for s in spec)):
        return "the task's batches are not (x, y) pairs of tensors"
    with tf.Graph().as_default():
        model = parts.model_fn()
        metrics = model.get_metrics() if hasattr(model, "get_metrics") else None
        unfinalized = model.report_local_unfinalized_metrics()
        metrics_type = tff.types.tensorflow_to_type(
            tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), unfinalized)
        )
        aggregate_metrics = tff.learning.metrics.sum_then_finalize(model.metric_finalizers())
        weights_type = tff.learning.models.weights_type_from_model(model)
    if metrics is None:
        return "the model is not a Keras model"

    def make_trainer():
        return stacked_training.StackedTrainer(
            task.model_builder(),
            task.loss_builder(),
            metrics,
            parts.context.client_batch_size,
            weight_by_examples=weighting == tff.learning.ClientWeighting.NUM_EXAMPLES,
        )

    try:
        make_trainer()
    except stacked_training.NotStackable as e:
        return str(e)
    with compat.client_data_of_tensors():
        work = _passing_client_work(client_work, weights_type, metrics_type, aggregate_metrics)
        return StackedForm(compose.learning_process(parts, work), make_trainer)


def _passing_client_work(inner: Any, weights_type: Any, metrics_type: Any, aggregate_metrics: Any) -> Any:
    """A client work whose clients' data are their results: passed on, metrics aggregated as TFF's."""
    data_type = tff.types.StructWithPythonType(
        [("update", weights_type.trainable), ("update_weight", tff.TensorType(np.float32)), ("metrics", metrics_type)],
        collections.OrderedDict,
    )

    @tff.tensorflow.computation(data_type)
    def unpack(data):
        result = tff.learning.templates.ClientResult(update=data["update"], update_weight=data["update_weight"])
        return result, data["metrics"]

    @tff.federated_computation(
        inner.initialize.type_signature.result,
        tff.FederatedType(weights_type, tff.CLIENTS),
        tff.FederatedType(data_type, tff.CLIENTS),
    )
    def next_fn(state, weights, data):
        del weights  # the clients trained from them already
        result, outputs = tff.federated_map(unpack, data)
        measurements = tff.federated_zip(collections.OrderedDict(train=aggregate_metrics(outputs)))
        return tff.templates.MeasuredProcessOutput(state, result, measurements)

    return tff.learning.templates.ClientWorkProcess(
        inner.initialize, next_fn, get_hparams_fn=inner.get_hparams, set_hparams_fn=inner.set_hparams
    )
