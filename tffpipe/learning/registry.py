"""The federated algorithms by `--algorithm` name.

Adding one: a module in this folder with an `ALGORITHM` (see
`base.Algorithm`) and its name here. A path `my_pkg.my_module:builder`, or a
name registered under the entry-point group `tffpipe.algorithms`, selects a
user's builder (`plugin.py`).
"""

import functools
import importlib

from tffpipe.learning import base
from tffpipe.learning import plugin

ALGORITHMS = ("fedavg", "fedprox", "fedsgd", "mime_lite", "fedrecon", "fedbuff")


@functools.cache
def algorithms() -> tuple[base.Algorithm, ...]:
    return tuple(importlib.import_module(f"tffpipe.learning.{name}").ALGORITHM for name in ALGORITHMS)


def settings_groups() -> list[tuple[str, type]]:
    """(key, Settings) of every built-in algorithm that has settings."""
    return [(a.key, a.Settings) for a in algorithms() if a.Settings is not None]


def is_known(name: str) -> bool:
    return name in ALGORITHMS or plugin.builder_path(name) is not None


def get(name: str) -> base.Algorithm:
    """The algorithm selected by `--algorithm` (a built-in, or a user's builder)."""
    for algorithm in algorithms():
        if algorithm.key == name:
            return algorithm
    return plugin.ALGORITHM
