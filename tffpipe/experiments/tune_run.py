"""Runs a search (or a grid sweep on Ray) as a Ray Tune experiment on a private Ray cluster or the one `--ray_address` names.

Prints a line per trial event, and returns one `TrialResult` per trial for
the summary. The private cluster is `ray_cluster`'s: token-authenticated,
every Ray process (and so every trial's launcher, by its parent-death
signal) gone when the sweep ends, SIGKILL included.
"""

import contextlib
import dataclasses
import os
import sys
from typing import Any
from collections.abc import Callable, Iterator

# Before Ray Tune loads: no TensorBoard copy of each trial's results (the
# trials' own run folders hold them; it would show every trial twice), only
# the JSON and CSV records Tune reads back; Ctrl-C is the sweep's to handle.
os.environ.update(
    {
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
        "TUNE_DISABLE_SIGINT_HANDLER": "1",
        "RAY_AIR_NEW_OUTPUT": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
)

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from tffpipe.experiments import grid
from tffpipe.experiments import search as search_lib
from tffpipe.runtimes import ray_cluster


@dataclasses.dataclass
class TrialResult:
    """A trial as Tune left it: its folder name, sampled values, last reported round and status."""

    name: str
    values: dict[str, Any]
    rounds: int
    status: str  # "finished", "stopped early", "failed" (its log says why), "not finished"


def trial_name(trial_id: str, config: dict[str, Any], search: search_lib.Search) -> str:
    return search_lib.trial_name(trial_id, {n: config[n] for n in search.axes})


@dataclasses.dataclass
class _Experiment:
    """What differs between a search and a grid on Ray: the trainable, its space and config, how trials are named."""

    trainable: Any
    param_space: dict[str, Any]
    tune_config: Any
    name_of: Callable[[Any], str]  # a Tune Trial -> its folder name
    rounds_of: Callable[[str], int]  # a folder name -> the rounds that trial trains
    total: int
    metric: str
    stops_early: bool  # whether a scheduler may stop trials before their rounds


def run(
    search: search_lib.Search,
    sweep_dir: str,
    parallel: int,
    print_fn: Callable[[str], None],
    ray_address: str = "",
    allow_unauthenticated: bool = False,
) -> list[TrialResult]:
    """Runs (or resumes) the search; returns its trials in the order Tune made them.

    Ray's and Tune's own messages go to `SWEEP/logs/ray.log`.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study and trial
    scheduler = (
        ASHAScheduler(
            time_attr=search_lib.ROUND, max_t=search.rounds, grace_period=search.grace_rounds, reduction_factor=3
        )
        if search.early_stopping == "asha"
        else None
    )
    experiment = _Experiment(
        trainable=tune.with_parameters(search_lib.trainable, search=search, sweep_dir=os.path.abspath(sweep_dir)),
        param_space=search_lib.tune_space(search),
        tune_config=tune.TuneConfig(
            metric=search_lib.OBJECTIVE,
            mode=search.mode,
            search_alg=OptunaSearch(seed=search.seed),
            scheduler=scheduler,
            num_samples=search.trials,
            max_concurrent_trials=parallel,
        ),
        name_of=lambda trial: trial_name(trial.trial_id, trial.config, search),
        rounds_of=lambda name: search.rounds,
        total=search.trials,
        metric=search.metric,
        stops_early=scheduler is not None,
    )
    return _run_logged(experiment, sweep_dir, parallel, print_fn, ray_address, allow_unauthenticated)


def run_grid(
    plan: grid.Plan,
    sweep_dir: str,
    parallel: int,
    print_fn: Callable[[str], None],
    ray_address: str,
    allow_unauthenticated: bool,
) -> list[TrialResult]:
    """Runs (or resumes) a grid sweep's trials as Tune trials, one per Ray worker; returns them in the plan's order."""
    trials = {t.name: (t.flags, t.rounds) for t in plan.trials}
    experiment = _Experiment(
        trainable=tune.with_parameters(search_lib.grid_trainable, trials=trials, sweep_dir=os.path.abspath(sweep_dir)),
        param_space={search_lib.GRID_TRIAL: tune.grid_search([t.name for t in plan.trials])},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=parallel),
        name_of=lambda trial: trial.config[search_lib.GRID_TRIAL],
        rounds_of=lambda name: trials[name][1],
        total=len(plan.trials),
        metric=search_lib.GRID_METRIC,
        stops_early=False,
    )
    found = {
        r.name: r for r in _run_logged(experiment, sweep_dir, parallel, print_fn, ray_address, allow_unauthenticated)
    }
    return [found[t.name] for t in plan.trials if t.name in found]


def _run_logged(
    experiment: _Experiment,
    sweep_dir: str,
    parallel: int,
    print_fn: Callable[[str], None],
    ray_address: str,
    allow_unauthenticated: bool,
) -> list[TrialResult]:
    with _stderr_to(os.path.join(sweep_dir, "logs", "ray.log")):
        return _run(experiment, sweep_dir, parallel, print_fn, ray_address, allow_unauthenticated)


@contextlib.contextmanager
def _stderr_to(path: str) -> Iterator[None]:
    """Sends this process's standard error (Python's and the C++ core's) to `path` for the block.

    Ray's core prints to the driver's stderr, and without Ray's dashboard
    agent (core Ray only) each process that looks for its metrics agent prints
    "Failed to establish connection to the metrics exporter agent" after 30 s
    (ray-project/ray#59665); the sweep reports what matters in its own lines.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _run(
    experiment: _Experiment,
    sweep_dir: str,
    parallel: int,
    print_fn: Callable[[str], None],
    ray_address: str,
    allow_unauthenticated: bool,
) -> list[TrialResult]:
    cluster = (
        ray_cluster.join(ray_address, allow_unauthenticated, print_fn)
        if ray_address
        else ray_cluster.start_private(parallel, 0, print_fn)
    )
    try:
        storage = os.path.abspath(os.path.join(sweep_dir, "tune"))
        path = os.path.join(storage, search_lib.EXPERIMENT)
        trainable = tune.with_resources(experiment.trainable, {"cpu": 1})
        progress = _Progress(experiment, print_fn)
        if tune.Tuner.can_restore(path):
            print_fn(f"sweep: resuming the Tune experiment in {path}")
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=experiment.param_space,
                tune_config=experiment.tune_config,
                run_config=tune.RunConfig(
                    name=search_lib.EXPERIMENT, storage_path=storage, verbose=0, callbacks=_callbacks(progress)
                ),
            )
        # A restored Tuner keeps its callbacks from the saved run config; ours prints this session's lines.
        tuner._local_tuner.get_run_config().callbacks = _callbacks(progress)  # type: ignore[union-attr]
        found = tuner.fit()
    finally:
        cluster.close()
    # Tune's Trial records (status, config, last result) for every trial, those that never reported included.
    return [_result(trial, experiment) for trial in found._experiment_analysis.trials]


def _callbacks(progress: "_Progress") -> list[Any]:
    return [progress, JsonLoggerCallback(), CSVLoggerCallback()]


def _result(trial: Any, experiment: _Experiment) -> TrialResult:
    name = experiment.name_of(trial)
    rounds = int((trial.last_result or {}).get(search_lib.ROUND, 0))
    if trial.status == "ERROR":
        return TrialResult(name, trial.config, rounds, "failed")
    if trial.status != "TERMINATED":
        return TrialResult(name, trial.config, rounds, "not finished")
    stopped = experiment.stops_early and rounds < experiment.rounds_of(name)
    return TrialResult(name, trial.config, rounds, "stopped early" if stopped else "finished")


class _Progress(tune.Callback):
    """A line per trial start, end, early stop and failure (Tune's own tables are off)."""

    def __init__(self, experiment: _Experiment, print_fn: Callable[[str], None]):
        self.experiment = experiment
        self.print_fn = print_fn
        self.rounds: dict[str, int] = {}
        self.order: dict[str, int] = {}  # trial id -> the order it started in, this session

    def _line(self, trial: Any, text: str) -> None:
        number = self.order.setdefault(trial.trial_id, len(self.order) + 1)
        self.print_fn(f"[{number}/{self.experiment.total}] {self.experiment.name_of(trial)}: {text}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self._line(trial, "started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.rounds[trial.trial_id] = int(result.get(search_lib.ROUND, 0))

    def on_trial_complete(self, iteration, trials, trial, **info):
        rounds = self.rounds.get(trial.trial_id, 0)
        value = (trial.last_result or {}).get(search_lib.OBJECTIVE)
        shown = f"; {self.experiment.metric} {value:.4f} at round {rounds}" if value is not None else ""
        done = not self.experiment.stops_early or rounds >= self.experiment.rounds_of(self.experiment.name_of(trial))
        self._line(trial, ("finished" if done else "stopped early by ASHA") + shown)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "failed (see its log in logs/)")
