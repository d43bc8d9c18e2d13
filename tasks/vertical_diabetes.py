"""`vertical_diabetes`: a clinic and a laboratory predict diabetes progression for the patients they share.

Data: scikit-learn's diabetes records (Efron et al. 2004: 442 patients), split
by column as two organisations would hold them: the clinic has age, sex,
BMI and blood pressure and the outcome (the active party); the laboratory
has the six blood-serum measurements of the same patients. With
`--vertical_overlap=0.8` (the default) 80% of the patients are at both, the
rest at one only; the run finds the shared ones by private set
intersection. Each party standardises its own columns; the target is
standardised, so MSE reads as the share of variance left unexplained.

Model: vertical linear regression: each party a linear map to an embedding
of 4, the clinic's top model one linear unit on the (securely summed)
embeddings. Metrics: MSE and MAE. Measured (`benchmarks/vertical.py`, 50
rounds of one epoch): the default run (seed 0) reaches a held-out MSE of
0.72, 0.67 in the mean of 3 seeds; plain SGD at the default learning rate
0.1 is noisy here, and at `--client_learning_rate=0.02` the mean is 0.62,
against 0.64 for the same model trained centrally on all ten features and
0.71 for the clinic alone. Efron et al. report R^2 = 0.52 for least squares
on all records (an MSE of about 0.48 in these units; the 71 held-out
patients are a small, hard test set).
"""

import tensorflow as tf
from sklearn import datasets as sklearn_datasets

from . import vertical_split
from tffpipe.tasks import VerticalTask, vertical_from_arrays

CLINIC = ("age", "sex", "bmi", "bp")
LAB = ("s1 tc", "s2 ldl", "s3 hdl", "s4 tch", "s5 ltg", "s6 glu")
PARTIES = {"clinic": "age, sex, BMI, blood pressure and the outcome (active)", "lab": "six serum measurements"}
EMBEDDING = 4


def _bottom(width: int):
    return lambda: tf.keras.Sequential(
        [
            tf.keras.layers.InputLayer(input_shape=(width,)),
            tf.keras.layers.Dense(EMBEDDING),
        ]
    )


def _top(width: int) -> tf.keras.Model:
    return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(width,)), tf.keras.layers.Dense(1)])


def create_task(*, vertical_overlap: float = 0.8, seed: int = 0) -> VerticalTask:
    """Builds the vertical diabetes task (parties: clinic, lab).

    Args:
      vertical_overlap: share of the patients both parties hold.
      seed: seeds which patients each party holds.
    """
    x, y = sklearn_datasets.load_diabetes(return_X_y=True)
    y = (y - y.mean()) / y.std()
    rows = vertical_split.party_rows(len(x), ("clinic", "lab"), vertical_overlap, seed)
    ids = {party: [f"patient{i:04d}" for i in r] for party, r in rows.items()}
    clinic, lab = x[:, : len(CLINIC)], x[:, len(CLINIC) :]
    return vertical_from_arrays(
        "vertical_diabetes",
        {
            "clinic": (ids["clinic"], vertical_split.standardised(clinic[rows["clinic"]])),
            "lab": (ids["lab"], vertical_split.standardised(lab[rows["lab"]])),
        },
        {"clinic": y[rows["clinic"]].astype("float32")},
        {"clinic": _bottom(len(CLINIC)), "lab": _bottom(len(LAB))},
        _top,
        loss="mse",
        metrics=["mae"],
        feature_names={"clinic": CLINIC, "lab": LAB},
        description="diabetes progression: clinic (age, sex, BMI, BP; outcome) + laboratory (serum)",
    )
