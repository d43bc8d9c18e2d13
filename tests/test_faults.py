"""Fault injection: each fault ends in one line and a non-zero exit, and loses nothing recorded."""

import csv
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, make_config, run_train, user_env
from tffpipe import api
from tffpipe import errors
from tffpipe.program import run_lock
from tffpipe.runtimes import remote_context


def test_a_second_launcher_on_a_held_run_folder_stops_at_once_naming_the_owner(tmp_path):
    run_dir = tmp_path / "e"
    args = [sys.executable, "-m", "tffpipe.train", "--rounds=40", "--experiment_name=e",
            f"--root_dir={tmp_path}", "--runtime=cpp"]
    first = subprocess.Popen(args, cwd=REPO_ROOT, env=user_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        lock = run_lock.lock_path(str(run_dir))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if os.path.exists(lock) and f'"pid": {first.pid}' in open(lock).read():
                break
            time.sleep(0.1)
        started = time.monotonic()
        second = run_train(args[3:])
        took = time.monotonic() - started
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith(
            f"error: {run_dir} is in use by another launcher (pid {first.pid} on {os.uname().nodename}, started ")
        assert lines[0].endswith("wait for it to finish or stop it, or choose another --experiment_name")
        assert took < 10  # before TensorFlow loads
        assert first.poll() is None  # the owner trains on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    # A SIGKILLed owner leaves no stale lock.
    with run_lock.hold(str(run_dir)):
        pass


def test_the_lock_is_exclusive_across_processes_and_reentrant_within_one(tmp_path):
    run_dir = str(tmp_path / "e")
    with run_lock.hold(run_dir):
        with run_lock.hold(run_dir):  # the launcher, then api.train
            pass
        probe = subprocess.run(
            [sys.executable, "-c", "import sys; from tffpipe.program import run_lock\n"
             "try:\n  run_lock.hold(sys.argv[1]).__enter__()\nexcept run_lock.RunInUse as e:\n  print(e)",
             run_dir], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert f"(pid {os.getpid()} on " in probe.stdout
    assert not os.path.exists(run_dir)  # the lock sits beside the folder


def test_an_unresolvable_worker_host_is_named_at_once():
    started = time.monotonic()
    with pytest.raises(remote_context.WorkerUnavailable) as info:
        remote_context.check_workers(["nohost.invalid:1"], 30.0)
    assert time.monotonic() - started < 10
    assert str(info.value).startswith("worker nohost.invalid:1 is unreachable: cannot resolve host 'nohost.invalid' (")


def _rounds_in(run_dir):
    with open(os.path.join(run_dir, "results", "metrics.csv")) as f:
        return [int(row["round"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_last_checkpoint_resumes(tmp_path):
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    script = os.path.join(REPO_ROOT, "tests", "fill_disk_during_run.sh")
    launcher = [sys.executable, "-m", "tffpipe.train", "--rounds=6", "--experiment_name=e",
                "--checkpoint_every=1", "--runtime=cpp"]
    # A private tmpfs in a user namespace: no root needed, nothing left mounted.
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", script,
                             str(disk), str(out), *launcher],
                            cwd=REPO_ROOT, env=user_env(), capture_output=True, text=True, timeout=600)
    if "launcher exit" not in result.stdout:
        pytest.skip(f"no private tmpfs here: {result.stderr.strip()[-200:]}")
    assert "launcher exit 2" in result.stdout
    stderr = (out / "stderr").read_text().strip().splitlines()
    assert len(stderr) == 1, stderr
    match = re.fullmatch(
        rf"error: no space left on the device holding {disk}/e\S*; the checkpoint of round (\d+) is "
        "intact: free space and rerun the same command to resume", stderr[0])
    assert match, stderr[0]
    saved = int(match.group(1))
    assert saved >= 2

    # Rerun (in this process) on the copied folder: it resumes from that checkpoint.
    printed = []
    cfg = make_config(rounds=6, experiment_name="e", checkpoint_every=1, runtime="cpp", root_dir=str(out))
    done, _ = api.train(cfg, printed.append)
    assert done.resumed_from == saved and done.rounds_done == 6
    assert _rounds_in(out / "e") == [1, 2, 3, 4, 5, 6]
