"""The resume fingerprint: the effective values of the settings that must match, and how two differ.

A checkpoint carries the fingerprint of the run that wrote it; a resume whose
fingerprint differs is refused with the differing settings named.
"""

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tffpipe import settings
from tffpipe.config import components
from tffpipe.config.plugin_options import plugin_options

if TYPE_CHECKING:
    from tffpipe.config.schema import RunConfig

# Defaults of the plug-ins' options, stored beside the fingerprint and never compared.
OPTION_DEFAULTS = "option_defaults"


def compute(config: "RunConfig") -> dict[str, Any]:
    """The effective values of the settings that must match on resume (see `RunConfig.fingerprint`)."""
    from tffpipe.config.schema import RunConfig

    run = components.selection(config)
    found = {
        item.spec.flag: settings.effective(config, item, run)
        for item in settings.declared(RunConfig)
        if item.spec.resume == settings.MUST_MATCH
    }
    found.update(components.resume_fingerprint(config, run))
    found["task_options"] = dict(sorted(config.task.options.items()))
    # Not compared: lets a checkpoint written before the task gained an
    # option resume while that option keeps its default.
    found[OPTION_DEFAULTS] = {
        "task_options": {name: o.default for name, o in plugin_options("task", config.task.name).items()}
    }
    if config.aggregation.plugin.path:
        found["aggregator_options"] = dict(sorted(config.aggregation.plugin.options.items()))
    if config.algorithm.options:
        found["algorithm_options"] = dict(sorted(config.algorithm.options.items()))
    return found


def fingerprint_to_json(fingerprint: Mapping[str, Any]) -> str:
    return json.dumps(fingerprint, sort_keys=True)


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Lists `name: saved -> current` for every differing fingerprint entry.

    A setting the saved fingerprint does not have (added to tffpipe after the
    checkpoint was written) counts as equal when it has its default now: a
    new setting at its default keeps the old behaviour; so does a task option
    the task's factory gained since. An entry only some settings add (a DP
    layer's cohort size) cannot be compared with a checkpoint written before
    tffpipe recorded it, and is not.
    """
    from tffpipe.config.schema import RunConfig

    defaults = RunConfig().fingerprint()
    option_defaults = current.get(OPTION_DEFAULTS, {})
    diffs = []
    for key in sorted((set(saved) | set(current)) - {OPTION_DEFAULTS}):
        old, new = saved.get(key), current.get(key)
        if key not in saved and (key not in defaults or new == defaults[key]):
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            new_defaults = option_defaults.get(key, {})
            for sub in sorted(set(old) | set(new)):
                if sub not in old and sub in new_defaults and new[sub] == new_defaults[sub]:
                    continue
                if old.get(sub) != new.get(sub):
                    diffs.append(f"{key}.{sub}: {old.get(sub)!r} -> {new.get(sub)!r}")
        elif old != new:
            diffs.append(f"{key}: {old!r} -> {new!r}")
    return diffs
