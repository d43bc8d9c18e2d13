"""FedBuff: buffered asynchronous aggregation on the simulated clock."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, SMALL_DIGITS_FLAGS, make_config
from tffpipe import config
from tffpipe.learning import builder
from tffpipe.program import assembly
from tffpipe.learning import fedbuff as fedbuff_lib
from tffpipe.program import fedbuff
from tffpipe.program import loop
from tffpipe.program import sampling
from tffpipe.runtimes import registry as runtime_registry


@pytest.fixture(scope="module")
def small_task(small_digits):
    return small_digits


def _config(root, **values):
    return make_config(
        **{
            **SMALL_DIGITS_FLAGS,
            "root_dir": str(root),
            "experiment_name": "b",
            "algorithm": "fedbuff",
            **values,
        }
    )


def test_one_client_at_a_time_with_a_buffer_of_one_is_sequential_fedavg(small_task, tmp_path):
    cfg = _config(tmp_path, async_concurrency=1, async_buffer_size=1, server_learning_rate=0.7)
    result = fedbuff.run(cfg, small_task, print_fn=lambda line: None)
    # FedAvg with one client a round: the n-th round's client is the n-th client FedBuff started.
    reference_cfg = make_config(
        **{**{k: v for k, v in _flags(cfg).items()}, "algorithm": "fedavg", "clients_per_round": 1, "zeroing": False}
    )
    ids = list(small_task.train_data.client_ids)
    runtime = runtime_registry.get("cpp")
    process, _ = assembly.build_learning_process(small_task, reference_cfg, ids, runtime.loop_implementation())
    spec = loop.client_spec(reference_cfg)
    state = process.set_model_weights(process.initialize(), builder.initial_model_weights(small_task, 0))
    for n in (1, 2, 3):
        client = sampling.sample_clients(ids, 1, seed=0, round_num=n)[0]
        state = process.next(state, [small_task.client_dataset(client, spec, seed=sampling.client_seed(0, n, 0))]).state
    expected = process.get_model_weights(state)
    for ours, theirs in zip(result.model_weights.trainable, expected.trainable):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def _flags(cfg):
    return {
        **SMALL_DIGITS_FLAGS,
        "root_dir": cfg.output.root_dir,
        "experiment_name": "ref",
        "server_learning_rate": cfg.server_optimizer.learning_rate,
    }


@pytest.mark.slow  # 137 s in the default suite's last CI run; kept out of it for time
def test_fedbuff_is_deterministic_and_resumes_to_the_same_weights(small_task, tmp_path):
    values = dict(
        async_concurrency=4,
        async_buffer_size=2,
        client_dropout=0.2,
        client_speed="lognormal:50,1.0",
        checkpoint_every=1,
        personalize_every=4,
    )
    straight = fedbuff.run(_config(tmp_path / "a", rounds=4, **values), small_task, print_fn=lambda line: None)
    # A second run, stopped after 2 server updates and resumed: the same weights.
    fedbuff.run(_config(tmp_path / "c", rounds=2, **values), small_task, print_fn=lambda line: None)
    lines = []
    resumed = fedbuff.run(_config(tmp_path / "c", rounds=4, **values), small_task, print_fn=lines.append)
    assert resumed.resumed_from == 2
    assert any("from the checkpoint of round 2" in line for line in lines)
    for a, c in zip(straight.model_weights.trainable, resumed.model_weights.trainable):
        np.testing.assert_array_equal(a, c)
    rows = _metrics(tmp_path / "a" / "b")
    assert [r["round"] for r in rows] == ["1", "2", "3", "4"]
    assert all(float(r["clients/reported"]) == 2 for r in rows)
    assert rows[-1]["personalized/gain_mean"] and rows[-1]["eval_clients/accuracy_p10"]
    assert max(float(r["async/staleness_max"]) for r in rows) >= 1  # some updates arrive stale
    elapsed = [float(r["sim/elapsed_sec"]) for r in rows]
    assert all(b > a for a, b in zip(elapsed, elapsed[1:]))
    assert [r["sim/elapsed_sec"] for r in _metrics(tmp_path / "c" / "b")] == [r["sim/elapsed_sec"] for r in rows]


def test_staleness_weights():
    assert fedbuff_lib.staleness_weight("polynomial", 0) == 1.0
    assert fedbuff_lib.staleness_weight("polynomial", 3) == pytest.approx(0.5)
    assert fedbuff_lib.staleness_weight("constant", 7) == 1.0


@pytest.mark.parametrize(
    "values, message",
    [
        (
            dict(algorithm="fedbuff", async_concurrency=3, async_buffer_size=4),
            "--async_buffer_size=4 is larger than --async_concurrency=3: the buffer would wait for more updates "
            "than clients are training",
        ),
        (
            dict(algorithm="fedbuff", secure_aggregation=True),
            "--algorithm=fedbuff cannot run with the secure aggregation layer: its buffer aggregates in the "
            "launcher, outside the aggregation stack (DP noise, secure sums, compression and robust rules would not apply)",
        ),
        (
            dict(algorithm="fedbuff", round_deadline_sec=5),
            "--round_deadline_sec and --over_selection close synchronous rounds; --algorithm=fedbuff has none "
            "(a late client's update arrives stale instead)",
        ),
        (dict(async_concurrency=3), "--async_concurrency applies to --algorithm=fedbuff, not --algorithm=fedavg"),
        (
            dict(algorithm="fedbuff", clients_per_round=5),
            "--clients_per_round does not apply to --algorithm=fedbuff; it has --async_concurrency and --async_buffer_size",
        ),
    ],
)
def test_bad_fedbuff_settings_are_one_line_errors(values, message):
    with pytest.raises(config.ConfigError) as info:
        make_config(**values)
    assert str(info.value) == message


def test_more_concurrent_clients_than_training_clients_is_refused(small_task, tmp_path):
    with pytest.raises(config.ConfigError, match="--async_concurrency=20 is larger than the 9 training clients"):
        fedbuff.run(_config(tmp_path, async_concurrency=20, async_buffer_size=2), small_task, print_fn=print)


@pytest.mark.slow
def test_a_sigkilled_fedbuff_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, marker_env):
    env, _ = marker_env
    args = [
        sys.executable,
        "-m",
        "tffpipe.train",
        "--algorithm=fedbuff",
        "--rounds=6",
        "--eval_every=0",
        "--checkpoint_every=2",
        "--async_concurrency=6",
        "--async_buffer_size=3",
        "--client_speed=lognormal:50,1.0",
        "--client_dropout=0.1",
        "--experiment_name=fedbuff",
    ]
    straight = subprocess.run(
        [*args, f"--root_dir={tmp_path / 'a'}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    proc = subprocess.Popen(
        [*args, f"--root_dir={tmp_path / 'b'}"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("round 3/6"):
                break
        os.kill(proc.pid, signal.SIGKILL)  # the newest checkpoint is round 2
        proc.wait(timeout=30)
    finally:
        proc.kill()
    resumed = subprocess.run(
        [*args, f"--root_dir={tmp_path / 'b'}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "from the checkpoint of round 2" in resumed.stdout
    for ours, theirs in zip(_export(tmp_path / "b"), _export(tmp_path / "a")):
        np.testing.assert_array_equal(ours, theirs)
    assert [r["round"] for r in _metrics(tmp_path / "b" / "fedbuff")] == ["1", "2", "3", "4", "5", "6"]


def _export(root):
    import tensorflow as tf

    return tf.keras.models.load_model(root / "fedbuff" / "export").get_weights()


def _metrics(run_dir):
    import csv

    with open(run_dir / "results" / "metrics.csv") as f:
        return list(csv.DictReader(f))
