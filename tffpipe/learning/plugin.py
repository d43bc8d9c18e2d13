"""A user's own learning process: `--algorithm=my_pkg.my_module:my_builder`.

`my_builder(model_fn, *, client_optimizer, server_optimizer, model_aggregator,
**options)` returns a `tff.learning.templates.LearningProcess`; it is also
given `loop_implementation` if it takes that argument (the runtime's choice).
Its keyword options become `--my_builder_<option>` flags. Installed packages
can register builders by name under the entry-point group
`tffpipe.algorithms`.
"""

import inspect

from tffpipe import plugins
from tffpipe.errors import ConfigError
from tffpipe.learning import base

ENTRY_POINT_GROUP = "tffpipe.algorithms"
# Arguments the program passes itself, never option flags.
PROGRAM_ARGUMENTS = ("client_optimizer", "server_optimizer", "model_aggregator", "loop_implementation")


def registered() -> dict[str, plugins.Entry]:
    return plugins.entries({}, ENTRY_POINT_GROUP)


def builder_path(name: str) -> str | None:
    """The `module:function` of a path or a registered name, else None."""
    if plugins.is_path(name):
        return name
    entry = registered().get(name)
    return entry.path if entry else None


class PluginAlgorithm(base.Algorithm):
    key = "plugin"

    def build(self, parts):
        name = parts.context.name
        path = builder_path(name)
        if path is None:  # the flag's check refuses such names first
            raise ConfigError(f"--algorithm={name}: not a registered algorithm or a builder path")
        builder = plugins.load(path, ConfigError, "algorithm")
        kwargs = dict(
            client_optimizer=parts.client_optimizer,
            server_optimizer=parts.server_optimizer,
            model_aggregator=parts.model_aggregator,
            **dict(parts.context.options),
        )
        if "loop_implementation" in inspect.signature(builder).parameters:
            kwargs["loop_implementation"] = parts.loop_implementation
        try:
            process = builder(parts.model_fn, **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"algorithm {name!r}: {e}") from e
        import tensorflow_federated as tff

        if not isinstance(process, tff.learning.templates.LearningProcess):
            raise ConfigError(
                f"algorithm {name!r} returned {type(process).__name__}, not a tff.learning.templates.LearningProcess"
            )
        return process


ALGORITHM = PluginAlgorithm()
