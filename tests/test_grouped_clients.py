"""Grouped client work (several clients per TensorFlow call) equals the per-client path."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import csv_rows as _rows
from conftest import small_digits_config
from tffpipe.learning import builder
from tffpipe.program import assembly
from tffpipe.program import loop
from tffpipe.program import sampling
from tffpipe.runtimes import inprocess_process
from tffpipe.runtimes import registry as runtime_registry
from tffpipe.tasks import ClientSpec

from tffpipe_tasks import digits


@pytest.fixture(scope="module")
def task():
    return digits.create_task(num_clients=14, eval_clients=4, alpha=1.0, seed=0)


def _config(root, name, per_call, **values):
    return small_digits_config(root, name, clients_per_call=per_call, **values)


CASES = {
    "fedavg": {},
    "secure_sum": {"secure_aggregation": True},
    "sign_flip_median": {"attack": "sign_flip", "robust": "median", "zeroing": False},
    "fedprox_dp": {
        "algorithm": "fedprox",
        "zeroing": False,
        "dp": "fixed",
        "dp_clip_norm": 1.0,
        "dp_noise_multiplier": 0.0,
    },
    "fedsgd_personalized": {"algorithm": "fedsgd", "personalize_every": 2},
}
# Mime Lite is left out: on the in-process runtime two identical runs already
# differ (1 round, one client per call, one slot: weights 0.0117 apart), so
# grouped and per-client runs cannot be compared; see the session's note.
_SLOW = {"secure_sum", "sign_flip_median", "fedprox_dp", "fedsgd_personalized"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in _SLOW else c for c in CASES])
def test_grouped_rounds_equal_one_client_per_call(task, tmp_path, case):
    # 7 clients on one of the 2 slots (they share the CPU; too few clients for
    # both): groups of 3, 3 and 1.
    runs = {}
    for per_call in (1, 3):
        name = f"k{per_call}"
        runs[per_call] = loop.run(_config(tmp_path, name, per_call, **CASES[case]), task, print_fn=lambda line: None)
    for ours, theirs in zip(runs[3].model_weights.trainable, runs[1].model_weights.trainable):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    grouped, single = (_rows(tmp_path / n / "results" / "metrics.csv") for n in ("k3", "k1"))
    for a, b in zip(grouped, single):
        assert a["train/num_examples"] == b["train/num_examples"]
        assert float(a["train/loss"]) == pytest.approx(float(b["train/loss"]), rel=1e-5)
        assert float(a["sim/elapsed_sec"]) == float(b["sim/elapsed_sec"])
    clients_grouped, clients_single = (_rows(tmp_path / n / "results" / "clients.csv") for n in ("k3", "k1"))
    assert [(r["round"], r["client_id"], r["num_examples"]) for r in clients_grouped] == [
        (r["round"], r["client_id"], r["num_examples"]) for r in clients_single
    ]
    for a, b in zip(clients_grouped, clients_single):
        for column in a:
            if column not in ("round", "client_id") and a[column]:
                assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-5, abs=1e-6), column


def _engine(task, per_call, slots=("/CPU:0",), prefetch=True):
    cfg = _config(".", "unused", per_call, zeroing=False)
    runtime = runtime_registry.get("inprocess")
    process, _ = assembly.build_learning_process(task, cfg, task.train_data.client_ids, runtime.loop_implementation())
    return inprocess_process.InProcessProcess(process, list(slots), clients_per_call=per_call, prefetch=prefetch)


def _datasets(task, count=5):
    ids = sampling.sample_clients(list(task.train_data.client_ids), count, seed=0, round_num=1)
    spec = ClientSpec(num_epochs=1, batch_size=16)
    return [task.client_dataset(cid, spec, seed=i) for i, cid in enumerate(ids)]


def test_groups_larger_than_the_cohort_and_empty_clients_match(task):
    data = _datasets(task)
    data[2] = data[2].take(0)  # a client with no examples
    initial = builder.initial_model_weights(task, 0)
    results = {}
    for per_call in (1, 16):
        engine = _engine(task, per_call)
        try:
            state = engine.set_model_weights(engine.initialize(), initial)
            output = engine.next(state, data)
            results[per_call] = (
                engine.get_model_weights(output.state).trainable,
                output.metrics["client_work"]["train"]["num_examples"],
            )
        finally:
            engine.close()
    assert results[16][1] == results[1][1] == sum(len(list(d.unbatch())) for i, d in enumerate(data) if i != 2)
    for ours, theirs in zip(results[16][0], results[1][0]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_an_exception_in_one_clients_work_names_that_client(task, tmp_path):
    data = _datasets(task)

    def poisoned(x, y):
        tf.debugging.assert_less(tf.reduce_max(x), -1.0, message="poisoned client data")
        return x, y

    data[3] = data[3].map(poisoned)
    initial = builder.initial_model_weights(task, 0)
    for per_call in (1, 4):
        engine = _engine(task, per_call)
        try:
            state = engine.set_model_weights(engine.initialize(), initial)
            with pytest.raises(inprocess_process.ClientWorkFailed) as info:
                engine.next(state, data)
            assert info.value.index == 3
            assert "poisoned client data" in str(info.value)
            with pytest.raises(
                loop.ClientFailed, match=r"^round 7: the work of client c3 failed: .*poisoned client data"
            ):
                loop._next(engine, state, data, ["c0", "c1", "c2", "c3", "c4"], 7)
        finally:
            engine.close()


def test_groups_that_build_their_datasets_in_the_call_equal_datasets_built_in_python(task, monkeypatch):
    # The program loop hands recipes (client id, seed); a group then builds its
    # clients' datasets inside its own TensorFlow call.
    from tffpipe.program import client_sources
    from tffpipe.runtimes import tf_parts

    spec = ClientSpec(num_epochs=2, batch_size=16, shuffle_buffer_size=100)
    source = client_sources.TrainSource(client_sources.TaskRecipe(task.name, (), 0, None), spec)
    calls = []
    real = tf_parts.GroupedClientStep.by_keys
    monkeypatch.setattr(
        tf_parts.GroupedClientStep, "by_keys", lambda self, *args: calls.append(len(args[2])) or real(self, *args)
    )
    initial = builder.initial_model_weights(task, 0)
    results = {}
    for how in ("keys", "list"):
        engine = _engine(task, 3, slots=("/CPU:0", "/CPU:0"), prefetch=False)  # the CPU default
        engine.clients.groups_per_shared_slot = 0  # both slots even for 7 clients
        try:
            state = engine.set_model_weights(engine.initialize(), initial)
            for round_num in (1, 2):
                ids = sampling.sample_clients(list(task.train_data.client_ids), 7, seed=0, round_num=round_num)
                keys = [(cid, sampling.client_seed(0, round_num, i)) for i, cid in enumerate(ids)]
                if how == "keys":
                    data = client_sources.ClientDatasets(source, keys, task)
                else:
                    data = [task.client_dataset(cid, spec, seed=seed) for cid, seed in keys]
                output = engine.next(state, data)
                state = output.state
            results[how] = (
                engine.get_model_weights(state).trainable,
                output.metrics["client_work"]["train"]["num_examples"],
            )
        finally:
            engine.close()
    assert sorted(calls) == sorted([3, 1, 3] * 2)  # slot 0: clients 0,2,4 | 6; slot 1: 1,3,5; two rounds
    assert results["keys"][1] == results["list"][1]
    for ours, theirs in zip(results["keys"][0], results["list"][0]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_small_rounds_use_one_of_the_slots_that_share_a_device(task):
    engine = _engine(task, 1, slots=("/CPU:0", "/CPU:0"), prefetch=False)
    spec = ClientSpec(num_epochs=1, batch_size=16)
    try:
        assert engine.clients.placement_rule == (
            "client i of a round goes to slot i mod S, S = the round's clients // 4, at least 1 and at most 2, "
            "as the slots share a device"
        )
        state = engine.set_model_weights(engine.initialize(), builder.initial_model_weights(task, 0))
        ids = list(task.train_data.client_ids)
        assert len(ids) == 10
        for count, expected in ((3, {"/CPU:0 (slot 0)": [0, 1, 2]}), (7, {"/CPU:0 (slot 0)": list(range(7))})):
            data = [task.client_dataset(cid, spec, seed=i) for i, cid in enumerate(ids[:count])]
            state = engine.next(state, data).state
            assert engine.last_assignment == expected
        data = [task.client_dataset(cid, spec, seed=i) for i, cid in enumerate(ids)]
        engine.next(state, data)
        assert engine.last_assignment == {"/CPU:0 (slot 0)": [0, 2, 4, 6, 8], "/CPU:0 (slot 1)": [1, 3, 5, 7, 9]}
        assert engine.clients.slots_for(1000) == 2
    finally:
        engine.close()
