"""What a resume changes: the settings that may change take effect, and are named.

Which settings must match, may change or do not apply is declared with each
setting (`tffpipe.settings`); the checkpoint fingerprint refuses the first
kind. This module makes the second kind real: TFF's optimizer states carry
their hyperparameters (learning rates, momentum, betas), so a restored state
would keep training with the old values whatever the flags now say.
"""

import json
from typing import Any
from collections.abc import Callable

from absl import logging

from tffpipe import config as config_lib
from tffpipe import run_names
from tffpipe import settings
from tffpipe.program import checkpoints
from tffpipe.program import files
from tffpipe.program import outputs
from tffpipe.program import records


def with_current_hparams(process: Any, fresh_state: Any, restored_state: Any) -> Any:
    """`restored_state` with the hyperparameters of this run's settings.

    Args:
      process: the learning process built from the current settings (or what
        the runtime runs it with; it has `get_hparams` and `set_hparams`).
      fresh_state: a state initialised by `process` (holds the current values).
      restored_state: the state read from the checkpoint.
    """
    return process.set_hparams(restored_state, process.get_hparams(fresh_state))


def restore(
    ckpt: checkpoints.CheckpointManager,
    structure: Any,
    paths: outputs.RunPaths,
    print_fn: Callable[[str], None],
) -> checkpoints.ProgramState | None:
    """The checkpoint to resume from: the newest one before any round whose records are damaged.

    A round up to the newest checkpoint whose records cannot be repaired
    (`records.rounds_to_retrain`) is trained again: the run resumes from the
    newest checkpoint before it (or from scratch when there is none), and
    says so.
    """
    restored = ckpt.restore(structure)
    if restored is None:
        return None
    damaged = records.rounds_to_retrain(paths, restored.round_num)
    if not damaged:
        return restored
    first = min(damaged)
    restored = ckpt.restore(structure, before=first)
    start = restored.round_num if restored is not None else 0
    for reason in damaged.values():
        print_fn(reason)
    print_fn(
        f"round {first} is trained again, from "
        + (f"the checkpoint of round {start}" if restored is not None else "scratch (no earlier checkpoint)")
    )
    return restored


def settle_records(
    paths: outputs.RunPaths, cfg: config_lib.RunConfig, start_round: int | None, print_fn: Callable[[str], None]
) -> None:
    """Brings the run's records in line with where training starts, and says so.

    Args:
      paths: the run's folder.
      cfg: the current settings.
      start_round: the restored checkpoint's round, or None for a fresh run
        (the records are then reset).
      print_fn: receives the resume line, the records' notes and the
        settings changed since the last invocation.
    """
    if start_round is None:
        records.reset(paths)
        return
    reconciled = records.reconcile(paths, start_round)
    print_fn(
        f"resuming {paths.run_dir} from the checkpoint of round {start_round}"
        + (f" (dropped {reconciled.dropped} records written after it)" if reconciled.dropped else "")
    )
    for note in reconciled.notes:
        print_fn(note)
    changes = changed_settings(read_previous_settings(paths.config), cfg)
    if changes and start_round < cfg.schedule.rounds:
        print_fn(f"changed since the last invocation, in effect from round {start_round + 1}: " + ", ".join(changes))


def open_records(
    paths: outputs.RunPaths,
    cfg: config_lib.RunConfig,
    start_round: int | None,
    print_fn: Callable[[str], None],
    recorded: dict[str, Any] | None = None,
) -> outputs.MetricsLog:
    """Settles the records (`settle_records`), writes `config.json`, and opens the metrics log.

    Args:
      paths: the run's folder.
      cfg: the current settings.
      start_round: the restored checkpoint's round, or None for a fresh run
        (which also gets the HParams summary).
      print_fn: receives the resume lines.
      recorded: more entries for `config.json` besides the settings and
        the fingerprint.
    """
    settle_records(paths, cfg, start_round, print_fn)
    files.write_json_atomic(
        paths.config, {"settings": cfg.to_dict(), "fingerprint": cfg.fingerprint(), **(recorded or {})}
    )
    log = outputs.MetricsLog(paths)
    if start_round is None:
        outputs.record_hparams(paths, run_names.tensorboard_hparams(cfg))
    return log


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
