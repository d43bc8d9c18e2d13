"""The Task record, client dataset preprocessing and the task registry.

A task is a frozen record of a Keras model builder, its loss and metrics, and
federated train and held-out evaluation client data. Built-in tasks live in the
top-level `tasks` package; users plug in their own with
`--task=my_pkg.my_module:create_task`, a factory returning a `Task`.
"""

import dataclasses
import importlib
import inspect
import re
from typing import Any, Callable

import tensorflow as tf
import tensorflow_federated as tff

ClientSpec = tff.simulation.baselines.ClientSpec
ClientData = tff.simulation.datasets.ClientData


class TaskError(ValueError):
    """A task cannot be found or built; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class Task:
    """A federated learning task.

    Attributes:
      name: short name, used in logs.
      model_builder: returns a new, uncompiled Keras model.
      loss_builder: returns a new Keras loss.
      metrics_builder: returns a list of new Keras metrics.
      train_data: training clients; datasets yield raw examples.
      eval_data: held-out evaluation clients, disjoint from `train_data`.
      to_features: maps one raw example to an `(x, y)` pair.
      description: one line for `--list_tasks` and logs.
    """

    name: str
    model_builder: Callable[[], tf.keras.Model]
    loss_builder: Callable[[], tf.keras.losses.Loss]
    metrics_builder: Callable[[], list[tf.keras.metrics.Metric]]
    train_data: ClientData
    eval_data: ClientData
    to_features: Callable[[Any], tuple[Any, Any]]
    description: str = ""

    def __post_init__(self):
        for field in ("model_builder", "loss_builder", "metrics_builder", "to_features"):
            if not callable(getattr(self, field)):
                raise TaskError(f"task {self.name!r}: {field} must be callable")
        for field in ("train_data", "eval_data"):
            data = getattr(self, field)
            if not isinstance(data, ClientData):
                raise TaskError(f"task {self.name!r}: {field} must be a ClientData")
            if not data.client_ids:
                raise TaskError(f"task {self.name!r}: {field} has no clients")
        shared = set(self.train_data.client_ids) & set(self.eval_data.client_ids)
        if shared:
            raise TaskError(
                f"task {self.name!r}: evaluation clients must be held out, but "
                f"{len(shared)} also train (e.g. {sorted(shared)[0]!r})"
            )
        _check_model_accepts_data(self)

    def client_dataset(
        self, client_id: str, spec: ClientSpec, *, seed: int
    ) -> tf.data.Dataset:
        """The batched training dataset of one client for one round.

        Args:
          client_id: a training client id.
          spec: epochs, batch size, element cap and shuffle buffer.
          seed: seeds the shuffle, so a round's data is reproducible.
        """
        ds = self.train_data.create_tf_dataset_for_client(client_id)
        ds = ds.map(self.to_features)
        if spec.max_elements is not None and spec.max_elements > 0:
            ds = ds.take(spec.max_elements)
        if spec.shuffle_buffer_size and spec.shuffle_buffer_size > 1:
            ds = ds.shuffle(spec.shuffle_buffer_size, seed=seed)
        return ds.repeat(spec.num_epochs).batch(spec.batch_size)

    def eval_dataset(self, client_id: str, batch_size: int) -> tf.data.Dataset:
        """The batched dataset of one held-out evaluation client."""
        ds = self.eval_data.create_tf_dataset_for_client(client_id)
        return ds.map(self.to_features).batch(batch_size)

    def sample_batch_dataset(self, batch_size: int) -> tf.data.Dataset:
        """The first training client's data, batched, without shuffling."""
        ds = self.train_data.create_tf_dataset_for_client(self.train_data.client_ids[0])
        return ds.map(self.to_features).batch(batch_size)

    @property
    def input_spec(self):
        """Element spec of a batched client dataset, for `tff.learning`."""
        return self.sample_batch_dataset(1).element_spec


def _check_model_accepts_data(task: Task) -> None:
    """Fails with a clear message if the model cannot consume the task's data."""
    ds = task.sample_batch_dataset(2)
    spec = ds.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise TaskError(
            f"task {task.name!r}: to_features must return an (x, y) pair, got {spec}"
        )
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
    x, _ = next(iter(ds))
    try:
        model(x)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TaskError(
            f"task {task.name!r}: the model rejects the data's x of shape "
            f"{tuple(x_spec.shape)}: {first_line}"
        ) from e


def builtin_tasks() -> dict[str, str]:
    """Registered task names -> `module:factory` paths."""
    from tasks import TASKS  # pylint: disable=g-import-not-at-top

    return dict(TASKS)


def load_factory(name: str) -> Callable[..., Task]:
    """Resolves a registered task name or a `package.module:factory` path.

    Raises:
      TaskError: if the name is unknown or the path does not import.
    """
    registry = builtin_tasks()
    if ":" not in name:
        if name not in registry:
            raise TaskError(
                f"unknown task {name!r}; valid tasks: {', '.join(sorted(registry))} "
                "(or a factory path such as my_pkg.my_module:create_task)"
            )
        name = registry[name]
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TaskError(f"cannot import task module {module_name!r}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"module {module_name!r} has no callable {attr!r}")
    return factory


def factory_options(factory: Callable[..., Task]) -> dict[str, tuple[Any, str]]:
    """The keyword options of a task factory: name -> (default, help text).

    Options are the keyword arguments with defaults, except `seed`, which the
    program passes from `--seed`. Help text comes from the factory's Google
    style `Args:` docstring section.
    """
    docs = _arg_docs(inspect.getdoc(factory) or "")
    options = {}
    for param in inspect.signature(factory).parameters.values():
        if param.default is inspect.Parameter.empty or param.name == "seed":
            continue
        options[param.name] = (param.default, docs.get(param.name, param.name))
    return options


def _arg_docs(doc: str) -> dict[str, str]:
    section = re.search(r"^Args:\n(.*?)(?:^\S|\Z)", doc, re.S | re.M)
    if not section:
        return {}
    docs, current = {}, None
    for line in section.group(1).splitlines():
        match = re.match(r"^\s{2,4}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2).strip()
        elif current and line.strip():
            docs[current] += " " + line.strip()
    return docs


def create_task(name: str, options: dict[str, Any], *, seed: int) -> Task:
    """Builds a task by name or factory path with its options and the run seed.

    Raises:
      TaskError: if the task is unknown, rejects an option, or fails to build.
    """
    factory = load_factory(name)
    kwargs = dict(options)
    if "seed" in inspect.signature(factory).parameters:
        kwargs["seed"] = seed
    try:
        task = factory(**kwargs)
    except TaskError:
        raise
    except (TypeError, ValueError) as e:
        raise TaskError(f"task {name!r}: {e}") from e
    if not isinstance(task, Task):
        raise TaskError(
            f"task factory {name!r} returned {type(task).__name__}, not tffpipe.tasks.Task"
        )
    return task
