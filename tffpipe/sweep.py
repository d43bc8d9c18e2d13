"""`python -m tffpipe.sweep`: runs a grid of settings and seeds, and summarises it as mean ± std over seeds.

  python -m tffpipe.sweep --grid client_learning_rate=0.02,0.05,0.1 --grid algorithm=fedavg,fedprox \\
      --seeds=3 --rounds=20
  python -m tffpipe.sweep --sweep_file=sweep.yaml

Every flag that is not the sweep's own goes to each trial, which is an
ordinary `python -m tffpipe.train` run in `SWEEP/trials/<swept values>/`.
Rerunning the same command skips finished trials and resumes interrupted
ones. At the end (and after Ctrl-C, for what finished) the sweep writes
`summary.csv`, prints it, draws `plots/` and writes a TensorBoard HParams
configuration of the swept settings.
"""

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import NoReturn

from tffpipe import errors
from tffpipe.program import files
from tffpipe.runtimes import processes

DEFAULT_ROOT = os.path.join(tempfile.gettempdir(), "tffpipe")
_TUNE_STOPPED = "the {what} stopped; its trials keep their last checkpoints; rerun the same command to resume it"


class SweepStopped(errors.UserError):
    """The sweep ended before every trial finished; `code` is its exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code

    @classmethod
    def by_signal(cls, error: BaseException, detail: str) -> "SweepStopped":
        """Ctrl-C (exit 130) or SIGTERM (143), in one line: `interrupted: <detail>`."""
        if isinstance(error, KeyboardInterrupt):
            return cls(f"interrupted: {detail}", 130)
        return cls(f"terminated (SIGTERM): {detail}", 143)

    @classmethod
    def failed_on_tune(cls, trials: list, total: int, sweep_dir: str) -> "SweepStopped | None":
        """The exit (1) of a Tune sweep with failed trials, naming the first and its log; None without."""
        failed = [t for t in trials if t.status == "failed"]
        if not failed:
            return None
        log = os.path.join(sweep_dir, "logs", failed[0].name + ".log")
        return cls(f"{len(failed)} of {total} trials failed (first: {failed[0].name}; its log is {log})", 1)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        raise errors.ConfigError(message)


def _default_parallel() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


def _parser() -> _Parser:
    parser = _Parser(
        prog="python -m tffpipe.sweep",
        allow_abbrev=False,
        description="Runs every combination of --grid values (times --seeds) as separate `python -m tffpipe.train` "
        "runs and summarises them. Flags that are not listed here go to every trial.",
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="SETTING=V1,V2,...",
        help="a launcher setting and the values to try; repeat for more settings (every combination runs)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="run each combination with N seeds: --seed (default 0) and the next N-1",
    )
    parser.add_argument(
        "--sweep_file",
        default=None,
        metavar="YAML",
        help="a file with grid: {setting: [values]}, seeds: N and flags: {setting: value}; for values "
        "holding commas. --grid and --seeds add to it",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="trials running at once (default: half the cores, at least 1)",
    )
    parser.add_argument("--root_dir", default=DEFAULT_ROOT, help="folder holding sweeps (default %(default)s)")
    parser.add_argument(
        "--sweep_name",
        default="",
        help="the sweep's folder under --root_dir (default: "
        "sweep-<swept settings>-<hash of the other flags>, so the same command resumes it)",
    )
    search = parser.add_argument_group("search (Optuna proposes, ASHA stops poor trials early; run by Ray Tune)")
    search.add_argument(
        "--search",
        choices=("grid", "optuna"),
        default="grid",
        help="grid: every combination; optuna: --trials samples of the --grid choices and ranges "
        "(SETTING=loguniform:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH)",
    )
    search.add_argument("--trials", type=int, default=10, help="optuna: trials to sample (default %(default)s)")
    search.add_argument(
        "--metric", default="eval/accuracy", help="optuna: the metrics column to optimise (default %(default)s)"
    )
    search.add_argument(
        "--mode",
        choices=("max", "min"),
        default=None,
        help="optuna: maximise or minimise --metric (default: min for *loss*, else max)",
    )
    search.add_argument(
        "--early_stopping",
        choices=("asha", "none"),
        default="asha",
        help="optuna: stop trials that trail at ASHA's rungs (rounds 1x, 3x, 9x --grace_rounds)",
    )
    search.add_argument(
        "--grace_rounds",
        type=int,
        default=None,
        help="optuna: rounds every trial runs before ASHA may stop it (default: --rounds / 9)",
    )
    search.add_argument(
        "--ray_address",
        default="",
        help="run trials on this Ray cluster (HOST:PORT, "
        "token-authenticated; --root_dir must be on storage every node shares): a grid's trials one "
        "per Ray worker, a search's instead of on a private Ray on this machine",
    )
    search.add_argument(
        "--ray_allow_unauthenticated",
        action="store_true",
        help="accept a --ray_address cluster without token authentication",
    )
    return parser


def main(argv: Sequence[str], print_fn: Callable[[str], None]) -> int:
    """Runs a sweep; returns the exit code (0 when every trial finished)."""
    from tffpipe.experiments import grid
    from tffpipe.experiments import report
    from tffpipe.experiments import runner

    args, trial_flags = _parser().parse_known_args(list(argv))
    stray = [f for f in trial_flags if not f.startswith("--")]
    if stray:
        raise errors.ConfigError(f"unexpected argument {stray[0]!r}; flags are --name=value")
    axes: dict[str, list[str]] = {}
    seeds: int | None = None
    common: list[str] = []
    if args.sweep_file:
        axes, seeds, common = grid.load_sweep_file(args.sweep_file)
    for text in args.grid:
        name, values = grid.parse_grid(text)
        if name in axes:
            raise errors.ConfigError(f"--grid {name} is given twice")
        axes[name] = values
    seeds = args.seeds if args.seeds is not None else seeds
    if args.parallel is None:
        args.parallel = _default_parallel()
    if args.parallel < 1:
        raise errors.ConfigError(f"--parallel must be at least 1, got {args.parallel}")
    if args.search == "optuna":
        return _run_search(args, axes, seeds, [*common, *trial_flags], print_fn)
    plan = grid.make_plan(axes, seeds, [*common, *trial_flags])
    _check_cluster(args)
    sweep_dir = os.path.join(args.root_dir, args.sweep_name or plan.default_name())
    _save_plan(plan, sweep_dir)
    combinations = len(plan.trials) // len(plan.seeds) if seeds else len(plan.trials)
    print_fn(
        f"sweep: {len(plan.trials)} trials ({combinations} combinations x {len(plan.seeds)} seeds), "
        f"{min(args.parallel, len(plan.trials))} at a time; outputs in {sweep_dir}"
    )
    if args.ray_address:
        return _run_grid_on_ray(plan, sweep_dir, args, print_fn)
    try:
        outcomes = runner.run_trials(plan, sweep_dir, args.parallel, print_fn, describe=report.final_metrics)
    except (KeyboardInterrupt, errors.Terminated) as e:
        outcomes = getattr(e, "outcomes", [])
        report.write_grid(plan, sweep_dir, _done(outcomes), print_fn)
        stopped = sum(o.status == runner.INTERRUPTED for o in outcomes)
        raise SweepStopped.by_signal(
            e, f"{stopped} running trial(s) stopped at their last checkpoint; rerun the same command to resume them"
        ) from e
    report.write_grid(plan, sweep_dir, _done(outcomes), print_fn)
    failed = [o for o in outcomes if o.status == runner.FAILED]
    if failed:
        raise SweepStopped(
            f"{len(failed)} of {len(outcomes)} trials failed (first: {failed[0].trial.name}: "
            f"{failed[0].message}); the others are in the summary",
            1,
        )
    return 0


def _run_search(
    args: argparse.Namespace, axes: dict, seeds: int | None, common: list[str], print_fn: Callable[[str], None]
) -> int:
    from tffpipe.experiments import report
    from tffpipe.experiments import search as search_lib
    from tffpipe.experiments import summary

    if seeds is not None:
        raise errors.ConfigError(
            "--seeds applies to grid sweeps; a search samples settings with one seed (repeat "
            "its best settings over seeds with a grid sweep)"
        )
    mode = args.mode or ("min" if summary.lower_is_better(args.metric) else "max")
    found = search_lib.make_search(axes, common, args.trials, args.metric, mode, args.early_stopping, args.grace_rounds)
    _check_cluster(args)
    sweep_dir = os.path.join(args.root_dir, args.sweep_name or search_lib.default_name(found))
    os.makedirs(sweep_dir, exist_ok=True)
    stopping = (
        f"ASHA may stop a trial from round {found.grace_rounds}"
        if found.early_stopping == "asha"
        else "no early stopping"
    )
    print_fn(
        f"search: {found.trials} trials sampled by Optuna over {', '.join(found.axes)} ({mode} "
        f"{found.metric}; {stopping}), {args.parallel} at a time; outputs in {sweep_dir}"
    )
    from tffpipe.experiments import tune_run  # loads Ray Tune

    try:
        trials = tune_run.run(
            found, sweep_dir, args.parallel, print_fn, args.ray_address, args.ray_allow_unauthenticated
        )
    except (KeyboardInterrupt, errors.Terminated) as e:
        raise SweepStopped.by_signal(e, _TUNE_STOPPED.format(what="search")) from e
    report.write_search(found, trials, sweep_dir, print_fn)
    failure = SweepStopped.failed_on_tune(trials, len(trials), sweep_dir)
    if failure:
        raise failure
    return 0


def _run_grid_on_ray(plan, sweep_dir: str, args: argparse.Namespace, print_fn: Callable[[str], None]) -> int:
    """The grid's trials as Ray Tune trials on the cluster at --ray_address, one per worker (1 CPU each)."""
    from tffpipe.experiments import report
    from tffpipe.experiments import tune_run  # loads Ray Tune

    try:
        trials = tune_run.run_grid(
            plan, sweep_dir, args.parallel, print_fn, args.ray_address, args.ray_allow_unauthenticated
        )
    except (KeyboardInterrupt, errors.Terminated) as e:
        raise SweepStopped.by_signal(e, _TUNE_STOPPED.format(what="sweep")) from e
    finished = {t.name for t in trials if t.status == "finished"}
    report.write_grid(plan, sweep_dir, [t for t in plan.trials if t.name in finished], print_fn)
    failure = SweepStopped.failed_on_tune(trials, len(plan.trials), sweep_dir)
    if failure:
        raise failure
    return 0


def _check_cluster(args: argparse.Namespace) -> None:
    """A --ray_address nothing answers at is one line before anything is written (RayUnavailable)."""
    if args.ray_address:
        from tffpipe.runtimes import ray_cluster

        ray_cluster.requires_token(args.ray_address)


def _done(outcomes) -> list:
    from tffpipe.experiments import runner

    return [o.trial for o in outcomes if o.status in (runner.FINISHED, runner.SKIPPED)]


def _save_plan(plan, sweep_dir: str) -> None:
    os.makedirs(sweep_dir, exist_ok=True)
    files.write_json_atomic(
        os.path.join(sweep_dir, "sweep.json"),
        {
            "axes": plan.axes,
            "seeds": plan.seeds,
            "common_flags": list(plan.common_flags),
            "trials": [{"name": t.name, "values": t.values, "flags": list(t.flags)} for t in plan.trials],
        },
    )


def run_main() -> None:
    processes.raise_on_sigterm()
    processes.raise_once_on_interrupt()
    try:
        code = main(sys.argv[1:], lambda line: print(line, flush=True))
    except errors.UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        code = e.code if isinstance(e, SweepStopped) else 2
    sys.exit(code)


if __name__ == "__main__":
    run_main()
