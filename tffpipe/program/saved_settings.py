"""The settings a run's checkpoints were written under, compared before any work.

Imports no TensorFlow: the launcher refuses a rerun with settings that must
match in a fraction of a second, before the data loads and the processes
are built. The checkpoints themselves hold the same fingerprint and are
checked again when read (`checkpoints.CheckpointManager.restore`), with
the entries that only the built task resolves (a DP layer's cohort).
"""

import json
import os
from typing import Any

from tffpipe import config as config_lib
from tffpipe import errors
from tffpipe import settings

PREFIX = "program_state_"
FINGERPRINT_FILE = "fingerprint.json"


class ResumeError(errors.UserError, RuntimeError):
    """Resuming is impossible; the message is one line for the user."""


def saved_rounds(directory: str) -> list[int]:
    """The rounds of the complete checkpoints in `directory`, oldest first, read from its listing."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(int(n[len(PREFIX) :]) for n in names if n.startswith(PREFIX) and n[len(PREFIX) :].isdigit())


def newest_round(directory: str) -> int | None:
    """The round of the newest complete checkpoint in `directory`, read from its listing."""
    return max(saved_rounds(directory), default=None)


def check_differences(saved: Any, current: dict[str, Any], version: int, directory: str) -> None:
    """Refuses a checkpoint written under a fingerprint that differs from `current`.

    Raises:
      ResumeError: naming each differing setting.
    """
    if isinstance(saved, bytes):
        saved = saved.decode()
    if isinstance(saved, str):
        saved = json.loads(saved)
    diffs = config_lib.fingerprint_differences(saved, current)
    if diffs:
        raise ResumeError(
            f"the checkpoint of round {version} in {directory} was written with "
            f"different settings ({'; '.join(diffs)}); use the original settings or "
            "a new --experiment_name"
        )


def refuse_changed_settings(cfg: config_lib.RunConfig) -> None:
    """Compares the settings that must match with the run folder's checkpoints, before any work.

    Only the entries the settings alone decide are compared here; an
    unreadable fingerprint file is left to the checkpoint manager.

    Raises:
      ResumeError: the folder's checkpoints were written with other settings.
    """
    directory = os.path.join(cfg.output.run_dir, "checkpoints")
    version = newest_round(directory)
    if version is None:
        return
    try:
        with open(os.path.join(directory, FINGERPRINT_FILE), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return
    if not isinstance(saved, dict):
        return
    decided = {
        item.spec.flag for item in settings.declared(config_lib.RunConfig) if item.spec.resume == settings.MUST_MATCH
    }
    decided |= {"task_options", "aggregator_options", "algorithm_options", config_lib.OPTION_DEFAULTS}
    current = {k: v for k, v in cfg.fingerprint().items() if k in decided}
    check_differences({k: v for k, v in saved.items() if k in decided}, current, version, directory)
