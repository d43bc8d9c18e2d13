"""The runtimes by `--runtime` name, in the order `--help` and the doctor list them.

Adding one: a module in this folder with a `RUNTIME` (see `base.Runtime`)
and its name here.
"""

import functools
import importlib

from tffpipe.runtimes import base

RUNTIMES = ("auto", "cpp", "inprocess", "ray", "remote")


@functools.cache
def runtimes() -> tuple[base.Runtime, ...]:
    return tuple(importlib.import_module(f"tffpipe.runtimes.{name}").RUNTIME for name in RUNTIMES)


def get(name: str) -> base.Runtime:
    return runtimes()[RUNTIMES.index(name)]


def settings_groups() -> list[tuple[str, type]]:
    """(key, Settings) of every runtime that has settings."""
    return [(r.key, r.Settings) for r in runtimes() if r.Settings is not None]
