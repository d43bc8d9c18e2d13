"""No TFF worker process outlives the Python process that started it."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO_ROOT, worker_processes

SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    # As in a terminal, even when the test runs where SIGINT is ignored
    # (a shell's background job inherits an ignored SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import numpy as np
    import tensorflow_federated as tff
    from tffpipe.runtimes import processes
    processes.raise_on_sigterm()
    processes.install_worker_reaper()

    @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
    def total(x):
        return tff.federated_sum(x)

    assert total([1.0, 2.0]) == 3.0
    print("ready", flush=True)
    sys.stdin.readline()
    mode = sys.argv[1]
    if mode == "exception":
        raise RuntimeError("boom")
    if mode == "wait":
        time.sleep(600)
    """
)


def _wait_gone(marker, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker_processes(marker):
            return []
        time.sleep(0.2)
    return worker_processes(marker)


CASES = [("normal", None), ("exception", None), ("wait", "SIGINT"), ("wait", "SIGTERM"), ("wait", "SIGKILL")]


@pytest.fixture(scope="module")
def ready_scripts(tmp_path_factory):
    """Every case's script, started at once (each imports TFF: about 15 s) and ready."""
    from conftest import user_env
    import uuid

    script = tmp_path_factory.mktemp("hygiene") / "script.py"
    script.write_text(SCRIPT)
    started = {}
    for mode, end in CASES:
        env = user_env()
        marker = f"TFFPIPE_TEST_MARKER={uuid.uuid4().hex}"
        env[marker.split("=")[0]] = marker.split("=")[1]
        started[(mode, end)] = (
            subprocess.Popen(
                [sys.executable, str(script), mode],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            ),
            marker,
        )
    try:
        for proc, marker in started.values():
            assert proc.stdout.readline().strip() == "ready"
            assert worker_processes(marker), "the computation should have started a worker"
        yield started
    finally:
        for proc, _ in started.values():
            proc.kill()


@pytest.mark.parametrize("mode, end", CASES)
def test_worker_dies_with_its_parent(mode, end, ready_scripts):
    proc, marker = ready_scripts[(mode, end)]
    proc.stdin.write("go\n")
    proc.stdin.flush()
    if end:
        os.kill(proc.pid, getattr(signal, end))
    # With a leftover worker holding the pipe, this read would never end.
    proc.stdout.read()
    proc.wait(timeout=60)
    assert _wait_gone(marker) == []


def test_an_unbounded_wait_on_a_stuck_worker_kills_it():
    """TFF's ServiceManager sends SIGINT and then waits with no limit."""
    from tffpipe.runtimes import processes

    stuck = processes.WorkerPopen(["bash", "-c", "trap '' INT; while true; do sleep 0.1; done"])
    time.sleep(0.3)
    os.kill(stuck.pid, signal.SIGINT)
    start = time.monotonic()
    assert stuck.wait() == -signal.SIGKILL
    assert time.monotonic() - start < processes._STOP_TIMEOUT_SEC + 3


def _arena_setting_seen_by_worker(env=None) -> str:
    from tffpipe.runtimes import processes

    worker = processes.WorkerPopen(
        ["bash", "-c", 'echo "${MALLOC_ARENA_MAX:-unset}"'], stdout=subprocess.PIPE, text=True, env=env
    )
    out, _ = worker.communicate(timeout=10)
    return out.strip()


def test_workers_start_with_two_malloc_arenas(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert _arena_setting_seen_by_worker() == "2"
    assert _arena_setting_seen_by_worker(env={"PATH": os.environ["PATH"]}) == "2"


def test_a_users_malloc_arena_setting_is_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "6")
    assert _arena_setting_seen_by_worker() == "6"
    assert _arena_setting_seen_by_worker(env={"PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "3"}) == "3"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_launcher_limits_its_own_arenas_unless_the_user_did(monkeypatch):
    from tffpipe.runtimes import memory

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert memory.limit_arenas_in_this_process() is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert memory.limit_arenas_in_this_process() is False


def test_private_worker_folders_of_killed_launchers_are_swept(tmp_path):
    import socket

    from tffpipe.runtimes import processes

    stale, live = (tmp_path / f"tffpipe-worker-{n}" for n in ("stale", "live"))
    for folder in (stale, live):
        folder.mkdir()
    other_file = tmp_path / "unrelated"
    other_file.mkdir()
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale / "worker.sock"))
    dead.close()  # bound, never listened, closed: what a SIGKILLed relay leaves
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(live / "worker.sock"))
    listening.listen()
    young = tmp_path / "tffpipe-worker-young"
    young.mkdir()
    young_dead = socket.socket(socket.AF_UNIX)
    young_dead.bind(str(young / "worker.sock"))
    young_dead.close()  # refusing, but its relay may still be starting: left alone
    hour_ago = time.time() - 3600
    for folder in (stale, live):
        os.utime(folder, (hour_ago, hour_ago))
    try:
        assert processes.sweep_stale_private_folders(str(tmp_path)) == 1
    finally:
        listening.close()
    assert not stale.exists() and live.exists() and young.exists() and other_file.exists()


@pytest.mark.parametrize("launcher_sigint", ["default", "ignored"])
def test_a_private_worker_started_from_a_thread_outlives_the_thread(tmp_path, launcher_sigint):
    # PR_SET_PDEATHSIG fires when the *thread* that started a process exits: a
    # relay started from a thread that ended died with it (a zombie, its socket
    # left behind), and the TFF call using it waited forever.
    import socket
    import threading

    from tffpipe.runtimes import private_network
    from tffpipe.runtimes import processes

    if private_network.unavailable_reason() is not None:
        pytest.skip(private_network.unavailable_reason())
    started = []
    # A stand-in worker: listens on its --port inside the namespace, answers "ok".
    server = (
        "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1].split('=')[1]))); "
        "s.listen(); c,_=s.accept(); c.sendall(b'ok'); c.close(); import time; time.sleep(600)"
    )
    port = 40000 + os.getpid() % 20000
    thread = threading.Thread(
        target=lambda: started.append(processes.WorkerPopen([sys.executable, "-c", server, f"--port={port}"]))
    )
    # A launcher started as a background job of a script (`cmd &`) ignores
    # SIGINT; its workers must still stop on the SIGINT they are sent.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if launcher_sigint == "ignored" else None
    try:
        thread.start()
        thread.join()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    (worker,) = started
    try:
        time.sleep(1.5)  # the relay would have been killed at once
        assert worker.poll() is None
        path = processes.private_socket(port)
        reply = b""
        for _ in range(50):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                reply = s.recv(2)
            if reply == b"ok":
                break
            time.sleep(0.1)  # the stand-in is not listening yet
        assert reply == b"ok"
    finally:
        worker.send_signal(signal.SIGINT)
        assert worker.wait(timeout=10) is not None
    assert not os.path.exists(path)
