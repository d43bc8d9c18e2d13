"""What a resume changes: the settings that may change take effect, and are named.

Which settings must match, may change or do not apply is declared with each
setting (`tffpipe.settings`); the checkpoint fingerprint refuses the first
kind. This module makes the second kind real: TFF's optimizer states carry
their hyperparameters (learning rates, momentum, betas), so a restored state
would keep training with the old values whatever the flags now say.
"""

import json
from typing import Any

from absl import logging

from tffpipe import config as config_lib
from tffpipe import settings


def with_current_hparams(process: Any, fresh_state: Any, restored_state: Any) -> Any:
    """`restored_state` with the hyperparameters of this run's settings.

    Args:
      process: the learning process built from the current settings (or what
        the runtime runs it with; it has `get_hparams` and `set_hparams`).
      fresh_state: a state initialised by `process` (holds the current values).
      restored_state: the state read from the checkpoint.
    """
    return process.set_hparams(restored_state, process.get_hparams(fresh_state))


def read_previous_settings(path: str) -> dict[str, Any] | None:
    """The settings a previous invocation recorded in `config.json`, if readable."""
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
        return recorded["settings"] if isinstance(recorded.get("settings"), dict) else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as e:
        logging.warning("%s is unreadable (%s); it is rewritten", path, e)
        return None


def changed_settings(previous: dict[str, Any] | None, cfg: config_lib.RunConfig) -> list[str]:
    """`--flag old -> new` for each setting that may change and did.

    Args:
      previous: `config.json`'s settings of the previous invocation.
      cfg: the current settings.
    """
    if previous is None:
        return []
    changes = []
    current = cfg.to_dict()
    for item in settings.declared(config_lib.RunConfig):
        if item.spec.resume != settings.MAY_CHANGE:
            continue
        old, new = _at(previous, item.path), _at(current, item.path)
        if old is not _MISSING and old != new:
            changes.append(f"--{item.spec.flag} {_show(old)} -> {_show(new)}")
    return changes


_MISSING = object()


def _at(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return _MISSING
        tree = tree[key]
    return tree


def _show(value: Any) -> str:
    return "default" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
