"""Vertical tasks: organisations that hold different features of the same people.

A `VerticalTask` names its parties; each holds its own sample IDs, its own
feature array and its own bottom model. One party, the active party, also
holds the labels and the top model, which reads the combination of the
bottom models' embeddings (their sum, or their concatenation). Nothing here
aligns the parties' samples: that is the run's private set intersection
(`tffpipe/vertical/psi.py`), so a task states what each party has, as it
would be at the start of a real collaboration.

`vertical_from_arrays` builds one from arrays, checking them as
`from_arrays` does.
"""

import collections
import dataclasses
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tffpipe.errors import TaskError
from tffpipe.tasks import arrays

COMBINES = ("sum", "concat")


@dataclasses.dataclass(frozen=True)
class Party:
    """One organisation's data and model.

    Attributes:
      name: the party's name ("clinic").
      ids: its sample IDs, one per row of `features`, unique.
      features: its feature rows (float32).
      bottom_model_fn: returns a fresh Keras model from its features to its
        embedding.
      feature_names: optional names of its feature columns, for listings.
    """

    name: str
    ids: tuple[str, ...]
    features: np.ndarray
    bottom_model_fn: Callable[[], tf.keras.Model]
    feature_names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class VerticalTask:
    """A vertical federated learning task.

    Attributes:
      name: the task's name.
      parties: the parties, the active one first.
      labels: the active party's labels, one per row of its features.
      top_model_fn: called with the combined embedding's width, returns a fresh
        Keras model from it to the prediction.
      loss_builder: returns a fresh Keras loss.
      metrics_builder: returns fresh Keras metrics.
      combine: how the embeddings combine by default: "sum" (secure sum) or
        "concat".
      test_fraction: share of the aligned samples held out for evaluation.
      description: one line for listings.
    """

    name: str
    parties: tuple[Party, ...]
    labels: np.ndarray
    top_model_fn: Callable[[int], tf.keras.Model]
    loss_builder: Callable[[], tf.keras.losses.Loss]
    metrics_builder: Callable[[], list[tf.keras.metrics.Metric]]
    combine: str = "sum"
    test_fraction: float = 0.2
    description: str = ""

    @property
    def active(self) -> Party:
        """The party that holds the labels and the top model."""
        return self.parties[0]

    def embedding_widths(self) -> dict[str, int]:
        """Each party's embedding width, from a model built once."""
        return {p.name: int(p.bottom_model_fn().output_shape[-1]) for p in self.parties}

    def combined_width(self, combine: str) -> int:
        widths = list(self.embedding_widths().values())
        return widths[0] if combine == "sum" else sum(widths)


def vertical_from_arrays(
    name: str,
    parties: Mapping[str, tuple[Sequence[Any], Any]],
    labels: Mapping[str, Any],
    bottom_model_fns: Mapping[str, Callable[[], tf.keras.Model]],
    top_model_fn: Callable[[int], tf.keras.Model],
    *,
    loss: Any,
    metrics: Sequence[Any] = (),
    combine: str = "sum",
    test_fraction: float = 0.2,
    seed: int = 0,
    feature_names: Mapping[str, Sequence[str]] | None = None,
    description: str = "",
) -> VerticalTask:
    """A vertical task from each party's IDs and features.

    Args:
      name: the task's name.
      parties: party name -> (its sample IDs, its feature array with one row
        per ID).
      labels: {active party name: its labels, one per row of its features}.
      bottom_model_fns: party name -> a function returning a fresh Keras model
        from that party's features to its embedding.
      top_model_fn: the combined embedding's width -> a fresh Keras model to
        the prediction (the active party's).
      loss: a Keras loss (instance, class or name).
      metrics: Keras metrics (instances, classes or names).
      combine: "sum" (the embeddings are added with a secure sum; every
        bottom model must have the same width) or "concat".
      test_fraction: share of the aligned samples held out for evaluation.
      seed: unused by the arrays themselves; accepted so a factory can pass
        the run's seed on (alignment and splits are seeded by the run).
      feature_names: optional party name -> its column names.
      description: one line for listings.

    Raises:
      TaskError: in one line, for IDs and rows that do not match, duplicate
        IDs, non-numeric or non-finite features, a labels party that is not
        a party, or bottom models that do not fit.
    """
    del seed
    if len(labels) != 1:
        raise TaskError(f"task {name!r}: labels must name exactly one (active) party, got {list(labels)}")
    ((active, y),) = labels.items()
    if active not in parties:
        raise TaskError(f"task {name!r}: the labels' party {active!r} is not one of the parties {list(parties)}")
    if set(bottom_model_fns) != set(parties):
        raise TaskError(
            f"task {name!r}: bottom_model_fns must have one model per party {sorted(parties)}, "
            f"got {sorted(bottom_model_fns)}"
        )
    reserved = {"top", "model"} & set(parties)
    if reserved:
        raise TaskError(f"task {name!r}: {sorted(reserved)[0]!r} names an export folder; name the party otherwise")
    if len(parties) < 2:
        raise TaskError(f"task {name!r}: a vertical task needs at least two parties, got {len(parties)}")
    if combine not in COMBINES:
        raise TaskError(f"task {name!r}: combine must be one of {', '.join(COMBINES)}, got {combine!r}")
    if not 0 < test_fraction < 1:
        raise TaskError(f"task {name!r}: test_fraction must be in (0, 1), got {test_fraction}")
    order = [active] + [p for p in parties if p != active]
    built = tuple(
        _party(name, party, *parties[party], bottom_model_fns[party], (feature_names or {}).get(party, ()))
        for party in order
    )
    y = np.asarray(y)
    if len(y) != len(built[0].ids):
        raise TaskError(f"task {name!r}: party {active!r} has {len(built[0].ids)} IDs but {len(y)} labels")
    y = y.astype(np.int32) if np.issubdtype(y.dtype, np.integer) else y.astype(np.float32)
    if y.ndim == 1 and not np.issubdtype(y.dtype, np.integer):
        y = y.reshape(-1, 1)
    loss_builder = arrays.loss_builder_of(name, loss)
    task = VerticalTask(
        name=name,
        parties=built,
        labels=y,
        top_model_fn=top_model_fn,
        loss_builder=loss_builder,
        metrics_builder=arrays.metrics_builder_of(name, metrics, loss_builder()),
        combine=combine,
        test_fraction=test_fraction,
        description=description or f"{len(built)} parties: " + ", ".join(p.name for p in built),
    )
    widths = _check_bottom_models(task)
    if combine == "sum" and len(set(widths.values())) > 1:
        raise TaskError(
            f"task {name!r}: combine='sum' adds the embeddings, so every bottom model needs the "
            f"same output width; got {widths}"
        )
    _check_top_model(task, task.combined_width(combine))
    return task


def _party(task: str, name: str, ids, features, bottom_model_fn, feature_names) -> Party:
    ids = list(ids)
    missing = [row for row, i in enumerate(ids) if i is None or (isinstance(i, float) and i != i)]
    if missing:
        raise TaskError(
            f"task {task!r}: party {name!r} has no sample ID at row {missing[0]} ({ids[missing[0]]!r}); "
            "every row needs one"
        )
    ids = tuple(str(i) for i in ids)
    features = np.asarray(features)
    if features.ndim < 2 or len(features) != len(ids):
        raise TaskError(
            f"task {task!r}: party {name!r} has {len(ids)} IDs but features of shape {features.shape} (one row per ID)"
        )
    if not np.issubdtype(features.dtype, np.number):
        raise TaskError(f"task {task!r}: party {name!r}: features must be numeric, got {features.dtype}")
    repeated = [i for i, count in collections.Counter(ids).items() if count > 1]
    if repeated:
        raise TaskError(f"task {task!r}: party {name!r} lists sample ID {repeated[0]!r} more than once")
    bad = ~np.isfinite(features.reshape(len(features), -1)).all(axis=1)
    if bad.any():
        raise TaskError(
            f"task {task!r}: party {name!r}: {int(bad.sum())} rows hold NaN or infinite values "
            f"(the first is ID {ids[int(np.flatnonzero(bad)[0])]!r})"
        )
    return Party(name, ids, features.astype(np.float32), bottom_model_fn, tuple(feature_names))


def _check_bottom_models(task: VerticalTask) -> dict[str, int]:
    """Each bottom model reads its party's rows; returns their output widths."""
    widths = {}
    for party in task.parties:
        try:
            embedding = party.bottom_model_fn()(party.features[:2])
        except Exception as e:
            raise TaskError(
                f"task {task.name!r}: party {party.name!r}'s bottom model cannot read its features "
                f"of shape {party.features.shape[1:]}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from e
        widths[party.name] = int(embedding.shape[-1])
    return widths


def _check_top_model(task: VerticalTask, width: int) -> None:
    try:
        task.top_model_fn(width)(np.zeros((2, width), np.float32))
    except Exception as e:
        raise TaskError(
            f"task {task.name!r}: the top model cannot read a combined embedding of width {width}: {type(e).__name__}"
        ) from e
