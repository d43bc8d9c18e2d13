"""Plug-in options: the `--<task>_<option>`, `--<aggregator>_<option>` and `--<algorithm>_<option>` flags.

A plug-in's options are its function's keyword arguments, read from its source
without importing it (`tffpipe.plugins`). Imports no TensorFlow.
"""

from tffpipe import plugins
from tffpipe.aggregation import plugin as aggregation_plugin
from tffpipe.errors import ConfigError, TaskError
from tffpipe.learning import plugin as algorithm_plugin

# Factory arguments the program fills in itself, never option flags.
PROGRAM_ARGUMENTS = {
    "task": ("seed", "data_dir", "vertical_overlap"),
    "aggregator": (),
    "algorithm": algorithm_plugin.PROGRAM_ARGUMENTS,
}


def plugin_path(kind: str, name: str) -> str | None:
    """The `module:function` behind a plug-in flag value, or None for built-ins."""
    from tffpipe.tasks import registry as task_registry

    if kind == "task":
        return task_registry.factory_path(name)
    if kind == "aggregator":
        return aggregation_plugin.function_path(name) if name else None
    return algorithm_plugin.builder_path(name)


def plugin_options(kind: str, name: str) -> dict[str, plugins.Option]:
    """The options of the plug-in a `--task`, `--aggregator` or `--algorithm` value names."""
    path = plugin_path(kind, name)
    if path is None:
        return {}
    error = TaskError if kind == "task" else ConfigError
    return plugins.options(path, PROGRAM_ARGUMENTS[kind], error, kind)
