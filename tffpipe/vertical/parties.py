"""Each organisation's side of vertical training: its rows, its model, its optimizer.

TFF places values at CLIENTS only when every client has the same type; here
every party has its own feature width and its own bottom model, so a party
is a plain object that owns its data and state, and the protocol
(`protocol.py`) passes it nothing but messages: the rows to use (positions
in the aligned order every party knows), and the gradient with respect to
its embedding. No party object holds a reference to another's data.

Optimizers are TFF's (`tff.learning.optimizers`, the `--client_optimizer`
settings): functional, so their state is a structure of tensors that
checkpoints like any other.
"""

import hashlib
from typing import Any
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tffpipe.tasks import vertical as vertical_task


def _specs(variables) -> list[tf.TensorSpec]:
    return [tf.TensorSpec(v.shape, v.dtype) for v in variables]


class TrainedModel:
    """A Keras model with a TFF optimizer and the optimizer's state."""

    def __init__(self, model: tf.keras.Model, optimizer: Any):
        self.model = model
        self._optimizer = optimizer
        self._optimizer_state = optimizer.initialize(_specs(model.trainable_variables))

        @tf.function
        def apply(state, weights, gradients):
            return optimizer.next(state, weights, gradients)

        self._apply = apply

    def apply_gradients(self, gradients: Sequence[tf.Tensor]) -> None:
        variables = self.model.trainable_variables
        self._optimizer_state, weights = self._apply(self._optimizer_state, list(variables), list(gradients))
        for variable, value in zip(variables, weights):
            variable.assign(value)

    def state(self) -> dict[str, Any]:
        """Weights and optimizer state, as numpy (for checkpoints)."""
        return {
            "weights": [w.numpy() for w in self.model.weights],
            "optimizer": tf.nest.map_structure(np.asarray, self._optimizer_state),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restores weights and optimizer state; hyperparameters stay as configured now.

        Learning rates may change on resume (`--client_learning_rate`), so the
        restored optimizer state takes this run's hyperparameters.
        """
        for variable, value in zip(self.model.weights, state["weights"]):
            variable.assign(value)
        fresh = self._optimizer_state
        restored = tf.nest.map_structure(
            lambda template, value: tf.convert_to_tensor(value, tf.convert_to_tensor(template).dtype),
            fresh,
            state["optimizer"],
        )
        self._optimizer_state = self._optimizer.set_hparams(restored, self._optimizer.get_hparams(fresh))


class BottomParty:
    """A party: its aligned rows and its bottom model.

    Args:
      record: the party's data and model function (from the task).
      train_ids, test_ids: the aligned IDs, in the order every party was told.
      optimizer: a TFF optimizer for its bottom model.
      embedding_noise: standard deviation of the Gaussian noise it adds to
        every embedding it sends (0: none).
      seed: seeds that noise.
    """

    def __init__(self, record: vertical_task.Party, train_ids, test_ids, optimizer, embedding_noise: float, seed: int):
        self.name = record.name
        row_of = {sample_id: row for row, sample_id in enumerate(record.ids)}
        self._rows = {
            "train": record.features[[row_of[i] for i in train_ids]],
            "test": record.features[[row_of[i] for i in test_ids]],
        }
        self.bottom = TrainedModel(record.bottom_model_fn(), optimizer)
        self._noise = embedding_noise
        self._seed = seed
        self._tape: Any = None  # tf.GradientTape of the last forward step, until its backward step
        self._embedding: Any = None

    def embed(self, split: str, positions: np.ndarray, *, training: bool, step_key: Sequence[int] = ()) -> np.ndarray:
        """The embedding of its rows at `positions`, as sent (noise added).

        With `training`, the forward pass is recorded for `backward`.
        """
        x = self._rows[split][positions]
        if training:
            with tf.GradientTape() as tape:
                embedding = self.bottom.model(x, training=True)
            self._tape, self._embedding = tape, embedding
        else:
            embedding = self.bottom.model(x, training=False)
        sent = embedding.numpy()
        if self._noise > 0:
            rng = np.random.default_rng([self._seed, *step_key, _stable_hash(self.name)])
            sent = sent + rng.normal(0.0, self._noise, size=sent.shape).astype(sent.dtype)
        return sent

    def backward(self, embedding_gradient: np.ndarray) -> None:
        """Updates its bottom model from the gradient with respect to its last embedding."""
        gradients = self._tape.gradient(
            self._embedding,
            self.bottom.model.trainable_variables,
            output_gradients=tf.constant(embedding_gradient, self._embedding.dtype),
        )
        self._tape = self._embedding = None
        self.bottom.apply_gradients(gradients)

    def state(self) -> dict[str, Any]:
        return {"bottom": self.bottom.state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.bottom.load_state(state["bottom"])


class ActiveParty(BottomParty):
    """The party with the labels and the top model."""

    def __init__(
        self,
        record,
        labels: np.ndarray,
        top_model: tf.keras.Model,
        loss: Any,
        metrics: list,
        train_ids,
        test_ids,
        optimizer,
        top_optimizer,
        embedding_noise: float,
        seed: int,
    ):
        super().__init__(record, train_ids, test_ids, optimizer, embedding_noise, seed)
        row_of = {sample_id: row for row, sample_id in enumerate(record.ids)}
        self._labels = {
            "train": labels[[row_of[i] for i in train_ids]],
            "test": labels[[row_of[i] for i in test_ids]],
        }
        self.top = TrainedModel(top_model, top_optimizer)
        self._loss = loss
        self.metrics = metrics

    def top_step(self, combined: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """Trains the top model on the combined embedding; returns the loss and d loss / d combined."""
        y = self._labels["train"][positions]
        combined = tf.constant(combined)
        with tf.GradientTape() as tape:
            tape.watch(combined)
            prediction = self.top.model(combined, training=True)
            loss = self._loss(y, prediction)
        variables = self.top.model.trainable_variables
        *top_gradients, combined_gradient = tape.gradient(loss, [*variables, combined])
        self.top.apply_gradients(top_gradients)
        for metric in self.metrics:
            metric.update_state(y, prediction)
        return float(loss), combined_gradient.numpy()

    def evaluate_batch(self, combined: np.ndarray, positions: np.ndarray) -> float:
        """Updates the metrics on held-out rows; returns the batch's mean loss."""
        y = self._labels["test"][positions]
        prediction = self.top.model(tf.constant(combined), training=False)
        for metric in self.metrics:
            metric.update_state(y, prediction)
        return float(self._loss(y, prediction))

    def num_rows(self, split: str) -> int:
        return len(self._labels[split])

    def state(self) -> dict[str, Any]:
        return {"bottom": self.bottom.state(), "top": self.top.state()}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.top.load_state(state["top"])


def _stable_hash(name: str) -> int:
    """A seed word from the whole name, the same in every process (Python's hash() is salted)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
