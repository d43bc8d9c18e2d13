"""Figures over clients: the distribution of a metric, and who is served worst.

An average over evaluation clients hides the clients a model fails. These
functions turn one value per client into the figures the run reports for
each metric: mean, standard deviation (over clients, not a sample estimate),
minimum and the 10th, 50th and 90th percentiles (NumPy's linear
interpolation), and name the worst-served tenth of the clients.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np

# Counts that every TFF model reports; they describe the data, not the model.
COUNT_METRICS = ("num_examples", "num_batches")
PERCENTILES = (10, 50, 90)
STATISTICS = ("mean", "std", "min") + tuple(f"p{q}" for q in PERCENTILES)

PerClient = Mapping[str, Mapping[str, float]]  # client id -> metric name -> value


def distribution(values: Sequence[float]) -> dict[str, float]:
    """`{"mean", "std", "min", "p10", "p50", "p90"}` of `values` (at least one)."""
    array = np.asarray(values, dtype=np.float64)
    figures = {"mean": float(array.mean()), "std": float(array.std()), "min": float(array.min())}
    for q in PERCENTILES:
        figures[f"p{q}"] = float(np.percentile(array, q))
    return figures


def model_metrics(per_client: PerClient) -> list[str]:
    """The metric names every client reports, counts excluded, in first-seen order."""
    names: list[str] = []
    for metrics in per_client.values():
        names += [n for n in metrics if n not in COUNT_METRICS and n not in names]
    return [n for n in names if all(n in m for m in per_client.values())]


def distribution_metrics(prefix: str, per_client: PerClient) -> dict[str, float]:
    """`{<prefix><metric>_<statistic>: value}` for every metric the clients report.

    `distribution_metrics("eval_clients/", ...)` gives `eval_clients/accuracy_p10`, ...
    """
    if not per_client:
        return {}
    figures = {}
    for name in model_metrics(per_client):
        for statistic, value in distribution([m[name] for m in per_client.values()]).items():
            figures[f"{prefix}{name}_{statistic}"] = value
    return figures


def histograms(prefix: str, per_client: PerClient) -> dict[str, list[float]]:
    """`{<prefix><metric>: one value per client}`, for TensorBoard's histograms."""
    return {f"{prefix}{name}": [m[name] for m in per_client.values()] for name in model_metrics(per_client)}


def headline_metric(names: Sequence[str]) -> str | None:
    """The metric that says how well a client is served: an accuracy if any, else the loss."""
    for name in names:
        if "accuracy" in name:
            return name
    return "loss" if "loss" in names else (names[0] if names else None)


def higher_is_better(name: str) -> bool:
    return not any(word in name for word in ("loss", "error"))


def worst_decile(per_client: PerClient, metric: str) -> list[str]:
    """The ceil(10%) of clients with the worst `metric`, worst first (ties by client id)."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    ranked = sorted(per_client, key=lambda cid: (sign * per_client[cid][metric], cid))
    return ranked[: max(1, math.ceil(len(ranked) / 10))]


def worst_decile_line(per_client: PerClient, *, shown: int = 5) -> str:
    """One line naming the worst-served tenth of `per_client`, with their figures."""
    metric = headline_metric(model_metrics(per_client))
    if metric is None:
        return "worst-served decile: no per-client metric to rank clients by"
    worst = worst_decile(per_client, metric)
    named = ", ".join(f"{cid} {per_client[cid][metric]:.4f}" for cid in worst[:shown])
    more = f" and {len(worst) - shown} more" if len(worst) > shown else ""
    mean = np.mean([m[metric] for m in per_client.values()])
    return (
        f"worst-served decile by {metric} ({len(worst)} of {len(per_client)} evaluation "
        f"clients; mean {mean:.4f}): {named}{more}"
    )
