"""`emnist`: Federated EMNIST, handwritten characters partitioned by writer.

Data: TFF's Federated EMNIST (LEAF, Caldas et al. 2018), file
`emnist_all.sqlite` (loaded by `tff.simulation.datasets.emnist.load_data`):
3,400 writers with 671,585 training and 77,483 test examples of 28x28
grey-scale characters in 62 classes (digits, upper and lower case). With
`--emnist_only_digits`: 3,383 writers, 341,873 / 40,832 examples, 10 classes.
Every writer's examples are split into a train and a test part; evaluation
uses the test parts (`eval_split="test_split"`), as the literature does.

Models (TFF's baseline implementations, softmax outputs):
  cnn_dropout: two 3x3 conv layers (32, 64), max-pool, dropout, a 128-unit
    dense layer (Reddi et al. 2021); 1,206,590 parameters (1,199,882 digits).
    Reddi et al. 2021 ("Adaptive Federated Optimization", Table 2) report
    about 85% test accuracy on EMNIST-62 after 1,500 rounds of 10 clients
    (FedAvg 84.9%, FedYogi 85.5%, FedAdam 85.6%).
  cnn: the CNN of McMahan et al. 2017 (5x5 conv 32 and 64, each max-pooled,
    a 512-unit dense layer); 1,690,046 parameters (1,663,370 digits, the
    count the paper gives). McMahan et al. report 99% on MNIST; on EMNIST it
    trains to about the accuracy of cnn_dropout.
"""

from typing import Literal

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tffpipe.compat import emnist_models

from tffpipe.tasks import public_data
from tffpipe.tasks import Task

FILENAME = "emnist_all.sqlite"
_MODELS = {
    "cnn_dropout": emnist_models.create_conv_dropout_model,
    "cnn": emnist_models.create_original_fedavg_cnn_model,
}


def _features(example):
    return tf.expand_dims(example["pixels"], -1), example["label"]


def create_task(
    *,
    model: Literal["cnn_dropout", "cnn"] = "cnn_dropout",
    only_digits: bool = False,
    data_dir: str = public_data.DEFAULT_DATA_DIR,
) -> Task:
    """Builds the EMNIST task.

    Args:
      model: cnn_dropout (Reddi et al. 2021) or cnn (McMahan et al. 2017).
      only_digits: use the 10-class digits-only version instead of all 62
        classes.
      data_dir: the folder holding emnist_all.sqlite.
    """
    public_data.dataset_file(data_dir, FILENAME, FILENAME + ".lzma")
    train, test = tff.simulation.datasets.emnist.load_data(only_digits=only_digits, cache_dir=data_dir)
    classes = 10 if only_digits else 62
    return Task(
        name="emnist",
        description=f"Federated EMNIST-{classes} by writer, {model}",
        model_builder=lambda: _MODELS[model](only_digits=only_digits),
        loss_builder=tf.keras.losses.SparseCategoricalCrossentropy,
        metrics_builder=lambda: [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        train_data=train,
        eval_data=test,
        to_features=_features,
        eval_split="test_split",
    )


def write_synthetic_data(data_dir: str, *, num_clients: int, examples_per_client: int, seed: int = 0) -> str:
    """Writes random EMNIST-shaped data in the real file's format and tables.

    For tests and benchmarks: the same SQLite layout, split names and
    tf.Example features as `emnist_all.sqlite`, so `create_task` reads it
    through TFF's own loader. Digits-only splits hold the examples with
    labels below 10.

    Returns:
      The path written.
    """
    rng = np.random.default_rng(seed)
    splits = {name: {} for name in ("all_train", "all_test", "digits_only_train", "digits_only_test")}
    for i in range(num_clients):
        cid = f"f{i:04d}_{i % 100:02d}"
        for part, count in (("train", examples_per_client), ("test", max(1, examples_per_client // 4))):
            labels = rng.integers(0, 62, count).astype(np.int32)
            labels[0] = i % 10  # every client has a digit in both parts
            pixels = rng.random((count, 28, 28), dtype=np.float32)
            splits[f"all_{part}"][cid] = {"label": labels, "pixels": pixels}
            digits = labels < 10
            splits[f"digits_only_{part}"][cid] = {"label": labels[digits], "pixels": pixels[digits]}
    path = f"{data_dir}/{FILENAME}"
    public_data.write_sql_client_data(path, splits)
    return path
