import os
import re

import numpy as np
import pytest
import tensorflow as tf

from conftest import documentation_page, run_readme_command
from tffpipe import tasks


def _mlp(features=4, outputs=3):
    return lambda: tf.keras.Sequential(
        [tf.keras.layers.InputLayer(input_shape=(features,)), tf.keras.layers.Dense(outputs)]
    )


def _arrays(n=300, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, 4)) + y[:, None]
    return x, y


def _examples(data):
    return {cid: [e["y"].numpy().item() for e in data.create_tf_dataset_for_client(cid)] for cid in data.client_ids}


@pytest.mark.parametrize("partition", tasks.PARTITIONS)
def test_every_partition_covers_the_examples_and_holds_clients_out(partition):
    x, y = _arrays()
    task = tasks.from_arrays(
        "toy",
        x,
        y,
        _mlp(),
        loss="SparseCategoricalCrossentropy",
        metrics=["accuracy"],
        num_clients=10,
        partition=partition,
        seed=3,
    )
    train, held = _examples(task.train_data), _examples(task.eval_data)
    assert len(train) == 8 and len(held) == 2  # eval_fraction 0.2
    assert not set(train) & set(held)
    labels = sorted(v for client in (*train.values(), *held.values()) for v in client)
    assert labels == sorted(y.tolist())
    x_spec, y_spec = task.input_spec
    assert x_spec.dtype == tf.float32 and y_spec.dtype == tf.int32
    again = tasks.from_arrays(
        "toy",
        x,
        y,
        _mlp(),
        loss="SparseCategoricalCrossentropy",
        num_clients=10,
        partition=partition,
        seed=3,
    )
    assert _examples(again.train_data) == train


def test_label_partitions_skew_labels_and_iid_does_not():
    x, y = _arrays(n=3000)

    def top_share(partition, **kw):
        task = tasks.from_arrays("toy", x, y, _mlp(), loss="mse", num_clients=10, partition=partition, seed=0, **kw)
        return np.mean([np.bincount(v, minlength=3).max() / len(v) for v in _examples(task.train_data).values()])

    assert top_share("iid") < 0.4
    assert top_share("dirichlet", alpha=0.1) > 0.7
    assert top_share("shards") > 0.5


def test_loss_and_metric_names_become_fresh_keras_objects():
    x, y = _arrays()
    task = tasks.from_arrays(
        "toy",
        x,
        y,
        _mlp(),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy", "mae", tf.keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")],
        num_clients=5,
    )
    first, second = task.loss_builder(), task.loss_builder()
    assert first is not second and first.get_config()["from_logits"] is True
    metrics = task.metrics_builder()
    assert [type(m).__name__ for m in metrics] == [
        "SparseCategoricalAccuracy",
        "MeanAbsoluteError",
        "SparseTopKCategoricalAccuracy",
    ]
    assert [m.name for m in metrics] == ["accuracy", "mae", "top2"]
    assert metrics[2] is not task.metrics_builder()[2]
    binary = tasks.from_arrays(
        "b",
        x,
        (y > 0).astype(np.float32).reshape(-1, 1),
        _mlp(outputs=1),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        num_clients=5,
        partition="iid",
    )
    assert type(binary.metrics_builder()[0]).__name__ == "BinaryAccuracy"
    assert binary.loss_builder()(np.ones((2, 1)), np.full((2, 1), 0.9)).numpy() == pytest.approx(0.10536, rel=1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(partition="pathological"),
            "partition must be one of dirichlet, iid, shards, quantity, got 'pathological'",
        ),
        (dict(num_clients=1), "num_clients must be at least 2, got 1"),
        (dict(eval_fraction=1.0), r"eval_fraction must be in \(0, 1\), got 1.0"),
        (dict(num_clients=100), "300 examples cannot give 100 clients 5 examples each"),
        (
            dict(y=np.linspace(0, 1, 300)),
            "partition='dirichlet' splits by class label and needs integer labels, but y is float32; use 'iid' or 'quantity'",
        ),
        (dict(y=np.zeros(299, int)), r"x and y must have one row per example, got shapes \(300, 4\) and \(299,\)"),
        (dict(loss="no_such_loss"), "unknown Keras loss 'no_such_loss'"),
        (dict(loss="mse", metrics=["accuracy"]), "'accuracy' needs a cross-entropy loss"),
        (
            dict(model_fn=_mlp(features=7)),
            r"the model expects inputs of shape \(None, 7\) but the data's x has shape \(None, 4\)",
        ),
        (
            dict(y=np.arange(300) % 4),
            r"labels must be class indices in 0..2 for the model's 3 outputs under "
            r"SparseCategoricalCrossentropy, but y holds 3 \(row 3\)$",
        ),
        (
            dict(y=np.arange(300) % 3 - 1),
            r"labels must be class indices in 0..2 for the model's 3 outputs under "
            r"SparseCategoricalCrossentropy, but y holds -1 \(row 0\)$",
        ),
        (
            dict(y=np.array(["0", "1", "2"] * 100)),
            r"y holds strings \('0', '1', '2'\); give integer class indices, or "
            r"pass class_names=\[...\] to map each label to its position \(for "
            r"example class_names=\['0', '1', '2'\]\)$",
        ),
        (
            dict(y=np.array(["a", "b", "c"] * 100), class_names=["a", "b"]),
            r"label 'c' is not in class_names \['a', 'b'\]$",
        ),
        (dict(class_names=["a", "b", "c"]), "class_names maps string labels, but y holds int64 values$"),
    ],
)
def test_bad_input_is_one_clear_error(kwargs, message):
    x, y = _arrays()
    args = dict(x=x, y=y, model_fn=_mlp(), loss="SparseCategoricalCrossentropy", num_clients=10)
    args.update(kwargs)
    with pytest.raises(tasks.TaskError, match=f"^task 'toy': {message}"):
        tasks.from_arrays("toy", **args)


def test_class_names_map_string_labels_to_their_positions():
    x, y = _arrays()
    names = np.array(["cat", "dog", "emu"])
    task = tasks.from_arrays(
        "toy",
        x,
        names[y],
        _mlp(),
        loss="SparseCategoricalCrossentropy",
        num_clients=10,
        class_names=["cat", "dog", "emu"],
        partition="iid",
    )
    assert task.description.endswith(", classes cat=0, dog=1, emu=2")
    by_row = {
        tuple(np.round(e["x"].numpy(), 5)): e["y"].numpy().item()
        for data in (task.train_data, task.eval_data)
        for cid in data.client_ids
        for e in data.create_tf_dataset_for_client(cid)
    }
    assert by_row == {tuple(np.round(r.astype(np.float32), 5)): int(label) for r, label in zip(x, y)}


def _with_nonfinite(rows, column=0, value=np.nan):
    x, y = _arrays()
    x[rows, column] = value
    return x, y


def test_nonfinite_features_are_refused_with_the_count_and_the_first_row():
    x, y = _with_nonfinite([17, 40, 41])
    x[50, 2] = np.inf
    with pytest.raises(
        tasks.TaskError,
        match=(
            r"^task 'toy': 4 of 300 examples hold NaN or infinite values \(the first is row 17\); "
            "clean them, or pass drop_nonfinite=True to from_arrays to drop them$"
        ),
    ):
        tasks.from_arrays("toy", x, y, _mlp(), loss="mse", num_clients=10, partition="iid")


def test_nonfinite_examples_can_be_dropped_explicitly():
    x, y = _with_nonfinite([3, 4])
    y = y.astype(np.float32)
    y[5] = np.nan  # a target counts too
    task = tasks.from_arrays("toy", x, y, _mlp(), loss="mse", num_clients=10, partition="iid", drop_nonfinite=True)
    kept = [
        e["x"].numpy()
        for data in (task.train_data, task.eval_data)
        for cid in data.client_ids
        for e in data.create_tf_dataset_for_client(cid)
    ]
    assert len(kept) == 297
    assert np.isfinite(np.stack(kept)).all()
    with pytest.raises(tasks.TaskError, match=r"300 of 300 examples .*: no example is left$"):
        tasks.from_arrays(
            "toy",
            np.full((300, 4), np.nan),
            y,
            _mlp(),
            loss="mse",
            num_clients=10,
            partition="iid",
            drop_nonfinite=True,
        )


def _readme_example():
    """The documentation's 'Add your own task' file and its command (docs/tasks.md)."""
    page = documentation_page("tasks.md")
    section = page.split("## Add your own task", 1)[1].split("\n## ", 1)[0]
    code, command = re.findall(r"```(?:python|bash)\n(.*?)```", section, re.S)[:2]
    return code, command.strip()


def test_readme_example_is_short_and_trains_two_rounds(tmp_path, marker_env):
    code, command = _readme_example()
    assert code.startswith("# my_task.py\n")
    assert len(code.strip().splitlines()) <= 25
    (tmp_path / "my_task.py").write_text(code)
    assert "--rounds=2" in command
    result = run_readme_command(command, tmp_path, marker_env[0], tmp_path / "runs")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "task wine: 6 training clients, 2 held-out evaluation clients; 2 rounds of 6 clients" in result.stdout
    done = [line for line in result.stdout.splitlines() if line.startswith("done: 2 rounds")]
    accuracy = float(re.search(r"eval/accuracy ([0-9.]+)", done[0]).group(1))
    assert 0.0 <= accuracy <= 1.0
    run_dir = re.search(r"outputs in (\S+)", result.stdout).group(1)
    assert os.path.dirname(run_dir) == str(tmp_path / "runs")
    assert os.path.exists(os.path.join(run_dir, "export", "saved_model.pb"))


def _client_arrays(data):
    found = {}
    for cid in data.client_ids:
        rows = list(data.create_tf_dataset_for_client(cid))
        found[cid] = (np.stack([r["x"].numpy() for r in rows]), np.array([r["y"].numpy() for r in rows]))
    return found


def _all_clients(task):
    return {**_client_arrays(task.train_data), **_client_arrays(task.eval_data)}


def test_shift_scale_feature_skew_is_one_affine_map_per_client_and_keeps_the_partition():
    x, y = _arrays(n=400)
    common = dict(loss="SparseCategoricalCrossentropy", num_clients=8, seed=4)
    plain = _all_clients(tasks.from_arrays("toy", x, y, _mlp(), **common))
    skewed_task = tasks.from_arrays(
        "toy", x, y, _mlp(), feature_skew="shift_scale", feature_skew_strength=0.8, **common
    )
    skewed = _all_clients(skewed_task)
    assert "shift_scale feature skew 0.8" in skewed_task.description
    maps = []
    for cid, (x_plain, y_plain) in plain.items():
        x_skew, y_skew = skewed[cid]
        np.testing.assert_array_equal(y_skew, y_plain)  # same examples, same order
        # Per feature, skewed = scale * plain + shift with one (scale, shift) per client.
        design = np.stack([x_plain, np.ones_like(x_plain)], axis=-1)
        fits = [np.linalg.lstsq(design[:, f], x_skew[:, f], rcond=None) for f in range(4)]
        for (coef, *_), f in zip(fits, range(4)):
            np.testing.assert_allclose(design[:, f] @ coef, x_skew[:, f], atol=1e-4)
        maps.append([coef for coef, *_ in fits])
    assert len({round(float(m[0][0]), 4) for m in maps}) == len(maps)  # clients differ
    unchanged = _all_clients(
        tasks.from_arrays("toy", x, y, _mlp(), feature_skew="shift_scale", feature_skew_strength=0.0, **common)
    )
    for cid in plain:
        np.testing.assert_array_equal(unchanged[cid][0], plain[cid][0])


def _image_clients(skew, strength, n, num_clients, seed):
    """(images, each client's plain examples, each client's skewed examples)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(n, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 3, n)

    def model():
        return tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(8, 8, 1)), tf.keras.layers.Dense(3)])

    common = dict(loss="SparseCategoricalCrossentropy", num_clients=num_clients, partition="iid", seed=seed)
    plain = _all_clients(tasks.from_arrays("img", images, labels, model, **common))
    skewed = _all_clients(
        tasks.from_arrays("img", images, labels, model, feature_skew=skew, feature_skew_strength=strength, **common)
    )
    return images, plain, skewed


def test_rotation_feature_skew_turns_each_clients_images_by_one_angle():
    from scipy import ndimage

    images, plain, skewed = _image_clients("rotation", 1.0, 120, 4, 1)
    angles = []
    for cid, (x_plain, _) in plain.items():
        errors = {
            a: np.abs(
                ndimage.rotate(
                    x_plain, a, axes=(1, 2), reshape=False, order=1, mode="constant", cval=float(images.min())
                )
                - skewed[cid][0]
            ).max()
            for a in np.arange(-180, 180, 0.5)
        }
        best = min(errors, key=errors.get)
        assert errors[best] < 0.1, (cid, best, errors[best])
        angles.append(best)
    assert len(set(angles)) == len(angles)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(feature_skew="rotation"),
            "feature_skew='rotation' needs images of shape (n, height, width[, channels]), got x of shape (300, 4)",
        ),
        (dict(feature_skew="blur"), "feature_skew must be one of none, shift_scale, brightness, rotation, got 'blur'"),
        (
            dict(feature_skew="shift_scale", feature_skew_strength=-1.0),
            "feature_skew_strength must be a finite number >= 0, got -1.0",
        ),
    ],
)
def test_bad_feature_skew_is_a_one_line_task_error(kwargs, message):
    x, y = _arrays()
    with pytest.raises(tasks.TaskError) as info:
        tasks.from_arrays("toy", x, y, _mlp(), loss="SparseCategoricalCrossentropy", num_clients=5, **kwargs)
    assert str(info.value) == f"task 'toy': {message}"


def test_brightness_feature_skew_adds_one_offset_per_client():
    images, plain, skewed = _image_clients("brightness", 0.5, 90, 3, 0)
    offsets = []
    for cid in plain:
        difference = skewed[cid][0] - plain[cid][0]
        np.testing.assert_allclose(difference, difference.flat[0], atol=1e-6)
        assert abs(difference.flat[0]) <= 0.5 * (images.max() - images.min())
        offsets.append(round(float(difference.flat[0]), 5))
    assert len(set(offsets)) == 3
