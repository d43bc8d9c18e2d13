"""`python -m tffpipe.sweep`: plans, one-line refusals, summaries against numpy, plots, HParams, and real trials."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas
import pytest

from tffpipe import errors
from tffpipe.experiments import grid
from tffpipe.experiments import plots
from tffpipe.experiments import runner
from tffpipe.experiments import summary

from conftest import REPO_ROOT, user_env


def _sweep(*args, timeout=900, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "tffpipe.sweep", *args],
        cwd=REPO_ROOT,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


# --- Plans -----------------------------------------------------------------------------


def test_a_grid_times_seeds_becomes_checked_trials():
    plan = grid.make_plan(
        {"client_learning_rate": ["0.02", "0.05"], "algorithm": ["fedavg", "fedprox"]}, 3, ["--rounds=4", "--seed=10"]
    )
    assert len(plan.trials) == 12 and plan.seeds == [10, 11, 12]
    assert plan.swept == ["client_learning_rate", "algorithm", "seed"]
    first, last = plan.trials[0], plan.trials[-1]
    assert first.name == "client_learning_rate=0.02-algorithm=fedavg-seed=10"
    assert last.values == {"client_learning_rate": "0.05", "algorithm": "fedprox", "seed": "12"}
    assert last.flags == (
        "--rounds=4",
        "--seed=10",
        "--client_learning_rate=0.05",
        "--algorithm=fedprox",
        "--seed=12",
        "--hparams=client_learning_rate,algorithm,seed",
    )
    assert first.rounds == 4
    assert len({t.name for t in plan.trials}) == 12
    # Where trials write is the sweep's: a common --root_dir or --experiment_name is not passed on.
    assert grid.make_plan({}, 2, ["--root_dir=/x", "--experiment_name=y"]).common_flags == ()
    # The default folder name depends on what is swept and the common flags, not on values or seeds,
    # so adding a value or a seed reruns only the new trials.
    name = plan.default_name()
    assert re.fullmatch(r"sweep-client_learning_rate,algorithm,seed-[0-9a-f]{8}", name)
    more = grid.make_plan(
        {"client_learning_rate": ["0.02", "0.05", "0.1"], "algorithm": ["fedavg"]}, 2, ["--rounds=4", "--seed=10"]
    )
    assert more.default_name() == name
    assert grid.make_plan(plan.axes, 3, ["--rounds=5", "--seed=10"]).default_name() != name


@pytest.mark.parametrize(
    "axes, seeds, common, message",
    [
        ({"nope": ["1"]}, None, [], "--grid nope: Unknown command line flag 'nope'"),
        (
            {"client_learning_rate": ["0.1", "-1"]},
            None,
            [],
            "trial client_learning_rate=-1: --client_learning_rate must be positive, got -1",
        ),
        (
            {"client_learning_rate": ["0.1"]},
            None,
            ["--roundz=3"],
            "the common flags: Unknown command line flag 'roundz'",
        ),
        ({"seed": ["1", "2"]}, 2, [], "--grid seed and --seeds both choose seeds; give one"),
        (
            {"root_dir": ["/a", "/b"]},
            None,
            [],
            "--grid root_dir: the sweep decides where trials write; give --root_dir or --sweep_name",
        ),
        ({"rounds": ["2", "2"]}, None, [], "--grid rounds: a value is listed twice"),
        ({}, 0, [], "--seeds must be at least 1, got 0"),
    ],
)
def test_a_bad_plan_is_refused_in_one_line_naming_its_part(axes, seeds, common, message):
    with pytest.raises(errors.UserError) as info:
        grid.make_plan(axes, seeds, common)
    assert str(info.value).startswith(message), str(info.value)


def test_grid_arguments_and_sweep_files(tmp_path):
    assert grid.parse_grid("client_learning_rate=0.02, 0.05") == ("client_learning_rate", ["0.02", "0.05"])
    assert grid.parse_grid("--dp=none,fixed") == ("dp", ["none", "fixed"])
    for bad in ("client_learning_rate", "=1", "rounds=1,,2"):
        with pytest.raises(errors.ConfigError, match="expected NAME=VALUE"):
            grid.parse_grid(bad)
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "grid:\n  client_speed: ['lognormal:50,1.0', 'constant:1']\n  secure_aggregation: [true, false]\n"
        "seeds: 2\nflags:\n  rounds: 3\n  local_layers: [output]\n"
    )
    axes, seeds, common = grid.load_sweep_file(str(path))
    assert axes == {"client_speed": ["lognormal:50,1.0", "constant:1"], "secure_aggregation": ["true", "false"]}
    assert seeds == 2 and common == ["--rounds=3", "--local_layers=output"]
    for text, message in [
        ("grid: [1, 2]\n", "grid and flags must map setting names to values"),
        ("grids: {}\n", "unknown key 'grids'"),
        ("seeds: two\n", "seeds must be a whole number"),
        ("grid: {a: [\n", "not YAML"),
    ]:
        path.write_text(text)
        with pytest.raises(errors.ConfigError, match=re.escape(message)):
            grid.load_sweep_file(str(path))
    with pytest.raises(errors.ConfigError, match="No such file"):
        grid.load_sweep_file(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--grid", "client_learning_rate=0.1,-2"],
            "error: trial client_learning_rate=-2: --client_learning_rate must be positive, got -2",
        ),
        (["--grid", "client_learning_rate"], "error: --grid 'client_learning_rate': expected NAME=VALUE[,VALUE...]"),
        (["--grid", "rounds=1", "--grid", "rounds=2"], "error: --grid rounds is given twice"),
        (["--seeds=x"], "error: argument --seeds: invalid int value: 'x'"),
        (["--parallel=0"], "error: --parallel must be at least 1, got 0"),
        (["stray"], "error: unexpected argument 'stray'; flags are --name=value"),
    ],
)
def test_the_command_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, args, message):
    done = _sweep(*args, f"--root_dir={tmp_path}", timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert os.listdir(tmp_path) == []


# --- Summaries from run folders ---------------------------------------------------------------


def _fake_run(folder, rounds, accuracy, loss, sim=None, seed=0):
    """A run folder as the launcher writes it: config.json, metrics.csv, a final checkpoint and an export."""
    os.makedirs(os.path.join(folder, "results"))
    os.makedirs(os.path.join(folder, "checkpoints", f"program_state_{rounds}"))
    os.makedirs(os.path.join(folder, "export"))
    open(os.path.join(folder, "export", "saved_model.pb"), "w").close()
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(
            {
                "settings": {
                    "schedule": {"seed": seed},
                    "clock": {"client_speed": "constant:1" if sim is not None else ""},
                }
            },
            f,
        )
    frame = pandas.DataFrame(
        {
            "round": range(1, rounds + 1),
            "train/loss": loss,
            "eval/accuracy": accuracy,
            "eval/loss": loss,
            "eval/num_examples": [100] * rounds,
        }
    )
    if sim is not None:
        frame["sim/elapsed_sec"] = sim
    frame.to_csv(os.path.join(folder, "results", "metrics.csv"), index=False)


def test_the_summary_is_mean_and_sample_std_over_seeds(tmp_path):
    plan = grid.make_plan({"client_learning_rate": ["0.05", "0.1"]}, 3, ["--rounds=3"])
    rng = np.random.default_rng(0)
    accuracy, loss = rng.uniform(size=(6, 3)), rng.uniform(1, 2, size=(6, 3))
    accuracy[1, 2] = np.nan  # round 3 not evaluated: its final value is round 2's
    for i, trial in enumerate(plan.trials[:5]):  # the last seed of 0.1 has not finished
        _fake_run(runner.run_dir(str(tmp_path), trial), 3, accuracy[i], loss[i], sim=np.cumsum(loss[i]))
    finished = [t for t in plan.trials if runner.is_finished(runner.run_dir(str(tmp_path), t), t.rounds)]
    assert len(finished) == 5
    from tffpipe import results

    runs = {t.name: results.load_run(runner.run_dir(str(tmp_path), t)) for t in finished}
    table = summary.summarize(plan, runs)
    assert list(table["client_learning_rate"]) == ["0.05", "0.1"]
    assert list(table["seeds"]) == [3, 2] and list(table["seeds_planned"]) == [3, 3]
    final_accuracy = [accuracy[0, 2], accuracy[1, 1], accuracy[2, 2]]
    np.testing.assert_allclose(table["eval/accuracy_final_mean"][0], np.mean(final_accuracy), rtol=1e-12)
    np.testing.assert_allclose(table["eval/accuracy_final_std"][0], np.std(final_accuracy, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(table["eval/accuracy_best_mean"][1], np.mean(np.nanmax(accuracy[3:5], axis=1)))
    np.testing.assert_allclose(table["eval/loss_best_mean"][1], np.mean(loss[3:5].min(axis=1)))  # lower is better
    np.testing.assert_allclose(table["eval/loss_best_std"][1], np.std(loss[3:5].min(axis=1), ddof=1))
    assert "eval/num_examples_final_mean" not in table
    text = summary.table_text(table, ["client_learning_rate"]).splitlines()
    assert text[0].split() == [
        "client_learning_rate",
        "seeds",
        "eval/accuracy",
        "final",
        "eval/accuracy",
        "best",
        "eval/loss",
        "final",
        "eval/loss",
        "best",
    ]
    assert text[1].split()[:5] == [
        "0.05",
        "3/3",
        f"{np.mean(final_accuracy):.4f}",
        "±",
        f"{np.std(final_accuracy, ddof=1):.4f}",
    ]
    summary.write_csv(table, str(tmp_path / "summary.csv"))
    pandas.testing.assert_frame_equal(
        pandas.read_csv(tmp_path / "summary.csv", dtype={"client_learning_rate": str}),
        table,
        check_exact=False,
        rtol=1e-12,
    )

    written = plots.write_plots(plan, runs, str(tmp_path / "plots"), against_sim_time=True)
    assert sorted(os.path.basename(p) for p in written) == [
        "eval_accuracy.png",
        "eval_accuracy_vs_sim_sec.png",
        "eval_loss.png",
        "eval_loss_vs_sim_sec.png",
    ]
    for path in written:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path / "plots")) == sorted(os.path.basename(p) for p in written)  # no temporaries
    curve = plots._mean_curve([runs[t.name].metrics for t in plan.trials[3:5]], "eval/loss", plots.SIM_SECONDS)
    np.testing.assert_allclose(curve["x"], np.cumsum(loss[3:5], axis=1).mean(axis=0))
    np.testing.assert_allclose(curve["std"], np.std(loss[3:5], axis=0, ddof=1))


def test_a_folder_of_runs_holds_one_hparams_configuration_task_algorithm_rounds_first(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import metadata

    from tffpipe.program import hparams_config

    # As a sweep's launchers would add theirs, then the sweep its swept settings.
    hparams_config.add(str(tmp_path), hparams=["seed", "task", "algorithm", "rounds", "client_learning_rate"])
    hparams_config.add(str(tmp_path), metrics=["eval/loss"])
    hparams_config.add(
        str(tmp_path),
        hparams=["task", "algorithm", "rounds", "seed", "dp", "client_learning_rate"],
        metrics=["eval/loss", "eval/accuracy"],
    )
    hparams_config.add(str(tmp_path), hparams=["client_learning_rate", "seed"], metrics=["eval/accuracy"])
    events = [p for p in os.listdir(tmp_path) if "tfevents" in p]
    assert len(events) == 1  # rewritten as it grew: the older configurations go
    accumulator = event_accumulator.EventAccumulator(str(tmp_path))
    accumulator.Reload()
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(content)
    assert [h.name for h in experiment.hparam_infos] == [
        "task",
        "algorithm",
        "rounds",
        "seed",
        "client_learning_rate",
        "dp",
    ]  # task, algorithm, rounds first; then as they came
    assert [m.name.tag for m in experiment.metric_infos] == ["eval/accuracy", "eval/loss"]
    assert hparams_config.read(str(tmp_path)) == {
        "hparams": [h.name for h in experiment.hparam_infos],
        "metrics": ["eval/accuracy", "eval/loss"],
    }


def test_finished_trials_are_skipped_without_starting_a_process(tmp_path, monkeypatch):
    plan = grid.make_plan({"client_learning_rate": ["0.05", "0.1"]}, None, ["--rounds=2"])
    for trial in plan.trials:
        _fake_run(runner.run_dir(str(tmp_path), trial), 2, [0.1, 0.2], [2.0, 1.0])
    monkeypatch.setattr(runner, "_start", lambda *a: pytest.fail("a finished trial was started"))
    lines = []
    outcomes = runner.run_trials(plan, str(tmp_path), 2, lines.append)
    assert [o.status for o in outcomes] == ["skipped", "skipped"]
    assert lines == [
        "[1/2] client_learning_rate=0.05: finished earlier",
        "[2/2] client_learning_rate=0.1: finished earlier",
    ]
    # One round short of the plan: not finished (it resumes).
    assert not runner.is_finished(runner.run_dir(str(tmp_path), plan.trials[0]), 3)


# --- Real trials ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_runs_its_trials_and_reruns_only_what_is_missing(tmp_path):
    args = [
        "--grid",
        "client_learning_rate=0.05,0.2",
        "--seeds=2",
        "--rounds=2",
        "--eval_every=1",
        "--clients_per_round=5",
        "--parallel=2",
        f"--root_dir={tmp_path}",
    ]
    done = _sweep(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep_dir = re.search(r"outputs in (\S+)", done.stdout).group(1)
    trials = sorted(p.name for p in os.scandir(os.path.join(sweep_dir, "trials")) if p.is_dir())
    assert trials == [
        "client_learning_rate=0.05-seed=0",
        "client_learning_rate=0.05-seed=1",
        "client_learning_rate=0.2-seed=0",
        "client_learning_rate=0.2-seed=1",
    ]
    from tffpipe import results

    runs = results.load_runs(os.path.join(sweep_dir, "trials", "*"))
    finals = runs[runs["round"] == 2].groupby("client_learning_rate")["eval/accuracy"]
    table = pandas.read_csv(os.path.join(sweep_dir, "summary.csv"))
    np.testing.assert_allclose(table["eval/accuracy_final_mean"], finals.mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(table["eval/accuracy_final_std"], finals.std(ddof=1).to_numpy(), rtol=1e-12)
    assert sorted(runs["seed"].unique()) == [0, 1]
    assert sorted(os.listdir(os.path.join(sweep_dir, "plots"))) == ["eval_accuracy.png", "eval_loss.png"]
    assert "client_learning_rate  seeds  eval/accuracy final" in done.stdout
    # A rerun with one more value starts only the new trials.
    more = _sweep(*[a.replace("0.05,0.2", "0.05,0.2,0.1") for a in args])
    assert more.returncode == 0, more.stderr[-3000:]
    assert more.stdout.count("finished earlier") == 4 and more.stdout.count(": started") == 2
    assert re.search(r"outputs in (\S+)", more.stdout).group(1) == sweep_dir
    assert len(pandas.read_csv(os.path.join(sweep_dir, "summary.csv"))) == 3


@pytest.mark.slow
def test_ctrl_c_stops_every_trial_and_a_rerun_resumes_them(tmp_path):
    args = [
        "--grid",
        "client_learning_rate=0.05,0.2",
        "--rounds=60",
        "--eval_every=0",
        "--checkpoint_every=1",
        "--parallel=2",
        f"--root_dir={tmp_path}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tffpipe.sweep", *args],
        cwd=REPO_ROOT,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sweep_dir = re.search(r"outputs in (\S+)", proc.stdout.readline()).group(1)
        checkpoints = [
            os.path.join(sweep_dir, "trials", f"client_learning_rate={v}", "checkpoints") for v in ("0.05", "0.2")
        ]
        deadline = time.monotonic() + 300
        while not all(runner.rounds_done(os.path.dirname(c)) >= 2 for c in checkpoints):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.5)
        trial_pids = _children(proc.pid)
        assert len(trial_pids) == 2
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == (
        "error: interrupted: 2 running trial(s) stopped at their last checkpoint; rerun the same command to resume them"
    )
    assert "Traceback" not in err
    assert not any(os.path.exists(f"/proc/{pid}") for pid in trial_pids)
    stopped_at = [runner.rounds_done(os.path.dirname(c)) for c in checkpoints]
    assert all(r >= 2 for r in stopped_at)
    resumed = _sweep(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for index, rounds in enumerate(stopped_at):
        assert (
            f"[{index + 1}/2] client_learning_rate={('0.05', '0.2')[index]}: resumed from round {rounds}"
            in resumed.stdout
        )
    assert all(runner.rounds_done(os.path.dirname(c)) == 60 for c in checkpoints)


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


# --- Search: Optuna proposes, ASHA stops, Ray Tune runs ---------------------------------------


def test_search_settings_are_checked_before_anything_starts():
    from tffpipe.experiments import search

    assert search.parse_distribution(["loguniform:0.001:0.3"]) == ("loguniform", 0.001, 0.3)
    assert search.parse_distribution(["int:1:5"]) == ("int", 1.0, 5.0)
    assert search.parse_distribution(["0.1", "0.2"]) is None and search.parse_distribution(["fedavg"]) is None
    found = search.make_search(
        {
            "client_learning_rate": ["loguniform:0.001:0.3"],
            "algorithm": ["fedavg", "fedprox"],
            "client_epochs": ["int:1:3"],
        },
        ["--rounds=18", "--seed=4"],
        5,
        "eval/loss",
        "min",
        "asha",
        None,
    )
    assert found.axes == {
        "client_learning_rate": ("loguniform", 0.001, 0.3),
        "algorithm": ["fedavg", "fedprox"],
        "client_epochs": ("int", 1.0, 3.0),
    }
    assert (found.rounds, found.grace_rounds, found.seed, found.trials) == (18, 2, 4, 5)
    values = {"client_learning_rate": 0.0123456789, "algorithm": "fedprox", "client_epochs": 2}
    assert search.trial_name("9114ffb9", values) == (
        "trial_9114ffb9-client_learning_rate=0.01235-algorithm=fedprox-client_epochs=2"
    )
    assert search.trial_flags(found, values)[2:] == [
        "--client_learning_rate=0.0123456789",
        "--algorithm=fedprox",
        "--client_epochs=2",
        "--hparams=client_learning_rate,algorithm,client_epochs",
    ]
    assert re.fullmatch(r"search-client_learning_rate,algorithm,client_epochs-[0-9a-f]{8}", search.default_name(found))
    from ray import tune

    space = search.tune_space(found)
    assert isinstance(space["client_learning_rate"], tune.search.sample.Float)
    assert space["client_learning_rate"].lower == 0.001 and space["client_learning_rate"].upper == 0.3
    assert space["algorithm"].categories == ["fedavg", "fedprox"]
    assert (space["client_epochs"].lower, space["client_epochs"].upper) == (1, 4)  # Tune's upper end is exclusive


@pytest.mark.parametrize(
    "axes, extra, message",
    [
        ({}, {}, "--search=optuna needs at least one --grid setting to search"),
        (
            {"client_learning_rate": ["loguniform:0:1"]},
            {},
            "--grid client_learning_rate: 'loguniform:0:1': needs LOW < HIGH, both above 0",
        ),
        (
            {"client_learning_rate": ["uniform:0.1"]},
            {},
            "--grid client_learning_rate: 'uniform:0.1': expected uniform:LOW:HIGH",
        ),
        (
            {"client_learning_rate": ["uniform:-1:0.5"]},
            {},
            "--grid client_learning_rate=-1.0: --client_learning_rate must be positive",
        ),
        ({"client_epochs": ["int:1:2.5"]}, {}, "--grid client_epochs: 'int:1:2.5': needs LOW < HIGH, whole numbers"),
        ({"algorithm": ["fedavg", "nope"]}, {}, "--grid algorithm=nope: --algorithm must be one of: fedavg, fedprox"),
        ({"client_learning_rate": ["0.1"]}, {"trials": 0}, "--trials must be at least 1, got 0"),
        ({"client_learning_rate": ["0.1"]}, {"metric": "accuracy"}, "--metric=accuracy: expected a metrics column"),
        (
            {"client_learning_rate": ["0.1"]},
            {"grace": 99},
            "--grace_rounds must be between 1 and --rounds (50), got 99",
        ),
    ],
)
def test_a_bad_search_is_one_line(axes, extra, message):
    from tffpipe.experiments import search

    with pytest.raises(errors.UserError) as info:
        search.make_search(
            axes, [], extra.get("trials", 3), extra.get("metric", "eval/accuracy"), "max", "asha", extra.get("grace")
        )
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--search=optuna", "--grid", "client_learning_rate=loguniform:0.01:0.1", "--seeds=2"],
            "error: --seeds applies to grid sweeps; a search samples settings with one seed",
        ),
        (
            ["--grid", "client_learning_rate=0.1", "--ray_address=127.0.0.1:9"],
            "error: --ray_address=127.0.0.1:9: cannot reach a Ray cluster there",
        ),
        (
            ["--search=optuna", "--grid", "client_learning_rate=0.1", "--mode=up"],
            "error: argument --mode: invalid choice: 'up' (choose from 'max', 'min')",
        ),
    ],
)
def test_the_command_refuses_a_bad_search_in_one_line(tmp_path, args, message):
    done = _sweep(*args, f"--root_dir={tmp_path}", timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), lines
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_search_samples_trials_stops_poor_ones_early_and_resumes_as_finished(tmp_path):
    args = [
        "--search=optuna",
        "--trials=6",
        "--grid",
        "client_learning_rate=loguniform:0.001:0.5",
        "--rounds=9",
        "--eval_every=1",
        "--grace_rounds=1",
        "--parallel=2",
        f"--root_dir={tmp_path}",
    ]
    done = _sweep(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""  # Ray's and Tune's own messages go to logs/ray.log
    sweep_dir = re.search(r"outputs in (\S+)", done.stdout).group(1)
    table = pandas.read_csv(os.path.join(sweep_dir, "summary.csv"))
    assert len(table) == 6 and set(table["status"]) == {"finished", "stopped early"}
    assert list(table["eval/accuracy_best_mean"]) == sorted(table["eval/accuracy_best_mean"], reverse=True)
    from tffpipe import results

    for _, row in table.iterrows():
        run = results.load_run(os.path.join(sweep_dir, "trials", row["trial"]))
        # Each trial is an ordinary run with its sampled rate; the summary holds what its metrics.csv holds.
        assert run.config["client_learning_rate"] == pytest.approx(float(row["client_learning_rate"]), rel=1e-3)
        assert 0.001 <= run.config["client_learning_rate"] <= 0.5
        evaluated = run.metrics["eval/accuracy"].dropna()
        assert row["eval/accuracy_best_mean"] == pytest.approx(evaluated.max())
        assert (row["rounds"] == 9) == (row["status"] == "finished")
        assert int(run.metrics["round"].max()) >= row["rounds"]
    assert (table["status"] == "stopped early").sum() >= 1
    # The same command restores the finished experiment: nothing runs again.
    again = _sweep(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming the Tune experiment" in again.stdout and ": started" not in again.stdout
    pandas.testing.assert_frame_equal(pandas.read_csv(os.path.join(sweep_dir, "summary.csv")), table)


@pytest.mark.slow
def test_a_search_and_a_grid_run_on_a_token_authenticated_cluster_they_join(tmp_path):
    import secrets
    import tempfile

    from tffpipe.runtimes import ray_cluster
    from tffpipe.runtimes import ray_guard

    token = secrets.token_hex(32)
    env = dict(
        user_env(),
        **ray_cluster.QUIET_ENVIRONMENT,
        **ray_cluster.PRIVATE_ENVIRONMENT,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
    )
    port = ray_cluster._free_loopback_port()
    temp_dir = tempfile.mkdtemp(prefix="tffray-", dir="/tmp")
    guard = ray_cluster.start_guarded_head(port, 2, temp_dir, env)
    try:
        assert guard.stdout.readline().startswith(ray_guard.READY)
        args = [
            "--search=optuna",
            "--trials=2",
            "--grid",
            "client_learning_rate=0.05,0.1",
            "--rounds=2",
            "--eval_every=1",
            "--early_stopping=none",
            f"--ray_address=127.0.0.1:{port}",
            f"--root_dir={tmp_path}",
        ]
        done = subprocess.run(
            [sys.executable, "-m", "tffpipe.sweep", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "starting a private cluster" not in done.stdout and done.stdout.count(": finished") == 2
        table = pandas.read_csv(os.path.join(re.search(r"outputs in (\S+)", done.stdout).group(1), "summary.csv"))
        assert sorted(table["status"]) == ["finished", "finished"]
        # A grid sweep on the same cluster: its trials as Tune trials, the summary pooled over seeds.
        grid_args = [
            "--grid",
            "client_learning_rate=0.05,0.1",
            "--seeds=2",
            "--rounds=2",
            "--eval_every=1",
            f"--ray_address=127.0.0.1:{port}",
            f"--root_dir={tmp_path}",
        ]
        swept = subprocess.run(
            [sys.executable, "-m", "tffpipe.sweep", *grid_args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert swept.returncode == 0, swept.stderr[-3000:]
        assert swept.stdout.count(": started") == 4 and swept.stdout.count(": finished") == 4
        sweep_dir = re.search(r"outputs in (\S+)", swept.stdout).group(1)
        from tffpipe import results

        runs = results.load_runs(os.path.join(sweep_dir, "trials", "*"))
        finals = runs[runs["round"] == 2].groupby("client_learning_rate")["eval/accuracy"]
        pooled = pandas.read_csv(os.path.join(sweep_dir, "summary.csv"))
        assert list(pooled["seeds"]) == [2, 2]
        np.testing.assert_allclose(pooled["eval/accuracy_final_mean"], finals.mean().to_numpy(), rtol=1e-12)
        again = subprocess.run(
            [sys.executable, "-m", "tffpipe.sweep", *grid_args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert again.returncode == 0 and "resuming the Tune experiment" in again.stdout
        assert ": started" not in again.stdout
        # Without the token the cluster is not joined.
        refused = subprocess.run(
            [sys.executable, "-m", "tffpipe.sweep", *args],
            cwd=REPO_ROOT,
            env={k: v for k, v in env.items() if not k.startswith("RAY_AUTH")},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(
            f"error: --ray_address=127.0.0.1:{port}: the Ray cluster requires token authentication"
        )
    finally:
        guard.stdin.close()
        guard.wait(timeout=60)
