"""What a runtime is: where a learning process's rounds (and evaluations) run.

A runtime is one module in this folder with a `RUNTIME` (a `Runtime`) and
its name in `registry.RUNTIMES`. The program calls it in this order:
`check` (settings, no TensorFlow), `configure_devices` (before TensorFlow
starts its devices), `preflight` (before data loads), `loop_implementation`
(before the processes are built), then `running` around the rounds, in which
`evaluation` wraps the evaluation process. Modules import TensorFlow inside
their methods, never at import.

A runtime sees the runtimes' settings and the run's secure-sum protocol in
a small `Context`, never the run's configuration; which other components it
refuses is its `rules` (`tffpipe.components.Rule`), checked in
`tffpipe/config/components.py`.
"""

import contextlib
import dataclasses
from typing import Any
from collections.abc import Callable, Iterator, Mapping

from tffpipe import components

PrintFn = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Context:
    """What a runtime is given.

    Attributes:
      selected: `--runtime`.
      settings: each runtime's settings by key (None for those without):
        `auto` chooses among the others and `ray` runs the in-process engine
        on its actors, so a runtime may read another's.
      secure_protocol: `--secure_protocol`, for messages.
      protocol: given a key holder's factory (or None), makes the run's
        secure-sum protocol factory, its keys kept in the run folder.
    """

    selected: str
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    secure_protocol: str = "masking"
    protocol: Callable[..., Callable[[], Any]] | None = None


class Runtime:
    """Base class of a runtime: TFF's default behaviour everywhere."""

    key: str = ""
    Settings: type | None = None
    summary: str = ""  # one line for `--help` and the doctor
    chooses_another: bool = False  # picks one of the others (auto): the doctor checks those
    # Runs secure sums with tffpipe's protocols (`--secure_protocol`) rather than TFF's own.
    executes_secure_sums: bool = False

    # Combinations with other components the runtime refuses (when it runs).
    rules: tuple[components.Rule, ...] = ()

    def settings(self, ctx: Context) -> Any:
        """This runtime's own settings."""
        return ctx.settings[self.key]

    def check(self, ctx: Context, run: components.Selection) -> None:
        """Refuses settings the runtime cannot use (`ConfigError`)."""

    def configure_devices(self, ctx: Context) -> None:
        """Sets up TensorFlow devices; called before TensorFlow starts them."""

    def preflight(self, ctx: Context, print_fn: PrintFn) -> None:
        """Checks what the runtime needs (workers, devices) before data loads."""

    def loop_implementation(self) -> Any:
        """How clients iterate over datasets (`tff.learning.LoopImplementation`)."""
        import tensorflow_federated as tff

        return tff.learning.LoopImplementation.DATASET_REDUCE

    @contextlib.contextmanager
    def running(self, process: Any, ctx: Context, print_fn: PrintFn) -> Iterator[Any]:
        """Yields what runs `process`'s rounds (same interface as `process`)."""
        yield process

    def evaluation(self, process: Any, ctx: Context, print_fn: PrintFn) -> Any:
        """The evaluation process as this runtime runs it (inside `running`)."""
        return process

    def checked_by_default(self, ctx: Context) -> bool:
        """Whether `python -m tffpipe.doctor` (--runtime=all) checks this runtime under `ctx`."""
        return True

    def doctor_checks(self, ctx: Context, gpus_seen: int) -> Iterator[tuple[str, str, str]]:
        """What `python -m tffpipe.doctor` says of this runtime here.

        Yields:
          (status "ok" | "warn" | "FAIL", what was checked, detail).
        """
        return iter(())
