"""Vertical runs through the program: outputs, export, resume, flags of the other kind, the README task."""

import csv
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, documentation_page, make_config, run_readme_command, run_train, user_env
from tffpipe import api
from tffpipe import errors
from tffpipe.vertical import psi


def _cfg(tmp_path, name="v", **flags):
    return make_config(task="vertical_diabetes", root_dir=str(tmp_path), experiment_name=name, **flags)


def test_a_vertical_run_writes_what_a_horizontal_one_does(tmp_path):
    lines = []
    result, task = api.train(_cfg(tmp_path, rounds=3, eval_every=1, checkpoint_every=1), lines.append)
    run_dir = tmp_path / "v"
    assert "private set intersection: clinic and lab share 354 people" in lines
    with open(run_dir / "results" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    # 283 training rows in batches of 20: 15 steps; the lab sends its masked
    # 4-wide embedding (8 bytes a value) and gets back a float32 gradient.
    assert float(rows[0]["comm/lab/sent_bytes_per_step"]) == pytest.approx(283 * 4 * 8 / 15)
    assert float(rows[0]["comm/lab/received_bytes_per_step"]) == pytest.approx(283 * 4 * 4 / 15)
    assert float(rows[0]["comm/clinic/sent_bytes_per_step"]) == pytest.approx(283 * 4 * 4 / 15)
    assert all(r["eval/loss"] for r in rows)
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["settings"]["vertical"]["combine"] == "task"
    # Each organisation's model apart, and the assembled one; the assembled
    # model on the held-out rows gives the run's held-out loss.
    export = run_dir / "export"
    assert sorted(os.listdir(export)) == ["clinic", "lab", "model", "top"]
    model = tf.keras.models.load_model(export / "model")
    alignment = psi.align({p.name: p.ids for p in task.parties}, "clinic", test_fraction=0.2, seed=0)
    inputs = {}
    for party in task.parties:
        row = {sample_id: i for i, sample_id in enumerate(party.ids)}
        inputs[party.name] = party.features[[row[i] for i in alignment.test_ids]]
    clinic_row = {sample_id: i for i, sample_id in enumerate(task.active.ids)}
    y = task.labels[[clinic_row[i] for i in alignment.test_ids]]
    mse = float(np.mean((model.predict(inputs, verbose=0) - y) ** 2))
    assert mse == pytest.approx(result.final_eval["eval/loss"], rel=1e-4)
    lab = tf.keras.models.load_model(export / "lab")
    assert lab.input_shape == (None, 6) and lab.output_shape == (None, 4)


def test_a_resumed_vertical_run_reaches_the_same_weights(tmp_path):
    straight, _ = api.train(_cfg(tmp_path, "straight", rounds=4, vertical_embedding_noise=0.1), lambda line: None)
    api.train(_cfg(tmp_path, "resumed", rounds=2, checkpoint_every=1, vertical_embedding_noise=0.1), lambda line: None)
    lines = []
    resumed, _ = api.train(
        _cfg(tmp_path, "resumed", rounds=4, checkpoint_every=1, vertical_embedding_noise=0.1), lines.append
    )
    assert resumed.resumed_from == 2 and any(line.startswith("resuming ") for line in lines)
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with open(tmp_path / "resumed" / "results" / "metrics.csv") as f:
        assert [int(r["round"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            dict(task="vertical_diabetes", robust="median"),
            "--robust applies to horizontal tasks; 'vertical_diabetes' is a vertical task (its parties hold "
            "different features of the same people)",
        ),
        (
            dict(task="vertical_breast_cancer", clients_per_round=5),
            "--clients_per_round applies to horizontal tasks; 'vertical_breast_cancer' is a vertical task (its "
            "parties hold different features of the same people)",
        ),
        (
            dict(task="diabetes", vertical_combine="concat"),
            "--vertical_combine applies to vertical tasks; 'diabetes' is a horizontal task",
        ),
    ],
)
def test_flags_of_the_other_kind_of_task_are_refused(tmp_path, flags, message):
    with pytest.raises(errors.ConfigError) as info:
        api.train(make_config(root_dir=str(tmp_path), **flags), lambda line: None)
    assert str(info.value) == message
    assert [p for p in os.listdir(tmp_path) if not p.endswith(".lock")] == []  # nothing written


def test_parties_without_overlap_are_refused_in_one_line(tmp_path):
    with pytest.raises(
        errors.TaskError,
        match=r"^parties 'clinic' and 'lab' share no sample ID: nothing to align "
        r"\(IDs are compared as strings, so 1 and '1.0' or '00100' and 100 differ: 'clinic' has ",
    ):
        api.train(_cfg(tmp_path, vertical_overlap=0.0), lambda line: None)


def test_listing_names_the_parties():
    from tffpipe.tasks import listing

    table = listing.task_table()
    assert (
        "vertical, parties: clinic: age, sex, BMI, blood pressure and the outcome (active); lab: six serum measurements"
        in table
    )


def _readme_vertical_example():
    page = documentation_page("vertical.md")
    section = page.split("## Your own vertical task", 1)[1].split("\n## ", 1)[0]
    code, command = re.findall(r"```(?:python|bash)\n(.*?)```", section, re.S)[:2]
    return code, command.strip().splitlines()[0]


def test_readme_vertical_task_is_short_and_trains(tmp_path, marker_env):
    code, command = _readme_vertical_example()
    assert code.startswith("# my_vertical_task.py\n") and len(code.strip().splitlines()) <= 25
    (tmp_path / "my_vertical_task.py").write_text(code)
    result = run_readme_command(command, tmp_path, marker_env[0], tmp_path / "runs")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "private set intersection: bank and shop share 800 people" in result.stdout
    done = [line for line in result.stdout.splitlines() if line.startswith("done: ")]
    assert 0.8 <= float(re.search(r"eval/accuracy ([0-9.]+)", done[0]).group(1)) <= 1.0
    assert (tmp_path / "runs" / "bank_shop" / "export" / "model" / "saved_model.pb").exists()


@pytest.mark.slow  # two launchers (about 25 s)
def test_a_sigkilled_vertical_launcher_resumes_to_the_same_weights(tmp_path):
    args = ["--task=vertical_breast_cancer", "--rounds=6", "--checkpoint_every=1", f"--root_dir={tmp_path}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "tffpipe.train", *args, "--experiment_name=killed"],
        cwd=REPO_ROOT,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    for line in process.stdout:
        if line.startswith("round 3/6"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    resumed = run_train([*args, "--experiment_name=killed"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming " in resumed.stdout
    straight = run_train([*args, "--experiment_name=straight"])
    assert straight.returncode == 0, straight.stderr[-2000:]
    for a, b in zip(
        tf.keras.models.load_model(tmp_path / "killed" / "export" / "model").get_weights(),
        tf.keras.models.load_model(tmp_path / "straight" / "export" / "model").get_weights(),
    ):
        np.testing.assert_array_equal(a, b)
