"""The flag reference of the documentation site, generated from the declarations.

`docs/hooks/flag_reference.py` puts `markdown()` into `docs/reference/flags.md`
when `mkdocs build` runs, so the reference lists exactly the flags the
launcher defines: every declared setting (by `--helpshort` group, with its
default, its meaning and what a resume may do with it), the launcher's own
flags, each built-in task's options, and `python -m tffpipe.sweep`'s flags.
Imports no TensorFlow.
"""

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from tffpipe import cli
from tffpipe import config
from tffpipe import settings
from tffpipe.tasks import registry as task_registry

RESUME_WORDS = {
    settings.MUST_MATCH: "must match",
    settings.MAY_CHANGE: "may change",
    settings.NOT_APPLICABLE: "not applicable",
}


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell (pipes, angle brackets, asterisks escaped)."""
    return (
        str(text)
        .replace("\\", "\\\\")
        .replace("|", "\\|")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("*", "\\*")
        .replace("\n", " ")
    )


def _code(value: Any) -> str:
    text = str(value).replace("|", "\\|")
    return f"`{text}`" if text else ""


def _default(item: settings.Declared) -> str:
    spec = item.spec
    if spec.default_text:
        return _cell(spec.default_text)
    if isinstance(item.default, tuple):
        return _code(",".join(map(str, item.default)))
    if item.default is None or item.default == "":
        return ""
    return _code(item.default)


def _meaning(item: settings.Declared) -> str:
    spec = item.spec
    text = spec.help
    choices = spec.allowed()
    if choices and not text.rstrip(".").endswith(tuple(str(c) for c in choices)):
        text += f" One of: {', '.join(map(str, choices))}."
    applies = spec.applies_to()
    if applies:
        selector, values = applies
        text += f" Only with --{selector}={'|'.join(map(str, values))}."
    return _cell(text)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _setting_sections() -> list[str]:
    by_group: dict[str, list[settings.Declared]] = {group: [] for group in settings.GROUPS}
    for item in settings.declared(config.RunConfig):
        by_group[item.spec.group].append(item)
    lines = []
    for group in settings.GROUPS:
        lines += [f"### {cli.GROUP_TITLES[group]}", ""]
        lines += _table(
            ("flag", "default", "meaning", "on resume"),
            (
                (f"`--{item.spec.flag}`", _default(item), _meaning(item), RESUME_WORDS[item.spec.resume])
                for item in by_group[group]
            ),
        )
    return lines


def _task_sections() -> list[str]:
    lines = []
    for name, entry in task_registry.registered_tasks().items():
        if entry.source != "built-in":
            continue
        options = config.plugin_options("task", name)
        if not options:
            continue
        prefix = f"--{name}_"
        lines += [f"### `{name}`", ""]
        lines += _table(
            ("flag", "default", "meaning"),
            (
                (
                    f"`{prefix}{option}`",
                    _code(spec.default),
                    _cell(spec.help + (f" One of: {', '.join(map(str, spec.choices))}." if spec.choices else "")),
                )
                for option, spec in options.items()
            ),
        )
    return lines


def _argparse_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str]]:
    rows = []
    for action in parser._actions:  # argparse offers no public list of its arguments
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        default = action.default
        shown = "" if default in (None, [], "", argparse.SUPPRESS) else _code(default)
        help_text = (action.help or "") % {"default": default} if action.help else ""
        rows.append((f"`{action.option_strings[-1]}`", shown, _cell(help_text)))
    return rows


def markdown() -> str:
    """The reference's Markdown: settings by group, launcher flags, task options, sweep flags."""
    from tffpipe import sweep

    lines = [
        "## `python -m tffpipe.train` and `tffpipe.run`",
        "",
        "Each flag is also a keyword argument of `tffpipe.run(...)`. *On resume*: a setting that "
        "**must match** is refused when it differs from the run folder's checkpoints; one that "
        "**may change** takes effect from the next round; **not applicable** settings say where and "
        "how a run executes, not what it computes.",
        "",
    ]
    lines += _setting_sections()
    lines += ["### The launcher", ""]
    lines += _table(
        ("flag", "default", "meaning"),
        [(f"`--{name}`", "off", _cell(text)) for name, text in cli.LAUNCHER_FLAGS.items()]
        + [
            ("`--flagfile`", "", "Read flags from a file, one per line."),
            ("`--helpshort`", "", "The common flags, grouped by purpose."),
            ("`--helpfull`", "", "Every flag with its whole help."),
        ],
    )
    lines += [
        "## Task options",
        "",
        "Generated from each built-in task factory's keyword arguments; giving one for a task you did not "
        "pick is refused. A task of your own gets `--<task>_<option>` flags the same way "
        "(`python -m tffpipe.tasks` lists them).",
        "",
    ]
    lines += _task_sections()
    lines += ["## `python -m tffpipe.sweep`", "", "Every flag not listed here goes to each trial.", ""]
    lines += _table(("flag", "default", "meaning"), _argparse_rows(sweep._parser()))
    return "\n".join(lines)
