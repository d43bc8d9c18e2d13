"""Rounds whose clients train stacked equal rounds of TFF's client work (`--stacked_training`).

One client's step agrees with TFF's to about 3e-8 (tests/test_stacked_training.py),
but the two paths use different kernels (a batched matmul on image patches
against Conv2D), and over several SGD steps at learning rate 0.1 a ReLU whose
input is within rounding of zero can switch in one and not the other. In one
such case (digits, round 2, a client of 144 examples) the stacked client's
loss sum was 296.334, TFF's 296.256, and float64 Keras 296.334. So the first
round's records are compared at 1e-5, the second's and the weights after it
at 1e-3.
"""

import numpy as np
import pytest

from conftest import csv_rows as _rows
from conftest import small_digits_config
from tffpipe.learning import builder
from tffpipe.program import assembly
from tffpipe.program import loop
from tffpipe.runtimes import inprocess_process
from tffpipe.runtimes import registry as runtime_registry
from tffpipe.runtimes import stacked_clients
from tffpipe.tasks import ClientSpec

from tffpipe_tasks import digits


@pytest.fixture(scope="module")
def task():
    return digits.create_task(num_clients=14, eval_clients=4, alpha=1.0, seed=0)


def _config(root, name, stacked, **values):
    return small_digits_config(root, name, stacked_training=stacked, **values)


CASES = {
    "fedavg": {},
    "secure_sum_dp": {
        "secure_aggregation": True,
        "zeroing": False,
        "dp": "fixed",
        "dp_clip_norm": 1.0,
        "dp_noise_multiplier": 0.0,
    },
    # A data attack changes the clients' datasets: they are read one by one.
    "label_flip_median_two_epochs": {"attack": "label_flip", "robust": "median", "zeroing": False, "client_epochs": 2},
    "clock_with_dropout": {"client_speed": "lognormal:100,1.0", "client_dropout": 0.25, "clients_per_round": 9},
}
_SLOW = {"secure_sum_dp", "label_flip_median_two_epochs", "clock_with_dropout"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in _SLOW else c for c in CASES])
def test_stacked_rounds_equal_tff_client_work(task, tmp_path, case):
    lines = []
    runs = {
        stacked: loop.run(_config(tmp_path, stacked, stacked, **CASES[case]), task, print_fn=lines.append)
        for stacked in ("on", "off")
    }
    assert any("clients train on stacked copies of the model" in line for line in lines), lines
    for ours, theirs in zip(runs["on"].model_weights.trainable, runs["off"].model_weights.trainable):
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)
    _same_records(tmp_path, tolerances=(1e-5, 1e-3))


def _same_records(root, tolerances):
    """Each round's records agree to its tolerance; the clients and their example counts exactly."""
    stacked, plain = (_rows(root / n / "results" / "metrics.csv") for n in ("on", "off"))
    assert len(stacked) == len(plain) == len(tolerances)
    for a, b, tolerance in zip(stacked, plain, tolerances):
        assert set(a) == set(b)
        for column in a:
            if column in ("train/num_examples", "train/num_batches", "round", "sim/elapsed_sec"):
                assert a[column] == b[column], column
            elif a[column] and column not in ("round/train_sec", "round_time_sec", "examples_per_sec"):
                # A spread over a few clients moves more than its clients' values.
                rel = tolerance * (10 if column.endswith("_std") else 1)
                assert float(a[column]) == pytest.approx(float(b[column]), rel=rel, abs=1e-6), column
    clients_stacked, clients_plain = (_rows(root / n / "results" / "clients.csv") for n in ("on", "off"))
    assert [(r["round"], r["client_id"], r["num_examples"]) for r in clients_stacked] == [
        (r["round"], r["client_id"], r["num_examples"]) for r in clients_plain
    ]


def test_auto_trains_stacked_only_in_rounds_of_enough_clients(task, tmp_path):
    lines = []
    loop.run(_config(tmp_path, "small", "auto", rounds=1, eval_every=0), task, print_fn=lines.append)
    assert not any("stacked" in line for line in lines), lines
    lines.clear()
    loop.run(
        _config(tmp_path, "large", "auto", rounds=1, eval_every=0, digits_num_clients=34, clients_per_round=24),
        digits.create_task(num_clients=34, eval_clients=4, alpha=1.0, seed=0),
        print_fn=lines.append,
    )
    # The digits CNN's largest layer holds its second convolution's patches:
    # 4x4 positions of 3x3x32 values an example, at batch 16.
    per_call = stacked_clients.STACKED_VALUES_PER_CALL // (4 * 4 * 3 * 3 * 32 * 16)
    assert [line for line in lines if "stacked" in line] == [
        "runtime inprocess: learning process: in rounds of 24 clients or more, clients train on stacked copies "
        f"of the model, up to {per_call} per call, then pass through the aggregation's client part"
    ]


@pytest.mark.parametrize(
    "values, reason",
    [
        pytest.param({"algorithm": "fedprox"}, "--algorithm=fedprox has no stacked form", marks=pytest.mark.slow),
        ({"client_optimizer": "sgdm"}, "the client optimizer is not plain SGD"),
        pytest.param(
            {"attack": "sign_flip", "robust": "median", "zeroing": False},
            "an update attack wraps the client work",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_runs_that_cannot_train_stacked_say_why(task, tmp_path, values, reason):
    lines = []
    run = _config(tmp_path, "why", "on", rounds=1, eval_every=0, **values)
    loop.run(run, task, print_fn=lines.append)
    assert f"runtime inprocess: learning process: clients do not train stacked ({reason})" in lines


def test_a_round_in_chunks_of_clients_equals_one_call(task):
    cfg = _config(".", "unused", "on", zeroing=False)
    runtime = runtime_registry.get("inprocess")
    process, _ = assembly.build_learning_process(task, cfg, task.train_data.client_ids, runtime.loop_implementation())
    engine = inprocess_process.InProcessProcess(process, ["/CPU:0"], stacked_training="on")
    spec = ClientSpec(num_epochs=1, batch_size=16)
    ids = list(task.train_data.client_ids)[:7]
    initial = builder.initial_model_weights(task, 0)
    try:
        results = {}
        for per_call in (182, 3):  # one call; calls of 3, 3 and 1 clients
            state = engine.set_model_weights(engine.initialize(), initial)
            datasets = [task.client_dataset(cid, spec, seed=i) for i, cid in enumerate(ids)]
            engine._parts_for(len(ids))  # builds the stacked form
            assert engine.stacked is not None
            engine.stacked.clients_per_call = per_call
            output = engine.next(state, datasets)
            results[per_call] = (engine.get_model_weights(output.state).trainable, output.metrics)
    finally:
        engine.close()
    for ours, theirs in zip(results[3][0], results[182][0]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    train = {k: results[k][1]["client_work"]["train"] for k in results}
    assert train[3]["num_examples"] == train[182]["num_examples"] > 0
    assert train[3]["loss"] == pytest.approx(train[182]["loss"], rel=1e-6)
