"""Per-client evaluation: each client's figures, their distribution, clients.csv."""

import csv

import numpy as np
import pytest
import tensorflow as tf

from conftest import make_config
from tffpipe.learning import builder
from tffpipe.program import client_metrics
from tffpipe.program import clients_csv
from tffpipe.program import evaluation
from tffpipe.program import outputs
from tffpipe.program import records
from tffpipe.tasks import from_arrays


def _model():
    return tf.keras.Sequential(
        [
            tf.keras.layers.Input((6,)),
            tf.keras.layers.Dense(8, activation="relu"),
            tf.keras.layers.Dense(3, activation="softmax"),
        ]
    )


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    return from_arrays(
        "three_class",
        x,
        y,
        _model,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        num_clients=20,
        alpha=0.3,
        eval_fraction=0.3,
        seed=1,
    )


@pytest.mark.parametrize("runtime", ["inprocess", "cpp"])
def test_each_clients_figures_are_those_of_keras_evaluating_that_client_alone(task, runtime, tmp_path):
    cfg = make_config(runtime=runtime, eval_batch_size=7, root_dir=str(tmp_path))
    weights = builder.initial_model_weights(task, 5)
    result = evaluation.Evaluator(task, cfg, lambda line: None)(weights)
    model = _model()  # built after TFF's graphs, which invalidate earlier Keras models
    model.set_weights(weights.trainable)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert sorted(result.clients) == sorted(task.eval_data.client_ids)
    for cid, figures in result.clients.items():
        x, y = zip(*task.eval_dataset(cid, 1000))
        x, y = np.concatenate(x), np.concatenate(y)
        loss, accuracy = model.evaluate(x, y, batch_size=7, verbose=0)
        assert figures["loss"] == pytest.approx(loss, abs=1e-5), cid
        assert figures["accuracy"] == pytest.approx(accuracy, abs=1e-5), cid
        assert figures["num_examples"] == len(y)
    # The federated figure weighs clients by their examples.
    n = np.array([c["num_examples"] for c in result.clients.values()])
    acc = np.array([c["accuracy"] for c in result.clients.values()])
    assert result.metrics["eval/accuracy"] == pytest.approx((n * acc).sum() / n.sum(), abs=1e-5)
    assert result.metrics["eval_clients/accuracy_p10"] == pytest.approx(np.percentile(acc, 10), abs=1e-12)


def test_distribution_is_numpys():
    values = [0.9, 0.1, 0.5, 0.7, 0.3, 1.0, 0.0]
    got = client_metrics.distribution(values)
    assert got == {
        "mean": pytest.approx(np.mean(values)),
        "std": pytest.approx(np.std(values)),
        "min": 0.0,
        "p10": pytest.approx(np.percentile(values, 10)),
        "p50": pytest.approx(np.median(values)),
        "p90": pytest.approx(np.percentile(values, 90)),
    }
    per_client = {f"c{i}": {"accuracy": v, "loss": 1 - v, "num_examples": 10} for i, v in enumerate(values)}
    flat = client_metrics.distribution_metrics("eval_clients/", per_client)
    assert flat["eval_clients/loss_p90"] == pytest.approx(np.percentile([1 - v for v in values], 90))
    assert not any("num_examples" in k for k in flat)
    assert len(flat) == 2 * 6


def test_worst_decile_ranks_by_accuracy_or_by_loss():
    per_client = {f"c{i:02d}": {"accuracy": i / 20, "loss": 1 - i / 20} for i in range(20)}
    assert client_metrics.worst_decile(per_client, "accuracy") == ["c00", "c01"]
    assert client_metrics.worst_decile(per_client, "loss") == ["c00", "c01"]
    line = client_metrics.worst_decile_line(per_client)
    assert line == ("worst-served decile by accuracy (2 of 20 evaluation clients; mean 0.4750): c00 0.0000, c01 0.0500")
    regression = {"a": {"loss": 3.0}, "b": {"loss": 1.0}}
    assert client_metrics.worst_decile_line(regression).endswith("a 3.0000")


def test_clients_csv_keeps_each_round_and_client_once_and_trims_on_resume(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    log = clients_csv.ClientsLog(paths.clients_csv)
    for round_num in (2, 4):
        log.record(
            round_num,
            {
                "a": {"accuracy": 0.5, "num_examples": 3, "num_batches": 1},
                "b": {"accuracy": 0.25, "num_examples": 4, "num_batches": 1},
            },
        )
    log.record(4, {"a": {"accuracy": 0.75}}, prefix="personalized/")
    with open(paths.clients_csv) as f:
        rows = list(csv.DictReader(f))
    assert [(r["round"], r["client_id"]) for r in rows] == [("2", "a"), ("2", "b"), ("4", "a"), ("4", "b")]
    assert list(rows[0]) == ["round", "client_id", "num_examples", "accuracy", "personalized/accuracy"]
    assert rows[2]["personalized/accuracy"] == "0.75" and rows[3]["personalized/accuracy"] == ""

    # A kill after round 4's evaluation, with the checkpoint of round 3.
    result = records.reconcile(paths, 3)
    with open(paths.clients_csv) as f:
        assert [(r["round"], r["client_id"]) for r in csv.DictReader(f)] == [("2", "a"), ("2", "b")]
    assert result.dropped == 2
    # The resumed run's evaluation of round 4 comes back once.
    clients_csv.ClientsLog(paths.clients_csv).record(4, {"a": {"accuracy": 0.5, "num_examples": 3}})
    with open(paths.clients_csv) as f:
        assert [r["round"] for r in csv.DictReader(f)] == ["2", "2", "4"]


def test_an_unreadable_clients_csv_is_moved_aside(tmp_path):
    paths = outputs.RunPaths(str(tmp_path))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "clients.csv").write_text("garbage\nround,x\n")
    result = records.reconcile(paths, 3)
    assert (tmp_path / "results" / "clients.csv.unreadable").exists()
    assert any(note.startswith("clients.csv is unreadable (") for note in result.notes)
