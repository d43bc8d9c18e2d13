"""Shared test helpers: launching the CLI and finding leftover TFF workers."""

import glob
import os
import select
import shlex
import subprocess
import sys
import time
import uuid

import pytest

from tffpipe import config
from tffpipe.runtimes import processes
import contextlib

# Workers started by in-process tests die with pytest, quietly.
processes.install_worker_reaper()


def _build_once_per_configuration():
    """Tests that share a task and settings share the TFF processes built for them.

    Building a learning process costs about 0.7-2.5 s and an evaluation
    process about 0.5 s; many tests run the same configuration (a run, then
    its resume; the same task under several checks). The processes are
    immutable TFF computations, so reusing them changes nothing a test sees.
    The key holds the task object itself, so its id cannot be reused.
    """
    import json

    from tffpipe.program import assembly

    learning, evaluation = {}, {}
    build_learning, build_evaluation = assembly.build_learning_process, assembly.build_evaluation_process

    def settings_key(cfg):
        values = cfg.to_dict()
        values.pop("output", None)  # where results go does not change the process
        return json.dumps(values, sort_keys=True, default=str)

    def learning_process(task, cfg, train_client_ids, loop_implementation=None):
        key = (id(task), settings_key(cfg), tuple(train_client_ids), str(loop_implementation))
        if key not in learning:
            learning[key] = (task, build_learning(task, cfg, train_client_ids, loop_implementation))
        return learning[key][1]

    def evaluation_process(task, loop_implementation=None, cfg=None):
        key = (id(task), str(loop_implementation), settings_key(cfg) if cfg is not None else None)
        if key not in evaluation:
            evaluation[key] = (task, build_evaluation(task, loop_implementation, cfg))
        return evaluation[key][1]

    assembly.build_learning_process = learning_process
    assembly.build_evaluation_process = evaluation_process


_build_once_per_configuration()

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# A small digits task (9 training clients, 3 held out) and its flags, for
# tests that train a few short rounds.
SMALL_DIGITS_FLAGS = {
    "digits_num_clients": 12,
    "digits_eval_clients": 3,
    "digits_alpha": 1.0,
    "client_epochs": 1,
    "client_batch_size": 32,
    "rounds": 3,
    "eval_every": 0,
}


@pytest.fixture(scope="module")
def small_digits():
    from tffpipe_tasks import digits

    return digits.create_task(num_clients=12, eval_clients=3, alpha=1.0, seed=0)


def make_config(**values):
    """A run config from flag-named settings, checked as the launcher checks flags.

    `make_config(rounds=3, dp="fixed", dp_noise_multiplier=1.0, root_dir=tmp)`
    """
    return config.from_values(values)


# A small digits task (10 training clients) for in-process parity tests.
SMALL_DIGITS = {"digits_num_clients": 14, "digits_eval_clients": 4, "digits_alpha": 1.0}


def small_digits_config(root, name, **values):
    """An in-process run of the small digits task: 2 rounds of 7 clients, batch 16, evaluated at round 2."""
    return make_config(
        **{
            **SMALL_DIGITS,
            "client_epochs": 1,
            "client_batch_size": 16,
            "rounds": 2,
            "clients_per_round": 7,
            "eval_every": 2,
            "root_dir": str(root),
            "experiment_name": name,
            "runtime": "inprocess",
            **values,
        }
    )


def csv_rows(path) -> list[dict[str, str]]:
    """A CSV file's rows as dicts."""
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def user_env() -> dict[str, str]:
    """This process's environment, less what importing TFF set in it
    (TF_CPP_MIN_LOG_LEVEL=1).

    Launched programs then see what a user's shell gives them.
    """
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def processes_with_marker(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes whose environment holds `marker`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append((int(pid), cmdline))
    return found


def start_worker(env, port=0, timeout=60.0, args=("--insecure_workers",)):
    """Starts `python -m tffpipe.worker` with `args`; returns (process, its address, its ready line)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tffpipe.worker", f"--port={port}", *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        # Byte by byte from the descriptor: a buffered readline could take the
        # ready line into Python's buffer along with the line before it, where
        # select() no longer sees it.
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        byte = os.read(proc.stdout.fileno(), 1) if ready else b""
        if byte == b"\n":
            text, line = line.decode().strip(), b""
            if text.startswith("tffpipe worker ready at "):
                served_port = int(text.split()[4].rsplit(":", 1)[1])
                return proc, f"127.0.0.1:{served_port}", text
        elif byte:
            line += byte
        elif proc.poll() is not None:
            raise AssertionError(f"worker exited: {proc.stderr.read()[-2000:]}")
    proc.kill()
    raise AssertionError("worker did not get ready")


def worker_processes(marker: str) -> list[tuple[int, str]]:
    """TFF's worker services (not the relays that run them in private networks) started with `marker`."""
    return [p for p in processes_with_marker(marker) if p[1].split(" ", 1)[0].endswith("worker_binary")]


@pytest.fixture
def marker_env():
    """An environment whose processes (and their children) can be found later."""
    marker = f"TFFPIPE_TEST_MARKER={uuid.uuid4().hex}"
    env = user_env()
    key, value = marker.split("=")
    env[key] = value
    yield env, marker
    for pid, _ in processes_with_marker(marker):
        with contextlib.suppress(OSError):
            os.kill(pid, 9)


def run_train(args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Runs `python -m tffpipe.train ARGS` as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "tffpipe.train", *args],
        cwd=REPO_ROOT,
        env=env or user_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def scalar_steps(logdir) -> dict[str, list[int]]:
    """TensorBoard tag -> the steps it was written at, over every event file."""
    import tensorflow as tf

    steps = {}
    for path in glob.glob(os.path.join(str(logdir), "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return steps


README_PREFIX = "PYTHONPATH=. uv run python "


def _nav_files(entries) -> list[str]:
    files = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        files += _nav_files(value) if isinstance(value, list) else [value]
    return files


def documentation_pages() -> list[tuple[str, str]]:
    """(path, text) of README.md, then of each page of the documentation site in mkdocs.yml's order."""
    import yaml

    with open(os.path.join(REPO_ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        nav = yaml.safe_load(f)["nav"]
    paths = ["README.md"] + [os.path.join("docs", page) for page in _nav_files(nav)]
    pages = []
    for path in paths:
        with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
            pages.append((path, f.read()))
    return pages


def documentation_page(name: str) -> str:
    """The text of one page of the site (`docs/<name>`)."""
    with open(os.path.join(REPO_ROOT, "docs", name), encoding="utf-8") as f:
        return f.read()


def run_readme_command(command: str, cwd, env, root_dir) -> subprocess.CompletedProcess:
    """Runs a README launcher command (`PYTHONPATH=. uv run python -m ...`) from `cwd`, writing under `root_dir`."""
    assert command.startswith(README_PREFIX), command
    env = dict(env, PYTHONPATH=".")
    return subprocess.run(
        [sys.executable, *shlex.split(command[len(README_PREFIX) :]), f"--root_dir={root_dir}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
