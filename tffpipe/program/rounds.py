"""The one round loop every program runs, and the hooks its features plug in through.

A program (the synchronous rounds of `loop.py`, FedBuff's server updates in
`fedbuff.py`, the vertical program's epochs) says how to train one round
(`Training`); everything else a round does is a `Hook`, called in list
order at each phase:

* `before_round`: may stop the run cleanly before the round (the privacy
  budget);
* `after_round`: adds the round's metrics (the clock, traffic, attacks,
  privacy) and checks them (divergence, which may raise `Stop`);
* `on_evaluation`: evaluates when due and adds those metrics and histograms;
* `on_round_end`: writes the finished round (records, checkpoints, the
  progress line);
* `on_stop`: a hook raised `Stop` (records keep the round, checkpoints the
  last good state);
* `on_end`: after the last round (the final checkpoint, closing records).

The loop itself measures the whole round (`round_time_sec`, and
`examples_per_sec` when the round reports `train/num_examples`).
"""

import dataclasses
import time
from typing import Any, Protocol
from collections.abc import Callable, Mapping, Sequence

ROUND_TIME = "round_time_sec"
EXAMPLES_PER_SEC = "examples_per_sec"
NUM_EXAMPLES = "train/num_examples"


@dataclasses.dataclass
class Round:
    """One trained round, as hooks see it.

    Attributes:
      number: the round (1-based).
      metrics: its metrics so far; hooks add theirs.
      model: the model weights after it (divergence checks and evaluation).
      trained: whether any client trained (an empty round is not checked).
      expected_examples: the examples the reporting clients should have
        trained, where the algorithm counts each one; else None.
      details: what the program's own hooks need (the sampling plan, ...).
      histograms: TensorBoard histograms added by evaluation hooks.
      seconds: the whole round's wall time, set before `on_round_end`.
    """

    number: int
    metrics: dict[str, float]
    model: Any = None
    trained: bool = True
    expected_examples: int | None = None
    details: Any = None
    histograms: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


class Training(Protocol):
    """What a program trains, as the loop drives it."""

    def state(self) -> Any:
        """The state a checkpoint holds now."""

    def train_round(self, round_num: int) -> Round:
        """Trains round `round_num` and returns it."""


class Stop(Exception):  # noqa: N818 (a control-flow signal; `error` is what the user sees)
    """Raised by an `after_round` hook to end the run after this round.

    Attributes:
      error: what the run raises once the hooks have handled the stop.
      keep: (round, state) of the last good state to keep in a checkpoint, or None.
    """

    def __init__(self, error: BaseException, keep: tuple[int, Any] | None = None):
        super().__init__(str(error))
        self.error = error
        self.keep = keep


class Hook:
    """Base of a hook; each phase does nothing unless overridden."""

    def before_round(self, loop: "RoundLoop", round_num: int) -> str | None:
        """A reason to stop cleanly before round `round_num`, or None."""
        return None

    def after_round(self, loop: "RoundLoop", trained: Round) -> None:
        """Adds to (or checks) the metrics of a trained round."""

    def on_evaluation(self, loop: "RoundLoop", trained: Round) -> None:
        """Evaluates when due, adding metrics and histograms to `trained`."""

    def on_round_end(self, loop: "RoundLoop", trained: Round) -> None:
        """Writes the finished round (its metrics include the round's wall time)."""

    def on_stop(self, loop: "RoundLoop", trained: Round, stop: Stop) -> None:
        """A hook stopped the run after `trained`."""

    def on_end(self, loop: "RoundLoop") -> None:
        """After the last round (or a clean stop before one)."""


@dataclasses.dataclass
class RoundLoop:
    """Rounds `start_round + 1 .. rounds` of `training`, with `hooks` at each phase.

    Attributes:
      rounds_done: the newest round trained (or restored).
      stopped_early: why a hook stopped the run before a round, or None.
      started: when the loop started (`time.monotonic`), for estimates.
    """

    training: Training
    hooks: Sequence[Hook]
    start_round: int
    rounds: int
    print_fn: Callable[[str], None]
    rounds_done: int = 0
    stopped_early: str | None = None
    started: float = 0.0

    def run(self) -> None:
        """Runs the rounds.

        Raises:
          BaseException: the error of a `Stop` a hook raised, once every hook handled it.
        """
        self.rounds_done = self.start_round
        self.started = time.monotonic()
        for round_num in range(self.start_round + 1, self.rounds + 1):
            round_start = time.monotonic()  # the whole round: sampling, data, training, evaluation
            reason = next((r for r in (h.before_round(self, round_num) for h in self.hooks) if r), None)
            if reason:
                self.print_fn(reason)
                self.stopped_early = reason
                break
            trained = self.training.train_round(round_num)
            self.rounds_done = round_num
            try:
                for hook in self.hooks:
                    hook.after_round(self, trained)
            except Stop as stop:
                for hook in self.hooks:
                    hook.on_stop(self, trained, stop)
                raise stop.error from None
            for hook in self.hooks:
                hook.on_evaluation(self, trained)
            trained.seconds = time.monotonic() - round_start
            trained.metrics[ROUND_TIME] = trained.seconds
            if NUM_EXAMPLES in trained.metrics:
                trained.metrics[EXAMPLES_PER_SEC] = trained.metrics[NUM_EXAMPLES] / max(trained.seconds, 1e-9)
            for hook in self.hooks:
                hook.on_round_end(self, trained)
        for hook in self.hooks:
            hook.on_end(self)

    def eta(self, round_num: int) -> float:
        """Seconds left at the pace of the rounds run so far."""
        return (time.monotonic() - self.started) / (round_num - self.start_round) * (self.rounds - round_num)


class Records(Hook):
    """Writes each round's metrics (and histograms) to the run's records; closes them at the end."""

    def __init__(self, log: Any):
        self.log = log

    def on_round_end(self, loop, trained):
        self.log.release(trained.metrics, trained.number, trained.histograms)

    def on_stop(self, loop, trained, stop):
        self.log.release(trained.metrics, trained.number)
        self.log.close()

    def on_end(self, loop):
        self.log.close()


class Checkpoints(Hook):
    """Saves the training state every `every` rounds, after the last one, and when the run stops early.

    Args:
      save: saves (round, state) as a checkpoint.
      every: `--checkpoint_every`.
    """

    def __init__(self, save: Callable[[int, Any], None], every: int):
        self._save = save
        self._every = every
        self.last_saved: int | None = None

    def _saved(self, loop) -> int:
        return loop.start_round if self.last_saved is None else self.last_saved

    def on_round_end(self, loop, trained):
        if trained.number == loop.rounds or trained.number % self._every == 0:
            self._save(trained.number, loop.training.state())
            self.last_saved = trained.number

    def on_stop(self, loop, trained, stop):
        if stop.keep is not None and self._saved(loop) < stop.keep[0]:
            self._save(*stop.keep)

    def on_end(self, loop):
        if loop.rounds_done > self._saved(loop):
            self._save(loop.rounds_done, loop.training.state())


class Progress(Hook):
    """Prints each round's progress line."""

    def __init__(self, line: Callable[[int, int, Mapping[str, float], float, float], str]):
        self._line = line

    def on_round_end(self, loop, trained):
        loop.print_fn(
            self._line(trained.number, loop.rounds, trained.metrics, trained.seconds, loop.eta(trained.number))
        )


class Metrics(Hook):
    """Adds a run's fixed metrics (the bytes each client sends and receives) to every round."""

    def __init__(self, fixed: Mapping[str, float]):
        self._fixed = dict(fixed)

    def after_round(self, loop, trained):
        trained.metrics.update(self._fixed)
