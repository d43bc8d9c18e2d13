"""The simulated clock: client times, deadlines, over-selection, dropouts."""

import shutil

import numpy as np
import pytest

from conftest import SMALL_DIGITS_FLAGS, make_config
from tffpipe import config
from tffpipe.learning import builder
from tffpipe.program import assembly
from tffpipe.program import clock
from tffpipe.program import loop
from tffpipe.program import sampling
from tffpipe.runtimes import registry as runtime_registry
from tffpipe.tasks import from_arrays


def test_a_clients_time_is_download_plus_training_plus_upload():
    profile = clock.Profile(speed=50.0, downlink=1000.0, uplink=250.0)
    assert profile.seconds(100, 2000, 500) == pytest.approx(2000 / 1000 + 100 / 50 + 500 / 250)


def test_the_deadline_cuts_late_clients_and_the_round_waits_for_it():
    seconds = {"a": 3.0, "b": 9.0, "c": 5.0, "d": 12.0}
    plan = clock.plan_round(["a", "b", "c", "d"], seconds, set(), needed=4, deadline_sec=10.0)
    assert plan.reporting == ["a", "b", "c"] and plan.late == ["d"] and plan.round_sec == 10.0
    # Everyone on time: the round ends with the last report.
    plan = clock.plan_round(["a", "b", "c"], seconds, set(), needed=3, deadline_sec=10.0)
    assert plan.reporting == ["a", "b", "c"] and plan.round_sec == 9.0


def test_over_selection_keeps_the_first_to_finish_in_sampled_order():
    seconds = {"a": 7.0, "b": 2.0, "c": 9.0, "d": 4.0, "e": 4.0}
    plan = clock.plan_round(["a", "b", "c", "d", "e"], seconds, {"b"}, needed=3, deadline_sec=0)
    # b dropped; d and e tie at 4 s (sampled order breaks it), then a at 7 s.
    assert plan.reporting == ["a", "d", "e"] and plan.dropped == ["b"] and plan.late == ["c"]
    assert plan.round_sec == 7.0
    assert plan.metrics() == {
        "sim/round_sec": 7.0,
        "clients/reported": 3.0,
        "clients/dropped": 1.0,
        "clients/late": 1.0,
    }
    assert clock.cohort(10, 1.3) == 13 and clock.cohort(10, 1.0) == 10 and clock.cohort(3, 1.5) == 5


def test_without_a_deadline_a_dropout_is_noticed_and_the_round_ends_with_the_last_report():
    plan = clock.plan_round(["a", "b", "c"], {"a": 1.0, "c": 4.0}, {"b"}, needed=3, deadline_sec=0)
    assert plan.reporting == ["a", "c"] and plan.round_sec == 4.0
    with_deadline = clock.plan_round(["a", "b", "c"], {"a": 1.0, "c": 4.0}, {"b"}, needed=3, deadline_sec=6)
    assert with_deadline.round_sec == 6.0  # the server cannot tell b failed: it waits


def test_profiles_are_seeded_draws_and_dropouts_have_the_asked_rate():
    settings = make_config(client_speed="lognormal:100,1.0", client_dropout=0.25).clock
    ids = [f"c{i}" for i in range(4000)]
    population = clock.Population(settings, 7, ids)
    speeds = np.array([population.profile(c).speed for c in ids])
    assert np.median(speeds) == pytest.approx(100, rel=0.1)
    assert np.log(speeds).std() == pytest.approx(1.0, rel=0.05)
    again = clock.Population(settings, 7, ids)
    assert [again.profile(c).speed for c in ids[:20]] == list(speeds[:20])
    other = clock.Population(settings, 8, ids)
    assert other.profile("c0").speed != speeds[0]
    rate = np.mean([population.drops_out(c, 3) for c in ids])
    assert rate == pytest.approx(0.25, abs=0.03)
    assert [population.drops_out(c, 3) for c in ids[:50]] == [again.drops_out(c, 3) for c in ids[:50]]


@pytest.mark.parametrize(
    "values, message",
    [
        (
            dict(client_speed="lognormal:-5,1"),
            "--client_speed speeds and bandwidths must be positive (and sigma >= 0), got 'lognormal:-5,1'",
        ),
        (
            dict(client_uplink="constant:0"),
            "--client_uplink speeds and bandwidths must be positive (and sigma >= 0), got 'constant:0'",
        ),
        (
            dict(client_downlink="gamma:1,2"),
            "--client_downlink must be constant:V, lognormal:MEDIAN,SIGMA or uniform:LOW,HIGH, got 'gamma:1,2'",
        ),
        (dict(client_speed="uniform:5"), "--client_speed uniform takes 2 number(s), not 1, got 'uniform:5'"),
        (dict(client_dropout=1.0), "--client_dropout must be in [0, 1), got 1"),
        (dict(client_dropout=-0.1), "--client_dropout must be in [0, 1), got -0.1"),
        (dict(round_deadline_sec=-1), "--round_deadline_sec must be at least 0, got -1"),
        (dict(over_selection=0.5), "--over_selection must be at least 1, got 0.5"),
        (
            dict(client_dropout=0.1, dp="fixed", dp_noise_multiplier=1.0, client_weighting="uniform"),
            "--dp=fixed with --client_dropout: the privacy accounting assumes a cohort sampled uniformly at "
            "random, but which clients report depends on their speed and availability",
        ),
    ],
)
def test_bad_clock_settings_are_one_line_errors(values, message):
    with pytest.raises(config.ConfigError) as info:
        make_config(**values)
    assert str(info.value) == message


def test_a_profiles_csv_must_cover_every_training_client(tmp_path):
    path = tmp_path / "devices.csv"
    path.write_text("client_id,speed,downlink,uplink\nc0,10,1e6,1e5\n")
    settings = make_config(client_profiles=str(path)).clock
    assert clock.Population(settings, 0, ["c0"]).profile("c0") == clock.Profile(10.0, 1e6, 1e5)
    with pytest.raises(clock.ClockError, match=r"has no row for 1 of the 2 training clients \(e.g. 'c1'\)"):
        clock.Population(settings, 0, ["c0", "c1"])
    path.write_text("client_id,speed,downlink\nc0,10,1e6\n")
    with pytest.raises(clock.ClockError, match="lacks column\\(s\\) uplink"):
        clock.Population(settings, 0, ["c0"])


@pytest.fixture(scope="module")
def small_task(small_digits):
    return small_digits


def _config(root, **values):
    return make_config(
        **{
            **SMALL_DIGITS_FLAGS,
            "clients_per_round": 4,
            "root_dir": str(root),
            "experiment_name": "c",
            "zeroing": False,
            "runtime": "cpp",
            **values,
        }
    )


def _weights_of_rounds(task, cfg, reporting_of):
    """The weights after rounds 1.. of a plain process fed `reporting_of(round)`'s clients."""
    ids = list(task.train_data.client_ids)
    runtime = runtime_registry.get("cpp")
    process, _ = assembly.build_learning_process(task, cfg, ids, runtime.loop_implementation())
    spec = loop.client_spec(cfg)
    state = process.set_model_weights(process.initialize(), builder.initial_model_weights(task, 0))
    for round_num in range(1, cfg.schedule.rounds + 1):
        sampled, reporting = reporting_of(round_num)
        datasets = [
            task.client_dataset(cid, spec, seed=sampling.client_seed(0, round_num, i))
            for i, cid in enumerate(sampled)
            if cid in reporting
        ]
        state = process.next(state, datasets).state
    return process.get_model_weights(state)


def test_without_dropouts_or_a_deadline_rounds_are_exactly_todays(small_task, tmp_path):
    cfg = _config(tmp_path)
    result = loop.run(cfg, small_task, print_fn=lambda line: None)
    ids = list(small_task.train_data.client_ids)

    def everyone(round_num):
        sampled = sampling.sample_clients(ids, 4, seed=0, round_num=round_num)
        return sampled, set(sampled)

    expected = _weights_of_rounds(small_task, cfg, everyone)
    for ours, theirs in zip(result.model_weights.trainable, expected.trainable):
        np.testing.assert_array_equal(ours, theirs)


def test_a_dropped_clients_update_never_reaches_the_model(small_task, tmp_path):
    cfg = _config(tmp_path, client_dropout=0.4)
    ids = list(small_task.train_data.client_ids)
    population = clock.Population(cfg.clock, 0, ids)
    plans = {}

    def reporting(round_num):
        sampled = sampling.sample_clients(ids, 4, seed=0, round_num=round_num)
        plans[round_num] = [c for c in sampled if population.drops_out(c, round_num)]
        return sampled, {c for c in sampled if not population.drops_out(c, round_num)}

    expected = _weights_of_rounds(small_task, cfg, reporting)
    assert sum(len(d) for d in plans.values()) >= 1, "pick a seed where some client drops"
    result = loop.run(cfg, small_task, print_fn=lambda line: None)
    for ours, theirs in zip(result.model_weights.trainable, expected.trainable):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    rows = _metrics(tmp_path / "c")
    assert [int(float(r["clients/dropped"])) for r in rows] == [len(plans[r]) for r in (1, 2, 3)]


def test_a_slow_client_with_a_poisoned_update_misses_the_deadline(tmp_path):
    # Client 0's targets are 1,000 times the others': its update would move the model far.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -1.0, 0.5], np.float32)).reshape(-1, 1)
    task = from_arrays("linear", x, y, _linear, loss="mse", num_clients=6, partition="iid", seed=0)
    first = task.train_data.client_ids[0]
    poisoned = from_arrays(
        "linear", x, _poison(task, first, y), _linear, loss="mse", num_clients=6, partition="iid", seed=0
    )
    profiles = tmp_path / "devices.csv"
    profiles.write_text(
        "client_id,speed,downlink,uplink\n"
        + "".join(f"{c},{1 if c == first else 1000},1e9,1e9\n" for c in poisoned.train_data.client_ids)
    )
    values = dict(rounds=1, clients_per_round=5, client_profiles=str(profiles), round_deadline_sec=5.0)
    run = loop.run(_config(tmp_path, **values), poisoned, print_fn=lambda line: None)
    honest = loop.run(_config(tmp_path / "honest", **values), task, print_fn=lambda line: None)
    row = _metrics(tmp_path / "c")[0]
    assert float(row["clients/late"]) == 1 and float(row["clients/reported"]) == 4
    assert float(row["sim/round_sec"]) == 5.0
    # Without client 0, both tasks hold the same data: the same model.
    for ours, theirs in zip(run.model_weights.trainable, honest.model_weights.trainable):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def _linear():
    import tensorflow as tf

    return tf.keras.Sequential([tf.keras.layers.Input((3,)), tf.keras.layers.Dense(1)])


def _poison(task, client_id, y):
    rows = [float(e["y"].numpy()[0]) for e in task.train_data.create_tf_dataset_for_client(client_id)]
    poisoned = y.copy()
    for value in rows:
        poisoned[np.isclose(y[:, 0], value)] *= 1000.0
    return poisoned


def _metrics(run_dir):
    import csv

    with open(run_dir / "results" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # 16 s; resumes are also checked by tests/test_resume.py
def test_a_resumed_run_replays_the_clock_to_the_same_elapsed_time(small_task, tmp_path):
    values = dict(client_speed="lognormal:50,1.0", client_uplink="uniform:1e4,1e5", client_dropout=0.3)
    loop.run(_config(tmp_path / "a", rounds=2, **values), small_task, print_fn=lambda line: None)
    loop.run(_config(tmp_path / "a", rounds=4, **values), small_task, print_fn=lambda line: None)
    loop.run(_config(tmp_path / "b", rounds=4, **values), small_task, print_fn=lambda line: None)
    resumed, straight = _metrics(tmp_path / "a" / "c"), _metrics(tmp_path / "b" / "c")
    assert [r["sim/elapsed_sec"] for r in resumed] == [r["sim/elapsed_sec"] for r in straight]
    elapsed = [float(r["sim/elapsed_sec"]) for r in straight]
    assert elapsed[-1] == pytest.approx(sum(float(r["sim/round_sec"]) for r in straight))
    assert all(b > a for a, b in zip(elapsed, elapsed[1:]))
    # With both records of rounds 1-2 lost, the clock is replayed from round 1.
    loop.run(_config(tmp_path / "d", rounds=2, **values), small_task, print_fn=lambda line: None)
    shutil.rmtree(tmp_path / "d" / "c" / "logdir")
    (tmp_path / "d" / "c" / "results" / "metrics.csv").unlink()
    loop.run(_config(tmp_path / "d", rounds=4, **values), small_task, print_fn=lambda line: None)
    replayed = _metrics(tmp_path / "d" / "c")
    assert [r["sim/elapsed_sec"] for r in replayed] == [r["sim/elapsed_sec"] for r in straight[2:]]


def test_a_clients_examples_per_round_are_counted_as_training_sees_them(small_task):
    client = small_task.train_data.client_ids[0]
    examples = len(list(small_task.train_data.create_tf_dataset_for_client(client)))
    assert small_task.client_examples(client) == examples
    assert small_task.client_examples(client, 5) == min(5, examples)
