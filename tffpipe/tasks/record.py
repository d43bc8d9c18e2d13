"""The Task record and how it turns a client's raw data into batches.

A task is a frozen record of a Keras model builder, its loss and metrics, and
federated training and evaluation client data, validated on construction
(including a check that the model accepts the data).
"""

import dataclasses
import functools
from typing import Any, TypeAlias
from collections.abc import Callable

from absl import logging
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe.errors import TaskError  # re-exported

ClientSpec: TypeAlias = tff.simulation.baselines.ClientSpec
ClientData: TypeAlias = tff.simulation.datasets.ClientData

# Where a task's evaluation data comes from.
#   held_out_clients: clients that never train (checked: no shared ids).
#   test_split: the dataset's published test split, which may hold other
#     examples of the training clients (EMNIST, Shakespeare, Stack Overflow),
#     as the literature's reported accuracies use.
EVAL_SPLITS = ("held_out_clients", "test_split")


_EAGER = "eager"  # marks a pipeline whose client data cannot be traced


@dataclasses.dataclass(frozen=True)
class Task:
    """A federated learning task.

    Attributes:
      name: short name, used in logs.
      model_builder: returns a new, uncompiled Keras model.
      loss_builder: returns a new Keras loss.
      metrics_builder: returns a list of new Keras metrics.
      train_data: training clients; datasets yield raw examples.
      eval_data: evaluation clients (see `eval_split`).
      to_features: maps one raw example to an `(x, y)` pair.
      description: one line for logs.
      eval_split: `held_out_clients` (the default; evaluation clients never
        train) or `test_split` (the dataset's own test split).
      regroup: optional; maps a client's dataset of raw examples to another
        dataset of raw examples before `to_features`, for data whose model
        examples span several records (Shakespeare's snippets are joined and
        cut into fixed-length character sequences).
    """

    name: str
    model_builder: Callable[[], tf.keras.Model]
    loss_builder: Callable[[], tf.keras.losses.Loss]
    metrics_builder: Callable[[], list[tf.keras.metrics.Metric]]
    train_data: ClientData
    eval_data: ClientData
    to_features: Callable[[Any], tuple[Any, Any]]
    description: str = ""
    eval_split: str = "held_out_clients"
    regroup: Callable[[tf.data.Dataset], tf.data.Dataset] | None = None

    def __post_init__(self):
        for field in ("model_builder", "loss_builder", "metrics_builder", "to_features"):
            if not callable(getattr(self, field)):
                raise TaskError(f"task {self.name!r}: {field} must be callable")
        if self.regroup is not None and not callable(self.regroup):
            raise TaskError(f"task {self.name!r}: regroup must be callable or None")
        if self.eval_split not in EVAL_SPLITS:
            raise TaskError(
                f"task {self.name!r}: eval_split must be one of {', '.join(EVAL_SPLITS)}, got {self.eval_split!r}"
            )
        for field in ("train_data", "eval_data"):
            data = getattr(self, field)
            if not isinstance(data, tff.simulation.datasets.ClientData):
                raise TaskError(f"task {self.name!r}: {field} must be a ClientData")
            if not data.client_ids:
                raise TaskError(f"task {self.name!r}: {field} has no clients")
        if self.eval_split == "held_out_clients":
            shared = set(self.train_data.client_ids) & set(self.eval_data.client_ids)
            if shared:
                raise TaskError(
                    f"task {self.name!r}: evaluation clients must be held out, but "
                    f"{len(shared)} also train (e.g. {sorted(shared)[0]!r}); use "
                    "eval_split='test_split' if the evaluation data is the dataset's "
                    "own test split"
                )
        _check_model_accepts_data(self)

    def _features(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        if self.regroup is not None:
            ds = self.regroup(ds)
        return ds.map(self.to_features, num_parallel_calls=tf.data.AUTOTUNE)

    def _train_pipeline(self, spec: ClientSpec, client_id, seed) -> tf.data.Dataset:
        ds = _client_data_fn(self.train_data, client_id)
        if spec.max_elements is not None and spec.max_elements > 0:
            ds = ds.take(spec.max_elements)
        if spec.shuffle_buffer_size and spec.shuffle_buffer_size > 1:
            if isinstance(seed, tf.Tensor):
                # Traced: fix the function graph's own seed, so the shuffle's
                # seed pair is (1, seed) whatever the global seed. With a global
                # seed of 0, TF's `get_seed` would compare the tensor seed in
                # Python and fail. This touches only the traced graph.
                tf.random.set_seed(1)
            ds = ds.shuffle(spec.shuffle_buffer_size, seed=seed)
        ds = ds.repeat(spec.num_epochs)
        return self._features(ds).batch(spec.batch_size)

    def _eval_pipeline(self, batch_size: int, client_id) -> tf.data.Dataset:
        return self._features(_client_data_fn(self.eval_data, client_id)).batch(batch_size)

    @functools.cached_property
    def _builders(self) -> dict[Any, Any]:
        """Traced dataset builders by pipeline key (`_EAGER`: not traceable)."""
        return {}

    def _builder(self, key, pipeline, num_args: int) -> Any:
        """The traced function for `pipeline(client_id, ...)` under `key`, made once (`_EAGER`: not traceable).

        Building a dataset eagerly registers its map and parse functions in
        TensorFlow's global function library, which never shrinks: about
        175 KiB per client dataset for EMNIST, so memory grew with every
        round (TFF issues 751, 903, 4590). A `tf.function` taking the client
        id as a string tensor is traced once and reused for every client.
        Client data whose dataset function is not TF-traceable (Python
        lookups by id) falls back to eager building.
        """
        builder = self._builders.get(key)
        if builder is None:
            signature = [tf.TensorSpec([], tf.string)] + [tf.TensorSpec([], tf.int64)] * (num_args - 1)
            traced = tf.function(pipeline, input_signature=signature)
            try:
                traced.get_concrete_function()
                builder = traced
            except Exception as e:
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                logging.warning(
                    "task %r: client datasets are built one by one (their dataset "
                    "function cannot be traced: %s); memory grows with every client "
                    "dataset built",
                    self.name,
                    reason,
                )
                builder = _EAGER
            self._builders[key] = builder
        return builder

    def _build(self, key, pipeline, *args) -> Any:
        """Runs `pipeline(client_id, ...)` (a dataset or a count) through `_builder`'s function."""
        builder = self._builder(key, pipeline, len(args))
        if builder is _EAGER:
            return pipeline(*args)
        return builder(*(tf.constant(a, tf.int64 if i else tf.string) for i, a in enumerate(args)))

    def _train_key_and_pipeline(self, spec: ClientSpec) -> tuple[tuple, Callable]:
        """The key of the training pipeline for `spec` among the builders, and the pipeline."""
        key = ("train", spec.num_epochs, spec.batch_size, spec.max_elements, spec.shuffle_buffer_size)
        return key, functools.partial(self._train_pipeline, spec)

    def client_dataset(self, client_id: str, spec: ClientSpec, *, seed: int) -> tf.data.Dataset:
        """The batched training dataset of one client for one round.

        Args:
          client_id: a training client id.
          spec: epochs, batch size, element cap and shuffle buffer.
          seed: seeds the shuffle, so a round's data is reproducible.
        """
        return self._build(*self._train_key_and_pipeline(spec), client_id, seed)

    def client_dataset_function(self, spec: ClientSpec) -> Callable[[tf.Tensor, tf.Tensor], tf.data.Dataset] | None:
        """The traced function behind `client_dataset` (client id, seed -> dataset), if it traces.

        Callable inside another `tf.function`, so a caller can build several
        clients' datasets in one TensorFlow call. None when the task's
        datasets are built eagerly (their dataset function cannot be traced).
        """
        builder = self._builder(*self._train_key_and_pipeline(spec), num_args=2)
        return None if builder is _EAGER else builder

    def client_examples(self, client_id: str, max_elements: int | None = None) -> int:
        """How many examples one pass over a training client's data yields (at most `max_elements`)."""

        def count(cid):
            ds = _client_data_fn(self.train_data, cid)
            if max_elements:
                ds = ds.take(max_elements)
            # Reduced inside the traced function: an eager `reduce` registers
            # a new reducer function per call (about 145 KiB kept for good
            # per client counted, so a run's memory grew with every new
            # client the clock or the divergence check counted).
            return self._features(ds).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)

        return int(self._build(("count", max_elements), count, client_id))

    def eval_dataset(self, client_id: str, batch_size: int) -> tf.data.Dataset:
        """The batched dataset of one evaluation client."""
        return self._build(("eval", batch_size), functools.partial(self._eval_pipeline, batch_size), client_id)

    def sample_batch_dataset(self, batch_size: int) -> tf.data.Dataset:
        """The first training client's data, batched, without shuffling."""
        ds = self.train_data.create_tf_dataset_for_client(self.train_data.client_ids[0])
        return self._features(ds).batch(batch_size)

    @property
    def input_spec(self):
        """Element spec of a batched client dataset, for `tff.learning`."""
        return self.sample_batch_dataset(1).element_spec


def _client_data_fn(data: ClientData, client_id) -> tf.data.Dataset:
    """A client's raw dataset; traceable when `client_id` is a string tensor."""
    if isinstance(client_id, str):
        return data.create_tf_dataset_for_client(client_id)
    return data.serializable_dataset_fn(client_id)


def _check_model_accepts_data(task: Task) -> None:
    """Fails with a clear message if the model cannot consume the task's data."""
    ds = task.sample_batch_dataset(2)
    spec = ds.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise TaskError(f"task {task.name!r}: to_features must return an (x, y) pair, got {spec}")
    model = task.model_builder()
    if not isinstance(model, tf.keras.Model):
        raise TaskError(f"task {task.name!r}: model_builder must return a tf.keras.Model")
    x_spec = spec[0]
    if model.built and hasattr(model, "input_shape") and isinstance(x_spec, tf.TensorSpec):
        expected = tf.TensorShape(model.input_shape)
        if not expected.is_compatible_with(x_spec.shape):
            raise TaskError(
                f"task {task.name!r}: the model expects inputs of shape "
                f"{tuple(expected)} but the data's x has shape {tuple(x_spec.shape)}"
            )
    batch = next(iter(ds), None)
    if batch is None:
        raise TaskError(f"task {task.name!r}: training client {task.train_data.client_ids[0]!r} has no examples")
    x, _ = batch
    try:
        model(x)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TaskError(
            f"task {task.name!r}: the model rejects the data's x of shape {tuple(x_spec.shape)}: {first_line}"
        ) from e
