"""Tasks: the Task record, the task registry, and federating your own arrays.

Built-in tasks live in the top-level `tasks` package; users plug in their own
with `--task=my_pkg.my_module:create_task` (a factory returning a `Task`), by
registering it under the entry-point group `tffpipe.tasks`, or by federating
centralized arrays with `from_arrays`. `python -m tffpipe.tasks` lists them.

The registry is imported eagerly (it needs no TensorFlow); the record and
`from_arrays` load TensorFlow, so they are imported on first use.
"""

import importlib

from tffpipe.errors import TaskError
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

_LAZY = {
    "ClientData": "tffpipe.tasks.record",
    "ClientSpec": "tffpipe.tasks.record",
    "EVAL_SPLITS": "tffpipe.tasks.record",
    "Task": "tffpipe.tasks.record",
    "PARTITIONS": "tffpipe.tasks.arrays",
    "from_arrays": "tffpipe.tasks.arrays",
    "VerticalTask": "tffpipe.tasks.vertical",
    "vertical_from_arrays": "tffpipe.tasks.vertical",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tffpipe.tasks' has no attribute {name!r}")


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
    "VerticalTask",
    "create_task",
    "describe",
    "factory_options",
    "from_arrays",
    "load_factory",
    "registered_tasks",
    "vertical_from_arrays",
]
