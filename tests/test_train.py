"""End-to-end tests of `python -m tffpipe.train`, run as a user runs it."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tffpipe.tasks import public_data

from conftest import REPO_ROOT, run_train, scalar_steps, user_env, worker_processes

SIX_ROUNDS = ["--task=digits", "--rounds=6", "--experiment_name=e"]


def _rows(run_dir):
    with open(os.path.join(run_dir, "results", "metrics.csv")) as f:
        return list(csv.DictReader(f))




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
    assert config["settings"]["schedule"]["checkpoint_every"] == 1
    assert config["settings"]["task"]["options"] == {"alpha": 0.5, "eval_clients": 10, "num_clients": 50}
    assert sorted(os.listdir(run_dir / "checkpoints")) == [
        "fingerprint.json", "program_state_4", "program_state_5", "program_state_6"]

    lines = [l for l in result.stdout.splitlines() if l.startswith("round ")]
    assert [l.split()[1] for l in lines] == [f"{r}/6" for r in range(1, 7)]
    assert all(" loss " in l and " accuracy " in l and " ETA " in l for l in lines)
    assert "done: 6 rounds; held-out eval/accuracy" in result.stdout


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


def test_sigkilled_run_resumes_to_the_same_weights(reference_run, marker_env, tmp_path):
    env, marker = marker_env
    run_dir, _ = reference_run
    args = [sys.executable, "-m", "tffpipe.train", *SIX_ROUNDS, f"--root_dir={tmp_path}",
            "--checkpoint_every=2", "--eval_every=3"]
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
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

    resumed = run_train(args[3:], env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "from the checkpoint of round 2 (dropped" in resumed.stdout
    assert [l.split()[1] for l in resumed.stdout.splitlines() if l.startswith("round ")] == [
        "3/6", "4/6", "5/6", "6/6"]
    assert [row["round"] for row in _rows(tmp_path / "e")] == ["1", "2", "3", "4", "5", "6"]
    for tag, steps in scalar_steps(tmp_path / "e" / "logdir").items():
        assert len(steps) == len(set(steps)), f"{tag} has a round twice: {sorted(steps)}"
    for ours, reference in zip(_export_weights(tmp_path / "e"), _export_weights(run_dir)):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)
    assert worker_processes(marker) == []


def test_resume_with_other_data_settings_is_refused(reference_run):
    run_dir, _ = reference_run
    result = run_train([*SIX_ROUNDS, f"--root_dir={run_dir.parent}", "--digits_alpha=0.1"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: the checkpoint of round 6 in {run_dir / 'checkpoints'} was written with different "
        "settings (task_options.alpha: 0.5 -> 0.1); use the original settings or a new --experiment_name"
    ]


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--rounds=abc", "error: flag --rounds=abc: invalid literal for int() with base 10: 'abc'"),
        ("--clients_per_round=41", "error: --clients_per_round=41 is larger than the 40 training clients of task 'digits'"),
        ("--dp_noise_multiplier=1", "error: --dp_noise_multiplier has no effect without differential privacy: set --dp=fixed|adaptive|tree|distributed"),
        ("--algorithm=fedsgd --client_learning_rate=0.5", "error: --client_learning_rate has no effect with --algorithm=fedsgd: clients send the gradient of their local data and the server optimizer applies it"),
        ("--task=mnist", "error: unknown task 'mnist'; valid tasks: breast_cancer, cifar100, diabetes, digits, emnist, shakespeare, stackoverflow_nwp (or a factory path such as my_pkg.my_module:create_task)"),
        ("--emnist_model=cnn", "error: --emnist_model applies to task 'emnist', not --task=digits"),
        ("--task=emnist --data_dir={dir}/data", "error: dataset file {dir}/data/emnist_all.sqlite is missing and downloading it failed (Connection refused); download http://127.0.0.1:9/emnist_all.sqlite.lzma, decompress it (unxz) into {dir}/data, or pass --data_dir=FOLDER holding emnist_all.sqlite"),
        ("--root_dir={file}/sub", "error: --root_dir: cannot write to {file}/sub/e: Not a directory"),
        ("--runtime=inprocess --gpus=first", "error: --gpus must be 'all', 'none' or GPU indices like '0,1', got 'first'"),
        ("--runtime=inprocess --gpus=1", "error: --gpus=1: no GPU 1; TensorFlow sees 0 GPU(s)"),
        ("--parallel_clients=0", "error: --parallel_clients must be at least 1, got 0"),
    ],
)
def test_bad_flags_fail_in_one_line_before_training(flag, message, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    env = user_env()
    env[public_data.MIRROR_ENV] = "http://127.0.0.1:9/"  # nothing listens: refused at once
    result = run_train(
        ["--experiment_name=e", f"--root_dir={tmp_path}",
         *flag.format(file=blocker, dir=tmp_path).split()],
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [message.format(file=blocker, dir=tmp_path)]
    assert "round" not in result.stdout
    assert not os.path.exists(tmp_path / "e")


def test_secure_dp_run_reports_its_stack_traffic_and_epsilon(marker_env, tmp_path):
    env, marker = marker_env
    result = run_train(
        ["--rounds=2", "--experiment_name=dp", f"--root_dir={tmp_path}", "--eval_every=0",
         "--dp=fixed", "--dp_noise_multiplier=1.0", "--secure_aggregation"],
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "aggregation stack (outermost first):" in out
    for layer in ("zeroing", "└ clipping", "└ DP", "└ secure sum", "└ mean"):
        assert layer in out, layer
    assert "each client downloads 332.3 KiB and uploads 332.3 KiB per round" in out
    assert out.count("simulates the cryptographic protocol") == 1
    assert "privacy: noise multiplier 1; 2 rounds spend epsilon" in out
    assert "privacy: (epsilon " in out and "after 2 rounds (replace-one client)" in out
    # TensorFlow's "Object was never used" noise from tracing secure sums is gone.
    assert "never used" not in result.stderr and "Traceback" not in result.stderr
    rows = _rows(tmp_path / "dp")
    epsilons = [float(r["privacy/epsilon"]) for r in rows]
    assert 0 < epsilons[0] < epsilons[1]
    steps = scalar_steps(tmp_path / "dp" / "logdir")
    for tag in ("privacy/epsilon", "comm/upload_bytes_per_client", "comm/download_bytes_per_client"):
        assert sorted(steps[tag]) == [1, 2], tag
    assert worker_processes(marker) == []


@pytest.mark.slow
def test_inprocess_runtime_trains_with_masked_secure_sums_and_no_tff_worker(marker_env, tmp_path):
    env, marker = marker_env
    result = run_train(
        ["--rounds=2", "--experiment_name=local", f"--root_dir={tmp_path}", "--eval_every=0",
         "--runtime=inprocess", "--secure_aggregation"],
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert (
        "runtime inprocess: learning process on 2 client slot(s) over /device:CPU:0; "
        "secure sums use pairwise masking" in out
    )
    assert (
        "learning process placement (client i of a round goes to slot i mod 2), first round: "
        "/device:CPU:0 (slot 0): clients [0, 2, 4, 6, 8]; /device:CPU:0 (slot 1): clients [1, 3, 5, 7, 9]"
        in out
    )
    assert "runtime inprocess: evaluation process on 2 client slot(s)" in out
    assert "simulates the cryptographic protocol" not in out
    assert "done: 2 rounds; held-out eval/accuracy" in out
    assert [int(r["round"]) for r in _rows(tmp_path / "local")] == [1, 2]
    assert worker_processes(marker) == []


def test_plugin_tasks_get_generated_flags_and_are_listed(tmp_path):
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
    env = user_env()
    env["PYTHONPATH"] = str(tmp_path)
    listed = run_train(["--list_tasks"], env=env)
    assert listed.returncode == 0, listed.stderr
    assert "wine               Wine cultivars from an installed plug-in." in listed.stdout
    assert "flags: --wine_size" in listed.stdout and "flags: --emnist_model --emnist_only_digits" in listed.stdout
    bad = run_train(["--task=wine", "--wine_size=huge", f"--root_dir={tmp_path}"], env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: flag --wine_size=huge: value should be one of <small|large>"
    ]
