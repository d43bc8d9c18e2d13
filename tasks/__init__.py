"""Built-in tffpipe tasks, one module each.

`TASKS` maps a task name to its factory as a `module:function` path, so that
listing tasks does not build any of them.
"""

TASKS = {
    "digits": "tffpipe_tasks.digits:create_task",
    "emnist": "tffpipe_tasks.emnist:create_task",
    "shakespeare": "tffpipe_tasks.shakespeare:create_task",
    "stackoverflow_nwp": "tffpipe_tasks.stackoverflow_nwp:create_task",
    "cifar100": "tffpipe_tasks.cifar100:create_task",
    "breast_cancer": "tffpipe_tasks.breast_cancer:create_task",
    "diabetes": "tffpipe_tasks.diabetes:create_task",
    "vertical_diabetes": "tffpipe_tasks.vertical_diabetes:create_task",
    "vertical_breast_cancer": "tffpipe_tasks.vertical_breast_cancer:create_task",
}
