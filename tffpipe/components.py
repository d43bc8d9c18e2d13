"""What every component is given besides its own settings, and how it says what it combines with.

A component (an aggregation layer, an algorithm, an attack, a runtime) is
built from its own `Settings` and a small context of its kind (each kind's
`base.py`). None of them sees the run's whole configuration: what they may
know of the other components of a run is a `Selection`, and which
combinations a component refuses is data, a tuple of `Rule`s on its class,
checked in one place (`tffpipe/config/components.py`) with the message the
rule gives.

This module imports neither TensorFlow nor the configuration.
"""

import dataclasses
from typing import Any
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which component of each kind a run selects, and the run-wide numbers components may read.

    Attributes:
      algorithm: `--algorithm` (a built-in name or a user's builder path).
      runtime: `--runtime`.
      attack: `--attack` ("none" without one).
      dp: `--dp` ("none" without DP).
      secure_aggregation: `--secure_aggregation` as set.
      compression: `--compression`.
      robust: `--robust`.
      client_weighting: `--client_weighting` as set (may be "auto").
      clients_per_round: the cohort size (None until fitted to the task).
      rounds: `--rounds`.
      seed: `--seed`.
      cohort_changed_by: the simulated clock's first flag that lets some
        sampled clients not report (dropouts, a deadline, over-selection),
        else "".
      rounds_closed_by: the clock's first flag that closes a round before
        every sampled client reports (a deadline, over-selection), else "".
      personalization: whether `--personalize_every` is on.
      given: the flags set explicitly (empty when a config is built directly).
      layers: the keys of the aggregation layers in the stack, outermost first.
      uses_secure_sum: whether a layer of the stack sums with secure aggregation.
      weighting: the client weighting in effect, "num_examples" or "uniform".
      dp_clip_norm: the DP clipping norm in effect; None without DP.
    """

    algorithm: str = "fedavg"
    runtime: str = "auto"
    attack: str = "none"
    dp: str = "none"
    secure_aggregation: bool = False
    compression: str = "none"
    robust: str = "none"
    client_weighting: str = "auto"
    clients_per_round: int | None = None
    rounds: int = 50
    seed: int = 0
    cohort_changed_by: str = ""
    rounds_closed_by: str = ""
    personalization: bool = False
    given: frozenset[str] = frozenset()
    layers: tuple[str, ...] = ()
    uses_secure_sum: bool = False
    weighting: str = "num_examples"
    dp_clip_norm: float | None = None


Message = str | Callable[[Any, Selection], str]


@dataclasses.dataclass(frozen=True)
class Rule:
    """A combination a component refuses, with the reason.

    Attributes:
      refuses: given the component's settings and the run's selection, whether
        the run is refused.
      message: the one-line reason: a format string over `s` (the settings)
        and `run` (the selection), or a function of both.
    """

    refuses: Callable[[Any, Selection], bool]
    message: Message

    def reason(self, settings: Any, run: Selection) -> str:
        """The message for this run."""
        if callable(self.message):
            return self.message(settings, run)
        return self.message.format(s=settings, run=run)


def refuses(when: Callable[[Any, Selection], bool], message: Message) -> Rule:
    """A rule refusing the runs for which `when(settings, run)` holds."""
    return Rule(when, message)


def requires(condition: Callable[[Any, Selection], bool], message: Message) -> Rule:
    """A rule refusing the runs for which `condition(settings, run)` does not hold."""
    return Rule(lambda settings, run: not condition(settings, run), message)
