"""Every algorithm and every aggregation stack trains on digits (in this process).

Each case pairs one algorithm with one aggregator so that all of both are
covered in seven short runs.
"""

import csv
import math
import os

import dp_accounting
from dp_accounting import rdp
import pytest

from conftest import make_config
from tffpipe.privacy import accounting as privacy
from tffpipe.program import loop

from tffpipe_tasks import digits

TASK_OPTIONS = {"num_clients": 12, "eval_clients": 2, "alpha": 1.0}
NUM_TRAIN, K = 10, 3


@pytest.fixture(scope="module")
def task():
    return digits.create_task(**TASK_OPTIONS, seed=0)


def _fixed_epsilon(z, rounds):
    accountant = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(
        dp_accounting.SampledWithoutReplacementDpEvent(NUM_TRAIN, K, dp_accounting.GaussianDpEvent(z)),
        rounds,
    )
    return accountant.get_epsilon(1e-5)


def _run(task, root, name, rounds=3, **values):
    # On TFF's runtime, which starts faster for three rounds; the in-process
    # runtime's parity with it is tests/test_inprocess.py's.
    cfg = make_config(
        **{
            "task": "digits",
            **{f"digits_{k}": v for k, v in TASK_OPTIONS.items()},
            "client_epochs": 1,
            "client_batch_size": 32,
            "rounds": rounds,
            "clients_per_round": K,
            "eval_every": 0,
            "checkpoint_every": rounds,
            "root_dir": str(root),
            "experiment_name": name,
            "runtime": "cpp",
            **values,
        }
    )
    lines = []
    result = loop.run(cfg, task, print_fn=lines.append)
    with open(os.path.join(root, name, "results", "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return result, rows, "\n".join(lines)


def _assert_trained(result, rows, rounds=3):
    assert result.rounds_done == rounds
    assert [int(r["round"]) for r in rows] == list(range(1, rounds + 1))
    for row in rows:
        assert float(row["train/num_examples"]) > 0
        for key, value in row.items():
            if value:
                assert math.isfinite(float(value)), (key, value)
    assert math.isfinite(result.final_eval["eval/loss"])
    assert 0 <= result.final_eval["eval/accuracy"] <= 1


def test_fedavg_with_fixed_dp_reports_epsilon_and_stops_at_the_budget(task, tmp_path):
    z = 1.0
    budget = (_fixed_epsilon(z, 3) + _fixed_epsilon(z, 4)) / 2
    result, rows, out = _run(
        task,
        tmp_path,
        "fixed",
        rounds=6,
        dp="fixed",
        dp_noise_multiplier=z,
        dp_clip_norm=0.5,
        dp_max_epsilon=budget,
    )
    _assert_trained(result, rows, rounds=3)
    assert result.stopped_early.startswith("stopping before round 4: it would bring epsilon to")
    assert f"above --dp_max_epsilon={budget:g}" in out
    for row in rows:
        expected = _fixed_epsilon(z, int(row["round"]))
        assert float(row["privacy/epsilon"]) == pytest.approx(expected, rel=1e-9)
    assert result.epsilon == pytest.approx(_fixed_epsilon(z, 3), rel=1e-9)
    assert "clipping -> DP -> mean" not in out  # printed as a tree, not a line
    assert "└ DP" in out and "zeroing" in out
    # The round that completed last is checkpointed, although 3 % 6 != 0.
    assert os.path.isdir(tmp_path / "fixed" / "checkpoints" / "program_state_3")


def test_fedprox_with_adaptive_clipping(task, tmp_path):
    result, rows, _ = _run(task, tmp_path, "adaptive", algorithm="fedprox", dp="adaptive", dp_noise_multiplier=0.2)
    _assert_trained(result, rows)
    clips = [float(r["privacy/clip_norm"]) for r in rows]
    assert clips[0] != pytest.approx(0.1)  # the clip adapted
    assert all(0 <= float(r["privacy/clipped_fraction"]) <= 1 for r in rows)
    # The state's composed event (value + clipped count) equals a Gaussian of
    # the total noise multiplier.
    assert float(rows[-1]["privacy/epsilon"]) == pytest.approx(_fixed_epsilon(0.2, 3), rel=1e-3)


def test_fedsgd_with_tree_aggregation_meets_the_target_epsilon(task, tmp_path):
    result, rows, out = _run(
        task,
        tmp_path,
        "tree",
        algorithm="fedsgd",
        server_learning_rate=0.5,
        dp="tree",
        dp_target_epsilon=8.0,
        dp_clip_norm=0.5,
    )
    _assert_trained(result, rows)
    assert "solved for --dp_target_epsilon=8 after 3 rounds" in out
    assert result.epsilon == pytest.approx(8.0, rel=1e-3)


@pytest.mark.slow  # one algorithm-stack pairing of several; the stacks' arithmetic is test_aggregation's
def test_mime_lite_with_secure_aggregation(task, tmp_path):
    result, rows, out = _run(task, tmp_path, "mime", algorithm="mime_lite", secure_aggregation=True)
    _assert_trained(result, rows)
    assert "secure sum: simulated by TFF's test runtime" in out
    # Model deltas and full gradients go up: twice the download.
    up, down = float(rows[0]["comm/upload_bytes_per_client"]), float(rows[0]["comm/download_bytes_per_client"])
    assert up == pytest.approx(2 * down, rel=0.01)


@pytest.mark.slow  # one algorithm-stack pairing of several; the stacks' arithmetic is test_aggregation's
def test_fedadam_with_compression_uploads_less(task, tmp_path):
    result, rows, out = _run(
        task,
        tmp_path,
        "adam",
        server_optimizer="adam",
        server_learning_rate=0.01,
        compression="uniform_quantization",
        compression_bits=4,
        compression_min_elements=1000,
    )
    _assert_trained(result, rows)
    up, down = float(rows[0]["comm/upload_bytes_per_client"]), float(rows[0]["comm/download_bytes_per_client"])
    # 83,968 of the CNN's 85,066 weights (the two tensors over 1,000 elements)
    # go up as 4-bit values instead of 32-bit floats.
    quantised_bytes = 83968 * 4 / 8
    assert quantised_bytes < up < quantised_bytes + 1098 * 4 + 10_000
    assert up < down / 6
    assert "4 bits per value" in out


@pytest.mark.slow  # one algorithm-stack pairing of several; the stacks' arithmetic is test_aggregation's
def test_fedyogi_with_distributed_dp(task, tmp_path):
    result, rows, out = _run(
        task,
        tmp_path,
        "ddp",
        server_optimizer="yogi",
        server_learning_rate=0.01,
        dp="distributed",
        dp_noise_multiplier=0.5,
        dp_clip_norm=0.5,
    )
    _assert_trained(result, rows)
    inflation = float(rows[-1]["privacy/sensitivity_inflation"])
    assert 1 <= inflation < 1.01
    assert result.epsilon == pytest.approx(_fixed_epsilon(0.5 / inflation, 3), rel=1e-9)
    assert "secure sum" in out and "20-bit" in out


@pytest.mark.slow  # one algorithm-stack pairing of several; the stacks' arithmetic is test_aggregation's
def test_fedadagrad_with_secure_fixed_dp(task, tmp_path):
    result, rows, out = _run(
        task,
        tmp_path,
        "securedp",
        server_optimizer="adagrad",
        server_learning_rate=0.01,
        secure_aggregation=True,
        dp="fixed",
        dp_noise_multiplier=0.5,
        dp_clip_norm=0.5,
    )
    _assert_trained(result, rows)
    assert "clipped values in [-0.5, 0.5]" in out
    assert result.epsilon == pytest.approx(
        privacy.RunAccountant(noise_multiplier=0.5, clients_per_round=K, num_clients=NUM_TRAIN, delta=1e-5).epsilon(3)
    )
