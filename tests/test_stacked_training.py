"""Stacked client training against TFF's own FedAvg client update, one client at a time."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

# TFF's FedAvg client update as a plain tf.function: the independent
# reference (what `build_model_delta_client_work` runs for each client).
from tensorflow_federated.python.learning.templates import model_delta_client_work

from tffpipe.learning import builder
from tffpipe.runtimes import stacked_training
from tffpipe.runtimes.stacked_model import NotStackable
from tffpipe.tasks import from_arrays
from tffpipe_tasks import digits


def _reference(model_fn, weights, datasets, learning_rate, weighting):
    """TFF's client update of each dataset: (deltas, weights, metrics) per client.

    One model serves every call and its metrics are never reset, so each
    client's metrics are the difference of consecutive reports.
    """
    update = model_delta_client_work.build_model_delta_update_with_tff_optimizer(
        model_fn, weighting=weighting, loop_implementation=tff.learning.LoopImplementation.DATASET_REDUCE
    )
    optimizer = tff.learning.optimizers.build_sgdm(learning_rate)
    results, previous = [], None
    for ds in datasets:
        result, metrics = update(optimizer, weights, ds)
        cumulative = {name: np.array([float(v) for v in values]) for name, values in metrics.items()}
        own = cumulative if previous is None else {n: cumulative[n] - previous[n] for n in cumulative}
        previous = cumulative
        results.append(([np.asarray(u) for u in result.update], float(result.update_weight), own))
    return results


def _check(trainer, weights, datasets, learning_rate, expected):
    x, y, counts = stacked_training.padded_examples(datasets)
    deltas, client_weights, metrics = trainer.train(weights.trainable, x, y, counts, learning_rate)
    for k, (update, weight, own) in enumerate(expected):
        for want, got in zip(update, deltas):
            np.testing.assert_allclose(got[k].numpy(), want, atol=1e-6)
        assert float(client_weights[k]) == weight
        for name, values in own.items():
            np.testing.assert_allclose([float(v[k]) for v in metrics[name]], values, rtol=1e-5, atol=1e-5)


def _digits_clients(counts, batch_size, seed=0):
    images, labels = digits.load_arrays()
    rng = np.random.default_rng(seed)
    datasets = []
    for count in counts:
        rows = rng.choice(len(images), count)
        datasets.append(tf.data.Dataset.from_tensor_slices((images[rows], labels[rows])).batch(batch_size))
    return datasets


def test_digits_cnn_clients_of_every_size_equal_tff_client_update():
    task = digits.create_task(num_clients=20, eval_clients=5)
    model_fn = builder.build_model_fn(task)
    # A client with no data, one with a partial batch, one with several.
    datasets = _digits_clients([7, 0, 3, 12, 5], batch_size=5)
    weights = builder.initial_model_weights(task, 0)
    trainer = stacked_training.StackedTrainer(
        task.model_builder(), task.loss_builder(), model_fn().get_metrics(), 5, weight_by_examples=True
    )
    expected = _reference(model_fn, weights, datasets, 0.1, tff.learning.ClientWeighting.NUM_EXAMPLES)
    assert [w for _, w, _ in expected] == [7.0, 0.0, 3.0, 12.0, 5.0]
    _check(trainer, weights, datasets, 0.1, expected)


def _regression_task():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = (x @ rng.normal(size=(6, 2))).astype(np.float32)

    def model():
        return tf.keras.Sequential(
            [
                tf.keras.layers.InputLayer(input_shape=(6,)),
                tf.keras.layers.Dense(8, activation="tanh"),
                tf.keras.layers.Dense(2),
            ]
        )

    return from_arrays(
        "regression",
        x,
        y,
        model,
        loss=tf.keras.losses.MeanSquaredError(),
        metrics=[tf.keras.metrics.MeanAbsoluteError(name="mae")],
        num_clients=6,
        partition="quantity",
        eval_fraction=0.2,
    )


def test_shuffled_two_epoch_pipeline_and_uniform_weights_equal_tff_client_update():
    task = _regression_task()
    model_fn = builder.build_model_fn(task)
    spec = tff.simulation.baselines.ClientSpec(num_epochs=2, batch_size=4, shuffle_buffer_size=50)

    def datasets():
        # Fresh datasets each time: a seeded shuffle reshuffles on every iteration of one dataset.
        return [task.client_dataset(cid, spec, seed=3) for cid in task.train_data.client_ids]

    weights = builder.initial_model_weights(task, 0)
    trainer = stacked_training.StackedTrainer(
        task.model_builder(), task.loss_builder(), model_fn().get_metrics(), 4, weight_by_examples=False
    )
    expected = _reference(model_fn, weights, datasets(), 0.05, tff.learning.ClientWeighting.UNIFORM)
    _check(trainer, weights, datasets(), 0.05, expected)
    _, _, counts = stacked_training.padded_examples(datasets())
    assert counts.numpy().tolist() == [
        2 * len(task.train_data.create_tf_dataset_for_client(c)) for c in task.train_data.client_ids
    ]


def test_a_diverging_client_sends_nothing_and_leaves_the_others_alone():
    task = _regression_task()
    model_fn = builder.build_model_fn(task)
    trainer = stacked_training.StackedTrainer(
        task.model_builder(), task.loss_builder(), model_fn().get_metrics(), 4, weight_by_examples=True
    )
    weights = builder.initial_model_weights(task, 0)
    big = tf.data.Dataset.from_tensor_slices((np.ones((8, 6), np.float32), np.full((8, 2), 1e30, np.float32))).batch(4)
    small = tf.data.Dataset.from_tensor_slices((np.ones((3, 6), np.float32), np.ones((3, 2), np.float32))).batch(4)
    x, y, counts = stacked_training.padded_examples([big, small])
    deltas, client_weights, metrics = trainer.train(weights.trainable, x, y, counts, 0.1)
    assert all(float(tf.reduce_max(tf.abs(d[0]))) == 0.0 for d in deltas)
    assert client_weights.numpy().tolist() == [0.0, 3.0]
    assert all(float(v[0]) == 0.0 for values in metrics.values() for v in values)
    expected = _reference(model_fn, weights, [small], 0.1, tff.learning.ClientWeighting.NUM_EXAMPLES)
    for want, got in zip(expected[0][0], deltas):
        np.testing.assert_allclose(got[1].numpy(), want, atol=1e-6)


@pytest.mark.parametrize(
    "layer, reason",
    [
        (tf.keras.layers.Dropout(0.5, name="drop"), "layer 'drop' (Dropout) has no stacked form"),
        (tf.keras.layers.BatchNormalization(name="bn"), "has non-trainable weights"),
        (tf.keras.layers.Dense(4, kernel_regularizer="l2", name="reg"), "adds its own losses"),
        (tf.keras.layers.Dense(4, activation="selu", name="selu"), "has activation 'selu'"),
    ],
)
def test_layers_without_a_stacked_form_are_named(layer, reason):
    model = tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(6,)), tf.keras.layers.Dense(4), layer])
    with pytest.raises(NotStackable, match=reason.replace("(", r"\(").replace(")", r"\)")):
        stacked_training.StackedTrainer(model, tf.keras.losses.MeanSquaredError(), [], 4, weight_by_examples=False)


def test_an_unknown_metric_is_named():
    model = tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(6,)), tf.keras.layers.Dense(2)])
    with pytest.raises(NotStackable, match=r"metric 'auc' \(AUC\) has no stacked form"):
        stacked_training.StackedTrainer(
            model, tf.keras.losses.MeanSquaredError(), [tf.keras.metrics.AUC(name="auc")], 4, weight_by_examples=False
        )
