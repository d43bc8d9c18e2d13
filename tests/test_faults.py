"""Fault injection: each fault ends in one line and a non-zero exit, and loses nothing recorded."""

import csv
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, make_config, run_train, user_env, worker_processes
from tffpipe import api
from tffpipe import errors
from tffpipe.program import run_lock
from tffpipe.runtimes import remote_context


def test_a_second_launcher_on_a_held_run_folder_stops_at_once_naming_the_owner(tmp_path):
    run_dir = tmp_path / "e"
    args = [
        sys.executable,
        "-m",
        "tffpipe.train",
        "--rounds=40",
        "--experiment_name=e",
        f"--root_dir={tmp_path}",
        "--runtime=cpp",
    ]
    first = subprocess.Popen(args, cwd=REPO_ROOT, env=user_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = run_lock.lock_path(str(run_dir))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if os.path.exists(lock) and f'"pid": {first.pid}' in pathlib.Path(lock).read_text():
                break
            time.sleep(0.1)
        started = time.monotonic()
        second = run_train(args[3:])
        took = time.monotonic() - started
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith(
            f"error: {run_dir} is in use by another launcher (pid {first.pid} on {os.uname().nodename}, started "
        )
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
            [
                sys.executable,
                "-c",
                "import sys; from tffpipe.program import run_lock\n"
                "try:\n  run_lock.hold(sys.argv[1]).__enter__()\nexcept run_lock.RunInUse as e:\n  print(e)",
                run_dir,
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert f"(pid {os.getpid()} on " in probe.stdout
    assert not os.path.exists(run_dir)  # the lock sits beside the folder


def test_an_unresolvable_worker_host_is_named_at_once(monkeypatch):
    # No name is resolved over the network: the resolver's answer is mocked.
    asked = []

    def unresolvable(host, *args, **kwargs):
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    with pytest.raises(remote_context.WorkerUnavailable) as info:
        remote_context.check_workers(["nohost.invalid:1"], 30.0, None)
    assert asked == ["nohost.invalid"]
    assert str(info.value) == (
        "worker nohost.invalid:1 is unreachable: cannot resolve host 'nohost.invalid' (Name or service not known)"
    )


def test_a_retired_workers_channels_and_thread_are_closed(monkeypatch):
    import grpc

    monkeypatch.setattr(remote_context, "check_workers", lambda addresses, timeout_sec, credentials: None)
    lines = []
    context = remote_context.FailoverContext(["127.0.0.1:9", "127.0.0.1:10"], 1.0, lines.append)
    context._context()
    first = list(context._workers)
    assert [w.address for w in first] == ["127.0.0.1:9", "127.0.0.1:10"]
    assert all(w._own_thread.alive for w in first)
    context._drop(remote_context.WorkerUnavailable("127.0.0.1:9", "no answer"))
    assert lines == [
        "worker 127.0.0.1:9 is unreachable: no answer; running the computation again on the "
        "remaining 1 worker(s): 127.0.0.1:10"
    ]
    for worker in first:
        assert not worker._own_thread.alive
        with pytest.raises(ValueError, match="closed channel"):
            worker._channel.unary_unary("/x")(b"", timeout=1)
    context._context()
    (second,) = context._workers
    context.close()
    assert not second._own_thread.alive
    assert isinstance(second._channel, grpc.Channel)
    assert remote_context._to_mergeable_form.cache_info().maxsize == 16


def _rounds_in(run_dir):
    with open(os.path.join(run_dir, "results", "metrics.csv")) as f:
        return [int(row["round"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_last_checkpoint_resumes(tmp_path):
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    script = os.path.join(REPO_ROOT, "tests", "fill_disk_during_run.sh")
    launcher = [
        sys.executable,
        "-m",
        "tffpipe.train",
        "--rounds=6",
        "--experiment_name=e",
        "--checkpoint_every=1",
        "--runtime=cpp",
    ]
    # A private tmpfs in a user namespace: no root needed, nothing left mounted.
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", script, str(disk), str(out), *launcher],
        cwd=REPO_ROOT,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if "launcher exit" not in result.stdout:
        pytest.skip(f"no private tmpfs here: {result.stderr.strip()[-200:]}")
    assert "launcher exit 2" in result.stdout
    stderr = (out / "stderr").read_text().strip().splitlines()
    assert len(stderr) == 1, stderr
    match = re.fullmatch(
        rf"error: no space left on the device holding {disk}/e\S*; the checkpoint of round (\d+) is "
        "intact: free space and rerun the same command to resume",
        stderr[0],
    )
    assert match, stderr[0]
    saved = int(match.group(1))
    assert saved >= 2

    # Rerun (in this process) on the copied folder: it resumes from that checkpoint.
    printed = []
    cfg = make_config(rounds=6, experiment_name="e", checkpoint_every=1, runtime="cpp", root_dir=str(out))
    done, _ = api.train(cfg, printed.append)
    assert done.resumed_from == saved and done.rounds_done == 6
    assert _rounds_in(out / "e") == [1, 2, 3, 4, 5, 6]


# `python -m tffpipe.train` with SIGINT acting as in a terminal: a background
# job (CI) inherits an ignored SIGINT, which Python then leaves ignored. (Not
# `preexec_fn`: forking a process that runs TensorFlow's threads and then
# running Python in the child can crash it.)
_WITH_DEFAULT_SIGINT = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('tffpipe.train', run_name='__main__', alter_sys=True)"
)


def _start(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-c", _WITH_DEFAULT_SIGINT, *args],
        cwd=REPO_ROOT,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for_lock(proc, run_dir, timeout=60):
    lock = run_lock.lock_path(str(run_dir))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(lock) and f'"pid": {proc.pid}' in pathlib.Path(lock).read_text():
            return
        time.sleep(0.02)
    raise AssertionError("the launcher never took its run lock")


@pytest.mark.parametrize(
    "sig, code, line",
    [
        (signal.SIGINT, 130, "error: interrupted; rerun the same command to resume from the last checkpoint"),
        (signal.SIGTERM, 143, "error: terminated (SIGTERM); rerun the same command to resume from the last checkpoint"),
    ],
)
def test_a_signal_while_tensorflow_imports_is_one_line(tmp_path, sig, code, line):
    proc = _start(["--experiment_name=e", f"--root_dir={tmp_path}"])
    _wait_for_lock(proc, tmp_path / "e")  # taken just before TensorFlow's import starts
    time.sleep(0.3)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code
    assert stderr.strip().splitlines() == [line]


def test_a_missing_flagfile_is_one_plain_line():
    result = run_train(["--flagfile=/no/such.flags"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: Unable to open flagfile: [Errno 2] No such file or directory: '/no/such.flags'"
    ]


FAILING_TASKS = {
    "raises.py": "def create_task(size: int = 3):\n    raise RuntimeError('database offline\\nsecond line')\n",
    "exits.py": "import sys\ndef create_task():\n    sys.exit(3)\n",
    "broken.py": "def create_task(:\n",
    "returns.py": "def create_task():\n    return 42\n",
}


@pytest.mark.parametrize(
    "module, message",
    [
        ("raises", "task factory 'raises:create_task' raised RuntimeError: database offline"),
        ("exits", "task factory 'exits:create_task' called sys.exit(3)"),
        ("broken", "cannot import task module 'broken': SyntaxError: invalid syntax (broken.py, line 1)"),
        (
            "returns",
            "task factory 'returns:create_task' returned int, not tffpipe.tasks.Task or tffpipe.tasks.VerticalTask",
        ),
    ],
)
def test_a_failing_user_task_is_one_line(tmp_path, monkeypatch, module, message):
    for name, source in FAILING_TASKS.items():
        (tmp_path / name).write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(errors.UserError) as info:
        api.train(make_config(task=f"{module}:create_task", root_dir=str(tmp_path), runtime="cpp"), lambda line: None)
    assert str(info.value) == message


def test_verbose_prints_the_cause_of_a_one_line_error(tmp_path):
    (tmp_path / "broken.py").write_text(FAILING_TASKS["broken.py"])
    env = user_env()
    env["PYTHONPATH"] = str(tmp_path)
    result = run_train(["--task=broken:create_task", f"--root_dir={tmp_path}", "--verbose"], env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "error: cannot import task module 'broken': SyntaxError: invalid syntax (broken.py, line 1)"
    assert f'  File "{tmp_path}/broken.py", line 1' in lines
    quiet = run_train(["--task=broken:create_task", f"--root_dir={tmp_path}"], env=env)
    assert quiet.stderr.strip().splitlines() == lines[-1:]


@pytest.mark.slow
def test_sigterm_mid_run_is_one_line_and_resumable(tmp_path, marker_env):
    env, marker = marker_env
    args = ["--rounds=6", "--experiment_name=e", f"--root_dir={tmp_path}", "--checkpoint_every=2", "--runtime=cpp"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tffpipe.train", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("round 3/6"):
            break
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert stderr.strip().splitlines() == [
        "error: terminated (SIGTERM); rerun the same command to resume from the last checkpoint"
    ]
    assert worker_processes(marker) == []
    assert _rounds_in(tmp_path / "e")[:3] == [1, 2, 3]

    printed = []
    done, _ = api.train(
        make_config(rounds=6, experiment_name="e", root_dir=str(tmp_path), checkpoint_every=2, runtime="cpp"),
        printed.append,
    )
    assert done.resumed_from in (2, 4) and done.rounds_done == 6
    assert _rounds_in(tmp_path / "e") == [1, 2, 3, 4, 5, 6]
