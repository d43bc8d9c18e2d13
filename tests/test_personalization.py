"""Personalization evaluation: the split, the fine-tuning, the gain."""

import csv

import numpy as np
import pytest
import tensorflow as tf

from conftest import make_config
from tffpipe import api
from tffpipe import errors
from tffpipe.learning import builder
from tffpipe.program import evaluation
from tffpipe.program import personalization
from tffpipe.tasks import from_arrays


def _model():
    return tf.keras.Sequential(
        [
            tf.keras.layers.Input((5,)),
            tf.keras.layers.Dense(6, activation="relu"),
            tf.keras.layers.Dense(4, activation="softmax"),
        ]
    )


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, 5)).astype(np.float32)
    y = rng.integers(0, 4, size=800).astype(np.int32)
    x[np.arange(800), y] += 2.0  # learnable
    return from_arrays(
        "four_class",
        x,
        y,
        _model,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        num_clients=16,
        alpha=0.1,
        eval_fraction=0.25,
        seed=2,
    )


def _examples(dataset):
    x, y = zip(*dataset)
    return np.concatenate(x), np.concatenate(y)


def _personalizer(task, tmp_path, runtime="inprocess", **values):
    cfg = make_config(runtime=runtime, root_dir=str(tmp_path), personalize_every=1, **values)
    evaluator = evaluation.Evaluator(task, cfg, lambda line: None)
    return personalization.Personalizer(task, cfg, evaluator, lambda line: None), evaluator


def test_the_split_is_seeded_by_run_and_client_and_leaves_both_sides_non_empty():
    mask = personalization.split_mask(10, 0.3, 0, "a")
    assert mask.sum() == 3
    assert (mask == personalization.split_mask(10, 0.3, 0, "a")).all()
    assert not (mask == personalization.split_mask(10, 0.3, 1, "a")).all()
    assert not (mask == personalization.split_mask(10, 0.3, 0, "b")).all()
    assert personalization.split_mask(2, 0.01, 0, "a").sum() == 1
    assert personalization.split_mask(2, 0.99, 0, "a").sum() == 1


def test_fine_tuning_is_plain_sgd_on_the_clients_batches(task, tmp_path):
    personalizer, _ = _personalizer(
        task, tmp_path, personalize_learning_rate=0.3, personalize_epochs=2, personalize_batch_size=4
    )
    weights = builder.initial_model_weights(task, 1)
    tune, _ = personalizer._parts(task.eval_data.client_ids[0])
    tuned = personalizer.fine_tuned(weights, tune)
    # The same steps in Keras, independently: SGD over the same batches.
    model = _model()
    model.set_weights(weights.trainable)
    optimizer = tf.keras.optimizers.SGD(0.3)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()
    steps = 0
    for x, y in tune:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        steps += 1
    assert steps >= 2
    for ours, keras in zip(tuned.trainable, model.get_weights()):
        np.testing.assert_allclose(ours, keras, atol=1e-5)


@pytest.mark.parametrize("runtime", ["inprocess", "cpp"])
def test_zero_epochs_gains_exactly_nothing_and_measures_the_global_model(task, tmp_path, runtime):
    personalizer, _ = _personalizer(task, tmp_path, runtime=runtime, personalize_epochs=0)
    weights = builder.initial_model_weights(task, 3)
    report = personalizer(weights)
    model = _model()
    model.set_weights(weights.trainable)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    for cid, figures in report.clients.items():
        assert figures["gain"] == 0.0
        assert figures["accuracy"] == figures["baseline_accuracy"]
        _, test = personalizer._parts(cid)
        x, y = _examples(test)
        loss, accuracy = model.evaluate(x, y, batch_size=64, verbose=0)
        assert figures["loss"] == pytest.approx(loss, abs=1e-5)
        assert figures["accuracy"] == pytest.approx(accuracy, abs=1e-5)
        assert figures["num_examples"] == len(y)
    assert report.metrics["personalized/gain_mean"] == 0.0
    assert report.headline == "accuracy"


# Slow step: an accuracy claim over a seeded run (36 s).
@pytest.mark.slow
def test_fine_tuning_helps_strongly_non_iid_clients_in_a_seeded_run(tmp_path):
    # Dirichlet alpha 0.1: each held-out client sees few classes.
    result = api.run(
        quiet=True,
        task="digits",
        digits_alpha=0.1,
        rounds=3,
        eval_every=0,
        personalize_every=3,
        personalize_epochs=2,
        clients_per_round=5,
        root_dir=str(tmp_path),
        experiment_name="p",
    )
    last = result.metrics.iloc[-1]
    assert last["personalized/accuracy_mean"] > last["personalized/baseline_accuracy_mean"] + 0.1
    assert last["personalized/gain_mean"] == pytest.approx(
        last["personalized/accuracy_mean"] - last["personalized/baseline_accuracy_mean"], abs=1e-9
    )
    with open(tmp_path / "p" / "results" / "clients.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and all(r["round"] == "3" for r in rows)
    gains = [float(r["personalized/gain"]) for r in rows]
    assert np.percentile(gains, 10) == pytest.approx(last["personalized/gain_p10"], abs=1e-9)
    tuned = [float(r["personalized/num_examples"]) + 0 for r in rows]
    assert all(0 < n < float(r["num_examples"]) for n, r in zip(tuned, rows))


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("personalize_split", 1.0, "--personalize_split must be in (0, 1), got 1"),
        ("personalize_split", 0, "--personalize_split must be in (0, 1), got 0"),
        ("personalize_epochs", -1, "--personalize_epochs must be at least 0, got -1"),
        ("personalize_learning_rate", 0.0, "--personalize_learning_rate must be positive, got 0"),
    ],
)
def test_bad_personalization_settings_are_one_line_errors(flag, value, message):
    with pytest.raises(errors.ConfigError) as info:
        make_config(**{flag: value})
    assert str(info.value) == message


def test_splitting_clients_adds_no_function_per_client_and_evaluation(task, tmp_path):
    # Eager unbatch/reduce/filter registered functions for every client at
    # every evaluation (about 0.5 MiB each, kept for good).
    from tensorflow.python.eager import context

    personalizer, evaluator = _personalizer(task, tmp_path, personalize_batch_size=4)
    ids = list(evaluator.client_ids)
    first = [personalizer._parts(cid) for cid in ids]
    before = len(context.context().list_function_names())
    again = [personalizer._parts(cid) for cid in ids]
    assert len(context.context().list_function_names()) == before
    for one, other in zip(first, again):
        for a, b in zip(one, other):
            np.testing.assert_array_equal(_examples(a)[1], _examples(b)[1])
    # The split is the mask's: fine-tuning and test examples partition the client's.
    cid = ids[0]
    tune, test = again[0]
    x_all, y_all = _examples(task.eval_dataset(cid, 100))
    mask = personalization.split_mask(len(y_all), personalizer._settings.split, 0, cid)
    np.testing.assert_array_equal(_examples(test)[1], y_all[~mask])
    epochs = personalizer._settings.epochs
    np.testing.assert_array_equal(_examples(tune)[1], np.tile(y_all[mask], epochs))
