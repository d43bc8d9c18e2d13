import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tffpipe import partition
from tffpipe import tasks

from tasks import digits


def _small_digits():
    return digits.create_task(num_clients=12, eval_clients=3, alpha=1.0, seed=0)


def test_digits_has_held_out_eval_clients_and_all_examples():
    task = _small_digits()
    assert len(task.train_data.client_ids) == 9
    assert len(task.eval_data.client_ids) == 3
    assert not set(task.train_data.client_ids) & set(task.eval_data.client_ids)
    total = sum(
        len(list(data.create_tf_dataset_for_client(cid)))
        for data in (task.train_data, task.eval_data)
        for cid in data.client_ids
    )
    assert total == 1797


def test_client_dataset_applies_the_client_spec():
    task = _small_digits()
    cid = task.train_data.client_ids[0]
    n = len(list(task.train_data.create_tf_dataset_for_client(cid)))
    spec = tasks.ClientSpec(num_epochs=2, batch_size=7, shuffle_buffer_size=50)
    batches = list(task.client_dataset(cid, spec, seed=1))
    assert sum(int(x.shape[0]) for x, _ in batches) == 2 * n
    assert batches[0][0].shape[1:] == (8, 8, 1)
    capped = tasks.ClientSpec(num_epochs=1, batch_size=4, max_elements=5)
    assert sum(int(x.shape[0]) for x, _ in task.client_dataset(cid, capped, seed=1)) == 5
    # Same seed, same order; the shuffle is seeded.
    first = [y.numpy().tolist() for _, y in task.client_dataset(cid, spec, seed=3)]
    again = [y.numpy().tolist() for _, y in task.client_dataset(cid, spec, seed=3)]
    assert first == again


def _task_with_model(model_builder, **overrides):
    x = np.zeros((20, 8, 8, 1), np.float32)
    y = np.zeros(20, np.int32)
    data = partition.to_client_data(
        {"x": x, "y": y}, [np.arange(10), np.arange(10, 20)], ["a", "b"]
    )
    train = data.from_clients_and_tf_fn(["a"], data.create_tf_dataset_for_client)
    held = data.from_clients_and_tf_fn(["b"], data.create_tf_dataset_for_client)
    kwargs = dict(
        name="t",
        model_builder=model_builder,
        loss_builder=tf.keras.losses.SparseCategoricalCrossentropy,
        metrics_builder=lambda: [],
        train_data=train,
        eval_data=held,
        to_features=lambda e: (e["x"], e["y"]),
    )
    kwargs.update(overrides)
    return tasks.Task(**kwargs)


def test_model_that_does_not_fit_the_data_is_rejected():
    wrong = lambda: tf.keras.Sequential(
        [tf.keras.layers.InputLayer(input_shape=(28, 28, 1)), tf.keras.layers.Flatten(),
         tf.keras.layers.Dense(2)]
    )
    with pytest.raises(tasks.TaskError, match=r"expects inputs of shape \(None, 28, 28, 1\) but the data's x has shape \(None, 8, 8, 1\)"):
        _task_with_model(wrong)


def test_model_without_input_layer_is_checked_by_calling_it():
    wrong = lambda: tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(5,))])
    with pytest.raises(tasks.TaskError, match="model"):
        _task_with_model(wrong)
    fine = lambda: tf.keras.Sequential([tf.keras.layers.Flatten(), tf.keras.layers.Dense(2)])
    assert _task_with_model(fine).name == "t"


def test_eval_clients_must_be_held_out():
    task = _task_with_model(lambda: tf.keras.Sequential([tf.keras.layers.Flatten(), tf.keras.layers.Dense(2)]))
    with pytest.raises(tasks.TaskError, match="evaluation clients must be held out"):
        _task_with_model(task.model_builder, eval_data=task.train_data)


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(tasks.TaskError, match=r"unknown task 'mnist'; valid tasks: digits"):
        tasks.load_factory("mnist")


def test_factory_path_loads_a_user_task(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(textwrap.dedent('''
        from tasks import digits

        def create_task(*, clients: int = 12, seed: int = 0):
            """A user's task.

            Args:
              clients: how many clients
                in total.
            """
            return digits.create_task(num_clients=clients, eval_clients=2, seed=seed)

        def not_a_task():
            return 3
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = tasks.load_factory("my_tasks:create_task")
    assert tasks.factory_options(factory) == {"clients": (12, "how many clients in total.")}
    task = tasks.create_task("my_tasks:create_task", {"clients": 10}, seed=1)
    assert len(task.train_data.client_ids) == 8
    with pytest.raises(tasks.TaskError, match="returned int, not tffpipe.tasks.Task"):
        tasks.create_task("my_tasks:not_a_task", {}, seed=0)
    with pytest.raises(tasks.TaskError, match="has no callable 'missing'"):
        tasks.load_factory("my_tasks:missing")
    with pytest.raises(tasks.TaskError, match="cannot import task module 'no_such_module'"):
        tasks.load_factory("no_such_module:create_task")
    sys.modules.pop("my_tasks", None)


def test_digits_options_come_from_its_signature():
    options = tasks.factory_options(tasks.load_factory("digits"))
    assert set(options) == {"num_clients", "eval_clients", "alpha"}
    assert options["num_clients"][0] == 50
    assert "held out" in options["eval_clients"][1]
