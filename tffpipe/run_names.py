"""The folder name of a run started without `--experiment_name`.

Named from the task and the settings that differ from their defaults, plus
a short hash of those settings (which keeps names distinct when the readable
part is cut short), for example
`digits-algorithm=fedrecon-digits_alpha=0.1-local_layers=output-3f2a9c1e`;
a run at every default is named after its task alone (`digits`). So
rerunning a command resumes its run, and any other command gets a folder of
its own. Only where a run writes (`--root_dir`) is left out. To continue a
run with other settings that may change on resume (more `--rounds`, another
`--runtime`), give its folder's name as `--experiment_name`.
"""

import hashlib
import json
import math
import re
from typing import Any
from collections.abc import Mapping

# Where a run reads and writes and what TensorBoard lists, not what it computes.
_NOT_NAMED = ("root_dir", "experiment_name", "data_dir", "tls_dir", "hparams")

# Keeps names readable in a listing and in TensorBoard; the hash keeps them distinct.
MAX_SLUG_CHARS = 120
HASH_CHARS = 8
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,:+-]+")


def name_for(config: Any) -> str:
    """The folder name of `config` (a `RunConfig`) without an `--experiment_name`."""
    differing = differences(config)
    task_label = safe(config.task.name)
    if not differing:
        return task_label
    digest = hashlib.sha256(json.dumps(differing, sort_keys=True, default=str).encode()).hexdigest()
    return "-".join([task_label, *_slug_parts(differing), digest[:HASH_CHARS]])


def flag_values(config: Any) -> dict[str, Any]:
    """Every setting of `config` by its flag name, plug-in options (`digits_alpha`) included."""
    from tffpipe import config as config_lib
    from tffpipe import plugins
    from tffpipe import settings

    values = {flag: settings.get(config, item.path) for flag, item in settings.by_flag(config_lib.RunConfig).items()}
    for _, name, options in _plugins(config):
        for option, value in sorted(options.items()):
            values.setdefault(f"{plugins.flag_prefix(name)}_{option}", value)
    return values


def differences(config: Any) -> dict[str, Any]:
    """The settings of `config` that differ from their defaults, by flag name.

    Values are the ones given (an explicit default counts as omitted), plug-in
    options (`--digits_alpha`) included; where the run reads and writes, and
    what TensorBoard lists, are left out.
    """
    from tffpipe import config as config_lib
    from tffpipe import plugins
    from tffpipe import settings

    found: dict[str, Any] = {}
    for kind, name, options in _plugins(config):
        defaults = {option: spec.default for option, spec in config_lib.plugin_options(kind, name).items()}
        for option, value in sorted(options.items()):
            if option not in defaults or value != defaults[option]:
                found[f"{plugins.flag_prefix(name)}_{option}"] = value
    for item in settings.declared(config_lib.RunConfig):
        if item.spec.flag in _NOT_NAMED or item.spec.flag == "task":
            continue
        value = settings.get(config, item.path)
        if value != item.default:
            found[item.spec.flag] = value
    return found


def tensorboard_hparams(config: Any) -> dict[str, Any]:
    """What TensorBoard's HParams table shows for a run, in order: task, algorithm, rounds, the
    `--hparams` settings, then every other setting that differs from its default (the seed among them)."""
    values = flag_values(config)
    shown = {name: values[name] for name in ("task", "algorithm", "rounds", *config.output.hparams)}
    shown.update(differences(config))
    return shown


def check_hparams(config: Any) -> None:
    """Raises ConfigError when `--hparams` names a setting the run does not have."""
    from tffpipe import errors

    if not config.output.hparams:
        return
    known = flag_values(config)
    for name in config.output.hparams:
        if name not in known:
            raise errors.ConfigError(f"--hparams: {name!r} is not a setting of this run")


def _plugins(config: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, name, options) of the task, aggregator and algorithm plug-ins that have options."""
    found = [
        ("task", config.task.name, config.task.options),
        ("aggregator", config.aggregation.plugin.path, config.aggregation.plugin.options),
        ("algorithm", config.algorithm.name, config.algorithm.options),
    ]
    return [(kind, name, options) for kind, name, options in found if name and options]


def _slug_parts(shown: Mapping[str, Any]) -> list[str]:
    parts: list[str] = []
    length = 0
    flags = sorted(shown)
    for i, flag in enumerate(flags):
        part = _part(flag, shown[flag])
        if length + len(part) + 1 > MAX_SLUG_CHARS:
            parts.append(f"+{len(flags) - i}more")
            break
        parts.append(part)
        length += len(part) + 1
    return parts


def _part(flag: str, value: Any) -> str:
    if value is True:
        return safe(flag)
    if value is False:
        return safe(f"no{flag}")
    return safe(f"{flag}={_value_text(value)}")


def _value_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float) and math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value)) if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(_value_text(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{_value_text(v)}" for k, v in sorted(value.items()))
    return str(value)


def safe(text: str) -> str:
    """Only characters every filesystem, shell and TensorBoard run selector takes as they are."""
    return _UNSAFE.sub("_", text).strip("_.") or "run"
