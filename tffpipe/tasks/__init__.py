"""Tasks: the Task record, the task registry, and federating your own arrays.

Built-in tasks live in the top-level `tasks` package; users plug in their own
with `--task=my_pkg.my_module:create_task` (a factory returning a `Task`), by
registering it under the entry-point group `tffpipe.tasks`, or by federating
centralized arrays with `from_arrays`. `python -m tffpipe.tasks` lists them.
"""

from tffpipe.tasks.arrays import PARTITIONS, from_arrays
from tffpipe.tasks.record import EVAL_SPLITS, ClientData, ClientSpec, Task, TaskError
from tffpipe.tasks.registry import (
    ENTRY_POINT_GROUP,
    TaskEntry,
    TaskOption,
    create_task,
    describe,
    factory_options,
    load_factory,
    registered_tasks,
)

__all__ = [
    "ClientData",
    "ClientSpec",
    "ENTRY_POINT_GROUP",
    "EVAL_SPLITS",
    "PARTITIONS",
    "Task",
    "TaskEntry",
    "TaskError",
    "TaskOption",
    "create_task",
    "describe",
    "factory_options",
    "from_arrays",
    "load_factory",
    "registered_tasks",
]
