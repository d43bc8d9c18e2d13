"""`python -m tffpipe.tasks`: prints the registered tasks."""

from tffpipe.runtimes import processes
from tffpipe.tasks.listing import task_table

if __name__ == "__main__":
    print(task_table(), flush=True)
    processes.exit_now(0)
