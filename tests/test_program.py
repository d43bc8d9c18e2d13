"""The round loop in-process, on a small digits task."""

import csv
import os

import numpy as np
import pytest

from conftest import make_config
from tffpipe import config
from tffpipe.learning import builder
from tffpipe.program import loop

from tffpipe_tasks import digits


@pytest.fixture(scope="module")
def small_task():
    return digits.create_task(num_clients=12, eval_clients=3, alpha=1.0, seed=0)


SMALL = {"digits_num_clients": 12, "digits_eval_clients": 3, "digits_alpha": 1.0}


def _config(root, rounds, **values):
    return make_config(
        **{
            **SMALL,
            "client_epochs": 1,
            "client_batch_size": 32,
            "rounds": rounds,
            "clients_per_round": 3,
            "eval_every": 2,
            "root_dir": str(root),
            "experiment_name": "p",
            # TFF's runtime starts faster than the in-process one, which short runs feel;
            # the runtimes' parity is tests/test_inprocess.py's.
            "runtime": "cpp",
            **values,
        }
    )


def _rounds_in_csv(root):
    with open(os.path.join(root, "p", "results", "metrics.csv")) as f:
        return [int(row["round"]) for row in csv.DictReader(f)]


def test_initial_weights_depend_only_on_the_seed(small_task):
    a = builder.initial_model_weights(small_task, 3)
    b = builder.initial_model_weights(small_task, 3)
    c = builder.initial_model_weights(small_task, 4)
    assert all(np.array_equal(x, y) for x, y in zip(a.trainable, b.trainable))
    assert not np.array_equal(a.trainable[0], c.trainable[0])


@pytest.mark.slow  # 30 s in the default suite's last CI run; kept out of it for time
def test_unreadable_newest_checkpoint_resumes_from_the_previous(small_task, tmp_path):
    lines = []
    first = loop.run(_config(tmp_path, 3, checkpoint_every=1), small_task, print_fn=lines.append)
    assert (first.rounds_done, first.resumed_from) == (3, 0)
    assert 0 <= first.final_eval["eval/accuracy"] <= 1
    assert lines[0] == "building the federated learning and evaluation processes..."
    assert [line.split()[1] for line in lines if line.startswith("round ")] == ["1/3", "2/3", "3/3"]

    arrays = tmp_path / "p" / "checkpoints" / "program_state_3" / "state.npz"
    arrays.write_bytes(arrays.read_bytes()[:100])
    # And the CSV lost: rebuilt from TensorBoard, and said.
    os.remove(tmp_path / "p" / "results" / "metrics.csv")
    lines.clear()
    second = loop.run(_config(tmp_path, 4, checkpoint_every=1), small_task, print_fn=lines.append)
    assert (second.rounds_done, second.resumed_from) == (4, 2)
    assert any(line.startswith(f"resuming {tmp_path / 'p'} from the checkpoint of round 2") for line in lines)
    assert "metrics.csv: rebuilt rounds 1-2 from the TensorBoard logs" in lines
    assert [line.split()[1] for line in lines if line.startswith("round ")] == ["3/4", "4/4"]
    assert _rounds_in_csv(tmp_path) == [1, 2, 3, 4]
    assert os.path.isdir(tmp_path / "p" / "checkpoints" / "program_state_3.unreadable")

    lines.clear()
    third = loop.run(_config(tmp_path, 4, checkpoint_every=1), small_task, print_fn=lines.append)
    assert (third.rounds_done, third.resumed_from) == (4, 4)
    assert [line for line in lines if line.startswith(("resuming", str(tmp_path)))] == [
        f"resuming {tmp_path / 'p'} from the checkpoint of round 4",
        f"{tmp_path / 'p'} already holds 4 rounds (--rounds=4)",
    ]
    assert third.final_eval == pytest.approx(second.final_eval, rel=1e-5)


def test_too_many_clients_per_round_is_a_config_error(small_task, tmp_path):
    cfg = make_config(clients_per_round=10)
    with pytest.raises(config.ConfigError, match=r"--clients_per_round=10 is larger than the 9 training clients"):
        loop.run(cfg, small_task)


@pytest.mark.parametrize("client, server", [("sgdm", "adam"), ("adam", "sgdm")])
def test_every_optimizer_trains(small_task, tmp_path, client, server):
    cfg = _config(
        tmp_path,
        2,
        eval_every=0,
        client_optimizer=client,
        client_learning_rate=0.02,
        server_optimizer=server,
        server_learning_rate=0.05 if server == "adam" else 1.0,
    )
    result = loop.run(cfg, small_task, print_fn=lambda line: None)
    assert np.isfinite(result.final_eval["eval/loss"])
    initial = builder.initial_model_weights(small_task, 0)
    moved = [np.abs(a - b).max() for a, b in zip(result.model_weights.trainable, initial.trainable)]
    assert max(moved) > 1e-4
    assert _rounds_in_csv(tmp_path) == [1, 2]


def test_unset_clients_per_round_takes_every_client_of_a_small_task(small_task):
    cfg = loop.fit_to_task(config.RunConfig(), small_task)
    assert cfg.schedule.clients_per_round == 9
    line = loop.describe_run(cfg, small_task)
    assert line.startswith("task digits: 9 training clients, 3 held-out evaluation clients; 50 rounds of 9 clients")
