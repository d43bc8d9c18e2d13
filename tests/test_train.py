"""End-to-end tests of `python -m tffpipe.train`, run as a user runs it."""

import csv
import functools
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import flags
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tffpipe
from tffpipe import api
from tffpipe import cli
from tffpipe import errors
from tffpipe.tasks import listing
from tffpipe.tasks import public_data

from conftest import REPO_ROOT, documentation_pages, run_train, scalar_steps, user_env, worker_processes

SIX_ROUNDS = ["--task=digits", "--rounds=6", "--experiment_name=e"]


def _rows(run_dir, name="metrics.csv"):
    with open(os.path.join(run_dir, "results", name)) as f:
        return list(csv.DictReader(f))


def _histogram_steps(logdir, tag):
    steps = []
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag and value.metadata.plugin_data.plugin_name == "histograms":
                    steps.append(event.step)
    return steps


def _export_weights(run_dir):
    return tf.keras.models.load_model(os.path.join(run_dir, "export")).get_weights()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The issue's check command: 6 rounds, a checkpoint every round."""
    root = tmp_path_factory.mktemp("reference")
    flagfile = root / "run.flags"
    flagfile.write_text("--checkpoint_every=1\n--eval_every=3\n")
    result = run_train([*SIX_ROUNDS, f"--root_dir={root}", f"--flagfile={flagfile}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "e", result


def test_six_rounds_write_every_output(reference_run):
    run_dir, result = reference_run
    rows = _rows(run_dir)
    assert [row["round"] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    for row in rows:
        assert float(row["round_time_sec"]) > 0
        assert float(row["examples_per_sec"]) > 0
        assert np.isfinite(float(row["train/loss"]))
        assert 0 <= float(row["train/accuracy"]) <= 1
    # --eval_every=3 from the flagfile: held-out metrics on rounds 3 and 6.
    assert [row["round"] for row in rows if row["eval/accuracy"]] == ["3", "6"]

    steps = scalar_steps(run_dir / "logdir")
    for tag in ("train/loss", "train/accuracy", "round_time_sec", "examples_per_sec"):
        assert sorted(steps[tag]) == [1, 2, 3, 4, 5, 6], tag
    assert sorted(steps["eval/accuracy"]) == [3, 6]

    config = json.loads((run_dir / "config.json").read_text())
    assert config["settings"]["schedule"]["rounds"] == 6
    assert config["settings"]["output"]["checkpoint_every"] == 1
    assert config["settings"]["task"]["options"] == {
        "alpha": 0.5,
        "eval_clients": 10,
        "num_clients": 50,
        "feature_skew": "none",
        "feature_skew_strength": 0.5,
    }
    assert sorted(os.listdir(run_dir / "checkpoints")) == [
        "fingerprint.json",
        "program_state_4",
        "program_state_5",
        "program_state_6",
    ]

    lines = [line for line in result.stdout.splitlines() if line.startswith("round ")]
    assert [line.split()[1] for line in lines] == [f"{r}/6" for r in range(1, 7)]
    assert all(" loss " in line and " accuracy " in line and " ETA " in line for line in lines)
    assert "done: 6 rounds; held-out eval/accuracy" in result.stdout
    # Each evaluation client is measured alone as well: one row per client and
    # evaluation round, the distribution in the CSV, histograms in TensorBoard.
    clients = _rows(run_dir, "clients.csv")
    assert sorted({(r["round"], r["client_id"]) for r in clients}) == sorted(
        (r["round"], r["client_id"]) for r in clients
    )
    assert [r["round"] for r in clients] == ["3"] * 10 + ["6"] * 10
    final = [float(r["accuracy"]) for r in clients if r["round"] == "6"]
    row6 = rows[-1]
    assert float(row6["eval_clients/accuracy_p10"]) == pytest.approx(np.percentile(final, 10), abs=1e-12)
    assert float(row6["eval_clients/accuracy_min"]) == pytest.approx(min(final), abs=1e-12)
    examples = [int(r["num_examples"]) for r in clients if r["round"] == "6"]
    assert sum(examples) == int(float(row6["eval/num_examples"]))
    assert sorted(_histogram_steps(run_dir / "logdir", "eval_clients/accuracy")) == [3, 6]
    last = result.stdout.strip().splitlines()[-1]
    worst = min(clients[-10:], key=lambda r: (float(r["accuracy"]), r["client_id"]))
    assert last.startswith("worst-served decile by accuracy (1 of 10 evaluation clients; mean ")
    assert last.endswith(f"{worst['client_id']} {float(worst['accuracy']):.4f}")
    # The default runtime is auto, which chose the in-process runtime and says why.
    assert "runtime: inprocess (--runtime=auto: the round compiles to TFF's MapReduceForm" in result.stdout


def test_export_loads_and_predicts_without_tffpipe(reference_run):
    run_dir, _ = reference_run
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"m = tf.keras.models.load_model({str(run_dir / 'export')!r})\n"
        "p = m.predict(np.zeros((3, 8, 8, 1), np.float32), verbose=0)\n"
        "assert not any(k.startswith('tffpipe') for k in sys.modules)\n"
        "print(p.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(3, 10)"


@pytest.mark.slow  # 76 s in the default suite's last CI run; kept out of it for time
def test_sigkilled_run_resumes_to_the_same_weights(reference_run, marker_env, tmp_path):
    env, marker = marker_env
    run_dir, _ = reference_run
    args = [
        sys.executable,
        "-m",
        "tffpipe.train",
        *SIX_ROUNDS,
        f"--root_dir={tmp_path}",
        "--checkpoint_every=2",
        "--eval_every=3",
    ]
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("round 3/6"):
                break
        # Round 3 is in the CSV and TensorBoard, but the newest checkpoint is
        # round 2; round 4 is under way.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    deadline = time.monotonic() + 20
    while worker_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker_processes(marker) == [], "a TFF worker outlived the SIGKILLed launcher"
    assert [row["round"] for row in _rows(tmp_path / "e")] == ["1", "2", "3"]
    assert {r["round"] for r in _rows(tmp_path / "e", "clients.csv")} == {"3"}

    # The rerun in this process (the launcher's sequence, without a second
    # TensorFlow start-up): the same lines, the same folder.
    printed = []
    api.train(cli.parse(args[2:]), printed.append)
    assert any("from the checkpoint of round 2 (dropped" in line for line in printed)
    assert [line.split()[1] for line in printed if line.startswith("round ")] == ["3/6", "4/6", "5/6", "6/6"]
    assert [row["round"] for row in _rows(tmp_path / "e")] == ["1", "2", "3", "4", "5", "6"]
    # Round 3's evaluation ran twice; each (round, client) is recorded once.
    clients = [(r["round"], r["client_id"]) for r in _rows(tmp_path / "e", "clients.csv")]
    assert len(clients) == len(set(clients)) == 20
    for tag, steps in scalar_steps(tmp_path / "e" / "logdir").items():
        assert len(steps) == len(set(steps)), f"{tag} has a round twice: {sorted(steps)}"
    for ours, reference in zip(_export_weights(tmp_path / "e"), _export_weights(run_dir)):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)
    assert worker_processes(marker) == []


def test_resume_with_other_data_settings_is_refused(reference_run):
    run_dir, _ = reference_run
    # In this process (the launcher prints the same line): the runtime is not
    # part of the fingerprint, and TFF's runtime builds faster.
    cfg = cli.parse(["train", *SIX_ROUNDS, f"--root_dir={run_dir.parent}", "--digits_alpha=0.1", "--runtime=cpp"])
    with pytest.raises(errors.UserError) as info:
        api.train(cfg, lambda line: None)
    assert str(info.value) == (
        f"the checkpoint of round 6 in {run_dir / 'checkpoints'} was written with different "
        "settings (task_options.alpha: 0.5 -> 0.1); use the original settings or a new --experiment_name"
    )


def test_resume_with_explicit_defaults_is_accepted(reference_run):
    run_dir, _ = reference_run
    # --digits_alpha=0.5, --zeroing, --seed=0 and --dp=none are the defaults the run used.
    cfg = cli.parse(
        [
            "train",
            *SIX_ROUNDS,
            f"--root_dir={run_dir.parent}",
            "--digits_alpha=0.5",
            "--zeroing",
            "--seed=0",
            "--dp=none",
            "--runtime=cpp",
        ]
    )
    printed = []
    result, _ = api.train(cfg, printed.append)
    assert result.rounds_done == 6
    assert f"{run_dir} already holds 6 rounds (--rounds=6)" in printed


def test_a_configuration_error_is_one_line_before_tensorflow_loads():
    result = run_train(["--dp=fixed"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --dp=fixed needs exactly one of --dp_noise_multiplier and --dp_target_epsilon"
    ]


def test_a_flag_error_is_one_line_before_tensorflow_loads():
    result = run_train(["--rounds=-1"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --rounds must be at least 1, got -1"]


def test_an_error_building_the_task_is_one_line(tmp_path):
    env = user_env()
    env[public_data.MIRROR_ENV] = "http://127.0.0.1:9/"  # nothing listens: refused at once
    result = run_train(["--task=emnist", f"--data_dir={tmp_path}/data", f"--root_dir={tmp_path}"], env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: dataset file {tmp_path}/data/emnist_all.sqlite is missing and downloading it failed "
        f"(Connection refused); download http://127.0.0.1:9/emnist_all.sqlite.lzma, decompress it "
        f"(unxz) into {tmp_path}/data, or pass --data_dir=FOLDER holding emnist_all.sqlite"
    ]
    assert [p for p in os.listdir(tmp_path) if not p.endswith(".lock")] == ["data"]


@pytest.mark.parametrize(
    "argv, message",
    [
        ("--rounds=abc", "flag --rounds=abc: invalid literal for int() with base 10: 'abc'"),
        (
            "--dp_noise_multiplier=1",
            "--dp_noise_multiplier applies to --dp=fixed|adaptive|tree|distributed, not --dp=none",
        ),
        (
            "--algorithm=fedsgd --client_learning_rate=0.5",
            "--client_learning_rate has no effect with --algorithm=fedsgd: clients send the gradient of their local data and the server optimizer applies it",
        ),
        (
            "--task=mnist",
            "unknown task 'mnist'; valid tasks: breast_cancer, cifar100, diabetes, digits, emnist, shakespeare, stackoverflow_nwp, vertical_breast_cancer, vertical_diabetes (or a factory path such as my_pkg.my_module:create_task)",
        ),
        ("--emnist_model=cnn", "--emnist_model applies to task 'emnist', not --task=digits"),
        ("--runtime=inprocess --gpus=first", "--gpus must be 'all', 'none' or GPU indices like '0,1', got 'first'"),
        ("--parallel_clients=0", "--parallel_clients must be at least 1, got 0"),
        ("--experiment_name=..", "--experiment_name must be a single folder name, got '..'"),
        ("--workers=a:1", "--workers applies to --runtime=remote, not --runtime=auto"),
        (
            "--algorithm=examples.decaying_fedavg:decaying_fedavg --decaying_fedavg_decay=x",
            "flag --decaying_fedavg_decay=x: could not convert string to float: 'x'",
        ),
    ],
)
def test_bad_flags_fail_in_one_line(argv, message):
    with pytest.raises((flags.Error, errors.UserError)) as info:
        cli.parse(["train", *argv.split()])
    assert str(info.value) == message


@pytest.mark.parametrize(
    "argv, message",
    [
        ("--clients_per_round=41", "--clients_per_round=41 is larger than the 40 training clients of task 'digits'"),
        ("--root_dir={file}/sub", "--root_dir: cannot write to {file}/sub/digits: Not a directory"),
        ("--runtime=inprocess --gpus=1", "--gpus=1: no GPU 1; TensorFlow sees 0 GPU(s)"),
    ],
)
def test_settings_that_fail_once_the_task_or_devices_are_known(argv, message, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg = cli.parse(["train", f"--root_dir={tmp_path}", *argv.format(file=blocker).split()])
    printed = []
    with pytest.raises(errors.UserError) as info:
        api.train(cfg, printed.append)
    assert str(info.value) == message.format(file=blocker)
    assert not any(line.startswith("round") for line in printed)


def test_help_groups_the_common_flags_in_under_90_lines():
    text = cli.short_help("python -m tffpipe.train")
    lines = text.splitlines()
    assert len(lines) < 90
    headings = [line[:-1] for line in lines if not line.startswith(" ") and line.endswith(":")]
    assert headings == [
        "Run",
        "Clients",
        "Simulated clock",
        "Algorithm",
        "Aggregation",
        "Privacy",
        "Attacks",
        "Personalization evaluation",
        "Runtime",
        "Vertical federated learning",
        "Outputs",
    ]
    (dp,) = [entry for entry in " ".join(text.split()).split(" --") if entry.startswith("dp ")]
    assert "none|fixed|adaptive|tree|distributed" in dp


def _readme_block(starting_with):
    """The one Python block of the documentation (README and pages) that starts so."""
    text = "\n".join(page for _, page in documentation_pages())
    (block,) = [b.split("```", 1)[0] for b in text.split("```python\n")[1:] if b.startswith(starting_with)]
    return block


def test_the_readmes_python_api_example_trains_and_returns_metrics_and_the_model(tmp_path, capsys, monkeypatch):
    # Exactly the README's notebook code, with the run folder under tmp_path.
    monkeypatch.setattr(api, "run", functools.partial(api.run, root_dir=str(tmp_path)))
    namespace = {}
    exec(_readme_block("import tffpipe\n"), namespace)
    result = namespace["result"]
    out = capsys.readouterr().out
    assert "aggregation stack (outermost first):" in out
    for layer in ("zeroing", "└ clipping", "└ DP", "└ secure sum", "└ mean"):
        assert layer in out, layer
    assert "each client downloads 332.3 KiB and uploads 332.3 KiB per round" in out
    assert "secure sums use pairwise masking" in out or "runtime: inprocess" in out
    assert "privacy: noise multiplier 1; 3 rounds spend epsilon" in out
    assert "privacy: (epsilon " in out and "after 3 rounds (replace-one client)" in out
    rows = [{k: v for k, v in row.items() if not pd.isna(v)} for row in result.metrics.to_dict("records")]
    assert [row["round"] for row in rows] == [1, 2, 3]
    epsilons = [row["privacy/epsilon"] for row in rows]
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2] == result.epsilon
    run_dir = tmp_path / "notebook"
    assert rows == [{k: (int(v) if k == "round" else float(v)) for k, v in r.items() if v} for r in _rows(run_dir)]
    steps = scalar_steps(run_dir / "logdir")
    # TensorBoard files the comm/ figures under stats/, so that its evaluation charts come first.
    for tag in ("privacy/epsilon", "stats/comm/upload_bytes_per_client", "stats/comm/download_bytes_per_client"):
        assert sorted(steps[tag]) == [1, 2, 3], tag
    # The returned model is the exported one.
    for ours, exported in zip(result.model.get_weights(), _export_weights(run_dir)):
        np.testing.assert_array_equal(ours, exported)
    # The same folder read back: settings by flag name, the same metrics, the clients' rows.
    loaded = tffpipe.load_run(str(run_dir))
    assert loaded.config["rounds"] == 3 and loaded.config["dp"] == "fixed" and loaded.config["secure_aggregation"]
    assert loaded.metrics["round"].tolist() == [1, 2, 3]
    assert loaded.metrics["privacy/epsilon"].tolist() == pytest.approx(epsilons)
    assert set(loaded.clients.columns) >= {"round", "client_id", "num_examples", "accuracy", "loss"}
    assert sorted(loaded.clients["client_id"].unique()) == sorted(result.final_clients)
    # Two runs side by side: a copy of this one whose learning rate is said to differ.
    other = tmp_path / "notebook_lr"
    shutil.copytree(run_dir, other)
    saved = json.loads((other / "config.json").read_text())
    saved["settings"]["client_optimizer"]["learning_rate"] = 0.5
    (other / "config.json").write_text(json.dumps(saved))
    both = tffpipe.load_runs(str(tmp_path / "notebook*"))
    assert list(both.columns[:2]) == ["run", "client_learning_rate"]
    assert both.groupby("run")["client_learning_rate"].first().to_dict() == {
        "notebook": loaded.config["client_learning_rate"],
        "notebook_lr": 0.5,
    }
    assert both.groupby("run")["round"].apply(list).to_dict() == {"notebook": [1, 2, 3], "notebook_lr": [1, 2, 3]}
    with pytest.raises(errors.ConfigError, match="unknown setting 'roundz' \\(did you mean 'rounds'\\?\\)"):
        tffpipe.run(roundz=3)


@pytest.mark.slow  # 37 s in the default suite's last CI run; kept out of it for time
def test_a_user_algorithm_given_by_path_trains(tmp_path, capsys):
    result = tffpipe.run(
        algorithm="examples.decaying_fedavg:decaying_fedavg",
        decaying_fedavg_decay=0.5,
        rounds=2,
        eval_every=0,
        root_dir=str(tmp_path),
        quiet=True,
    )
    assert result.rounds_done == 2 and np.isfinite(result.final_eval["eval/loss"])
    assert os.path.basename(result.run_dir).startswith(
        "digits-algorithm=examples.decaying_fedavg:decaying_fedavg-decaying_fedavg_decay=0.5-eval_every=0-rounds=2-"
    )
    settings = json.loads((tmp_path / os.path.basename(result.run_dir) / "config.json").read_text())["settings"]
    assert settings["algorithm"]["options"] == {"initial_rate": 0.1, "decay": 0.5}


@pytest.mark.slow
def test_inprocess_runtime_trains_with_masked_secure_sums_and_no_tff_worker(marker_env, tmp_path):
    env, marker = marker_env
    result = run_train(
        [
            "--rounds=2",
            "--experiment_name=local",
            f"--root_dir={tmp_path}",
            "--eval_every=0",
            "--runtime=inprocess",
            "--secure_aggregation",
        ],
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert (
        "runtime inprocess: learning process on 2 client slot(s) over /device:CPU:0, up to 4 clients per "
        "TensorFlow call; secure sums use pairwise masking" in out
    )
    # What the masks protect, said as it is: nothing from whoever runs the process.
    assert (
        "secure sum: pairwise masks in this process: the summing code sees only masked vectors, but every "
        "key is in this process" in out
    )
    assert (
        "learning process placement (client i of a round goes to slot i mod S, S = the round's clients // 16, "
        "at least 1 and at most 2, as the slots share a device), first round: "
        "/device:CPU:0 (slot 0): clients [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" in out
    )
    assert "runtime inprocess: evaluation process on 2 client slot(s)" in out
    assert "secure sum: simulated by TFF's test runtime" not in out
    assert "done: 2 rounds; held-out eval/accuracy" in out
    assert [int(r["round"]) for r in _rows(tmp_path / "local")] == [1, 2]
    assert worker_processes(marker) == []


def test_plugin_tasks_get_generated_flags_and_are_listed(tmp_path, monkeypatch):
    (tmp_path / "wine_tasks.py").write_text(
        '"""`wine`: Wine cultivars from an installed plug-in."""\n'
        "from typing import Literal\n"
        "def create_task(*, size: Literal['small', 'large'] = 'small', seed: int = 0):\n"
        '    """Args:\n      size: how many clients.\n    """\n'
    )
    dist = tmp_path / "wine_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wine-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tffpipe.tasks]\nwine = wine_tasks:create_task\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    table = listing.task_table()
    assert "wine               Wine cultivars from an installed plug-in." in table
    assert "flags: --wine_size" in table and "flags: --emnist_model --emnist_only_digits" in table
    assert cli.parse(["train", "--task=wine", "--wine_size=large"]).task.options == {"size": "large"}
    with pytest.raises(flags.Error) as info:
        cli.parse(["train", "--task=wine", "--wine_size=huge"])
    assert str(info.value) == "flag --wine_size=huge: value should be one of <small|large>"
