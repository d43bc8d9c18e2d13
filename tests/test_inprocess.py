"""The in-process runtime: same rounds as TFF's C++ runtime, placement, errors."""

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from conftest import REPO_ROOT, make_config
from tffpipe.learning import builder
from tffpipe.program import assembly
from tffpipe.program import loop
from tffpipe.program import sampling
from tffpipe.runtimes import contexts as runtime
from tffpipe.runtimes import client_half
from tffpipe.runtimes import inprocess_process as inprocess
from tffpipe.runtimes import registry as runtime_registry
from tffpipe.tasks import ClientSpec

from tffpipe_tasks import digits

CLIENTS_PER_ROUND = 3
SPEC = ClientSpec(num_epochs=1, batch_size=32)


@pytest.fixture(scope="module")
def task():
    return digits.create_task(num_clients=12, eval_clients=3, alpha=1.0, seed=0)


def _config(root=".", rounds=3, runtime_name="cpp", **values):
    return make_config(
        digits_num_clients=12,
        digits_eval_clients=3,
        digits_alpha=1.0,
        client_epochs=1,
        client_batch_size=32,
        rounds=rounds,
        clients_per_round=CLIENTS_PER_ROUND,
        eval_every=0,
        checkpoint_every=1,
        root_dir=str(root),
        experiment_name="p",
        runtime=runtime_name,
        **values,
    )


def _build(task, cfg):
    """The learning process with the client loop the config's runtime uses."""
    loop_implementation = runtime_registry.get(cfg.runtime.name).loop_implementation()
    return assembly.build_learning_process(task, cfg, task.train_data.client_ids, loop_implementation)


ALGORITHMS = {
    "fedavg": {},
    "fedprox": {"algorithm": "fedprox"},
    "fedadam": {"server_optimizer": "adam", "server_learning_rate": 0.01},
    "dp_fixed_noise_0": {"zeroing": False, "dp": "fixed", "dp_clip_norm": 1.0, "dp_noise_multiplier": 0.0},
    "secure_fedavg": {"secure_aggregation": True},
}


def _round_data(task, round_num):
    ids = sampling.sample_clients(list(task.train_data.client_ids), CLIENTS_PER_ROUND, seed=0, round_num=round_num)
    return [task.client_dataset(cid, SPEC, seed=sampling.client_seed(0, round_num, i)) for i, cid in enumerate(ids)]


def _three_rounds(runner, task, initial):
    state = runner.set_model_weights(runner.initialize(), initial)
    for round_num in (1, 2, 3):
        output = runner.next(state, _round_data(task, round_num))
        state = output.state
    return runner.get_model_weights(state), output.metrics


# FedAvg runs by default; the others share its code path in the runtime and
# run in the slow step (secure sums' masking is also tests/test_secure_masking.py's).
_SLOW_PARITY = {"fedprox", "fedadam", "dp_fixed_noise_0", "secure_fedavg"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=pytest.mark.slow) if name in _SLOW_PARITY else name for name in ALGORITHMS],
)
def test_three_rounds_match_tff_cpp_runtime(task, name):
    cfg = _config(**ALGORITHMS[name])
    process, _ = _build(task, cfg)
    initial = builder.initial_model_weights(task, 0)
    with runtime.execution_context_for(process, lambda line: None):
        cpp_weights, cpp_metrics = _three_rounds(process, task, initial)
        cpp_hparams = process.get_hparams(process.initialize())
    # Built for the in-process runtime: the same algorithm with TFF's
    # DATASET_ITERATOR client loop instead of DATASET_REDUCE.
    inprocess_cfg = _config(runtime_name="inprocess", **ALGORITHMS[name])
    process, _ = _build(task, inprocess_cfg)
    local = inprocess.build(process, ["/CPU:0", "/CPU:0"])
    try:
        weights, metrics = _three_rounds(local, task, initial)
        # Hyperparameters (read and replaced on resume) as TFF's runtime has them.
        state = local.initialize()
        hparams = local.get_hparams(state)
        tf.nest.map_structure(np.testing.assert_allclose, hparams, cpp_hparams)
        doubled = tf.nest.map_structure(lambda x: np.float32(x) * 2, hparams)
        tf.nest.map_structure(np.testing.assert_allclose, local.get_hparams(local.set_hparams(state, doubled)), doubled)
    finally:
        local.close()
    assert local.uses_secure_sum == (name == "secure_fedavg")
    for ours, theirs in zip(weights.trainable, cpp_weights.trainable):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    # Same structure and values of the round metrics, as the program loop sees them.
    assert (
        tff.structure.to_odict(tff.structure.from_container(metrics, recursive=True), recursive=True).keys()
        == tff.structure.to_odict(tff.structure.from_container(cpp_metrics, recursive=True), recursive=True).keys()
    )
    train, cpp_train = metrics["client_work"]["train"], cpp_metrics["client_work"]["train"]
    assert train["num_examples"] == cpp_train["num_examples"] > 0
    np.testing.assert_allclose(train["loss"], cpp_train["loss"], rtol=1e-4)


@pytest.mark.slow
def test_checkpoints_move_between_runtimes(task, tmp_path):
    """Two rounds in-process, the third on TFF's runtime: the same as three on TFF's."""
    straight = loop.run(_config(tmp_path / "a", 3), task, print_fn=lambda line: None)
    lines = []
    first = loop.run(_config(tmp_path / "b", 2, "inprocess"), task, print_fn=lines.append)
    assert first.rounds_done == 2
    assert any(line.startswith("runtime inprocess: learning process on 2 client slot(s)") for line in lines)
    resumed = loop.run(_config(tmp_path / "b", 3), task, print_fn=lines.append)
    assert resumed.resumed_from == 2 and resumed.rounds_done == 3
    for ours, theirs in zip(resumed.model_weights.trainable, straight.model_weights.trainable):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert resumed.final_eval.keys() == straight.final_eval.keys()
    np.testing.assert_allclose(resumed.final_eval["eval/loss"], straight.final_eval["eval/loss"], rtol=1e-4)


def test_next_clients_data_is_loaded_while_a_client_trains(task):
    """One slot, three clients: client k+1's data is read during client k's work, once."""
    process, _ = _build(task, _config(runtime_name="inprocess"))
    initial = builder.initial_model_weights(task, 0)
    events = []

    def logged(k, dataset):
        def read():
            events.append(("read", k, time.monotonic()))
            yield from dataset

        return tf.data.Dataset.from_generator(read, output_signature=dataset.element_spec)

    trained = {}
    for prefetch in (True, False):
        events.clear()
        local = inprocess.InProcessProcess(process, ["/CPU:0"], prefetch=prefetch, clients_per_call=1)
        slot = local.clients.slots[0]
        real_work = slot.client_step

        def slow_work(*args, real_work=real_work):
            events.append(("work starts", None, time.monotonic()))
            time.sleep(0.3)  # ample time for the loader
            result = real_work(*args)
            events.append(("work ends", None, time.monotonic()))
            return result

        slot.client_step = slow_work
        try:
            state = local.set_model_weights(local.initialize(), initial)
            data = [logged(k, d) for k, d in enumerate(_round_data(task, 1))]
            state = local.next(state, data).state
            trained[prefetch] = local.get_model_weights(state).trainable
        finally:
            local.close()
        reads = {k: t for what, k, t in events if what == "read"}
        starts = [t for what, _, t in events if what == "work starts"]
        ends = [t for what, _, t in events if what == "work ends"]
        # Every client's source is read exactly once: the work replays the copy.
        assert sorted(k for what, k, _ in events if what == "read") == [0, 1, 2]
        assert len(starts) == len(ends) == 3
        for k in range(3):
            if prefetch:  # read before its own work starts, during the previous one's
                assert reads[k] < starts[k]
                assert k == 0 or reads[k] < ends[k - 1]
            else:  # read by its own work
                assert starts[k] < reads[k] < ends[k]
    for with_prefetch, without in zip(trained[True], trained[False]):
        np.testing.assert_allclose(with_prefetch, without, rtol=1e-6, atol=1e-7)


def test_clients_are_read_ahead_on_gpus_unless_told_otherwise():
    assert client_half.reads_ahead("auto", ["/device:GPU:0", "/device:GPU:1"])
    assert not client_half.reads_ahead("auto", ["/device:CPU:0", "/device:CPU:0"])
    assert client_half.reads_ahead("on", ["/device:CPU:0"])
    assert not client_half.reads_ahead("off", ["/device:GPU:0"])


def test_a_round_that_is_not_a_map_reduce_fails_with_one_line():
    @tff.tensorflow.computation(np.float32, np.float32)
    def add(a, b):
        return a + b

    @tff.federated_computation(tff.FederatedType(np.float32, tff.SERVER), tff.FederatedType(np.float32, tff.CLIENTS))
    def two_aggregations(server, clients):
        # Aggregating, broadcasting the total and aggregating again is two
        # rounds of MapReduce; TFF cannot compile it to one MapReduceForm.
        total = tff.federated_sum(clients)
        back = tff.federated_broadcast(total)
        return server, tff.federated_sum(tff.federated_map(add, tff.federated_zip((clients, back))))

    with pytest.raises(inprocess.InProcessUnsupported) as raised:
        inprocess.compile_round(two_aggregations, "learning process")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("the learning process cannot run on --runtime=inprocess")
    assert message.endswith("use --runtime=cpp")


PLACEMENT_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from tffpipe import config
    from tffpipe.learning import builder
    from tffpipe.program import assembly
    from tffpipe.runtimes import devices
    from tffpipe.runtimes import inprocess_process as inprocess
    from tffpipe.runtimes import processes
    from tffpipe.tasks import ClientSpec
    from tffpipe_tasks import digits

    processes.install_worker_reaper()
    cfg = config.from_values({"runtime": "inprocess", "cpu_devices": 3, "parallel_clients": 1})
    devices.configure(cfg.runtime.inprocess)  # before TensorFlow starts
    devices.configure(cfg.runtime.inprocess)  # a second run in the same process: a no-op
    slots = devices.client_slots(cfg.runtime.inprocess)
    print("slots", slots)
    task = digits.create_task(num_clients=12, eval_clients=3, alpha=1.0, seed=0)
    process, _ = assembly.build_learning_process(task, cfg, task.train_data.client_ids)
    spec = ClientSpec(num_epochs=1, batch_size=32)
    data = [task.client_dataset(c, spec, seed=i) for i, c in enumerate(task.train_data.client_ids[:5])]
    results = []
    for devices_used in (slots, slots[:1]):
        local = inprocess.build(process, devices_used)
        state = local.set_model_weights(local.initialize(), builder.initial_model_weights(task, 0))
        state = local.next(state, data).state
        print("assignment", sorted(local.last_assignment.items()))
        results.append(local.get_model_weights(state).trainable)
        local.close()
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*results))
    print("max difference", diff)
    """
)


@pytest.mark.slow  # a subprocess with 4 logical devices (40 s)
def test_clients_are_spread_over_logical_devices():
    """The GPU code path on a CPU split into three logical devices."""
    out = subprocess.run(
        [sys.executable, "-c", PLACEMENT_SCRIPT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == ("slots ['/device:CPU:0', '/device:CPU:1', '/device:CPU:2']")
    assert lines[1] == (
        "assignment [('/device:CPU:0 (slot 0)', [0, 3]), ('/device:CPU:1 (slot 1)', [1, 4]), "
        "('/device:CPU:2 (slot 2)', [2])]"
    )
    assert lines[2] == "assignment [('/device:CPU:0 (slot 0)', [0, 1, 2, 3, 4])]"
    assert float(lines[3].split()[-1]) < 1e-5


def test_a_process_limited_to_one_core_gets_an_inter_op_thread_per_client_slot():
    # TensorFlow would size its pool to the one core; two slots then wait on each other.
    script = textwrap.dedent("""
        import os
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        import tensorflow as tf
        from tffpipe import config
        from tffpipe.runtimes import devices
        devices.configure(config.from_values(dict(runtime="inprocess", parallel_clients=3)).runtime.inprocess)
        print(devices.usable_cpus(), tf.config.threading.get_inter_op_parallelism_threads())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.stdout.split() == ["1", "3"], proc.stderr[-2000:]
