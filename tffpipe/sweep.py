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
import json
import os
import sys
import tempfile
from typing import Callable, Sequence

from tffpipe import errors
from tffpipe.program import files
from tffpipe.runtimes import processes

DEFAULT_ROOT = os.path.join(tempfile.gettempdir(), "tffpipe")


class SweepStopped(errors.UserError):
    """The sweep ended before every trial finished; `code` is its exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise errors.ConfigError(message)


def _parser() -> _Parser:
    parser = _Parser(
        prog="python -m tffpipe.sweep", allow_abbrev=False,
        description="Runs every combination of --grid values (times --seeds) as separate `python -m tffpipe.train` "
        "runs and summarises them. Flags that are not listed here go to every trial.",
    )
    parser.add_argument("--grid", action="append", default=[], metavar="SETTING=V1,V2,...",
                        help="a launcher setting and the values to try; repeat for more settings (every combination "
                        "runs)")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="run each combination with N seeds: --seed (default 0) and the next N-1")
    parser.add_argument("--sweep_file", default=None, metavar="YAML",
                        help="a file with grid: {setting: [values]}, seeds: N and flags: {setting: value}; for values "
                        "holding commas. --grid and --seeds add to it")
    parser.add_argument("--parallel", type=int, default=max(1, (os.cpu_count() or 2) // 2), metavar="N",
                        help="trials running at once (default: half the cores, here %(default)s)")
    parser.add_argument("--root_dir", default=DEFAULT_ROOT, help="folder holding sweeps (default %(default)s)")
    parser.add_argument("--sweep_name", default="", help="the sweep's folder under --root_dir (default: "
                        "sweep-<swept settings>-<hash of the other flags>, so the same command resumes it)")
    return parser


def main(argv: Sequence[str], print_fn: Callable[[str], None]) -> int:
    """Runs a sweep; returns the exit code (0 when every trial finished)."""
    from tffpipe.experiments import grid  # pylint: disable=g-import-not-at-top
    from tffpipe.experiments import runner  # pylint: disable=g-import-not-at-top

    args, trial_flags = _parser().parse_known_args(list(argv))
    stray = [f for f in trial_flags if not f.startswith("--")]
    if stray:
        raise errors.ConfigError(f"unexpected argument {stray[0]!r}; flags are --name=value")
    axes, seeds, common = {}, None, []
    if args.sweep_file:
        axes, seeds, common = grid.load_sweep_file(args.sweep_file)
    for text in args.grid:
        name, values = grid.parse_grid(text)
        if name in axes:
            raise errors.ConfigError(f"--grid {name} is given twice")
        axes[name] = values
    seeds = args.seeds if args.seeds is not None else seeds
    if args.parallel < 1:
        raise errors.ConfigError(f"--parallel must be at least 1, got {args.parallel}")
    plan = grid.make_plan(axes, seeds, [*common, *trial_flags])
    sweep_dir = os.path.join(args.root_dir, args.sweep_name or plan.default_name())
    _save_plan(plan, sweep_dir)
    combinations = len(plan.trials) // len(plan.seeds) if seeds else len(plan.trials)
    print_fn(f"sweep: {len(plan.trials)} trials ({combinations} combinations x {len(plan.seeds)} seeds), "
             f"{min(args.parallel, len(plan.trials))} at a time; outputs in {sweep_dir}")
    try:
        outcomes = runner.run_trials(plan, sweep_dir, args.parallel, print_fn, describe=_final_metrics)
    except (KeyboardInterrupt, errors.Terminated) as e:
        outcomes = getattr(e, "outcomes", [])
        _report(plan, sweep_dir, outcomes, print_fn)
        stopped = sum(o.status == runner.INTERRUPTED for o in outcomes)
        what, code = ("interrupted", 130) if isinstance(e, KeyboardInterrupt) else ("terminated (SIGTERM)", 143)
        raise SweepStopped(
            f"{what}: {stopped} running trial(s) stopped at their last checkpoint; rerun the same command to "
            "resume them", code) from e
    _report(plan, sweep_dir, outcomes, print_fn)
    failed = [o for o in outcomes if o.status == runner.FAILED]
    if failed:
        raise SweepStopped(f"{len(failed)} of {len(outcomes)} trials failed (first: {failed[0].trial.name}: "
                           f"{failed[0].message}); the others are in the summary", 1)
    return 0


def _save_plan(plan, sweep_dir: str) -> None:
    os.makedirs(sweep_dir, exist_ok=True)
    files.write_json_atomic(os.path.join(sweep_dir, "sweep.json"), {
        "axes": plan.axes, "seeds": plan.seeds, "common_flags": list(plan.common_flags),
        "trials": [{"name": t.name, "values": t.values, "flags": list(t.flags)} for t in plan.trials],
    })


def _final_metrics(folder: str) -> str:
    from tffpipe import results  # pylint: disable=g-import-not-at-top
    from tffpipe.experiments import summary  # pylint: disable=g-import-not-at-top

    metrics = results.read_csv(os.path.join(folder, "results", "metrics.csv"))
    shown = []
    for metric in summary.eval_metrics(metrics)[:2]:
        values = metrics[metric].dropna()
        if len(values):
            shown.append(f"{metric} {values.iloc[-1]:.4f}")
    return ", ".join(shown)


def _report(plan, sweep_dir: str, outcomes, print_fn: Callable[[str], None]) -> None:
    """summary.csv, the printed table, plots/ and the HParams configuration, from the finished trials."""
    from tffpipe import results  # pylint: disable=g-import-not-at-top
    from tffpipe.experiments import hparams  # pylint: disable=g-import-not-at-top
    from tffpipe.experiments import plots  # pylint: disable=g-import-not-at-top
    from tffpipe.experiments import runner  # pylint: disable=g-import-not-at-top
    from tffpipe.experiments import summary  # pylint: disable=g-import-not-at-top

    done = [o.trial for o in outcomes if o.status in (runner.FINISHED, runner.SKIPPED)]
    if not done:
        print_fn("no trial finished yet: nothing to summarise")
        return
    runs = {t.name: results.load_run(runner.run_dir(sweep_dir, t)) for t in done}
    table = summary.summarize(plan, runs)
    summary.write_csv(table, os.path.join(sweep_dir, "summary.csv"))
    print_fn(summary.table_text(table, list(plan.axes)))
    clock_on = any(_clock_on(run.config) for run in runs.values())
    written = plots.write_plots(plan, runs, os.path.join(sweep_dir, "plots"), against_sim_time=clock_on)
    metrics = sorted({m for run in runs.values() for m in summary.eval_metrics(run.metrics)})
    hparams.write_config(sweep_dir, plan.swept, metrics)
    print_fn(f"summary: {os.path.join(sweep_dir, 'summary.csv')}; {len(written)} plots in "
             f"{os.path.join(sweep_dir, 'plots')}; tensorboard --logdir {sweep_dir}")


def _clock_on(config: dict) -> bool:
    """Whether a run simulated devices (a clock setting away from its default)."""
    from tffpipe import config as config_lib  # pylint: disable=g-import-not-at-top
    from tffpipe import settings  # pylint: disable=g-import-not-at-top

    return any(item.spec.group == "clock" and config.get(flag, item.default) != item.default
               for flag, item in settings.by_flag(config_lib.RunConfig).items())


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
