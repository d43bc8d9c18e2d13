"""`diabetes`: Cross-silo regression of diabetes progression from scikit-learn's records.

Data: the diabetes records that ship inside scikit-learn (Efron et al. 2004:
442 patients, 10 baseline features, and a quantitative measure of disease
progression one year later), so nothing is downloaded. Records are split
across `num_sites` sites with quantity skew (Dirichlet site sizes; see
`tffpipe.tasks.partition.quantity_skew`) and a fifth of the sites (at least one)
is held out for evaluation. The target is standardised (mean 0, variance 1
over all records), so MSE reads as the share of variance left unexplained:
1.0 is predicting the mean.

Model: linear regression (one dense unit, 11 parameters). Metrics: MSE and
MAE (standardised units). Centrally, Efron et al. (2004) report R^2 = 0.518
for least squares on all ten features, i.e. an MSE of about 0.48 here.
"""

from typing import Literal

import numpy as np
import tensorflow as tf
from sklearn import datasets as sklearn_datasets

from tffpipe.tasks import Task, from_arrays


def _linear_model() -> tf.keras.Model:
    return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(10,)), tf.keras.layers.Dense(1)])


def create_task(
    *,
    num_sites: int = 6,
    alpha: float = 1.0,
    feature_skew: Literal["none", "shift_scale"] = "none",
    feature_skew_strength: float = 0.5,
    seed: int = 0,
) -> Task:
    """Builds the diabetes task.

    Args:
      num_sites: sites the records are split across (a fifth, at least one,
        held out for evaluation).
      alpha: Dirichlet concentration of the site sizes; smaller is more unequal.
      feature_skew: each site sees its features through its own seeded
        transform (shift_scale; see tffpipe/tasks/feature_skew.py).
      feature_skew_strength: how far the transforms differ; 0 is none.
      seed: seeds the split and which sites are held out.
    """
    x, y = sklearn_datasets.load_diabetes(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    target = ((y - y.mean()) / y.std()).astype(np.float32).reshape(-1, 1)
    return from_arrays(
        "diabetes",
        x,
        target,
        _linear_model,
        loss=tf.keras.losses.MeanSquaredError(),
        metrics=[
            tf.keras.metrics.MeanSquaredError(name="mse"),
            tf.keras.metrics.MeanAbsoluteError(name="mae"),
        ],
        num_clients=num_sites,
        partition="quantity",
        alpha=alpha,
        seed=seed,
        feature_skew=feature_skew,
        feature_skew_strength=feature_skew_strength,
        description=f"diabetes progression over {num_sites} sites, linear regression",
    )
