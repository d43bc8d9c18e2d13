"""Finding task factories: built-in names, installed plug-ins, module paths.

A task factory is a function returning a `Task`. Its keyword arguments with
defaults are the task's options (the launcher makes them `--<task>_<option>`
flags); `seed` and `data_dir` are filled in by the program from `--seed` and
`--data_dir`. Installed packages register factories under the entry-point
group `tffpipe.tasks`, for example in their pyproject.toml:

  [project.entry-points."tffpipe.tasks"]
  my_task = "my_pkg.my_module:create_task"
"""

import inspect
from typing import Any
from collections.abc import Callable

from tffpipe import errors
from tffpipe import plugins
from tffpipe.errors import TaskError

ENTRY_POINT_GROUP = "tffpipe.tasks"
# Factory arguments the program fills in itself, never task flags.
PROGRAM_ARGUMENTS = ("seed", "data_dir", "vertical_overlap")

TaskEntry = plugins.Entry
TaskOption = plugins.Option
describe = plugins.describe


def registered_tasks() -> dict[str, TaskEntry]:
    """Built-in tasks, then those installed packages register, by name.

    A plug-in cannot shadow a built-in name; it is left out.
    """
    from tffpipe_tasks import TASKS

    return plugins.entries(TASKS, ENTRY_POINT_GROUP)


def factory_path(name: str) -> str:
    """The `module:function` of a registered task name or a factory path.

    Raises:
      TaskError: the name is not registered.
    """
    if plugins.is_path(name):
        return name
    registry = registered_tasks()
    if name not in registry:
        raise TaskError(
            f"unknown task {name!r}; valid tasks: {', '.join(sorted(registry))} "
            "(or a factory path such as my_pkg.my_module:create_task)"
        )
    return registry[name].path


def load_factory(name: str) -> Callable[..., Any]:
    """Resolves a registered task name or a `package.module:factory` path.

    Raises:
      TaskError: if the name is unknown or the path does not import.
    """
    return plugins.load(factory_path(name), TaskError, "task")


def factory_options(factory: Callable[..., Any]) -> dict[str, TaskOption]:
    """The keyword options of a task factory, by name (`seed`, `data_dir` excluded)."""
    return plugins.options_of(factory, PROGRAM_ARGUMENTS)


def create_task(
    name: str,
    options: dict[str, Any],
    *,
    seed: int,
    data_dir: str | None = None,
    vertical_overlap: float | None = None,
) -> Any:
    """Builds a task by name or factory path with its options.

    Args:
      name: a registered name or `module:factory` path.
      options: keyword options of the factory.
      seed: the run's seed, passed if the factory takes `seed`.
      data_dir: where downloaded datasets live, passed if the factory takes
        `data_dir`.
      vertical_overlap: `--vertical_overlap`, passed if the factory takes it.

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
            raise TaskError(f"task {name!r}: {option} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if "seed" in parameters:
        kwargs["seed"] = seed
    if "data_dir" in parameters and data_dir is not None:
        kwargs["data_dir"] = data_dir
    if "vertical_overlap" in parameters and vertical_overlap is not None:
        kwargs["vertical_overlap"] = vertical_overlap
    from tffpipe.tasks.record import Task
    from tffpipe.tasks.vertical import VerticalTask

    try:
        task = factory(**kwargs)
    except TaskError:
        raise
    except (TypeError, ValueError) as e:
        raise TaskError(f"task {name!r}: {errors.first_line(e)}") from e
    except SystemExit as e:
        raise TaskError(f"task factory {name!r} called sys.exit({e.code!r})") from e
    except Exception as e:
        # User code may raise anything; name it in one line (the launcher's
        # --verbose prints the traceback).
        raise TaskError(f"task factory {name!r} raised {type(e).__name__}: {errors.first_line(e)}") from e
    if not isinstance(task, (Task, VerticalTask)):
        raise TaskError(
            f"task factory {name!r} returned {type(task).__name__}, not tffpipe.tasks.Task "
            "or tffpipe.tasks.VerticalTask"
        )
    return task
