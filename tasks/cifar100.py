"""`cifar100`: CIFAR-100 images over 500 clients, ResNet-18 with group normalisation.

Data: TFF's Federated CIFAR-100 (Reddi et al. 2021), file `cifar100.sqlite`
(loaded by `tff.simulation.datasets.cifar100.load_data`): the 50,000 training
images over 500 clients and the 10,000 test images over 100 other clients,
100 images each, with label skew from a Pachinko allocation over the coarse
and fine labels. Evaluation uses the 100 test clients (`eval_split=
"test_split"`; their ids, 0-99, are names of other clients than the training
ids 0-499). Images are centre-cropped to 24x24 and standardised per image
(TFF's baseline preprocessing, without distortion).

Model: TFF's ResNet-18 with group normalisation (`tff.simulation.models.
resnet_models.create_resnet18`); 11,227,812 parameters. Reddi et al. 2021
("Adaptive Federated Optimization", Table 2) report 44.7% (FedAvg) to 52.5%
(FedAdam) test accuracy after 4,000 rounds of 10 clients.
"""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tffpipe.compat import resnet_models

from tffpipe.tasks import public_data
from tffpipe.tasks import Task

FILENAME = "cifar100.sqlite"
NUM_CLASSES = 100


def _features(crop: int):
    def features(example):
        image = tf.cast(example["image"], tf.float32)
        image = tf.image.resize_with_crop_or_pad(image, crop, crop)
        return tf.image.per_image_standardization(image), example["label"]

    return features


def create_task(*, crop_size: int = 24, data_dir: str = public_data.DEFAULT_DATA_DIR) -> Task:
    """Builds the CIFAR-100 task.

    Args:
      crop_size: side of the centre crop fed to the model (24 in the literature,
        at most 32).
      data_dir: the folder holding cifar100.sqlite.
    """
    if not 1 <= crop_size <= 32:
        raise ValueError(f"crop_size must be between 1 and 32, got {crop_size}")
    public_data.dataset_file(data_dir, FILENAME, FILENAME + ".lzma")
    train, test = tff.simulation.datasets.cifar100.load_data(cache_dir=data_dir)
    return Task(
        name="cifar100",
        description="Federated CIFAR-100 over 500 clients, ResNet-18 with group norm",
        model_builder=lambda: resnet_models.create_resnet18(
            input_shape=(crop_size, crop_size, 3), num_classes=NUM_CLASSES
        ),
        loss_builder=tf.keras.losses.SparseCategoricalCrossentropy,  # softmax outputs
        metrics_builder=lambda: [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        train_data=train,
        eval_data=test,
        to_features=_features(crop_size),
        eval_split="test_split",
    )


def write_synthetic_data(
    data_dir: str,
    *,
    num_train_clients: int,
    num_test_clients: int,
    images_per_client: int,
    seed: int = 0,
) -> str:
    """Writes random images in the format and splits of `cifar100.sqlite`.

    For tests: `create_task` reads the file through TFF's own loader.

    Returns:
      The path written.
    """
    rng = np.random.default_rng(seed)
    splits = {"train": {}, "test": {}}
    for split, count in (("train", num_train_clients), ("test", num_test_clients)):
        for i in range(count):
            labels = rng.integers(0, NUM_CLASSES, images_per_client)
            splits[split][str(i)] = {
                "coarse_label": labels // 5,
                "image": rng.integers(0, 256, (images_per_client, 32, 32, 3)),
                "label": labels,
            }
    path = f"{data_dir}/{FILENAME}"
    public_data.write_sql_client_data(path, splits)
    return path
