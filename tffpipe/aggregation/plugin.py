"""A user's own aggregation layer: `--aggregator=my_pkg.my_module:my_layer`.

`my_layer(inner, **options)` returns a TFF aggregation factory around the
stack built so far (`inner`); its keyword options become
`--my_layer_<option>` flags. It wraps the whole stack (outermost). Installed
packages can register layers by name under the entry-point group
`tffpipe.aggregators`.
"""

import dataclasses
from typing import Any
from collections.abc import Mapping

from tffpipe import plugins
from tffpipe import settings
from tffpipe.aggregation import base
from tffpipe.errors import ConfigError

ENTRY_POINT_GROUP = "tffpipe.aggregators"


@dataclasses.dataclass(frozen=True)
class Settings:
    path: str = settings.setting(
        "",
        "Your own aggregation layer around the stack: a registered name or "
        "my_pkg.my_module:function (given the inner factory, returns a TFF "
        "aggregation factory); its keyword options become --<function>_<option> flags.",
        flag="aggregator",
        group="aggregation",
        resume=settings.MUST_MATCH,
    )
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def registered() -> dict[str, plugins.Entry]:
    return plugins.entries({}, ENTRY_POINT_GROUP)


def function_path(name: str) -> str:
    """The `module:function` of a registered layer name or a path."""
    if plugins.is_path(name):
        return name
    found = registered()
    if name not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise ConfigError(
            f"unknown aggregator {name!r} (registered: {known}); give a path such as my_pkg.my_module:my_layer"
        )
    return found[name].path


class PluginLayer(base.Layer):
    key = "plugin"
    Settings = Settings

    def active(self, settings, run) -> bool:
        return bool(settings.path)

    def build(self, inner, ctx):
        s = ctx.settings
        function = plugins.load(function_path(s.path), ConfigError, "aggregator")
        try:
            factory = function(inner, **dict(s.options))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"aggregator {s.path!r}: {e}") from e
        import tensorflow_federated as tff

        if not isinstance(factory, tff.aggregators.AggregationFactory):
            raise ConfigError(f"aggregator {s.path!r} returned {type(factory).__name__}, not a tff.aggregators factory")
        return factory

    def lines(self, ctx):
        s = ctx.settings
        options = ", ".join(f"{k}={v!r}" for k, v in sorted(s.options.items()))
        return [base.Line("user layer", f"{s.path}({options})")]


LAYER = PluginLayer()
