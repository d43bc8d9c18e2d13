"""The table of registered tasks that `python -m tffpipe.tasks` prints."""

import inspect

from tffpipe.errors import TaskError
from tffpipe.tasks.registry import describe, factory_options, load_factory, registered_tasks


def task_table() -> str:
    """One block per registered task: name, source, description and its flags.

    Listing imports each factory's module but builds no task, so nothing is
    loaded or downloaded. A plug-in that fails to import is listed with why.
    """
    lines = []
    for entry in sorted(registered_tasks().values(), key=lambda e: (e.source != "built-in", e.name)):
        try:
            factory = load_factory(entry.path)
        except TaskError as e:
            lines.append(f"{entry.name:<18} [{entry.source}] cannot be loaded: {e}")
            continue
        lines.append(f"{entry.name:<18} {describe(factory)}")
        parties = getattr(inspect.getmodule(factory), "PARTIES", None)
        if parties:  # a vertical task's module names its parties
            lines.append(f"{'':<18} vertical, parties: " + "; ".join(f"{n}: {what}" for n, what in parties.items()))
        if entry.source != "built-in":
            lines.append(f"{'':<18} registered by {entry.source} ({entry.path})")
        options = factory_options(factory)
        if options:
            flags = " ".join(f"--{entry.name}_{o}" for o in options)
            lines.append(f"{'':<18} flags: {flags}")
    return "\n".join(lines)
