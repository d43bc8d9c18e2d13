"""`from_arrays`: a federated Task from centralized NumPy arrays and a Keras model."""

from typing import Any
from collections.abc import Callable, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from tffpipe.tasks import feature_skew as feature_skew_lib
from tffpipe.tasks import partition as partition_lib
from tffpipe.tasks.record import Task, TaskError

PARTITIONS = ("dirichlet", "iid", "shards", "quantity")
# Partitions that split by class label, so they need integer labels.
_LABEL_PARTITIONS = ("dirichlet", "shards")


def from_arrays(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    model_fn: Callable[[], tf.keras.Model],
    *,
    loss: Any,
    metrics: Sequence[Any] = (),
    num_clients: int,
    partition: str = "dirichlet",
    alpha: float = 0.5,
    eval_fraction: float = 0.2,
    seed: int = 0,
    description: str | None = None,
    drop_nonfinite: bool = False,
    feature_skew: str = "none",
    feature_skew_strength: float = 0.5,
    class_names: Sequence[str] | None = None,
) -> Task:
    """Federates centralized arrays: splits them across clients, holds some out.

    Args:
      name: the task's name, used in logs.
      x: features, first axis indexes examples (cast to float32).
      y: labels or targets, one per example (integers are cast to int32,
        floats to float32).
      model_fn: returns a new, uncompiled Keras model taking `x`'s rows.
      loss: a Keras loss instance, class or name (`"mse"`,
        `"SparseCategoricalCrossentropy"`); a fresh copy is built per model.
      metrics: Keras metric instances, classes or names; `"accuracy"` picks the
        accuracy that matches the loss (binary, categorical or sparse).
      num_clients: clients to create, training and evaluation together.
      partition: `dirichlet` (label skew, Hsu et al. 2019), `iid`, `shards`
        (two label shards per client, McMahan et al. 2017) or `quantity`
        (Dirichlet client sizes, IID labels).
      alpha: Dirichlet concentration for `dirichlet` and `quantity`; smaller
        is more skewed.
      eval_fraction: share of the clients held out for evaluation (at least
        one); they never train.
      seed: seeds the partition and which clients are held out.
      description: one line for logs; by default it names the partition.
      drop_nonfinite: drop the examples whose features or target hold NaN or
        an infinity (with a warning naming how many); by default such data is
        refused, as it would train to a NaN or silently skewed model.
      feature_skew: `none`, `shift_scale` (tabular), `brightness` or
        `rotation` (images): each client sees its inputs through its own
        seeded transform, independently of the label partition
        (`tffpipe/tasks/feature_skew.py`).
      feature_skew_strength: how far clients' transforms differ; 0 is none.
      class_names: maps string labels to class indices (`y == class_names[i]`
        becomes `i`); string labels are refused without it.

    Returns:
      A `Task` whose raw examples are `{"x": ..., "y": ...}`.

    Raises:
      TaskError: on inconsistent arrays or arguments, with a one-line reason.
    """
    y = _class_indices(name, y, class_names)
    x, y = _check_arrays(name, x, y)
    x, y = _finite_rows(name, x, y, drop_nonfinite)
    if partition not in PARTITIONS:
        raise TaskError(f"task {name!r}: partition must be one of {', '.join(PARTITIONS)}, got {partition!r}")
    if num_clients < 2:
        raise TaskError(f"task {name!r}: num_clients must be at least 2, got {num_clients}")
    if not 0 < eval_fraction < 1:
        raise TaskError(f"task {name!r}: eval_fraction must be in (0, 1), got {eval_fraction}")
    if partition in _LABEL_PARTITIONS and not np.issubdtype(y.dtype, np.integer):
        raise TaskError(
            f"task {name!r}: partition={partition!r} splits by class label and needs "
            f"integer labels, but y is {y.dtype}; use 'iid' or 'quantity'"
        )
    problem = feature_skew_lib.check(feature_skew, feature_skew_strength, x)
    if problem:
        raise TaskError(f"task {name!r}: {problem}")
    try:
        indices = _partition(partition, y, num_clients, alpha, seed)
    except ValueError as e:
        raise TaskError(f"task {name!r}: {e}") from e
    x = feature_skew_lib.apply(feature_skew, x, indices, feature_skew_strength, seed)
    num_eval = min(max(1, round(eval_fraction * num_clients)), num_clients - 1)
    held_out = set(np.random.default_rng(seed).permutation(num_clients)[:num_eval].tolist())
    ids = [f"client_{i:04d}" for i in range(num_clients)]

    def subset(keep):
        chosen = [i for i in range(num_clients) if keep(i)]
        return partition_lib.to_client_data({"x": x, "y": y}, [indices[i] for i in chosen], [ids[i] for i in chosen])

    loss_builder = loss_builder_of(name, loss)
    _check_class_labels(name, x, y, model_fn, loss_builder())
    return Task(
        name=name,
        description=(description or f"{len(x):,} examples, {partition} partition over {num_clients} clients")
        + (f", {feature_skew} feature skew {feature_skew_strength:g}" if feature_skew != "none" else "")
        + (", classes " + ", ".join(f"{c}={i}" for i, c in enumerate(class_names)) if class_names else ""),
        model_builder=model_fn,
        loss_builder=loss_builder,
        metrics_builder=metrics_builder_of(name, metrics, loss_builder()),
        train_data=subset(lambda i: i not in held_out),
        eval_data=subset(lambda i: i in held_out),
        to_features=lambda e: (e["x"], e["y"]),
    )


def _check_arrays(name: str, x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
        raise TaskError(f"task {name!r}: x and y must have one row per example, got shapes {x.shape} and {y.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise TaskError(f"task {name!r}: x must be numeric, got {x.dtype}")
    y = y.astype(np.int32) if np.issubdtype(y.dtype, np.integer) else y.astype(np.float32)
    return x.astype(np.float32), y


def _class_indices(name: str, y, class_names: Sequence[str] | None) -> np.ndarray:
    """`y` with string labels replaced by their index in `class_names`.

    Raises:
      TaskError: string labels without `class_names`, or a label not in it.
    """
    y = np.asarray(y)
    is_text = y.dtype.kind in "US" or (y.dtype.kind == "O" and any(isinstance(v, (str, bytes)) for v in y.ravel()))
    if not is_text:
        if class_names is not None:
            raise TaskError(f"task {name!r}: class_names maps string labels, but y holds {y.dtype} values")
        return y
    found = sorted({str(v) for v in y.ravel()})
    if class_names is None:
        shown = ", ".join(repr(v) for v in found[:5]) + (", ..." if len(found) > 5 else "")
        raise TaskError(
            f"task {name!r}: y holds strings ({shown}); give integer class indices, or pass "
            f"class_names=[...] to map each label to its position (for example class_names={found[:5]!r})"
        )
    index = {str(c): i for i, c in enumerate(class_names)}
    unknown = [v for v in found if v not in index]
    if unknown:
        raise TaskError(f"task {name!r}: label {unknown[0]!r} is not in class_names {list(class_names)!r}")
    return np.vectorize(lambda v: index[str(v)], otypes=[np.int32])(y)


def _check_class_labels(name: str, x: np.ndarray, y: np.ndarray, model_fn, loss) -> None:
    """Refuses integer labels a classification loss cannot take (TensorFlow would fail mid-round).

    Under a sparse categorical loss, labels are class indices in 0..C-1 for
    the model's C outputs; under binary cross-entropy, 0 or 1. Other losses
    (regression) take any value.

    Raises:
      TaskError: naming the first label out of range and its row.
    """
    kind = type(loss).__name__
    if kind not in ("SparseCategoricalCrossentropy", "BinaryCrossentropy") or not np.issubdtype(y.dtype, np.integer):
        return
    try:
        width = int(model_fn()(x[:1]).shape[-1]) if kind == "SparseCategoricalCrossentropy" else 2
    except Exception:
        return  # a model that does not take x: the Task's own check says so in one line
    labels = y.reshape(len(y), -1)
    outside = (labels < 0) | (labels >= width)
    if outside.any():
        row = int(np.flatnonzero(outside.any(axis=1))[0])
        value = int(labels[row][outside[row]][0])
        allowed = f"class indices in 0..{width - 1} for the model's {width} outputs" if width > 2 else "0 or 1"
        raise TaskError(f"task {name!r}: labels must be {allowed} under {kind}, but y holds {value} (row {row})")


def _finite_rows(name: str, x: np.ndarray, y: np.ndarray, drop: bool) -> tuple[np.ndarray, np.ndarray]:
    """`x`, `y` without rows holding NaN or infinities (only if `drop`).

    Raises:
      TaskError: there are such rows and `drop` is False, or no row is left.
    """
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1) | ~np.isfinite(y.reshape(len(y), -1)).all(axis=1)
    count = int(bad.sum())
    if not count:
        return x, y
    first = int(np.flatnonzero(bad)[0])
    what = f"{count:,} of {len(x):,} examples hold NaN or infinite values (the first is row {first})"
    if not drop:
        raise TaskError(f"task {name!r}: {what}; clean them, or pass drop_nonfinite=True to from_arrays to drop them")
    if count == len(x):
        raise TaskError(f"task {name!r}: {what}: no example is left")
    logging.warning("task %r: dropped %s", name, what)
    return x[~bad], y[~bad]


def _partition(kind, y, num_clients, alpha, seed) -> list[np.ndarray]:
    if kind == "dirichlet":
        return partition_lib.dirichlet_label_skew(_labels(y), num_clients, alpha, seed=seed)
    if kind == "shards":
        return partition_lib.label_shards(_labels(y), num_clients, seed=seed)
    if kind == "quantity":
        return partition_lib.quantity_skew(len(y), num_clients, alpha, seed=seed)
    return partition_lib.iid(len(y), num_clients, seed=seed)


def _labels(y: np.ndarray) -> np.ndarray:
    return y.reshape(len(y), -1)[:, 0]


def _keras_class(module, base: type, name: str) -> type | None:
    """The `base` subclass in `module` named like `name` (`mean_squared_error`,
    `MeanSquaredError`, `auc`), ignoring case and underscores."""
    key = name.replace("_", "").lower()
    for attr in dir(module):
        value = getattr(module, attr)
        if isinstance(value, type) and issubclass(value, base) and attr.lower() == key:
            return value
    return None


def loss_builder_of(name: str, loss) -> Callable[[], tf.keras.losses.Loss]:
    """A builder of fresh copies of `loss` (TFF builds one model per client)."""
    if isinstance(loss, tf.keras.losses.Loss):
        cls, config = type(loss), loss.get_config()
        return lambda: cls.from_config(config)
    if isinstance(loss, type) and issubclass(loss, tf.keras.losses.Loss):
        return loss
    if isinstance(loss, str):
        try:
            resolved = tf.keras.losses.get(loss)
        except ValueError as e:
            raise TaskError(f"task {name!r}: unknown Keras loss {loss!r}") from e
        if isinstance(resolved, tf.keras.losses.Loss):
            return loss_builder_of(name, resolved)
        # `get` turns snake-case names (and aliases: mse) into functions;
        # TFF needs a Loss object, so take the class of the same name.
        found = _keras_class(tf.keras.losses, tf.keras.losses.Loss, resolved.__name__)
        if found is not None:
            return found
    raise TaskError(f"task {name!r}: loss must be a Keras loss instance, class or name, got {loss!r}")


_ACCURACY_FOR_LOSS = {
    "BinaryCrossentropy": tf.keras.metrics.BinaryAccuracy,
    "CategoricalCrossentropy": tf.keras.metrics.CategoricalAccuracy,
    "SparseCategoricalCrossentropy": tf.keras.metrics.SparseCategoricalAccuracy,
}


def metrics_builder_of(
    name: str, metrics: Sequence[Any], loss: tf.keras.losses.Loss
) -> Callable[[], list[tf.keras.metrics.Metric]]:
    builders = [_metric_builder(name, metric, loss) for metric in metrics]
    return lambda: [build() for build in builders]


def _metric_builder(name: str, metric, loss) -> Callable[[], tf.keras.metrics.Metric]:
    if isinstance(metric, tf.keras.metrics.Metric):
        cls, config = type(metric), metric.get_config()
        return lambda: cls.from_config(config)
    if isinstance(metric, type) and issubclass(metric, tf.keras.metrics.Metric):
        return metric
    if metric in ("accuracy", "acc"):
        accuracy = _ACCURACY_FOR_LOSS.get(type(loss).__name__)
        if accuracy is None:
            raise TaskError(
                f"task {name!r}: 'accuracy' needs a cross-entropy loss to pick binary, "
                f"categorical or sparse accuracy; pass a Keras metric object instead"
            )
        return lambda: accuracy(name="accuracy")
    if isinstance(metric, str):
        found = _keras_class(tf.keras.metrics, tf.keras.metrics.Metric, metric)
        if found is not None:
            return lambda: found(name=metric)
        try:
            resolved = tf.keras.metrics.get(metric)
        except ValueError as e:
            raise TaskError(f"task {name!r}: unknown Keras metric {metric!r}") from e
        if isinstance(resolved, tf.keras.metrics.Metric):
            return _metric_builder(name, resolved, loss)
        named = _keras_class(tf.keras.metrics, tf.keras.metrics.Metric, resolved.__name__)
        if named is not None:
            return lambda: named(name=metric)
        return lambda: tf.keras.metrics.MeanMetricWrapper(resolved, name=metric)
    raise TaskError(f"task {name!r}: metrics must be Keras metric instances, classes or names, got {metric!r}")
