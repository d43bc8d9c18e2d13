"""Built-in tffpipe tasks, one module each.

`TASKS` maps a task name to its factory as a `module:function` path, so that
listing tasks does not import every task's dependencies.
"""

TASKS = {
    "digits": "tasks.digits:create_task",
}
