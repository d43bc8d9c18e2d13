"""`--search=optuna`: a sweep whose trials Ray Tune runs, Optuna samples and ASHA stops early.

Each trial is still an ordinary launcher run (`python -m tffpipe.train`) in
`SWEEP/trials/<name>/`, started by a Tune function trainable on a Ray worker,
which reads the run's `results/metrics.csv` as it grows and reports the
chosen metric at each evaluated round. Optuna (Ray Tune's `OptunaSearch`)
proposes each trial's settings from those reports; ASHA (`ASHAScheduler`, with
rounds as its time) stops trials that trail at its rungs. Nothing of the
search itself is written here: the sampling, the rungs and the resumable
experiment state are Tune's and Optuna's.

Tune's experiment state lives in `SWEEP/tune/`; rerunning the same command
restores it (`Tuner.restore`): finished trials stay finished, interrupted
ones start again and their launchers resume from their checkpoints.
"""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Any
from collections.abc import Sequence

from tffpipe import errors
from tffpipe.experiments import grid
from tffpipe.experiments import runner

OBJECTIVE = "objective"  # the reported metric's key in Tune (metric names hold "/", Tune's nesting separator)
ROUND = "round"
EXPERIMENT = "search"
GRID_TRIAL = "trial"  # a grid sweep's only Tune parameter: the trial's name
GRID_METRIC = "eval/accuracy"  # what a grid trial reports to Tune (progress lines only)
DISTRIBUTIONS = ("loguniform", "uniform", "int")
_POLL_SEC = 0.5


@dataclasses.dataclass(frozen=True)
class Search:
    """What to search and how.

    Attributes:
      axes: setting -> choices (a list) or a distribution ("loguniform", low, high).
      common_flags: every trial's other flags.
      trials: how many trials Optuna samples.
      metric: the results column to optimise (`eval/accuracy`).
      mode: "max" or "min".
      rounds: each trial's rounds (ASHA's horizon).
      early_stopping: "asha" or "none".
      grace_rounds: rounds every trial runs before ASHA may stop it.
      seed: the sampler's seed (the common --seed), so a search is repeatable.
    """

    axes: dict[str, Any]
    common_flags: tuple[str, ...]
    trials: int
    metric: str
    mode: str
    rounds: int
    early_stopping: str
    grace_rounds: int
    seed: int


def parse_distribution(values: Sequence[str]) -> tuple[str, float, float] | None:
    """`["loguniform:0.001:0.3"]` -> ("loguniform", 0.001, 0.3); None for a list of choices.

    Raises:
      ConfigError: a distribution with bad bounds.
    """
    if len(values) != 1 or values[0].split(":", 1)[0] not in DISTRIBUTIONS:
        return None
    parts = values[0].split(":")
    try:
        kind, low, high = parts[0], float(parts[1]), float(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError) as e:
        raise errors.ConfigError(f"{values[0]!r}: expected {parts[0]}:LOW:HIGH") from e
    if (
        not low < high
        or (kind == "loguniform" and low <= 0)
        or (kind == "int" and (low, high) != (int(low), int(high)))
    ):
        raise errors.ConfigError(
            f"{values[0]!r}: needs LOW < HIGH"
            + (", both above 0" if kind == "loguniform" else "")
            + (", whole numbers" if kind == "int" else "")
        )
    return kind, low, high


def make_search(
    axes: dict[str, list[str]],
    common_flags: Sequence[str],
    trials: int,
    metric: str,
    mode: str,
    early_stopping: str,
    grace_rounds: int | None,
) -> Search:
    """A checked search: each choice and both ends of each range are checked as the launcher checks flags.

    Raises:
      ConfigError, TaskError: one line naming the grid entry.
    """
    if not axes:
        raise errors.ConfigError("--search=optuna needs at least one --grid setting to search")
    if trials < 1:
        raise errors.ConfigError(f"--trials must be at least 1, got {trials}")
    if mode not in ("max", "min"):
        raise errors.ConfigError(f"--mode must be max or min, got {mode!r}")
    if not metric.startswith(("eval/", "train/", "personalized/")):
        raise errors.ConfigError(f"--metric={metric}: expected a metrics column such as eval/accuracy or eval/loss")
    space: dict[str, Any] = {}
    for name, values in axes.items():
        try:
            distribution = parse_distribution(values)
        except errors.ConfigError as e:
            raise errors.ConfigError(f"--grid {name}: {e}") from e
        space[name] = distribution or list(values)
        ends = (
            [flag_value(distribution[1], distribution[0]), flag_value(distribution[2], distribution[0])]
            if distribution
            else values
        )
        for value in ends:
            grid.check_flags([*common_flags, f"--{name}={value}"], f"--grid {name}={value}")
    base = grid.check_flags(list(common_flags), "the common flags")
    rounds = base.schedule.rounds
    grace = grace_rounds if grace_rounds is not None else max(1, rounds // 9)
    if not 1 <= grace <= rounds:
        raise errors.ConfigError(f"--grace_rounds must be between 1 and --rounds ({rounds}), got {grace}")
    return Search(space, tuple(common_flags), trials, metric, mode, rounds, early_stopping, grace, base.schedule.seed)


def default_name(search: Search) -> str:
    """`search-<searched settings>-<hash of the whole search>`: the same command resumes it."""
    from tffpipe import run_names

    described = json.dumps(
        [
            search.axes,
            sorted(search.common_flags),
            search.trials,
            search.metric,
            search.mode,
            search.early_stopping,
            search.grace_rounds,
        ],
        sort_keys=True,
    )
    digest = hashlib.sha256(described.encode()).hexdigest()[:8]
    return f"search-{run_names.safe(','.join(search.axes))}-{digest}"


def flag_value(value: float, kind: str) -> str:
    """A sampled value as its flag takes it (a whole number for `int`, full precision otherwise)."""
    return str(int(round(value))) if kind == "int" else repr(float(value))


def tune_space(search: Search) -> dict[str, Any]:
    from ray import tune

    space = {}
    for name, axis in search.axes.items():
        if isinstance(axis, list):
            space[name] = tune.choice(axis)
        elif axis[0] == "int":
            space[name] = tune.randint(int(axis[1]), int(axis[2]) + 1)  # Tune's upper end is exclusive
        else:
            space[name] = getattr(tune, axis[0])(axis[1], axis[2])
    return space


def trial_name(trial_id: str, values: dict[str, Any]) -> str:
    """`trial_9114ffb9-client_learning_rate=0.01234-algorithm=fedprox`: Tune's trial id, then the values (4 digits).

    The id is Tune's, kept when a search is restored, so a resumed trial finds its folder.
    """
    from tffpipe import run_names

    shown = "-".join(f"{n}={format(v, '.4g') if isinstance(v, float) else v}" for n, v in values.items())
    return run_names.safe(f"trial_{trial_id}-{shown}")


def trial_flags(search: Search, values: dict[str, Any]) -> list[str]:
    flags = list(search.common_flags)
    for name, value in values.items():
        axis = search.axes[name]
        flags.append(f"--{name}={value if isinstance(axis, list) else flag_value(value, axis[0])}")
    flags.append(f"--hparams={','.join(search.axes)}")
    return flags


def trainable(config: dict[str, Any], search: Search, sweep_dir: str) -> None:
    """One Tune trial of a search: the launcher with the sampled settings."""
    from ray import tune

    values = {name: config[name] for name in search.axes}
    name = trial_name(tune.get_context().get_trial_id(), values)
    launch_and_report(name, trial_flags(search, values), search.metric, sweep_dir)


def grid_trainable(config: dict[str, Any], trials: dict[str, tuple[tuple[str, ...], int]], sweep_dir: str) -> None:
    """One Tune trial of a grid sweep on Ray: `config["trial"]` names it; `trials` maps names to (flags, rounds).

    A trial whose folder already holds its rounds and model is not started again.
    """
    name = config[GRID_TRIAL]
    flags, rounds = trials[name]
    if runner.is_finished(os.path.join(grid.trial_root(sweep_dir), name), rounds):
        _report_rows(name, GRID_METRIC, sweep_dir, 0)
        return
    launch_and_report(name, list(flags), GRID_METRIC, sweep_dir)


def launch_and_report(name: str, flags: list[str], metric: str, sweep_dir: str) -> None:
    """Runs `python -m tffpipe.train` as trial `name` and reports `metric` to Tune at each evaluated round.

    Raises:
      RuntimeError: the launcher failed (its one-line error).
    """
    from tffpipe.runtimes import processes

    root = grid.trial_root(sweep_dir)
    os.makedirs(os.path.join(sweep_dir, "logs"), exist_ok=True)
    command = [sys.executable, "-m", "tffpipe.train", *flags, f"--root_dir={root}", f"--experiment_name={name}"]
    parent = os.getpid()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_"))}
    with open(os.path.join(sweep_dir, "logs", f"{name}.log"), "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=lambda: processes.die_with_parent(parent),  # noqa: PLW1509 (the death signal must be set in the child, before exec)
        )
    reported = 0
    try:
        while True:
            finished = proc.poll() is not None
            reported = _report_rows(name, metric, sweep_dir, reported)
            if finished:
                break
            time.sleep(_POLL_SEC)
        if proc.returncode != 0:
            raise RuntimeError(runner.last_error(log.name))
    finally:
        processes.stop([proc], runner.STOP_WAIT_SEC)  # ASHA stopped the trial, or Tune is shutting down


def _report_rows(name: str, metric: str, sweep_dir: str, after: int) -> int:
    """Reports the trial's evaluated rounds after round `after`; returns the last one reported."""
    from ray import tune
    from tffpipe import results

    frame = results.read_csv(os.path.join(grid.trial_root(sweep_dir), name, "results", "metrics.csv"))
    if metric not in frame:
        return after
    for _, row in frame[frame["round"] > after].dropna(subset=[metric]).iterrows():
        after = int(row["round"])
        tune.report({ROUND: after, OBJECTIVE: float(row[metric]), "trial": name})
    return after
