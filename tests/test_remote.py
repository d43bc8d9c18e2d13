"""`--runtime=remote`: TFF worker services, rounds split across them, faults."""

import csv
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from conftest import REPO_ROOT, make_config, start_worker, worker_processes
from tffpipe import api
from tffpipe import cli
from tffpipe import doctor
from tffpipe import errors
from tffpipe import worker
from tffpipe.program import loop
from tffpipe.program import sampling
from tffpipe.runtimes import contexts as runtime
from tffpipe.runtimes import processes
from tffpipe.runtimes import remote_context as remote

from tffpipe_tasks import digits


def kill_worker(workers, i, marker):
    """SIGKILLs worker i and waits until its TFF service is gone too."""
    workers[i].kill()
    workers[i].wait()
    deadline = time.monotonic() + 10
    while len(worker_processes(marker)) >= len(workers) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_worker(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()


@pytest.fixture
def two_workers(marker_env):
    env, marker = marker_env
    started = [start_worker(env) for _ in range(2)]
    # Tests may replace a worker in this list (a restart); all are stopped.
    workers = [p for p, _, _ in started]
    yield workers, [a for _, a, _ in started], env, marker
    for proc in workers:
        stop_worker(proc)
    deadline = time.monotonic() + 20
    while worker_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker_processes(marker) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_prints_its_address_and_stops_cleanly(marker_env, sig):
    env, marker = marker_env
    proc, address, line = start_worker(env)
    assert line.endswith(f"(pid {proc.pid})")
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5):
        pass
    assert len(worker_processes(marker)) == 1
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert f"{signal.Signals(sig).name}, stopping" in out and "tffpipe worker stopped" in out
    assert worker_processes(marker) == []


def test_worker_on_a_taken_port_fails_in_one_line(marker_env):
    env, marker = marker_env
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "tffpipe.worker", f"--port={port}", "--insecure_workers"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: port {port} is in use; pick another with --port"]
    assert worker_processes(marker) == []


def test_two_workers_started_at_once_on_one_port_leave_one_serving(marker_env):
    env, marker = marker_env
    from tffpipe import worker

    port = worker.free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tffpipe.worker", f"--port={port}", "--insecure_workers"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        loser = None
        deadline = time.monotonic() + 60
        while loser is None and time.monotonic() < deadline:
            loser = next((p for p in procs if p.poll() is not None), None)
            time.sleep(0.05)
        assert loser is not None, "neither worker stopped"
        assert loser.returncode == 1
        assert loser.stderr.read().strip().splitlines() == [
            f"error: port {port} is in use by another tffpipe worker on this machine; pick another with --port"
        ]
        (winner,) = [p for p in procs if p is not loser]
        assert winner.stdout.readline().startswith("warning: --insecure_workers: serving plaintext gRPC")
        assert winner.stdout.readline().startswith("tffpipe worker ready at ")
        assert len(worker_processes(marker)) == 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.communicate(timeout=30)


def test_a_port_claim_is_held_until_closed():
    from tffpipe import worker

    port = worker.free_port()
    first = worker.claim_port(port)
    assert first is not None
    assert worker.claim_port(port) is None
    first.close()
    again = worker.claim_port(port)
    assert again is not None
    again.close()


def test_sigkilled_worker_takes_its_tff_service_with_it(marker_env):
    env, marker = marker_env
    proc, _, _ = start_worker(env)
    assert len(worker_processes(marker)) == 1
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while worker_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker_processes(marker) == []


def test_the_worker_module_does_not_import_tensorflow():
    code = "import sys, tffpipe.worker; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
    assert os.access(processes.binary_path(), os.X_OK)


def test_a_computation_with_dependent_aggregations_cannot_be_split():
    @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
    def sum_twice(values):
        total = tff.federated_sum(values)
        return tff.federated_sum(tff.federated_broadcast(total))

    with pytest.raises(remote.NotMergeable) as raised:
        remote.check_mergeable(sum_twice)
    message = str(raised.value)
    assert message.startswith("the round cannot be split across workers (TFF's mergeable form: ")
    assert message.endswith("; use --runtime=cpp") and "\n" not in message


def test_config_accepts_ipv6_and_dns_worker_addresses():
    workers = ("[::1]:8000", "tffpipe-worker-0.tffpipe-worker:8000")
    assert make_config(runtime="remote", workers=workers, insecure_workers=True).runtime.remote.workers == workers


def test_doctor_checks_that_workers_answer(two_workers):
    _, addresses, _, _ = two_workers
    port = worker.free_port()
    cfg = doctor.runtime_config("remote", workers=(*addresses, f"127.0.0.1:{port}"), insecure_workers=True)
    checks = doctor.check_runtime(
        dataclasses.replace(
            cfg,
            runtime=dataclasses.replace(
                cfg.runtime, remote=dataclasses.replace(cfg.runtime.remote, worker_wait_sec=1.0)
            ),
        ),
        0,
    )
    assert [c.line() for c in checks] == [
        "warn  transport: plaintext to the workers (--insecure_workers)",
        f"ok    worker {addresses[0]}: accepts connections",
        f"ok    worker {addresses[1]}: accepts connections",
        f"FAIL  worker 127.0.0.1:{port}: no TFF worker answered within 1 s "
        f"(start one there with `python -m tffpipe.worker --port={port} --insecure_workers`)",
    ]
    with pytest.raises(errors.ConfigError, match="--runtime=remote needs --workers"):
        doctor.runtime_config("remote")


@tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
def total(values):
    """A federated sum: each of its clients' values goes to one worker's share."""
    return tff.federated_sum(values)


def test_a_worker_that_comes_back_within_the_wait_keeps_its_share(two_workers):
    workers, addresses, env, marker = two_workers

    lines = []
    context = remote.FailoverContext(addresses, 60.0, lines.append)
    port = int(addresses[1].rsplit(":", 1)[1])
    with tff.framework.get_context_stack().install(context):
        assert total([1.0, 2.0, 3.0, 4.0]) == 10.0
        kill_worker(workers, 1, marker)
        # Restarted a moment later on the same port, as a pod would be: the
        # new service knows none of the old one's executors.
        restart = threading.Timer(1.0, lambda: workers.__setitem__(1, start_worker(env, port)[0]))
        restart.start()
        try:
            assert total([1.0, 2.0, 3.0, 5.0]) == 11.0
        finally:
            restart.join()
    assert lines == [] and context.workers_lost == 0
    assert context.live_addresses == addresses


def test_a_lost_worker_is_dropped_then_taken_back_when_it_answers(two_workers, monkeypatch):
    workers, addresses, env, marker = two_workers

    lines = []
    context = remote.FailoverContext(addresses, 0.5, lines.append)
    values = [1.0, 2.0, 3.0, 4.0]
    with tff.framework.get_context_stack().install(context):
        assert total(values) == 10.0
        kill_worker(workers, 1, marker)
        assert total(values) == 10.0  # all four clients, on the remaining worker
        assert context.live_addresses == addresses[:1] and context.workers_lost == 1
        assert lines[-1].startswith(f"worker {addresses[1]} is unreachable: no answer for 0.5 s")
        assert lines[-1].endswith(f"running the computation again on the remaining 1 worker(s): {addresses[0]}")

        workers[1] = start_worker(env, port=int(addresses[1].rsplit(":", 1)[1]))[0]
        monkeypatch.setattr(remote, "_REJOIN_EVERY_SEC", 0.0)
        # The restarted worker has answered `start_worker`; a busy machine (the
        # suite runs on two workers) can take longer than the 0.5 s probe to
        # open a channel, which is not what this test is about.
        monkeypatch.setattr(remote, "_PROBE_SEC", 10.0)
        assert total(values) == 10.0
        assert context.live_addresses == addresses
        assert lines[-1] == f"worker {addresses[1]} answers again; using it from now on"

        for proc in workers:
            proc.kill()
            proc.wait()
        with pytest.raises(remote.NoWorkersLeft, match="no workers left"):
            total(values)


def _service_of(worker_proc, marker):
    """The pid of the TFF service (`worker_binary`) that `python -m tffpipe.worker` started."""

    def parent(pid):
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])

    for pid, _ in worker_processes(marker):
        # Its parent is the relay into its private network, whose parent is the worker.
        if worker_proc.pid in (parent(pid), parent(parent(pid))):
            return pid
    raise AssertionError("no TFF service under that worker")


def test_a_hung_worker_is_dropped_after_the_wait(two_workers):
    workers, addresses, _, marker = two_workers
    lines = []
    context = remote.FailoverContext(addresses, 2.0, lines.append)
    values = [1.0, 2.0, 3.0, 4.0]
    with tff.framework.get_context_stack().install(context):
        assert total(values) == 10.0
        # Stopped, its connections stay open: TFF's calls alone would wait forever.
        service = _service_of(workers[1], marker)
        os.kill(service, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert total(values) == 10.0
            took = time.monotonic() - started
        finally:
            os.kill(service, signal.SIGCONT)
    assert context.live_addresses == addresses[:1]
    assert lines[-1].startswith(
        f"worker {addresses[1]} is unreachable: no answer for 2 s while it held a call (stopped or hung); "
        f"running the computation again on the remaining 1 worker(s)"
    )
    assert 2 <= took < 30


def _config(root, rounds=3, **values):
    return make_config(
        digits_num_clients=14,
        digits_eval_clients=4,
        digits_alpha=1.0,
        client_epochs=1,
        client_batch_size=32,
        rounds=rounds,
        clients_per_round=5,
        eval_every=0,
        checkpoint_every=1,
        root_dir=str(root),
        experiment_name="r",
        **values,
        **({"insecure_workers": True} if values.get("runtime") == "remote" else {}),
    )


@pytest.mark.parametrize(
    "flags",
    # All in the slow step (70 s of two TFF workers and two runs each); the
    # failover tests below run the same context in the default suite.
    [
        pytest.param({}, marks=pytest.mark.slow, id="plain"),
        pytest.param({"secure_aggregation": True}, marks=pytest.mark.slow, id="secure"),
        # Each worker gathers its share of the updates; the reservoirs merge.
        pytest.param({"robust": "median"}, marks=pytest.mark.slow, id="robust"),
        # Attackers' tokens travel with their data; ALIE's statistics in the state.
        pytest.param({"attack": "alie", "client_weighting": "uniform"}, marks=pytest.mark.slow, id="alie"),
        # Per-client and personalization evaluations run on the workers too.
        pytest.param({"personalize_every": 3}, marks=pytest.mark.slow, id="personalized"),
    ],
)
def test_three_rounds_on_two_workers_match_tff_cpp_runtime(two_workers, tmp_path, flags):
    _, addresses, _, _ = two_workers
    secure = bool(flags.get("secure_aggregation"))
    task = digits.create_task(num_clients=14, eval_clients=4, alpha=1.0, seed=0)
    lines = []
    remote_run = loop.run(
        _config(tmp_path / "remote", runtime="remote", workers=addresses, **flags),
        task,
        print_fn=lines.append,
    )
    local_run = loop.run(
        _config(tmp_path / "cpp", runtime="cpp", **flags),
        task,
        print_fn=lambda line: None,
    )
    assert remote.describe(addresses, 30.0) in lines
    assert (runtime.REMOTE_SECURE_NOTE in lines) == secure
    assert remote_run.rounds_done == local_run.rounds_done == 3
    for ours, theirs in zip(remote_run.model_weights.trainable, local_run.model_weights.trainable):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert remote_run.final_eval.keys() == local_run.final_eval.keys()
    for key, value in local_run.final_eval.items():
        assert remote_run.final_eval[key] == pytest.approx(value, rel=1e-5), key
    # Each evaluation client measured alone on the workers, as in TFF's runtime.
    assert remote_run.final_clients.keys() == local_run.final_clients.keys()
    for cid, figures in local_run.final_clients.items():
        for key, value in figures.items():
            assert remote_run.final_clients[cid][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (cid, key)
    if flags.get("personalize_every"):
        remote_rows, local_rows = _clients_rows(tmp_path / "remote"), _clients_rows(tmp_path / "cpp")
        assert remote_rows.keys() == local_rows.keys()
        for key, row in local_rows.items():
            assert float(remote_rows[key]["personalized/gain"]) == pytest.approx(
                float(row["personalized/gain"]), abs=1e-5
            ), key


@pytest.mark.slow
def test_fedbuff_on_two_workers_matches_tff_cpp_runtime(two_workers, tmp_path):
    _, addresses, _, _ = two_workers
    from tffpipe.program import fedbuff

    task = digits.create_task(num_clients=14, eval_clients=4, alpha=1.0, seed=0)
    values = dict(algorithm="fedbuff", async_concurrency=4, async_buffer_size=2, client_dropout=0.2)
    base = dict(
        digits_num_clients=14,
        digits_eval_clients=4,
        digits_alpha=1.0,
        client_epochs=1,
        client_batch_size=32,
        rounds=3,
        eval_every=0,
        experiment_name="r",
        **values,
    )
    remote_run = fedbuff.run(
        make_config(
            root_dir=str(tmp_path / "remote"), runtime="remote", workers=addresses, insecure_workers=True, **base
        ),
        task,
        print_fn=lambda line: None,
    )
    local_run = fedbuff.run(
        make_config(root_dir=str(tmp_path / "cpp"), runtime="cpp", **base), task, print_fn=lambda line: None
    )
    for ours, theirs in zip(remote_run.model_weights.trainable, local_run.model_weights.trainable):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def _clients_rows(root):
    import csv

    [path] = root.glob("*/results/clients.csv")
    with open(path) as f:
        return {(r["round"], r["client_id"]): r for r in csv.DictReader(f)}


def _examples_in_round(round_num, clients_per_round):
    """What the launcher's default digits run trains on in `round_num`."""
    cfg = make_config(clients_per_round=clients_per_round)
    task = digits.create_task()
    ids = sampling.sample_clients(list(task.train_data.client_ids), clients_per_round, seed=0, round_num=round_num)
    spec = loop.client_spec(cfg)
    return float(
        sum(
            int(tf.nest.flatten(batch)[0].shape[0])
            for i, cid in enumerate(ids)
            for batch in task.client_dataset(cid, spec, seed=sampling.client_seed(0, round_num, i))
        )
    )


@pytest.mark.slow  # the launcher end to end; FailoverContext's tests above are quick
def test_a_run_finishes_when_a_worker_is_killed_mid_run(two_workers, tmp_path):
    workers, addresses, env, _ = two_workers
    args = [
        sys.executable,
        "-m",
        "tffpipe.train",
        "--task=digits",
        "--rounds=6",
        "--clients_per_round=10",
        "--eval_every=3",
        "--checkpoint_every=1",
        "--experiment_name=k",
        f"--root_dir={tmp_path}",
        "--runtime=remote",
        f"--workers={','.join(addresses)}",
        "--worker_wait_sec=2",
        "--insecure_workers",
    ]
    launcher = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = []
    try:
        for line in launcher.stdout:
            out.append(line)
            if line.startswith("round 2/6"):
                workers[1].kill()  # SIGKILL: the worker and its TFF service are gone
                break
        out.extend(launcher.stdout)
        launcher.wait(timeout=300)
    finally:
        launcher.kill()
    stdout = "".join(out)
    assert launcher.returncode == 0, launcher.stderr.read()[-3000:]
    lost = [line for line in stdout.splitlines() if f"worker {addresses[1]} is unreachable" in line]
    assert lost and "running the computation again on the remaining 1 worker(s): " + addresses[0] in lost[0]
    assert [line.split()[1] for line in stdout.splitlines() if line.startswith("round ")] == [
        f"{r}/6" for r in range(1, 7)
    ]
    with open(tmp_path / "k" / "results" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["round"] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    # Every round trained all its 10 clients' examples, before and after the loss.
    assert [float(row["train/num_examples"]) for row in rows] == [
        _examples_in_round(r, clients_per_round=10) for r in range(1, 7)
    ]
    assert "done: 6 rounds" in stdout


def test_an_unreachable_worker_fails_in_one_line(tmp_path):
    # In this process (the launcher prints the same line after `error: `).
    port = worker.free_port()
    cfg = cli.parse(
        [
            "train",
            "--experiment_name=e",
            f"--root_dir={tmp_path}",
            "--runtime=remote",
            f"--workers=127.0.0.1:{port}",
            "--worker_wait_sec=1",
            "--insecure_workers",
        ]
    )
    printed = []
    with pytest.raises(remote.WorkerUnavailable) as info:
        api.train(cfg, printed.append)
    assert str(info.value) == (
        f"worker 127.0.0.1:{port} is unreachable: no TFF worker answered within 1 s "
        f"(start one there with `python -m tffpipe.worker --port={port} --insecure_workers`)"
    )
    assert not any(line.startswith("round") for line in printed)
    assert not os.path.exists(tmp_path / "e")
