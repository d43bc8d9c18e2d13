"""Federated Reconstruction: local layers stay on the clients."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import make_config
from tffpipe import api
from tffpipe import config
from tffpipe.learning import fedrecon
from tffpipe.program import loop
from tffpipe.tasks import from_arrays


def _mlp():
    return tf.keras.Sequential(
        [
            tf.keras.layers.Input((6,)),
            tf.keras.layers.Dense(8, activation="relu", name="shared"),
            tf.keras.layers.Dense(1, activation="sigmoid", name="head"),
        ]
    )


@pytest.fixture(scope="module")
def tabular():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32).reshape(-1, 1)
    return from_arrays(
        "tabular", x, y, _mlp, loss="binary_crossentropy", metrics=["accuracy"], num_clients=10, partition="iid", seed=0
    )


def test_fedrecon_trains_a_tabular_task_and_keeps_the_head_local(tabular, tmp_path):
    cfg = make_config(
        algorithm="fedrecon",
        local_layers="head",
        rounds=3,
        clients_per_round=4,
        eval_every=1,
        root_dir=str(tmp_path),
        experiment_name="t",
        runtime="cpp",
    )
    result = loop.run(cfg, tabular, print_fn=lambda line: None)
    assert result.rounds_done == 3
    assert all(np.isfinite(v) for v in result.final_eval.values())
    assert 0 <= result.final_eval["eval/accuracy"] <= 1
    # The server holds the shared layer only: its kernel and bias.
    assert [w.shape for w in result.model_weights.trainable] == [(6, 8), (8,)]
    # The export has the trained shared layer and the seeded initial head.
    exported = tf.keras.models.load_model(tmp_path / "t" / "export")
    np.testing.assert_array_equal(exported.get_layer("shared").get_weights()[0], result.model_weights.trainable[0])
    tf.keras.utils.set_random_seed(0)
    initial_head = _mlp().get_layer("head").get_weights()
    for ours, initial in zip(exported.get_layer("head").get_weights(), initial_head):
        np.testing.assert_array_equal(ours, initial)


def test_fedrecon_trains_digits_in_process_with_per_client_figures(tmp_path):
    result = api.run(
        quiet=True,
        task="digits",
        algorithm="fedrecon",
        local_layers="output",
        rounds=3,
        clients_per_round=5,
        eval_every=3,
        root_dir=str(tmp_path),
        experiment_name="d",
    )
    last = result.metrics.iloc[-1].to_dict()
    for name in ("train/loss", "eval/loss", "eval/accuracy", "eval_clients/accuracy_p10"):
        assert np.isfinite(last[name]), name
    assert len(result.final_clients) == 10
    assert result.model.get_layer("output").get_weights()[0].shape == (64, 10)


def test_a_wrong_layer_name_lists_the_models_layers(tabular, tmp_path):
    cfg = make_config(algorithm="fedrecon", local_layers="head,dense_7", root_dir=str(tmp_path), runtime="cpp")
    with pytest.raises(config.ConfigError) as info:
        loop.run(cfg, tabular, print_fn=lambda line: None)
    assert str(info.value) == (
        "--local_layers: 'dense_7' is not a layer of task 'tabular''s model; its layers are shared, head "
        "(or positions 0..1, -1 the last)"
    )


def test_positions_name_layers_and_the_server_must_keep_one():
    model = _mlp()
    global_layers, local = fedrecon.split_layers(model, "-1", "t")
    assert [layer.name for layer in local] == ["head"] and [layer.name for layer in global_layers] == ["shared"]
    with pytest.raises(config.ConfigError, match="every layer with weights would be local"):
        fedrecon.split_layers(model, "shared,head", "t")


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(algorithm="fedrecon"), "--algorithm=fedrecon needs --local_layers: the layers that stay on the clients"),
        (dict(local_layers="head"), "--local_layers applies to --algorithm=fedrecon, not --algorithm=fedavg"),
        (
            dict(algorithm="fedrecon", local_layers="head", personalize_every=5),
            "--personalize_every fine-tunes the whole global model; under --algorithm=fedrecon every evaluation "
            "already reconstructs each client's local layers on its own data",
        ),
    ],
)
def test_fedrecon_settings_are_checked_with_the_flags(values, message):
    with pytest.raises(config.ConfigError) as info:
        make_config(**values)
    assert str(info.value) == message
