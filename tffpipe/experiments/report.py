"""What a sweep leaves besides its trials: summary.csv, the printed table, plots/ and the HParams configuration."""

import os
from typing import Any
from collections.abc import Callable, Sequence

from tffpipe import results
from tffpipe.experiments import grid
from tffpipe.experiments import plots
from tffpipe.experiments import runner
from tffpipe.experiments import summary
from tffpipe.program import hparams_config


def write_grid(plan: grid.Plan, sweep_dir: str, done: Sequence[grid.Trial], print_fn: Callable[[str], None]) -> None:
    """A grid sweep's report: a row per combination of the swept settings, seeds pooled."""
    runs = _load(sweep_dir, done, print_fn)
    if runs:
        table = summary.summarize(plan, runs)
        _write(plan, sweep_dir, runs, table, list(plan.axes), print_fn)


def write_search(search: Any, trials: Sequence[Any], sweep_dir: str, print_fn: Callable[[str], None]) -> None:
    """A search's report: a row per trial that trained (finished or stopped early), the best first."""
    plan = grid.Plan(
        axes={name: [] for name in search.axes},
        seeds=[search.seed],
        common_flags=search.common_flags,
        trials=[grid.Trial(t.name, {n: _text(t.values[n]) for n in search.axes}, (), search.rounds) for t in trials],
    )
    trained = {t.name for t in trials if t.status in ("finished", "stopped early")}
    runs = _load(sweep_dir, [t for t in plan.trials if t.name in trained], print_fn)
    if not runs:
        return
    table = summary.summarize(plan, runs)
    table.insert(0, "trial", [t.name for t in plan.trials])
    table.insert(len(plan.axes) + 1, "status", [t.status for t in trials])
    table.insert(len(plan.axes) + 2, "rounds", [t.rounds for t in trials])
    table = table[table[summary.SEEDS] > 0].drop(columns=[summary.SEEDS, summary.SEEDS_PLANNED])
    best = f"{search.metric}_best_mean"
    if best in table:
        # Ties (trials stopped at the same rung with the same value) in name order, whatever order Tune lists them in.
        table = table.sort_values([best, "trial"], ascending=[search.mode == "min", True], kind="stable")
    _write(plan, sweep_dir, runs, table, ["trial", *plan.axes, "status", "rounds"], print_fn)


def final_metrics(folder: str) -> str:
    """`eval/accuracy 0.9312, eval/loss 0.2101`: a finished run's last evaluated values."""
    metrics = results.read_csv(os.path.join(folder, "results", "metrics.csv"))
    shown = []
    for metric in summary.eval_metrics(metrics)[:2]:
        values = metrics[metric].dropna()
        if len(values):
            shown.append(f"{metric} {values.iloc[-1]:.4f}")
    return ", ".join(shown)


def _load(sweep_dir: str, done: Sequence[grid.Trial], print_fn: Callable[[str], None]) -> dict[str, results.Run]:
    if not done:
        print_fn("no trial finished yet: nothing to summarise")
    return {t.name: results.load_run(runner.run_dir(sweep_dir, t)) for t in done}


def _write(
    plan: grid.Plan,
    sweep_dir: str,
    runs: dict[str, results.Run],
    table: Any,
    leading: list[str],
    print_fn: Callable[[str], None],
) -> None:
    summary.write_csv(table, os.path.join(sweep_dir, "summary.csv"))
    print_fn(summary.table_text(table, leading))
    clock_on = any(_clock_on(run.config) for run in runs.values())
    written = plots.write_plots(plan, runs, os.path.join(sweep_dir, "plots"), against_sim_time=clock_on)
    metrics = sorted({m for run in runs.values() for m in summary.eval_metrics(run.metrics)})
    # The trials' folder holds the one HParams configuration of the sweep; the swept settings are in it.
    hparams_config.add(grid.trial_root(sweep_dir), hparams=plan.swept, metrics=metrics)
    print_fn(
        f"summary: {os.path.join(sweep_dir, 'summary.csv')}; {len(written)} plots in "
        f"{os.path.join(sweep_dir, 'plots')}; tensorboard --logdir {sweep_dir}"
    )


def _text(value: Any) -> str:
    return format(value, ".4g") if isinstance(value, float) else str(value)


def _clock_on(config: dict) -> bool:
    """Whether a run simulated devices (a clock setting away from its default)."""
    from tffpipe import config as config_lib
    from tffpipe import settings

    return any(
        item.spec.group == "clock" and config.get(flag, item.default) != item.default
        for flag, item in settings.by_flag(config_lib.RunConfig).items()
    )
