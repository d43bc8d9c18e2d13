"""absl flags generated from the declared settings, and the flags back into a config.

Every flag of `python -m tffpipe.train` comes from one declaration: a
`settings.setting(...)` field of the config, or a keyword option of the
chosen task, aggregator or algorithm plug-in (`--<name>_<option>`). Nothing
here imports TensorFlow.
"""

import collections
import re
import sys
import textwrap
import types
import typing
from typing import Any
from collections.abc import Sequence

from absl import flags

from tffpipe import config as config_lib
from tffpipe import errors
from tffpipe import plugins
from tffpipe import settings
from tffpipe.tasks import registry as task_registry

FLAGS = flags.FLAGS

_DEFINERS = {
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
}
# Option flags defined for plug-ins (tasks, aggregators, algorithms).
_PLUGIN_FLAGS: set[str] = set()
GROUP_TITLES = {
    "run": "Run",
    "clients": "Clients",
    "clock": "Simulated clock",
    "algorithm": "Algorithm",
    "aggregation": "Aggregation",
    "privacy": "Privacy",
    "attacks": "Attacks",
    "personalization": "Personalization evaluation",
    "runtime": "Runtime",
    "vertical": "Vertical federated learning",
    "outputs": "Outputs",
}


# Flags of the launcher itself (what it does, not what a run computes): off by default.
LAUNCHER_FLAGS = {
    "list_tasks": "Print the registered tasks and their flags, and exit.",
    "verbose": "On an error, print the traceback of its cause above the one-line message.",
}


def define_launcher_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines `LAUNCHER_FLAGS` (boolean, off by default)."""
    for name, help_text in LAUNCHER_FLAGS.items():
        flags.DEFINE_bool(name, False, help_text, flag_values=flag_values)


def _base_type(hint: Any) -> Any:
    """`float | None` -> float; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _help(spec: settings.Spec) -> str:
    return spec.help + (f" Default: {spec.default_text}." if spec.default_text else "")


def define_setting_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines one flag per declared setting of `RunConfig`."""
    for item in settings.declared(config_lib.RunConfig):
        spec, kind = item.spec, _base_type(item.type)
        choices = spec.allowed()
        if typing.get_origin(kind) is tuple or kind is tuple:
            flags.DEFINE_list(spec.flag, list(item.default), _help(spec), flag_values=flag_values)
        elif choices and all(isinstance(c, str) for c in choices):
            flags.DEFINE_enum(spec.flag, item.default, list(choices), _help(spec), flag_values=flag_values)
        else:
            _DEFINERS[kind](spec.flag, item.default, _help(spec), flag_values=flag_values)


def define_plugin_flags(kind: str, name: str, flag_values: flags.FlagValues = FLAGS) -> list[str]:
    """Defines `--<name>_<option>` for the options of one plug-in; returns the flag names."""
    defined = []
    prefix = plugins.flag_prefix(name)
    for option, spec in config_lib.plugin_options(kind, name).items():
        flag_name = f"{prefix}_{option}"
        if flag_name in flag_values:
            continue  # a built-in flag of that name wins; from_values refuses the clash
        help_text = f"[{kind} {name}] {spec.help}"
        if spec.choices and all(isinstance(c, str) for c in spec.choices):
            flags.DEFINE_enum(flag_name, spec.default, list(spec.choices), help_text, flag_values=flag_values)
        elif type(spec.default) in _DEFINERS:
            _DEFINERS[type(spec.default)](flag_name, spec.default, help_text, flag_values=flag_values)
        else:
            continue
        defined.append(flag_name)
        _PLUGIN_FLAGS.add(flag_name)
    return defined


def define_task_flags(flag_values: flags.FlagValues = FLAGS) -> dict[str, list[str]]:
    """Defines the option flags of every registered task (read without importing them).

    A plug-in task whose module cannot be found gets no flags; `--list_tasks` says why.
    """
    defined = {}
    for name in task_registry.registered_tasks():
        try:
            defined[name] = define_plugin_flags("task", name, flag_values)
        except errors.UserError:
            continue
    return defined


def parse(argv: Sequence[str], flag_values: flags.FlagValues | None = None) -> config_lib.RunConfig:
    """`argv` (program name first) parsed into a config, as the launcher does.

    With no `flag_values`, fresh ones are made (tests use that, so each parse
    starts from the defaults).

    Raises:
      flags.Error: a flag absl cannot parse; ConfigError, TaskError: a bad setting.
    """
    if flag_values is None:
        flag_values = flags.FlagValues()
        define_setting_flags(flag_values)
        define_task_flags(flag_values)
    define_chosen_plugin_flags(argv, flag_values)
    flag_values(list(argv))
    return config_from_flags(flag_values)


def define_chosen_plugin_flags(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the option flags of a task, aggregator or algorithm given as a path in `argv`.

    Registered tasks already have their flags; a path (`my_pkg.mod:factory`)
    or a registered aggregator or algorithm is only known once its flag is
    read, so argv (with its --flagfile contents) is scanned first.
    """
    expanded = flag_values.read_flags_from_files(list(argv[1:]), force_gnu=False)
    for kind in ("task", "aggregator", "algorithm"):
        value = _last_value(expanded, kind)
        if not value or (kind == "task" and not plugins.is_path(value)):
            continue
        try:
            define_plugin_flags(kind, value, flag_values)
        except Exception:
            continue  # an unknown plug-in is reported when the config is built


def _last_value(argv: Sequence[str], name: str) -> str | None:
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def given_values(flag_values: flags.FlagValues = FLAGS) -> dict[str, Any]:
    """The flags set on the command line (or in a flag file), by name."""
    own = {item.spec.flag for item in settings.declared(config_lib.RunConfig)}
    values = {}
    for name in flag_values:
        flag = flag_values[name]
        if flag.present and (name in own or name in _PLUGIN_FLAGS):
            values[name] = flag.value
    return values


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> config_lib.RunConfig:
    """The frozen run config from the parsed flags (the same checks as `tffpipe.run`).

    Raises:
      ConfigError, TaskError: a flag value is invalid.
    """
    return config_lib.from_values(given_values(flag_values))


def short_help(program: str) -> str:
    """`--helpshort`: the common flags, grouped by purpose."""
    by_group = collections.defaultdict(list)
    for item in settings.declared(config_lib.RunConfig):
        if item.spec.short:
            by_group[item.spec.group].append(item)
    lines = [f"usage: {program} [--flag=value ...]   (--helpfull lists every flag)"]
    for group in settings.GROUPS:
        if not by_group[group]:
            continue
        lines.append(f"{GROUP_TITLES[group]}:")
        for item in by_group[group]:
            spec = item.spec
            default = spec.default_text or ("" if item.default in (None, "", ()) else item.default)
            choices = spec.allowed()
            text = _first_sentence(spec.help)
            if choices and len(choices) <= 6:
                text += f": {'|'.join(map(str, choices))}"
            if default != "":
                text += f" (default: {default})"
            lines.extend(
                textwrap.wrap(
                    text,
                    width=_HELP_WIDTH,
                    initial_indent=f"  --{spec.flag:<22} ",
                    subsequent_indent=" " * _HELP_INDENT,
                    break_on_hyphens=False,
                )
            )
    lines.append("Task options: --<task>_<option> (python -m tffpipe.tasks lists them).")
    return "\n".join(lines)


_HELP_WIDTH = 100
_HELP_INDENT = 27


def _first_sentence(text: str) -> str:
    """The help's first sentence, whole (a long one wraps onto more lines)."""
    # A sentence ends at a full stop before a capital; "et al. 2017" does not end one.
    return re.split(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".")


def wants_short_help(argv: Sequence[str]) -> bool:
    return any(arg in ("--helpshort", "--help", "-h", "-?") for arg in argv[1:])


def print_short_help_and_exit(program: str) -> None:
    print(short_help(program), flush=True)
    sys.exit(0)


def wants_full_help(argv: Sequence[str]) -> bool:
    return "--helpfull" in argv[1:]


def print_full_help_and_exit(program: str, flag_values: flags.FlagValues = FLAGS) -> None:
    """`--helpfull`: every flag with its whole help, exit status 0 (absl's own exits 1)."""
    print(f"usage: {program} [--flag=value ...]\n\n{flag_values.get_help()}", flush=True)
    sys.exit(0)
