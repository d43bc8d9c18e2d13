"""Update-poisoning attacks: each transform on hand-made updates, then inside a real round.

The round-level tests run one TFF learning process per attack on `digits`
clients whose honest updates are measured in the same process (token 0),
so every expectation is computed independently of the attack's code path.
"""

import math
import os

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from conftest import make_config
from tffpipe.config import components
from tffpipe import errors
from tffpipe.attacks import alie
from tffpipe.attacks import base
from tffpipe.attacks import client_work
from tffpipe.attacks import registry
from tffpipe.learning import builder
from tffpipe.program import assembly
from tffpipe.program import loop
from tffpipe.program import sampling
from tffpipe.runtimes import inprocess_process
from tffpipe.tasks import ClientSpec

from tffpipe_tasks import digits

K = 3.0
OPTIONS = base.UpdateOptions(scale=K, alie_z=0.5)


def _update(seed=0):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=(3, 2)), tf.float32), tf.constant(rng.normal(size=(4,)), tf.float32)]


def _poisoned(name, update, seed=11, benign=None):
    return [t.numpy() for t in registry.get(name).poisoned_update(update, tf.constant(seed, tf.int64), OPTIONS, benign)]


def test_sign_flip_and_scale_multiply_the_update_by_minus_k_and_k():
    update = _update()
    for got, honest in zip(_poisoned("sign_flip", update), update):
        np.testing.assert_allclose(got, -K * honest.numpy(), rtol=1e-6)
    for got, honest in zip(_poisoned("scale", update), update):
        np.testing.assert_allclose(got, K * honest.numpy(), rtol=1e-6)


def test_gaussian_noise_has_the_honest_norm_and_depends_on_the_seed_only():
    update = _update()
    honest_norm = math.sqrt(sum(float(np.sum(t.numpy() ** 2)) for t in update))
    noise = _poisoned("gaussian", update, seed=11)
    assert math.sqrt(sum(float(np.sum(n**2)) for n in noise)) == pytest.approx(honest_norm, rel=1e-5)
    for a, b in zip(noise, _poisoned("gaussian", _update(seed=1), seed=11)):
        # Another update of another norm: the same direction, rescaled.
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(noise[0], _poisoned("gaussian", update, seed=12)[0])
    flat_noise = np.concatenate([n.ravel() for n in noise])
    flat_update = np.concatenate([t.numpy().ravel() for t in update])
    assert abs(np.dot(flat_noise, flat_update)) < 0.99 * honest_norm**2  # not the update itself


def test_alie_sends_the_mean_minus_z_standard_deviations():
    mean, std = _update(seed=2), [tf.abs(t) for t in _update(seed=3)]
    got = _poisoned("alie", _update(), benign=(mean, std))
    for g, m, s in zip(got, mean, std):
        np.testing.assert_allclose(g, m.numpy() - 0.5 * s.numpy(), rtol=1e-6)


@pytest.mark.parametrize("n, m", [(20, 4), (50, 12), (10, 2), (7, 1)])
def test_alie_z_is_the_papers_z_max(n, m):
    s = math.floor(n / 2 + 1) - m
    assert alie.z_max(n, m) == pytest.approx(stats.norm.ppf((n - s) / n), rel=1e-9)


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            dict(attack="sign_flip", algorithm="fedsgd"),
            "--attack=sign_flip changes the model delta a client sends, which only --algorithm=fedavg and "
            "fedprox clients send; --algorithm=fedsgd does not",
        ),
        (
            dict(attack="alie", algorithm="mime_lite"),
            "--attack=alie changes the model delta a client sends, which only --algorithm=fedavg and "
            "fedprox clients send; --algorithm=mime_lite does not",
        ),
        (
            dict(attack="label_flip", attack_scale=2.0),
            "--attack_scale applies to --attack=sign_flip|scale, not --attack=label_flip",
        ),
        (dict(attack="alie", attack_alie_z=-1.0), "--attack_alie_z must be positive, got -1"),
    ],
)
def test_update_attack_settings_are_checked_with_the_flags(flags, message):
    with pytest.raises(errors.ConfigError) as info:
        make_config(**flags)
    assert str(info.value) == message


# --- Inside a round ---------------------------------------------------------

TASK = digits.create_task(num_clients=12, eval_clients=2, alpha=1.0, seed=0)
A, B = list(TASK.train_data.client_ids)[:2]
SPEC = ClientSpec(num_epochs=1, batch_size=32)


def _cfg(attack, **flags):
    return loop.fit_to_task(
        make_config(
            attack=attack,
            rounds=2,
            clients_per_round=2,
            zeroing=False,
            client_weighting="uniform",
            server_learning_rate=1.0,
            **({"attack_scale": K} if attack in ("sign_flip", "scale") else {}),
            **flags,
        ),
        TASK,
    )


_PROCESSES = {}


def _process(attack):
    if attack not in _PROCESSES:
        process, _ = assembly.build_learning_process(TASK, _cfg(attack), list(TASK.train_data.client_ids))
        state = process.set_model_weights(process.initialize(), builder.initial_model_weights(TASK, 0))
        _PROCESSES[attack] = process, state
    return _PROCESSES[attack]


def _data(clients):
    """(client id, token) pairs -> the process's client data; token 0 is honest."""
    # A client's data is shuffled by its own seed, wherever it stands in the round.
    return [
        client_work.client_data(
            TASK.client_dataset(cid, SPEC, seed=sampling.client_seed(0, 1, int(cid.split("_")[1]))), token
        )
        for cid, token in clients
    ]


def _delta(process, state, clients):
    """The change of the global model in one round on `clients`, from `state`."""
    before = process.get_model_weights(state).trainable
    output = process.next(state, _data(clients))
    after = process.get_model_weights(output.state).trainable
    return [a - b for a, b in zip(after, before)], output.state


def test_sign_flip_changes_the_attackers_update_only():
    process, state = _process("sign_flip")
    honest_a, _ = _delta(process, state, [(A, 0)])
    honest_b, _ = _delta(process, state, [(B, 0)])
    mixed, _ = _delta(process, state, [(A, 0), (B, 99)])
    for got, a, b in zip(mixed, honest_a, honest_b):
        np.testing.assert_allclose(got, (a - K * b) / 2, rtol=1e-4, atol=1e-6)


def test_gaussian_replaces_the_attackers_update_by_noise_of_its_norm():
    process, state = _process("gaussian")
    honest, _ = _delta(process, state, [(B, 0)])
    # An honest client trains as it would under another attack's process.
    reference, _ = _delta(*_process("sign_flip"), [(B, 0)])
    for x, y in zip(honest, reference):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    attacked, _ = _delta(process, state, [(B, 5)])
    again, _ = _delta(process, state, [(B, 5)])
    norm = lambda ws: math.sqrt(sum(float(np.sum(w.astype(np.float64) ** 2)) for w in ws))  # noqa: E731
    assert norm(attacked) == pytest.approx(norm(honest), rel=1e-4)
    assert np.corrcoef(attacked[0].ravel(), honest[0].ravel())[0, 1] < 0.5
    for x, y in zip(attacked, again):  # seeded by the token: reproducible
        np.testing.assert_array_equal(x, y)


def test_alie_uses_last_rounds_honest_statistics():
    process, state = _process("alie")
    z = registry.get("alie").z(components.attack_context(_cfg("alie")))
    honest_a, _ = _delta(process, state, [(A, 0)])
    honest_b, _ = _delta(process, state, [(B, 0)])
    # Round 1: no statistics yet, so the attacker sends its honest update.
    first, _ = _delta(process, state, [(B, 7)])
    for got, b in zip(first, honest_b):
        np.testing.assert_allclose(got, b, rtol=1e-5, atol=1e-7)
    # A round of A and B leaves their honest updates' mean and std in the state.
    _, after = _delta(process, state, [(A, 0), (B, 0)])
    weights0 = process.get_model_weights(state)
    after = process.set_model_weights(after, weights0)  # back to the same model
    attacked, _ = _delta(process, after, [(A, 0), (B, 7)])
    for got, a, b in zip(attacked, honest_a, honest_b):
        # Updates are initial - trained weights (minus the deltas); the server
        # (SGD, rate 1) applies minus their mean.
        mean = -(a + b) / 2
        std = np.abs(a - b) / 2
        np.testing.assert_allclose(got, -(-a + mean - z * std) / 2, rtol=1e-3, atol=1e-6)


def test_the_in_process_runtime_runs_the_attacked_round_as_tff_does():
    process, state = _process("alie")
    ours = inprocess_process.InProcessProcess(process, ["/CPU:0"])
    try:
        clients = [(A, 0), (B, 3)]
        tff_state, our_state = state, state
        for _ in range(2):  # the second round reads the first's statistics
            tff_state = process.next(tff_state, _data(clients)).state
            our_state = ours.next(our_state, _data(clients)).state
        for x, y in zip(ours.get_model_weights(our_state).trainable, process.get_model_weights(tff_state).trainable):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    finally:
        ours.close()


@pytest.mark.slow  # 24 s in the default suite's last CI run; kept out of it for time
def test_an_update_attack_run_reports_its_attackers(tmp_path):
    cfg = make_config(
        digits_num_clients=12,
        digits_eval_clients=2,
        digits_alpha=1.0,
        client_epochs=1,
        client_batch_size=32,
        rounds=3,
        clients_per_round=6,
        eval_every=0,
        attack="sign_flip",
        attack_fraction=0.3,
        robust="trimmed_mean",
        robust_trim_fraction=0.2,
        root_dir=str(tmp_path),
        experiment_name="s",
        runtime="inprocess",
    )
    lines = []
    result = loop.run(cfg, TASK, print_fn=lines.append)
    assert (
        "attack: sign flipping: attackers send their update times -10; 3 of 10 training clients attack (30%, chosen by --seed)"
        in lines
    )
    assert result.rounds_done == 3
    assert all(math.isfinite(v) for v in result.final_eval.values())
    with open(os.path.join(tmp_path, "s", "results", "metrics.csv")) as f:
        header = f.readline()
    assert "attack/attackers_in_round" in header


@pytest.mark.slow
@pytest.mark.parametrize("attack, algorithm", [("scale", "fedavg"), ("gaussian", "fedprox"), ("alie", "fedprox")])
def test_three_rounds_of_digits_train_under_each_update_attack(tmp_path, attack, algorithm):
    cfg = make_config(
        digits_num_clients=12,
        digits_eval_clients=2,
        digits_alpha=1.0,
        client_epochs=1,
        client_batch_size=32,
        rounds=3,
        clients_per_round=6,
        eval_every=0,
        attack=attack,
        algorithm=algorithm,
        client_weighting="uniform",
        root_dir=str(tmp_path),
        experiment_name="u",
        runtime="cpp",
    )
    result = loop.run(cfg, TASK, print_fn=lambda line: None)
    assert result.rounds_done == 3
    assert all(math.isfinite(v) for v in result.final_eval.values())
