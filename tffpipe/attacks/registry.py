"""The attacks `--attack` can choose.

Adding an attack: a module in this folder with an `ATTACK` (see
`base.Attack`) and its name here.
"""

import functools
import importlib

ATTACKS = ("label_flip", "backdoor", "sign_flip", "scale", "gaussian", "alie")


@functools.cache
def get(name: str):
    return importlib.import_module(f"tffpipe.attacks.{name}").ATTACK


def settings_groups() -> list[tuple[str, type]]:
    """(key, Settings) of every attack that has settings of its own."""
    return [(name, get(name).Settings) for name in ATTACKS if get(name).Settings is not None]
