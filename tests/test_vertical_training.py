"""Vertical split-model training: equal to centralized training where the maths says so."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe import errors
from tffpipe.tasks import vertical as vertical_task
from tffpipe.vertical import parties as parties_lib
from tffpipe.vertical import protocol

N, WIDTHS, K = 48, {"bank": 3, "shop": 2, "telco": 4}, 2


def _data(seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"person{i}" for i in range(N)]
    features = {name: rng.normal(size=(N, w)).astype(np.float32) for name, w in WIDTHS.items()}
    y = (sum(f.sum(axis=1) for f in features.values()) + rng.normal(scale=0.1, size=N)).astype(np.float32)
    return ids, features, y


def _linear(width, units, use_bias):
    return lambda: tf.keras.Sequential(
        [
            tf.keras.layers.InputLayer(input_shape=(width,)),
            tf.keras.layers.Dense(units, use_bias=use_bias, kernel_initializer="glorot_uniform"),
        ]
    )


def _task(combine="sum"):
    ids, features, y = _data()
    return vertical_task.vertical_from_arrays(
        "toy",
        {name: (ids, f) for name, f in features.items()},
        {"bank": y},
        {name: _linear(w, K, False) for name, w in WIDTHS.items()},
        lambda width: _linear(width, 1, True)(),
        loss="mse",
        metrics=["mae"],
        combine=combine,
    )


def _parties(task, lr, combine):
    ids = [f"person{i}" for i in range(N)]
    sgd = tff.learning.optimizers.build_sgdm(learning_rate=lr)
    tf.keras.utils.set_random_seed(1)
    width = task.combined_width(combine)
    active = parties_lib.ActiveParty(
        task.active,
        task.labels,
        task.top_model_fn(width),
        task.loss_builder(),
        task.metrics_builder(),
        ids,
        ids[:8],
        sgd,
        sgd,
        0.0,
        0,
    )
    passives = [parties_lib.BottomParty(p, ids, ids[:8], sgd, 0.0, 0) for p in task.parties[1:]]
    return active, passives


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_linear_vertical_training_equals_central_training(combine):
    task = _task(combine)
    lr, batch = 0.05, 16
    active, passives = _parties(task, lr, combine)
    everyone = [active, *passives]
    # The same architecture trained centrally on the concatenated features,
    # from the same initial weights: each party's slice of the columns
    # through its own linear map, combined, then the top model.
    width = sum(WIDTHS.values())
    inputs = tf.keras.Input(shape=(width,))
    maps, column = [], 0
    for party in everyone:
        w = party.bottom.model.input_shape[-1]
        dense = tf.keras.layers.Dense(K, use_bias=False)
        maps.append(dense(inputs[:, column : column + w]))
        dense.set_weights(party.bottom.model.get_weights())
        column += w
    combined = tf.keras.layers.Add()(maps) if combine == "sum" else tf.keras.layers.Concatenate()(maps)
    top = tf.keras.layers.Dense(1)
    central = tf.keras.Model(inputs, top(combined))
    top.set_weights(active.top.model.get_weights())
    ids, features, y = _data()
    x = np.concatenate([features[p.name] for p in task.parties], axis=1)
    central.compile(optimizer=tf.keras.optimizers.SGD(lr), loss="mse")
    central.fit(x, y.reshape(-1, 1), batch_size=batch, epochs=2, shuffle=False, verbose=0)
    traffic = protocol.Traffic.empty([p.name for p in everyone])
    for epoch in range(2):
        for start in range(0, N, batch):
            protocol.train_step(active, passives, np.arange(start, start + batch), combine, traffic, (epoch, start))
    central_maps = [layer for layer in central.layers if isinstance(layer, tf.keras.layers.Dense)][:-1]
    for party, layer in zip(everyone, central_maps):
        np.testing.assert_allclose(party.bottom.model.get_weights()[0], layer.get_weights()[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(active.top.model.get_weights(), top.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # Every step, each passive party sent its batch embedding (masked: 8 bytes a value).
    per_value = 8 if combine == "sum" else 4
    assert traffic.sent["shop"] == 2 * (N // batch) * batch * K * per_value


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(shop_rows=10),
            r"^task 'toy': party 'shop' has 48 IDs but features of shape \(10, 2\) \(one row per ID\)$",
        ),
        (dict(shop_text=True), r"^task 'toy': party 'shop': features must be numeric, got <U"),
        (dict(duplicate=True), r"^task 'toy': party 'shop' lists sample ID 'person0' more than once$"),
        (dict(none_id=True), r"^task 'toy': party 'shop' has no sample ID at row 3 \(None\); every row needs one$"),
        (dict(label_party="nobody"), r"^task 'toy': the labels' party 'nobody' is not one of the parties"),
    ],
)
def test_bad_arrays_are_refused_in_one_line(change, message):
    ids, features, y = _data()
    shop_ids = list(ids)
    shop = features["shop"]
    if change.get("shop_rows"):
        shop = shop[: change["shop_rows"]]
    if change.get("shop_text"):
        shop = shop.astype(str)
    if change.get("duplicate"):
        shop_ids[1] = shop_ids[0]
    if change.get("none_id"):
        shop_ids[3] = None
    with pytest.raises(errors.TaskError, match=message):
        vertical_task.vertical_from_arrays(
            "toy",
            {"bank": (ids, features["bank"]), "shop": (shop_ids, shop)},
            {change.get("label_party", "bank"): y},
            {"bank": _linear(3, K, False), "shop": _linear(2, K, False)},
            lambda width: _linear(width, 1, True)(),
            loss="mse",
        )


def test_parties_draw_their_own_embedding_noise():
    ids, features, _ = _data()
    sgd = tff.learning.optimizers.build_sgdm(learning_rate=0.1)
    noisy = []
    for name in ("hospital_a", "hospital_b"):  # names alike in their first bytes
        record = vertical_task.Party(name, tuple(ids), features["bank"], _linear(3, K, False))
        party = parties_lib.BottomParty(record, ids, ids[:8], sgd, 1.0, 0)
        clean = party.bottom.model(features["bank"][:4]).numpy()
        noisy.append(party.embed("train", np.arange(4), training=False, step_key=(1, 0)) - clean)
    assert not np.allclose(noisy[0], noisy[1])
    assert 0.5 < np.std(noisy[0]) < 1.5
