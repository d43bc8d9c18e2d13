import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tffpipe.tasks import partition
from tffpipe import tasks

from tffpipe_tasks import digits


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
    data = partition.to_client_data({"x": x, "y": y}, [np.arange(10), np.arange(10, 20)], ["a", "b"])
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
    def wrong():
        return tf.keras.Sequential(
            [tf.keras.layers.InputLayer(input_shape=(28, 28, 1)), tf.keras.layers.Flatten(), tf.keras.layers.Dense(2)]
        )

    with pytest.raises(
        tasks.TaskError,
        match=r"expects inputs of shape \(None, 28, 28, 1\) but the data's x has shape \(None, 8, 8, 1\)",
    ):
        _task_with_model(wrong)


def test_model_without_input_layer_is_checked_by_calling_it():
    def wrong():
        return tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(5,))])

    with pytest.raises(tasks.TaskError, match="model"):
        _task_with_model(wrong)

    def fine():
        return tf.keras.Sequential([tf.keras.layers.Flatten(), tf.keras.layers.Dense(2)])

    assert _task_with_model(fine).name == "t"


def test_eval_clients_must_be_held_out():
    task = _task_with_model(lambda: tf.keras.Sequential([tf.keras.layers.Flatten(), tf.keras.layers.Dense(2)]))
    with pytest.raises(tasks.TaskError, match="evaluation clients must be held out"):
        _task_with_model(task.model_builder, eval_data=task.train_data)


def test_unknown_task_lists_the_valid_names():
    valid = "breast_cancer, cifar100, diabetes, digits, emnist, shakespeare, stackoverflow_nwp, vertical_breast_cancer, vertical_diabetes"
    with pytest.raises(tasks.TaskError, match=f"unknown task 'mnist'; valid tasks: {valid} "):
        tasks.load_factory("mnist")


def test_factory_path_loads_a_user_task(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(
        textwrap.dedent('''
        from tffpipe_tasks import digits

        def create_task(*, clients: int = 12, seed: int = 0):
            """A user's task.

            Args:
              clients: how many clients
                in total.
            """
            return digits.create_task(num_clients=clients, eval_clients=2, seed=seed)

        def not_a_task():
            return 3
    ''')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = tasks.load_factory("my_tasks:create_task")
    assert tasks.factory_options(factory) == {"clients": tasks.TaskOption(12, "how many clients in total.")}
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
    assert set(options) == {"num_clients", "eval_clients", "alpha", "feature_skew", "feature_skew_strength"}
    assert options["feature_skew"].choices == ("none", "brightness", "rotation")
    assert options["num_clients"].default == 50
    assert "held out" in options["eval_clients"].help


def test_literal_options_list_their_choices_and_reject_others():
    options = tasks.factory_options(tasks.load_factory("emnist"))
    assert set(options) == {"model", "only_digits"}  # data_dir comes from --data_dir
    assert options["model"] == tasks.TaskOption(
        "cnn_dropout",
        "cnn_dropout (Reddi et al. 2021) or cnn (McMahan et al. 2017).",
        ("cnn_dropout", "cnn"),
    )
    with pytest.raises(tasks.TaskError, match="model must be one of cnn_dropout, cnn, got 'resnet'"):
        tasks.create_task("emnist", {"model": "resnet"}, seed=0)


def test_test_split_evaluation_may_share_client_ids():
    base = _task_with_model(lambda: tf.keras.Sequential([tf.keras.layers.Flatten(), tf.keras.layers.Dense(2)]))
    task = _task_with_model(base.model_builder, eval_data=base.train_data, eval_split="test_split")
    assert task.eval_data.client_ids == task.train_data.client_ids
    with pytest.raises(tasks.TaskError, match="eval_split must be one of held_out_clients, test_split, got 'train'"):
        _task_with_model(base.model_builder, eval_split="train")


def test_regroup_runs_before_to_features_in_training_and_evaluation():
    # Ten scalar records per client, regrouped into records of 5 values.
    data = partition.to_client_data(
        {"v": np.arange(20, dtype=np.float32)}, [np.arange(10), np.arange(10, 20)], ["a", "b"]
    )
    task = tasks.Task(
        name="grouped",
        model_builder=lambda: tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(4,))]),
        loss_builder=tf.keras.losses.MeanSquaredError,
        metrics_builder=lambda: [],
        train_data=data.from_clients_and_tf_fn(["a"], data.create_tf_dataset_for_client),
        eval_data=data.from_clients_and_tf_fn(["b"], data.create_tf_dataset_for_client),
        to_features=lambda seq: (seq[:-1], seq[-1:]),
        regroup=lambda ds: ds.map(lambda e: e["v"]).batch(5, drop_remainder=True),
    )
    spec = tasks.ClientSpec(num_epochs=1, batch_size=8, shuffle_buffer_size=1)
    ((x, y),) = list(task.client_dataset("a", spec, seed=0))
    assert x.numpy().tolist() == [[0, 1, 2, 3], [5, 6, 7, 8]]
    assert y.numpy().tolist() == [[4], [9]]
    ((x, y),) = list(task.eval_dataset("b", 8))
    assert y.numpy().tolist() == [[14], [19]]


def test_installed_packages_register_tasks_through_entry_points(tmp_path, monkeypatch):
    (tmp_path / "plugin_tasks.py").write_text(
        textwrap.dedent('''
        """`plugin`: a task an installed package registers."""
        from typing import Literal
        from tffpipe_tasks import digits

        def create_task(*, size: Literal["small", "large"] = "small", seed: int = 0):
            """A plug-in task.

            Args:
              size: how big.
            """
            return digits.create_task(num_clients=12 if size == "small" else 20, eval_clients=2, seed=seed)
    ''')
    )
    dist = tmp_path / "plugin_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[tffpipe.tasks]\nplugin = plugin_tasks:create_task\nbroken = no_such_module:create_task\n"
        "digits = plugin_tasks:create_task\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registered = tasks.registered_tasks()
    assert registered["plugin"] == tasks.TaskEntry("plugin", "plugin_tasks:create_task", "plugin-pkg")
    assert registered["digits"].source == "built-in"  # a plug-in cannot shadow a built-in
    task = tasks.create_task("plugin", {"size": "large"}, seed=0)
    assert len(task.train_data.client_ids) == 18
    from tffpipe.tasks import listing

    table = listing.task_table()
    assert "plugin             a task an installed package registers." in table
    assert "registered by plugin-pkg (plugin_tasks:create_task)" in table
    assert "flags: --plugin_size" in table
    assert "broken             [plugin-pkg] cannot be loaded: cannot import task module 'no_such_module'" in table
    sys.modules.pop("plugin_tasks", None)


def test_python_m_tffpipe_tasks_lists_every_builtin_task():
    import subprocess

    from conftest import REPO_ROOT, user_env

    result = subprocess.run(
        [sys.executable, "-m", "tffpipe.tasks"],
        cwd=REPO_ROOT,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    names = [line.split()[0] for line in lines if line and not line.startswith(" ")]
    assert names == sorted(tasks.registered_tasks())
    assert any(
        line.startswith("emnist") and "Federated EMNIST, handwritten characters partitioned by writer." in line
        for line in lines
    )
    assert "flags: --breast_cancer_num_sites --breast_cancer_model --breast_cancer_alpha" in result.stdout
    assert result.stderr.strip() == ""


def test_client_data_that_cannot_be_traced_is_built_eagerly_every_time():
    def fine():
        return tf.keras.Sequential([tf.keras.layers.Flatten(), tf.keras.layers.Dense(2)])

    task = _task_with_model(fine)  # datasets by a Python lookup of the client id
    spec = tasks.ClientSpec(num_epochs=1, batch_size=4, shuffle_buffer_size=1)
    for _ in range(2):
        assert sum(int(x.shape[0]) for x, _ in task.client_dataset("a", spec, seed=0)) == 10
    assert list(task._builders.values()) == ["eager"]


def _function_count() -> int:
    from tensorflow.python.eager import context

    return len(context.context().list_function_names())


def test_counting_a_clients_examples_adds_no_function_per_client():
    # An eager `reduce` registered a new function per client counted, kept for
    # good: a run's memory grew with every new client the clock counted.
    task = _small_digits()
    ids = task.train_data.client_ids
    sizes = [len(list(task.train_data.create_tf_dataset_for_client(cid))) for cid in ids]
    assert task.client_examples(ids[0]) == sizes[0]
    before = _function_count()
    assert [task.client_examples(cid) for cid in ids] == sizes
    assert [task.client_examples(cid, max_elements=3) for cid in ids] == [min(3, n) for n in sizes]
    after_capped_trace = _function_count()
    assert [task.client_examples(cid, max_elements=3) for cid in ids] == [min(3, n) for n in sizes]
    assert [task.client_examples(cid) for cid in ids] == sizes
    assert _function_count() == after_capped_trace
    assert after_capped_trace - before < 20  # one trace for the capped count, not one per client
