"""Built-in tffpipe tasks, one module each.

`TASKS` maps a task name to its factory as a `module:function` path, so that
listing tasks does not build any of them.
"""

TASKS = {
    "digits": "tasks.digits:create_task",
    "emnist": "tasks.emnist:create_task",
    "shakespeare": "tasks.shakespeare:create_task",
    "stackoverflow_nwp": "tasks.stackoverflow_nwp:create_task",
    "cifar100": "tasks.cifar100:create_task",
    "breast_cancer": "tasks.breast_cancer:create_task",
    "diabetes": "tasks.diabetes:create_task",
    "vertical_diabetes": "tasks.vertical_diabetes:create_task",
    "vertical_breast_cancer": "tasks.vertical_breast_cancer:create_task",
}
