"""What a runtime is: where a learning process's rounds (and evaluations) run.

A runtime is one module in this folder with a `RUNTIME` (a `Runtime`) and
its name in `registry.RUNTIMES`. The program calls it in this order:
`check` (settings, no TensorFlow), `configure_devices` (before TensorFlow
starts its devices), `preflight` (before data loads), `loop_implementation`
(before the processes are built), then `running` around the rounds, in which
`evaluation` wraps the evaluation process. Modules import TensorFlow inside
their methods, never at import.
"""

import contextlib
from typing import Any
from collections.abc import Callable, Iterator

PrintFn = Callable[[str], None]


class Runtime:
    """Base class of a runtime: TFF's default behaviour everywhere."""

    key: str = ""
    Settings: type | None = None
    summary: str = ""  # one line for `--help` and the doctor
    chooses_another: bool = False  # picks one of the others (auto): the doctor checks those
    # Runs secure sums with tffpipe's protocols (`--secure_protocol`) rather than TFF's own.
    executes_secure_sums: bool = False

    def settings(self, cfg: Any) -> Any:
        return getattr(cfg.runtime, self.key)

    def check(self, cfg: Any) -> None:
        """Refuses settings the runtime cannot use (`ConfigError`)."""

    def configure_devices(self, cfg: Any) -> None:
        """Sets up TensorFlow devices; called before TensorFlow starts them."""

    def preflight(self, cfg: Any, print_fn: PrintFn) -> None:
        """Checks what the runtime needs (workers, devices) before data loads."""

    def loop_implementation(self) -> Any:
        """How clients iterate over datasets (`tff.learning.LoopImplementation`)."""
        import tensorflow_federated as tff

        return tff.learning.LoopImplementation.DATASET_REDUCE

    @contextlib.contextmanager
    def running(self, process: Any, cfg: Any, print_fn: PrintFn) -> Iterator[Any]:
        """Yields what runs `process`'s rounds (same interface as `process`)."""
        yield process

    def evaluation(self, process: Any, cfg: Any, print_fn: PrintFn) -> Any:
        """The evaluation process as this runtime runs it (inside `running`)."""
        return process

    def checked_by_default(self, cfg: Any) -> bool:
        """Whether `python -m tffpipe.doctor` (--runtime=all) checks this runtime under `cfg`."""
        return True

    def doctor_checks(self, cfg: Any, gpus_seen: int) -> Iterator[tuple[str, str, str]]:
        """What `python -m tffpipe.doctor` says of this runtime here.

        Yields:
          (status "ok" | "warn" | "FAIL", what was checked, detail).
        """
        return iter(())
