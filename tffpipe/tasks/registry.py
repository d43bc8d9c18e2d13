"""Finding task factories: built-in names, installed plug-ins, module paths.

A task factory is a function returning a `Task`. Its keyword arguments with
defaults are the task's options (the launcher makes them `--<task>_<option>`
flags); `seed` and `data_dir` are filled in by the program from `--seed` and
`--data_dir`. Installed packages register factories under the entry-point
group `tffpipe.tasks`, for example in their pyproject.toml:

  [project.entry-points."tffpipe.tasks"]
  my_task = "my_pkg.my_module:create_task"
"""

import dataclasses
import importlib
from importlib import metadata
import inspect
import re
import typing
from typing import Any, Callable

from tffpipe.tasks.record import Task, TaskError

ENTRY_POINT_GROUP = "tffpipe.tasks"
# Factory arguments the program fills in itself, never task flags.
PROGRAM_ARGUMENTS = ("seed", "data_dir")


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """A registered task.

    Attributes:
      name: the `--task` value.
      path: its factory as `module:function`.
      source: `built-in`, or the distribution that registered it.
    """

    name: str
    path: str
    source: str


@dataclasses.dataclass(frozen=True)
class TaskOption:
    """One keyword option of a task factory.

    Attributes:
      default: the factory's default value.
      help: the option's line from the factory's `Args:` docstring section.
      choices: the allowed values when annotated `typing.Literal[...]`.
    """

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


def registered_tasks() -> dict[str, TaskEntry]:
    """Built-in tasks, then those installed packages register, by name.

    A plug-in cannot shadow a built-in name; it is left out.
    """
    from tasks import TASKS  # pylint: disable=g-import-not-at-top

    entries = {name: TaskEntry(name, path, "built-in") for name, path in TASKS.items()}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in entries:
            source = ep.dist.name if ep.dist is not None else "entry point"
            entries[ep.name] = TaskEntry(ep.name, ep.value, source)
    return entries


def load_factory(name: str) -> Callable[..., Task]:
    """Resolves a registered task name or a `package.module:factory` path.

    Raises:
      TaskError: if the name is unknown or the path does not import.
    """
    if ":" not in name:
        registry = registered_tasks()
        if name not in registry:
            raise TaskError(
                f"unknown task {name!r}; valid tasks: {', '.join(sorted(registry))} "
                "(or a factory path such as my_pkg.my_module:create_task)"
            )
        name = registry[name].path
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TaskError(f"cannot import task module {module_name!r}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"module {module_name!r} has no callable {attr!r}")
    return factory


def describe(factory: Callable[..., Task]) -> str:
    """One line about a task: its module docstring's first line, else the factory's."""
    module = inspect.getmodule(factory)
    for doc in (inspect.getdoc(module) if module else None, inspect.getdoc(factory)):
        if doc:
            line = doc.strip().splitlines()[0]
            return re.sub(r"^`[\w.]+`:\s*", "", line)
    return ""


def factory_options(factory: Callable[..., Task]) -> dict[str, TaskOption]:
    """The keyword options of a task factory, by name.

    Options are the keyword arguments with defaults, except `seed` and
    `data_dir`. Help text comes from the factory's Google-style `Args:`
    docstring section; `Literal[...]` annotations give the allowed values.
    """
    docs = _arg_docs(inspect.getdoc(factory) or "")
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # pylint: disable=broad-except
        hints = {}  # unresolvable annotations only lose the choices
    options = {}
    for param in inspect.signature(factory).parameters.values():
        if param.default is inspect.Parameter.empty or param.name in PROGRAM_ARGUMENTS:
            continue
        hint = hints.get(param.name)
        choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
        options[param.name] = TaskOption(
            param.default, docs.get(param.name, param.name), choices or None
        )
    return options


def _arg_docs(doc: str) -> dict[str, str]:
    section = re.search(r"^Args:\n(.*?)(?:^\S|\Z)", doc, re.S | re.M)
    if not section:
        return {}
    docs, current = {}, None
    for line in section.group(1).splitlines():
        match = re.match(r"^\s{2,4}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2).strip()
        elif current and line.strip():
            docs[current] += " " + line.strip()
    return docs


def create_task(
    name: str, options: dict[str, Any], *, seed: int, data_dir: str | None = None
) -> Task:
    """Builds a task by name or factory path with its options.

    Args:
      name: a registered name or `module:factory` path.
      options: keyword options of the factory.
      seed: the run's seed, passed if the factory takes `seed`.
      data_dir: where downloaded datasets live, passed if the factory takes
        `data_dir`.

    Raises:
      TaskError: if the task is unknown, rejects an option, or fails to build.
    """
    factory = load_factory(name)
    kwargs = dict(options)
    parameters = inspect.signature(factory).parameters
    known = factory_options(factory)
    for option, value in kwargs.items():
        choices = known[option].choices if option in known else None
        if choices and value not in choices:
            raise TaskError(
                f"task {name!r}: {option} must be one of {', '.join(map(str, choices))}, "
                f"got {value!r}"
            )
    if "seed" in parameters:
        kwargs["seed"] = seed
    if "data_dir" in parameters and data_dir is not None:
        kwargs["data_dir"] = data_dir
    try:
        task = factory(**kwargs)
    except TaskError:
        raise
    except (TypeError, ValueError) as e:
        raise TaskError(f"task {name!r}: {e}") from e
    if not isinstance(task, Task):
        raise TaskError(
            f"task factory {name!r} returned {type(task).__name__}, not tffpipe.tasks.Task"
        )
    return task
