"""Turns TFF's nested process metrics into flat, named scalars."""

from typing import Any
from collections.abc import Mapping

import numpy as np

# Nested TFF prefixes -> the short names used in CSV and TensorBoard.
_RENAMES = (
    ("client_work/train/", "train/"),
    ("client_work/eval/current_round_metrics/", "eval/"),
)


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """`{"client_work": {"train": {"loss": 1.0}}}` -> `{"train/loss": 1.0}`.

    Only scalars are kept; empty structures and arrays are dropped.
    """
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
            continue
        array = np.asarray(value)
        if array.ndim == 0 and array.dtype != object:
            flat[_rename(name)] = array.item()
    return flat


def _rename(name: str) -> str:
    for old, new in _RENAMES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def eval_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The current-round metrics of a `build_fed_eval` process output."""
    flat = flatten(metrics)
    return {k: v for k, v in flat.items() if k.startswith("eval/")}
