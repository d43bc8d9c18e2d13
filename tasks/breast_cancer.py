"""`breast_cancer`: Cross-silo diagnosis from scikit-learn's breast cancer records.

Data: the Wisconsin Diagnostic Breast Cancer records that ship inside
scikit-learn (569 patients, 30 features of cell nuclei, 212 malignant), so
nothing is downloaded. Records are split across `num_sites` hospitals with
quantity skew (Dirichlet site sizes, same diagnosis mix; see
`tffpipe.tasks.partition.quantity_skew`), and a fifth of the sites (at least one)
is held out for evaluation. Features are standardised with statistics of all
records (a simplification: a real federation would agree them with a secure
sum first).

Models: logistic regression (31 parameters) or a small MLP (one hidden layer
of 16 units, 513 parameters), sigmoid output. Metrics: accuracy, precision,
recall, F1 and AUC for the malignant class. Centrally, Street, Wolberg and
Mangasarian (1993) report 97% cross-validated accuracy on these records with
a linear classifier.
"""

from typing import Literal

import numpy as np
import tensorflow as tf
from sklearn import datasets as sklearn_datasets

from tffpipe.tasks import Task, from_arrays


class BinaryF1(tf.keras.metrics.Metric):
    """F1 of the positive class, from probabilities thresholded at `threshold`.

    Keras 2.14's `F1Score` creates its variables on first use, which TFF's
    model wrapper cannot trace; this keeps three counters made up front.
    """

    def __init__(self, threshold: float = 0.5, name: str = "f1", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = threshold
        self.true_positives = self.add_weight("true_positives", initializer="zeros")
        self.false_positives = self.add_weight("false_positives", initializer="zeros")
        self.false_negatives = self.add_weight("false_negatives", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        actual = tf.cast(tf.reshape(y_true, [-1]), tf.float32)
        predicted = tf.cast(tf.reshape(y_pred, [-1]) > self.threshold, tf.float32)
        weight = tf.ones_like(actual) if sample_weight is None else tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)
        self.true_positives.assign_add(tf.reduce_sum(weight * actual * predicted))
        self.false_positives.assign_add(tf.reduce_sum(weight * (1 - actual) * predicted))
        self.false_negatives.assign_add(tf.reduce_sum(weight * actual * (1 - predicted)))

    def result(self):
        tp2 = 2 * self.true_positives
        return tf.math.divide_no_nan(tp2, tp2 + self.false_positives + self.false_negatives)

    def reset_state(self):
        for variable in self.variables:
            variable.assign(tf.zeros_like(variable))

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


def _model(kind: str, num_features: int):
    def build() -> tf.keras.Model:
        layers = [tf.keras.layers.InputLayer(input_shape=(num_features,))]
        if kind == "mlp":
            layers.append(tf.keras.layers.Dense(16, activation="relu"))
        layers.append(tf.keras.layers.Dense(1, activation="sigmoid"))
        return tf.keras.Sequential(layers)

    return build


def create_task(
    *,
    num_sites: int = 6,
    model: Literal["logistic", "mlp"] = "logistic",
    alpha: float = 1.0,
    feature_skew: Literal["none", "shift_scale"] = "none",
    feature_skew_strength: float = 0.5,
    seed: int = 0,
) -> Task:
    """Builds the breast cancer task.

    Args:
      num_sites: hospitals the records are split across (a fifth, at least
        one, held out for evaluation).
      model: logistic (logistic regression) or mlp (one hidden layer of 16).
      alpha: Dirichlet concentration of the site sizes; smaller is more unequal.
      feature_skew: each site sees its features through its own seeded
        transform (shift_scale; see tffpipe/tasks/feature_skew.py).
      feature_skew_strength: how far the transforms differ; 0 is none.
      seed: seeds the split and which sites are held out.
    """
    x, y = sklearn_datasets.load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    # scikit-learn codes malignant as 0; make malignant the positive class.
    malignant = (y == 0).astype(np.float32).reshape(-1, 1)
    return from_arrays(
        "breast_cancer",
        x,
        malignant,
        _model(model, x.shape[1]),
        loss=tf.keras.losses.BinaryCrossentropy(),
        metrics=[
            "accuracy",
            tf.keras.metrics.Precision(name="precision"),
            tf.keras.metrics.Recall(name="recall"),
            BinaryF1(name="f1"),
            tf.keras.metrics.AUC(name="auc"),
        ],
        num_clients=num_sites,
        partition="quantity",
        alpha=alpha,
        seed=seed,
        feature_skew=feature_skew,
        feature_skew_strength=feature_skew_strength,
        description=f"breast cancer diagnosis over {num_sites} hospitals, {model}",
    )
