"""Every built-in task, built from small files in the real formats, trains 2 rounds."""

import csv
import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as sklearn_metrics

from conftest import make_config
from tffpipe.program import loop
from tffpipe import tasks

from tffpipe_tasks import breast_cancer
from tffpipe_tasks import cifar100
from tffpipe_tasks import emnist
from tffpipe_tasks import shakespeare
from tffpipe_tasks import stackoverflow_nwp


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One folder holding small files of the four public datasets."""
    folder = str(tmp_path_factory.mktemp("tff_data"))
    emnist.write_synthetic_data(folder, num_clients=12, examples_per_client=12)
    shakespeare.write_synthetic_data(folder, num_clients=6, snippets_per_client=6)
    stackoverflow_nwp.write_synthetic_data(folder, num_clients=6, sentences_per_client=8)
    cifar100.write_synthetic_data(folder, num_train_clients=5, num_test_clients=3, images_per_client=4)
    return folder


def _train_two_rounds(tmp_path, name, options, data_dir=None, clients=2):
    cfg = make_config(
        task=name,
        **{f"{name}_{k}": v for k, v in options.items()},
        **({"data_dir": data_dir} if data_dir else {}),
        client_epochs=1,
        client_batch_size=4,
        rounds=2,
        clients_per_round=clients,
        eval_every=0,
        eval_clients=3,
        checkpoint_every=2,
        root_dir=str(tmp_path),
        experiment_name=name,
        runtime="cpp",  # starts faster than the in-process runtime for two rounds
    )
    task = tasks.create_task(name, options, seed=0, data_dir=data_dir)
    lines = []
    result = loop.run(cfg, task, print_fn=lines.append)
    assert result.rounds_done == 2
    with open(tmp_path / name / "results" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2]
    for key, value in result.final_eval.items():
        assert math.isfinite(value), (key, value)
    return task, result, rows


def _first_batch(task, batch_size=4):
    spec = tasks.ClientSpec(num_epochs=1, batch_size=batch_size, shuffle_buffer_size=1)
    return next(iter(task.client_dataset(task.train_data.client_ids[0], spec, seed=0)))


@pytest.mark.parametrize("only_digits, classes", [(False, 62), (True, 10)])
def test_emnist_reads_tffs_format_and_trains(tmp_path, data_dir, only_digits, classes):
    options = {"model": "cnn", "only_digits": only_digits}
    task = tasks.create_task("emnist", options, seed=0, data_dir=data_dir)
    assert task.eval_split == "test_split"
    assert len(task.train_data.client_ids) == 12
    x, y = _first_batch(task)
    assert x.shape[1:] == (28, 28, 1) and y.dtype == tf.int32
    assert task.model_builder().output_shape == (None, classes)
    if only_digits:
        assert int(tf.reduce_max(y)) < 10
        _, result, rows = _train_two_rounds(tmp_path, "emnist", options, data_dir, clients=3)
        assert set(result.final_eval) >= {"eval/accuracy", "eval/loss"}
        assert float(rows[1]["train/num_examples"]) > 0


def test_shakespeare_sequences_and_masked_accuracy(data_dir):
    task = tasks.create_task("shakespeare", {"sequence_length": 80}, seed=0, data_dir=data_dir)
    x, y = _first_batch(task)
    assert x.shape[1:] == (80,) and y.shape[1:] == (80,)
    assert np.array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])  # targets are inputs shifted by one
    # Accuracy leaves out padding and out-of-vocabulary targets.
    accuracy = task.metrics_builder()[0]
    targets = np.array([[shakespeare.PAD, shakespeare.OOV, 5, 6]])
    logits = np.zeros((1, 4, shakespeare.VOCAB_SIZE), np.float32)
    logits[0, 0, shakespeare.PAD] = logits[0, 1, shakespeare.OOV] = 1  # "right", but masked
    logits[0, 2, 5] = 1  # right
    logits[0, 3, 7] = 1  # wrong
    accuracy.update_state(targets, logits)
    assert float(accuracy.result()) == pytest.approx(0.5)


def test_stackoverflow_vocab_and_special_tokens(data_dir):
    options = {"vocab_size": 10, "sequence_length": 20}
    task = tasks.create_task("stackoverflow_nwp", options, seed=0, data_dir=data_dir)
    assert stackoverflow_nwp.load_vocab(data_dir, 10) == [f"w{i}" for i in range(10)]
    assert task.model_builder().output_shape == (None, None, 14)  # 10 words + pad, oov, bos, eos
    x, y = _first_batch(task)
    assert x.shape[1:] == (20,) and y.shape[1:] == (20,)
    bos, oov = 12, 11
    assert set(x.numpy()[:, 0].tolist()) == {bos}
    assert oov in y.numpy()  # words w10..w59 are out of vocabulary


@pytest.mark.slow  # LSTMs traced by TFF: about 35 s each
@pytest.mark.parametrize(
    "name, options",
    [
        ("shakespeare", {"sequence_length": 80}),
        ("stackoverflow_nwp", {"vocab_size": 10, "sequence_length": 20}),
    ],
)
def test_text_tasks_train_two_rounds(tmp_path, data_dir, name, options):
    _, result, _ = _train_two_rounds(tmp_path, name, options, data_dir)
    assert 0 <= result.final_eval["eval/accuracy"] <= 1


def test_cifar100_reads_tffs_format_into_resnet18_groupnorm(data_dir):
    task = tasks.create_task("cifar100", {"crop_size": 24}, seed=0, data_dir=data_dir)
    model = task.model_builder()
    assert model.count_params() == 11_227_812
    norms = {type(layer).__name__ for layer in model.layers if "Normalization" in type(layer).__name__}
    assert norms == {"GroupNormalization"}
    x, _ = _first_batch(task)
    assert x.shape[1:] == (24, 24, 3)
    assert abs(float(tf.reduce_mean(x[0]))) < 1e-4  # per-image standardisation
    assert sorted(task.eval_data.client_ids) == ["0", "1", "2"]
    assert len(task.train_data.client_ids) == 5


@pytest.mark.slow
def test_cifar100_trains_two_rounds(tmp_path, data_dir):
    _, result, _ = _train_two_rounds(tmp_path, "cifar100", {"crop_size": 24}, data_dir)
    assert "eval/accuracy" in result.final_eval


@pytest.mark.parametrize("model", ["logistic", pytest.param("mlp", marks=pytest.mark.slow)])
def test_breast_cancer_sites_and_metrics(tmp_path, model):
    options = {"num_sites": 6, "model": model, "alpha": 1.0}
    task, result, _ = _train_two_rounds(tmp_path, "breast_cancer", options, clients=5)
    sizes = sorted(
        len(list(data.create_tf_dataset_for_client(cid)))
        for data in (task.train_data, task.eval_data)
        for cid in data.client_ids
    )
    assert sum(sizes) == 569 and len(sizes) == 6 and sizes[-1] > 2 * sizes[0]
    assert len(task.eval_data.client_ids) == 1
    assert set(result.final_eval) >= {f"eval/{m}" for m in ("accuracy", "precision", "recall", "f1", "auc", "loss")}
    assert task.model_builder().count_params() == (31 if model == "logistic" else 513)


def test_binary_f1_matches_scikit_learn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 200)
    scores = np.clip(truth * 0.3 + rng.random(200) * 0.7, 0, 1).astype(np.float32)
    f1 = breast_cancer.BinaryF1()
    f1.update_state(truth[:120].reshape(-1, 1), scores[:120].reshape(-1, 1))
    f1.update_state(truth[120:].reshape(-1, 1), scores[120:].reshape(-1, 1))
    assert float(f1.result()) == pytest.approx(sklearn_metrics.f1_score(truth, scores > 0.5), rel=1e-6)
    copy = breast_cancer.BinaryF1.from_config(f1.get_config())
    assert copy.threshold == 0.5 and float(copy.result()) == 0.0


def test_diabetes_linear_regression(tmp_path):
    task, result, _ = _train_two_rounds(tmp_path, "diabetes", {"num_sites": 5}, clients=4)
    assert task.model_builder().count_params() == 11
    assert set(result.final_eval) >= {"eval/mse", "eval/mae", "eval/loss"}
    targets = np.concatenate(
        [
            [float(e["y"][0]) for e in data.create_tf_dataset_for_client(cid)]
            for data in (task.train_data, task.eval_data)
            for cid in data.client_ids
        ]
    )
    assert len(targets) == 442
    assert abs(targets.mean()) < 1e-5 and targets.std() == pytest.approx(1.0, rel=1e-5)


def test_only_sampled_clients_get_datasets(tmp_path):
    """Datasets are built for the round's clients, never for all of them (digits: 40 training clients)."""
    built = []

    class CountingTask(tasks.Task):
        def client_dataset(self, client_id, spec, *, seed):
            built.append(client_id)
            return super().client_dataset(client_id, spec, seed=seed)

    base = tasks.create_task("digits", {}, seed=0)
    task = CountingTask(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    cfg = make_config(
        client_epochs=1,
        client_batch_size=4,
        rounds=2,
        clients_per_round=3,
        eval_every=0,
        eval_clients=2,
        root_dir=str(tmp_path),
        runtime="cpp",
    )
    loop.run(cfg, task, print_fn=lambda line: None)
    assert len(built) == 6  # 2 rounds x 3 clients, of 40
    # Every client's dataset came from one traced builder (no per-client
    # functions piling up in TensorFlow's function library).
    [(key, builder)] = [(k, b) for k, b in task._builders.items() if k[0] == "train"]
    assert isinstance(builder, tf.types.experimental.GenericFunction)


@pytest.mark.parametrize("name", ["digits", "diabetes"])
def test_array_tasks_build_client_datasets_through_one_traced_function(name):
    task = tasks.create_task(name, {}, seed=0)
    spec = tasks.ClientSpec(num_epochs=1, batch_size=8, shuffle_buffer_size=1)
    ids = task.train_data.client_ids
    for cid in ids:
        traced = sum(int(tf.shape(x)[0]) for x, _ in task.client_dataset(cid, spec, seed=0))
        assert traced == len(list(task.train_data.create_tf_dataset_for_client(cid)))
    assert len(task._builders) == 1
    assert isinstance(next(iter(task._builders.values())), tf.types.experimental.GenericFunction)
