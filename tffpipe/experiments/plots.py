"""A sweep's figures: each evaluation metric against rounds (and simulated seconds), mean and ±std band per combination."""

import os
from collections.abc import Sequence

import pandas

from tffpipe import results
from tffpipe.experiments import grid
from tffpipe.experiments import summary

SIM_SECONDS = "sim/elapsed_sec"


def write_plots(plan: grid.Plan, runs: dict[str, results.Run], folder: str, against_sim_time: bool) -> list[str]:
    """Writes `folder/<metric>.png` (and `<metric>_vs_sim_sec.png` when `against_sim_time`).

    Each line is one combination of the swept settings: the mean over its
    finished seeds at each evaluated round, with a band of ± one sample
    standard deviation where two or more seeds have that round. Against
    simulated time, a round is placed at its mean simulated time over the seeds.

    Returns:
      The files written.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot
    from matplotlib import ticker

    os.makedirs(folder, exist_ok=True)
    metrics = sorted({m for run in runs.values() for m in summary.eval_metrics(run.metrics)})
    combos = _combinations(plan, runs)
    written = []
    axes_x = [("round", "round", "")] + (
        [(SIM_SECONDS, "simulated seconds", "_vs_sim_sec")] if against_sim_time else []
    )
    for metric in metrics:
        for x_column, x_label, suffix in axes_x:
            figure, axis = pyplot.subplots(figsize=(8, 5))
            for label, frames in combos.items():
                curve = _mean_curve(frames, metric, x_column)
                if curve.empty:
                    continue
                line = axis.plot(curve["x"], curve["mean"], marker="o", markersize=3, label=label)[0]
                band = curve.dropna(subset=["std"])
                if not band.empty:
                    axis.fill_between(
                        band["x"],
                        band["mean"] - band["std"],
                        band["mean"] + band["std"],
                        color=line.get_color(),
                        alpha=0.2,
                        linewidth=0,
                    )
            if x_column == "round":
                axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            axis.set_xlabel(x_label)
            axis.set_ylabel(metric)
            axis.set_title(f"{metric}: mean ± std over seeds")
            axis.grid(alpha=0.3)
            if len(combos) > 1:
                axis.legend(fontsize="small", loc="best")
            path = os.path.join(folder, metric.replace("/", "_") + suffix + ".png")
            figure.tight_layout()
            figure.savefig(f"{path}.tmp.png", dpi=100)
            os.replace(f"{path}.tmp.png", path)
            pyplot.close(figure)
            written.append(path)
    return written


def _combinations(plan: grid.Plan, runs: dict[str, results.Run]) -> dict[str, list[pandas.DataFrame]]:
    combos: dict[str, list[pandas.DataFrame]] = {}
    for trial in plan.trials:
        label = ", ".join(f"{a}={trial.values[a]}" for a in plan.axes) or "all trials"
        combos.setdefault(label, [])
        if trial.name in runs:
            combos[label].append(runs[trial.name].metrics)
    return combos


def _mean_curve(frames: Sequence[pandas.DataFrame], metric: str, x_column: str) -> pandas.DataFrame:
    """Per round: the mean x, the mean and sample std of `metric` over the frames that evaluated it."""
    parts = []
    for frame in frames:
        if metric not in frame or x_column not in frame:
            continue
        rows = frame[list(dict.fromkeys(["round", x_column, metric]))].dropna(subset=[metric])
        parts.append(pandas.DataFrame({"round": rows["round"], "x": rows[x_column], "value": rows[metric]}))
    if not parts:
        return pandas.DataFrame(columns=["x", "mean", "std"])
    pooled = pandas.concat(parts).groupby("round")
    return pandas.DataFrame(
        {"x": pooled["x"].mean(), "mean": pooled["value"].mean(), "std": pooled["value"].std(ddof=1)}
    ).reset_index(drop=True)
