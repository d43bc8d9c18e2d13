"""Runs a sweep's trials as launcher processes, a few at a time, each to its own run folder and log.

Each trial is `python -m tffpipe.train` with its flags, so it checkpoints,
resumes and reports exactly as a run started by hand. A trial whose folder
already holds its rounds and exported model is skipped; one with fewer
rounds resumes. Ctrl-C (or SIGTERM) interrupts every running trial the way
Ctrl-C interrupts a launcher, and waits for them; a SIGKILLed sweep takes its
trials with it (the kernel's parent-death signal), so none is left running.
"""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from tffpipe.experiments import grid
from tffpipe.program import saved_settings
from tffpipe.runtimes import processes

FINISHED, SKIPPED, FAILED, INTERRUPTED = "finished", "skipped", "failed", "interrupted"
_POLL_SEC = 0.2
# A launcher saves nothing on Ctrl-C beyond its checkpoints; it only needs to stop its workers.
STOP_WAIT_SEC = 60.0


@dataclasses.dataclass
class Outcome:
    """What became of one trial."""

    trial: grid.Trial
    status: str
    seconds: float = 0.0
    message: str = ""


def run_dir(sweep_dir: str, trial: grid.Trial) -> str:
    return os.path.join(grid.trial_root(sweep_dir), trial.name)


def log_path(sweep_dir: str, trial: grid.Trial) -> str:
    return os.path.join(sweep_dir, "logs", f"{trial.name}.log")


def rounds_done(folder: str) -> int:
    """The newest checkpointed round of a run folder (0 when it has none)."""
    return saved_settings.newest_round(os.path.join(folder, "checkpoints")) or 0


def is_finished(folder: str, rounds: int) -> bool:
    """Whether a trial's folder holds all its rounds and its exported model."""
    return rounds_done(folder) >= rounds and os.path.exists(os.path.join(folder, "export", "saved_model.pb"))


def run_trials(
    plan: grid.Plan,
    sweep_dir: str,
    parallel: int,
    print_fn: Callable[[str], None],
    describe: Callable[[str], str] = lambda folder: "",
) -> list[Outcome]:
    """Runs every unfinished trial of `plan`, at most `parallel` at once.

    Args:
      plan: the sweep's trials.
      sweep_dir: the sweep's folder.
      parallel: trials running at once.
      print_fn: receives one line per trial event.
      describe: a finished trial's folder -> a short text of its results.

    Returns:
      One outcome per trial, in the plan's order.

    Raises:
      KeyboardInterrupt, errors.Terminated: after every running trial stopped;
        the outcomes so far are in the exception's `outcomes` attribute.
    """
    os.makedirs(os.path.join(sweep_dir, "logs"), exist_ok=True)
    total = len(plan.trials)
    outcomes: dict[int, Outcome] = {}
    pending = []
    for index, trial in enumerate(plan.trials):
        if is_finished(run_dir(sweep_dir, trial), trial.rounds):
            outcomes[index] = Outcome(trial, SKIPPED)
            print_fn(f"[{index + 1}/{total}] {trial.name}: finished earlier")
        else:
            pending.append(index)
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                index = pending.pop(0)
                running[index] = (_start(plan.trials[index], sweep_dir), time.monotonic())
                done = rounds_done(run_dir(sweep_dir, plan.trials[index]))
                verb = f"resumed from round {done}" if done else "started"
                print_fn(f"[{index + 1}/{total}] {plan.trials[index].name}: {verb}")
            for index, (proc, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[index]
                outcome = _outcome(plan.trials[index], proc.returncode, time.monotonic() - started, sweep_dir)
                outcomes[index] = outcome
                detail = describe(run_dir(sweep_dir, outcome.trial)) if outcome.status == FINISHED else outcome.message
                print_fn(
                    f"[{index + 1}/{total}] {outcome.trial.name}: {outcome.status} in "
                    f"{_duration(outcome.seconds)}" + (f"; {detail}" if detail else "")
                )
            time.sleep(_POLL_SEC)
    except BaseException as e:
        processes.stop([proc for proc, _ in running.values()], STOP_WAIT_SEC)
        for index, (_, started) in running.items():
            outcomes[index] = Outcome(plan.trials[index], INTERRUPTED, time.monotonic() - started)
        e.outcomes = [outcomes[i] for i in sorted(outcomes)]  # type: ignore[attr-defined]
        raise
    return [outcomes[i] for i in range(total)]


def _start(trial: grid.Trial, sweep_dir: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "tffpipe.train",
        *trial.flags,
        f"--root_dir={grid.trial_root(sweep_dir)}",
        f"--experiment_name={trial.name}",
    ]
    parent = os.getpid()
    with open(log_path(sweep_dir, trial), "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: processes.die_with_parent(parent),  # noqa: PLW1509 (the death signal must be set in the child, before exec)
        )


def _outcome(trial: grid.Trial, code: int, seconds: float, sweep_dir: str) -> Outcome:
    if code == 0:
        return Outcome(trial, FINISHED, seconds)
    if code in (130, 143, -signal.SIGINT, -signal.SIGTERM):
        return Outcome(trial, INTERRUPTED, seconds)
    return Outcome(
        trial, FAILED, seconds, f"{last_error(log_path(sweep_dir, trial))} (log: {log_path(sweep_dir, trial)})"
    )


def last_error(path: str) -> str:
    """The launcher's one-line error: the log's last `error:` line, else its last line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "exited with an error"
    errors_seen = [line for line in lines if line.startswith("error:")]
    return (errors_seen or lines or ["exited with an error"])[-1]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"
