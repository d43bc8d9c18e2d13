"""A sweep's results: one row per combination of swept settings, each evaluation metric as mean ± std over seeds.

`summary.csv` holds, per combination, the number of seeds finished and
planned and, for each `eval/*` metric, its final value (the last evaluated
round) and its best value over the run (the lowest for metrics named
`*loss*`, the highest otherwise), each as the mean and the sample standard
deviation (n - 1) over the finished seeds.
"""

import math
import os
from collections.abc import Sequence

import pandas

from tffpipe import results
from tffpipe.experiments import grid

SEEDS, SEEDS_PLANNED = "seeds", "seeds_planned"
# Counts rather than results.
_NOT_SUMMARISED = ("eval/num_examples", "eval/num_batches")


def eval_metrics(frame: pandas.DataFrame) -> list[str]:
    """The evaluation metrics a run recorded (`eval/accuracy`, `eval/loss`, ...)."""
    return [c for c in frame.columns if c.startswith("eval/") and c not in _NOT_SUMMARISED]


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or "error" in metric


def best(values: pandas.Series, metric: str) -> float:
    return float(values.min() if lower_is_better(metric) else values.max())


def summarize(plan: grid.Plan, runs: dict[str, results.Run]) -> pandas.DataFrame:
    """One row per combination of the swept settings (seeds pooled), in the plan's order."""
    combos: dict[tuple[str, ...], list[grid.Trial]] = {}
    for trial in plan.trials:
        combos.setdefault(tuple(trial.values.get(a, "") for a in plan.axes), []).append(trial)
    metrics = sorted({m for run in runs.values() for m in eval_metrics(run.metrics)}, key=_metric_order)
    rows = []
    for combo, trials in combos.items():
        row: dict[str, object] = dict(zip(plan.axes, combo))
        finished = [runs[t.name] for t in trials if t.name in runs]
        row[SEEDS], row[SEEDS_PLANNED] = len(finished), len(trials)
        for metric in metrics:
            series = [run.metrics[metric].dropna() for run in finished if metric in run.metrics]
            series = [s for s in series if len(s)]
            for kind, values in (
                ("final", [float(s.iloc[-1]) for s in series]),
                ("best", [best(s, metric) for s in series]),
            ):
                row[f"{metric}_{kind}_mean"], row[f"{metric}_{kind}_std"] = mean_and_std(values)
        rows.append(row)
    return pandas.DataFrame(rows)


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for the std of fewer than two values)."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def table_text(summary: pandas.DataFrame, leading: Sequence[str]) -> str:
    """The summary as aligned text: the `leading` columns, the seeds (finished/planned) when pooled, then
    `final` and `best` of each metric as mean ± std."""
    metrics = [c.removesuffix("_final_mean") for c in summary.columns if c.endswith("_final_mean")]
    pooled = SEEDS in summary
    header = [*leading, *(["seeds"] if pooled else [])] + [f"{m} {kind}" for m in metrics for kind in ("final", "best")]
    lines = []
    for _, row in summary.iterrows():
        cells = [str(row[c]) for c in leading] + ([f"{row[SEEDS]}/{row[SEEDS_PLANNED]}"] if pooled else [])
        for metric in metrics:
            for kind in ("final", "best"):
                cells.append(_mean_std_text(row[f"{metric}_{kind}_mean"], row[f"{metric}_{kind}_std"]))
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *lines])


def _mean_std_text(mean: float, std: float) -> str:
    if isinstance(mean, float) and math.isnan(mean):
        return "-"
    return f"{mean:.4f}" if isinstance(std, float) and math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _metric_order(metric: str) -> tuple[int, str]:
    return (0 if metric in ("eval/accuracy", "eval/loss") else 1, metric)


def write_csv(summary: pandas.DataFrame, path: str) -> None:
    """Writes `summary.csv` whole or not at all."""
    temporary = f"{path}.tmp"
    summary.to_csv(temporary, index=False)
    os.replace(temporary, path)
