"""Training from Python: `tffpipe.run(task="digits", rounds=20, dp="fixed", ...)`.

The keyword arguments are the launcher's flags by name, checked the same
way; the run writes the same folder as `python -m tffpipe.train` (and resumes
it when called again with the same settings). `train` is the sequence both
share.
"""

import dataclasses
import os
import tempfile
from typing import Any
from collections.abc import Callable

from tffpipe import config as config_lib
from tffpipe.config import components as config_components
from tffpipe.errors import ConfigError
from tffpipe.learning import registry as algorithm_registry
from tffpipe.program import run_lock
from tffpipe.program import saved_settings
from tffpipe.runtimes import registry as runtime_registry


@dataclasses.dataclass(frozen=True)
class Result:
    """What `run` returns.

    Attributes:
      metrics: the finished rounds (`round`, `train/loss`,
        `eval/accuracy`, ...), read back from `results/metrics.csv`, as a
        pandas DataFrame (a row per round; NaN where a round has no value).
      model: the final global model as a Keras model.
      final_eval: the held-out metrics of the final model.
      final_clients: each evaluation client's own metrics of the final model
        (`{client id: {metric: value}}`; empty for vertical tasks).
      run_dir: the run's folder.
      rounds_done: rounds in the final state.
      epsilon: the privacy spent (DP runs), else None.
    """

    metrics: Any
    model: Any
    final_eval: dict[str, float]
    run_dir: str
    rounds_done: int
    epsilon: float | None = None
    final_clients: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


def check_writable(directory: str) -> None:
    """Creates `directory` and proves a file can be written there.

    Raises:
      ConfigError: the folder cannot be created or written.
    """
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test_"):
            pass
    except OSError as e:
        raise ConfigError(f"--root_dir: cannot write to {directory}: {e.strerror or e}") from e


def train(cfg: config_lib.RunConfig, print_fn: Callable[[str], None]) -> tuple[Any, Any]:
    """Sets up the runtime, builds the task and trains (or resumes) the run.

    Returns:
      (the `program.loop.RunResult`, the task).

    Raises:
      UserError: anything the user can fix, in one line (`RunInUse` when
        another launcher holds the run folder).
    """
    runtime = runtime_registry.get(cfg.runtime.name)
    runtime.configure_devices(config_components.runtime_context(cfg))  # before TensorFlow starts its devices
    # Held from before the data loads, so a second launcher stops at once.
    with run_lock.hold(cfg.output.run_dir):
        saved_settings.refuse_changed_settings(cfg)  # before TensorFlow loads
        runtime.preflight(config_components.runtime_context(cfg), print_fn)  # before the data loads
        from tffpipe import tasks
        from tffpipe.program import loop

        from tffpipe.vertical import program as vertical_program

        task = tasks.create_task(
            cfg.task.name,
            dict(cfg.task.options),
            seed=cfg.schedule.seed,
            data_dir=cfg.task.data_dir,
            vertical_overlap=cfg.vertical.overlap,
        )
        vertical = isinstance(task, tasks.VerticalTask)
        vertical_program.check_settings(cfg, task.name, vertical)
        if vertical:
            check_writable(cfg.output.run_dir)
            print_fn(vertical_program.describe_run(cfg, task))
            return vertical_program.run(cfg, task, print_fn=print_fn), task
        cfg = loop.fit_to_task(cfg, task)
        check_writable(cfg.output.run_dir)  # only now: a run that fails to start leaves no folder
        print_fn(loop.describe_run(cfg, task))
        if algorithm_registry.get(cfg.algorithm.name).asynchronous:
            from tffpipe.program import fedbuff

            return fedbuff.run(cfg, task, print_fn=print_fn), task
        return loop.run(cfg, task, print_fn=print_fn), task


def run(*, quiet: bool = False, **settings: Any) -> Result:
    """Trains (or resumes) a run from Python, e.g. in a notebook.

    Args:
      quiet: print nothing (the progress lines are printed otherwise).
      **settings: the launcher's flags by name (`rounds=20`, `dp="fixed"`,
        `digits_alpha=0.1`, ...); absent ones take their defaults.

    Returns:
      The per-round metrics, the final Keras model and the held-out metrics.

    Raises:
      UserError: a bad setting (`ConfigError`), task (`TaskError`) or
        checkpoint, in one line.
    """

    cfg = config_lib.from_values(settings)
    print_fn = (lambda line: None) if quiet else (lambda line: print(line, flush=True))
    result, task = train(cfg, print_fn)
    model = getattr(result, "model", None)  # a vertical run's assembled model
    if model is None:
        from tffpipe.program import assembly

        model = assembly.keras_model(task, cfg, result.model_weights)
    run_dir = cfg.output.run_dir
    # Imported here: pandas loads only when a run's results are read back.
    from tffpipe import results

    return Result(
        metrics=results.read_csv(os.path.join(run_dir, "results", "metrics.csv")),
        model=model,
        final_eval=result.final_eval,
        run_dir=run_dir,
        rounds_done=result.rounds_done,
        epsilon=result.epsilon,
        final_clients=getattr(result, "final_clients", {}),
    )
