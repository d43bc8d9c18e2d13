"""The run's features as round-loop hooks: the simulated clock, attacks, privacy, divergence, evaluation.

Each wraps one feature's object (`clock.Clock`, `attacks.simulation.Simulation`,
`privacy.tracking.PrivacyTracker`, `divergence`, `reports.Reports`) and
calls it at its phase of `rounds.RoundLoop`. What a synchronous round
hands them beyond its metrics is a `RoundDetails`.
"""

import dataclasses
from typing import Any

from tffpipe.program import checkpoints
from tffpipe.program import divergence
from tffpipe.program import progress
from tffpipe.program import rounds


@dataclasses.dataclass(frozen=True)
class RoundDetails:
    """What a synchronous round hands the hooks besides its metrics.

    Attributes:
      plan: the simulated clock's plan of the round (who reports, when).
      state: the learning process's state after the round.
      aggregator_metrics: what the aggregator reported (empty without clients).
    """

    plan: Any
    state: Any
    aggregator_metrics: Any


class ClockHook(rounds.Hook):
    """Advances the simulated clock by each round's plan and adds its `sim/` and `clients/` metrics."""

    def __init__(self, clock: Any):
        self._clock = clock

    def after_round(self, loop, trained):
        trained.metrics.update(self._clock.advance(trained.details.plan))


class AttackHook(rounds.Hook):
    """Adds how many attackers reported each round."""

    def __init__(self, simulation: Any):
        self._simulation = simulation

    def after_round(self, loop, trained):
        trained.metrics.update(self._simulation.round_metrics(trained.details.plan.reporting))


class PrivacyHook(rounds.Hook):
    """Stops before a round that would exceed `--dp_max_epsilon`; adds each round's `privacy/` metrics."""

    def __init__(self, tracker: Any):
        self._tracker = tracker

    def before_round(self, loop, round_num):
        return self._tracker.stop_reason(round_num)

    def after_round(self, loop, trained):
        details = trained.details
        trained.metrics.update(self._tracker.after_round(trained.number, details.state, details.aggregator_metrics))


class DivergenceHook(rounds.Hook):
    """Checks each trained round for divergence: stops (keeping the last finite state) or warns.

    Args:
      context: what the divergence line names and counts.
      stop: `--on_divergence=stop`.

    Attributes:
      diverged: the rounds that diverged under `--on_divergence=warn`.
    """

    def __init__(self, context: divergence.Context, stop: bool):
        self._context = context
        self._stop = stop
        self._previous: Any = None
        self.diverged: list[int] = []

    def before_round(self, loop, round_num):
        if self._stop:
            self._previous = loop.training.state()
        return None

    def after_round(self, loop, trained):
        if not trained.trained:
            return
        expected = trained.expected_examples if self._context.counts_each_example else None
        symptoms = divergence.symptoms(trained.metrics, trained.model, expected)
        if not symptoms:
            return
        n = trained.number
        if self._stop:
            last_finite = n - 1 if n > 1 else None
            error = divergence.Diverged(divergence.line(n, symptoms, self._context, last_finite, stopping=True))
            raise rounds.Stop(error, keep=(n - 1, self._previous))
        loop.print_fn(divergence.line(n, symptoms, self._context, None, stopping=False))
        self.diverged.append(n)


class EvaluationHook(rounds.Hook):
    """Runs the evaluations due after each round (`reports.Reports`)."""

    def __init__(self, reports: Any):
        self.reports = reports

    def on_evaluation(self, loop, trained):
        found, histograms = self.reports.after_round(trained.number, trained.model)
        trained.metrics.update(found)
        trained.histograms.update(histograms)


def standard_hooks(log: Any, ckpt: checkpoints.CheckpointManager, checkpoint_every: int) -> list[rounds.Hook]:
    """What every program's rounds end with: records, checkpoints in `ckpt`, the progress line."""
    return [
        rounds.Records(log),
        rounds.Checkpoints(lambda n, state: ckpt.save(checkpoints.ProgramState(n, state)), checkpoint_every),
        rounds.Progress(progress.round_line),
    ]
