"""`from_values`: a `RunConfig` from flag-named values, checked as the launcher checks flags."""

import dataclasses
from collections.abc import Mapping
from typing import Any

from tffpipe import plugins
from tffpipe import settings
from tffpipe.config.plugin_options import plugin_options
from tffpipe.config.schema import RunConfig
from tffpipe.errors import ConfigError
from tffpipe.config import components


def from_values(values: Mapping[str, Any]) -> RunConfig:
    """A config from flag-named values, checked as the launcher checks flags.

    Args:
      values: `{"rounds": 20, "dp": "fixed", "digits_alpha": 0.1, ...}`: any
        declared setting by its flag name, and the options of the chosen task,
        aggregator and algorithm as `<name>_<option>`. Absent ones take their
        defaults.

    Raises:
      ConfigError, TaskError: with a one-line reason naming the flag.
    """
    table = settings.by_flag(RunConfig)
    # Types first: the task, aggregator and algorithm names pick plug-in options below.
    values = {k: settings.coerce(v, table[k].type, k) if k in table else v for k, v in values.items()}
    values_given = frozenset(values)
    options: dict[str, dict[str, Any]] = {}
    for kind in ("task", "aggregator", "algorithm"):
        name = values.get(kind, table[kind].default)
        known = plugin_options(kind, name)
        prefix = plugins.flag_prefix(name)
        options[kind] = {}
        for option, spec in known.items():
            key = f"{prefix}_{option}"
            if key in table:
                continue  # a built-in setting of that name wins
            # Every option is recorded, given or not, so that config.json and
            # the fingerprint hold the values in effect.
            value = values.pop(key, spec.default)
            if key in values_given and spec.default is not None and type(spec.default) in (bool, int, float, str):
                value = settings.coerce_scalar(value, type(spec.default), key)
            if spec.choices and value not in spec.choices:
                raise ConfigError(f"--{key}={value!r} is not one of: {', '.join(map(str, spec.choices))}")
            options[kind][option] = value
    _refuse_other_tasks_options(values, table, values.get("task", table["task"].default))
    config = settings.build(RunConfig, values)
    config = dataclasses.replace(
        config,
        task=dataclasses.replace(config.task, options=options["task"]),
        aggregation=dataclasses.replace(
            config.aggregation,
            plugin=dataclasses.replace(config.aggregation.plugin, options=options["aggregator"]),
        ),
        algorithm=dataclasses.replace(config.algorithm, options=options["algorithm"]),
        # Named again now that the plug-ins' options are in (an empty name is resolved on build).
        output=dataclasses.replace(config.output, experiment_name=values.get("experiment_name", "")),
    )
    given = frozenset(values)
    settings.check_applies(config, given)
    components.check(config, given)
    return config


def _refuse_other_tasks_options(values, table, task: str) -> None:
    from tffpipe.tasks import registry as task_registry

    for key in values:
        if key in table:
            continue
        for other in task_registry.registered_tasks():
            if key.startswith(other + "_") and other != task:
                raise ConfigError(f"--{key} applies to task {other!r}, not --task={task}")
