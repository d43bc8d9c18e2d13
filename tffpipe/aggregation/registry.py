"""The aggregation layers, outermost first, and the active ones of a run.

Adding a layer: a module in this folder with a `LAYER` (see `base.Layer`)
and its name here, where it sits in the stack.
"""

import functools
import importlib
from typing import Any
from collections.abc import Mapping

from tffpipe.aggregation import base
from tffpipe.components import Selection

LAYERS = (
    "plugin",
    "zeroing",
    "norm_bound",
    "dp_fixed",
    "dp_adaptive",
    "dp_tree",
    "dp_distributed",
    "robust",
    "mean",
    "secure",
    "quantization",
)


@functools.cache
def layers() -> tuple[base.Layer, ...]:
    """Every registered layer, outermost first."""
    return tuple(importlib.import_module(f"tffpipe.aggregation.{name}").LAYER for name in LAYERS)


def settings_groups() -> list[tuple[str, type]]:
    """(key, Settings) of every layer that has settings, in order."""
    return [(layer.key, layer.Settings) for layer in layers() if layer.Settings is not None]


def dp_mechanisms() -> tuple[str, ...]:
    """The `--dp` values: "none", then each DP layer's."""
    return ("none",) + tuple(layer.dp_mechanism for layer in layers() if layer.dp_mechanism)


def active_layers(settings: Mapping[str, Any], run: Selection) -> list[base.Layer]:
    """The layers the settings put in the stack, outermost first.

    Of the `mean`s only the first active one is used; a mean that sums by
    itself leaves no room for a `sum` layer.

    Args:
      settings: {layer key: that layer's settings}.
      run: the run's selection.
    """
    chosen, mean = [], None
    for layer in layers():
        if not layer.active(settings[layer.key], run):
            continue
        if layer.role == "mean":
            if mean is not None:
                continue
            mean = layer
        chosen.append(layer)
    if mean is not None and mean.own_sum:
        chosen = [layer for layer in chosen if layer.role != "sum"]
    return chosen


def get(key: str) -> base.Layer:
    """The registered layer `key`."""
    (layer,) = [layer for layer in layers() if layer.key == key]
    return layer
