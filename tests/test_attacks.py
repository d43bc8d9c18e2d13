"""Simulated malicious clients: who attacks, what their data becomes, and a run under attack."""

import csv
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import make_config
from tffpipe.config import components
from tffpipe import errors
from tffpipe.attacks import backdoor
from tffpipe.attacks import selection
from tffpipe.attacks import simulation
from tffpipe.program import loop

from tffpipe_tasks import digits

IDS = [f"client_{i:04d}" for i in range(40)]


@pytest.fixture(scope="module")
def small_task():
    return digits.create_task(num_clients=12, eval_clients=2, alpha=1.0, seed=0)


def test_attackers_are_a_seeded_fraction_chosen_once():
    chosen = selection.attackers(IDS, 0.2, seed=0)
    assert len(chosen) == 8 and set(chosen) <= set(IDS)
    assert selection.attackers(IDS, 0.2, seed=0) == chosen  # the same on every call (and resume)
    assert selection.attackers(IDS, 0.2, seed=1) != chosen
    assert len(selection.attackers(IDS, 0.3, seed=0)) == 12


def _batch(n=8, classes=10):
    x = tf.random.stateless_uniform([n, 8, 8, 1], seed=[1, 2]) * 0.5
    y = tf.constant(np.arange(n) % classes, tf.int32)
    return x, y


def _simulation(cfg, task):
    return simulation.Simulation(cfg.attack.name, components.attack_context(cfg), task)


def test_label_flip_shifts_every_attacker_label_and_leaves_honest_clients_alone(small_task):
    sim = _simulation(make_config(attack="label_flip", attack_fraction=0.3), small_task)
    assert sim.labels.num_classes == 10
    x, y = _batch(12)
    attacker, honest = sim.attackers[0], next(c for c in small_task.train_data.client_ids if c not in sim.attackers)
    ds = tf.data.Dataset.from_tensors((x, y))
    ((px, py),) = list(sim.client_data(attacker, ds, 7))
    np.testing.assert_array_equal(py.numpy(), (y.numpy() + 1) % 10)
    np.testing.assert_array_equal(px.numpy(), x.numpy())
    assert sim.client_data(honest, ds, 7) is ds


def test_backdoor_stamps_the_trigger_on_a_share_of_each_batch_and_relabels_it(small_task):
    cfg = make_config(attack="backdoor", attack_target=7, attack_poison_fraction=0.25)
    sim = _simulation(cfg, small_task)
    x, y = _batch(8)
    ((px, py),) = list(sim.client_data(sim.attackers[0], tf.data.Dataset.from_tensors((x, y)), 7))
    px, py = px.numpy(), py.numpy()
    # ceil(0.25 x 8) = 2 examples: the 3 x 3 bottom-right patch is 1.0, the label 7.
    assert (px[:2, 5:, 5:, :] == 1.0).all() and (py[:2] == 7).all()
    np.testing.assert_array_equal(px[:2, :5], x.numpy()[:2, :5])
    np.testing.assert_array_equal(px[2:], x.numpy()[2:])
    np.testing.assert_array_equal(py[2:], y.numpy()[2:])

    # Held out: examples of the target class leave, the rest carry the trigger, labelled 7.
    ((ex, ey),) = list(sim.triggered_eval()(tf.data.Dataset.from_tensors((x, y))))
    assert len(ey) == 7 and (ey.numpy() == 7).all()
    assert (ex.numpy()[:, 5:, 5:, :] == 1.0).all()


def test_tabular_trigger_sets_the_first_features():
    x = tf.zeros([2, 5])
    np.testing.assert_array_equal(backdoor.stamp(x).numpy(), [[3, 3, 3, 0, 0]] * 2)


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            dict(attack="label_flip", attack_target=3),
            "--attack_target applies to --attack=backdoor, not --attack=label_flip",
        ),
        (dict(attack="backdoor", attack_fraction=1.0), "--attack_fraction must be in (0, 1), got 1"),
        (
            dict(attack_fraction=0.3),
            "--attack_fraction applies to --attack=label_flip|backdoor|sign_flip|scale|gaussian|alie, not --attack=none",
        ),
    ],
)
def test_attack_settings_are_checked_with_the_flags(flags, message):
    with pytest.raises(errors.ConfigError) as info:
        make_config(**flags)
    assert str(info.value) == message


def test_an_attack_that_does_not_fit_the_task_is_refused(small_task):
    with pytest.raises(errors.ConfigError, match=r"^--attack_target=10 is not a class of task 'digits' \(0..9\)$"):
        _simulation(make_config(attack="backdoor", attack_target=10), small_task)
    from tffpipe_tasks import diabetes

    with pytest.raises(
        errors.ConfigError, match=r"^--attack=label_flip needs integer class labels; task 'diabetes' has none$"
    ):
        _simulation(make_config(attack="label_flip"), diabetes.create_task(seed=0))


@pytest.mark.slow  # two invocations with triggered evaluations (35 s)
def test_a_backdoored_run_reports_its_success_and_keeps_its_attackers_on_resume(small_task, tmp_path):
    def cfg(rounds):
        return make_config(
            digits_num_clients=12,
            digits_eval_clients=2,
            digits_alpha=1.0,
            client_epochs=1,
            client_batch_size=32,
            rounds=rounds,
            clients_per_round=5,
            eval_every=0,
            checkpoint_every=1,
            attack="backdoor",
            attack_fraction=0.3,
            attack_target=0,
            root_dir=str(tmp_path),
            experiment_name="b",
            runtime="cpp",
        )

    lines = []
    loop.run(cfg(2), small_task, print_fn=lines.append)
    assert (
        "attack: backdoor: a trigger on 50% of each attacker batch, relabelled to class 0; 3 of 10 training clients attack (30%, chosen by --seed)"
        in lines
    )
    recorded = json.loads((tmp_path / "b" / "config.json").read_text())
    attackers = recorded["attackers"]
    assert attackers == selection.attackers(list(small_task.train_data.client_ids), 0.3, 0)
    result = loop.run(cfg(3), small_task, print_fn=lambda line: None)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["attackers"] == attackers
    with open(os.path.join(tmp_path, "b", "results", "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    # Evaluated after the last round of each invocation: rounds 2 and 3.
    assert [bool(r["eval/backdoor_success"]) for r in rows] == [False, True, True]
    for row in rows:
        assert 0 <= float(row["attack/attackers_in_round"]) <= 3
        assert math.isfinite(float(row["train/loss"]))
    assert 0 <= float(rows[2]["eval/backdoor_success"]) <= 1
    assert 0 <= result.final_eval["eval/backdoor_success"] <= 1


@pytest.mark.slow
def test_a_label_flipped_run_trains_three_rounds(small_task, tmp_path):
    cfg = make_config(
        digits_num_clients=12,
        digits_eval_clients=2,
        digits_alpha=1.0,
        client_epochs=1,
        client_batch_size=32,
        rounds=3,
        clients_per_round=5,
        eval_every=0,
        attack="label_flip",
        robust="median",
        root_dir=str(tmp_path),
        experiment_name="f",
        runtime="cpp",
    )
    result = loop.run(cfg, small_task, print_fn=lambda line: None)
    assert result.rounds_done == 3
    assert all(math.isfinite(v) for v in result.final_eval.values())
