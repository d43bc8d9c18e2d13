"""What every client-level DP mechanism of the stack shares.

The mechanisms (`dp_fixed`, `dp_adaptive`, `dp_tree`, `dp_distributed`) are
`mean` layers: each clips client updates, adds Gaussian noise to their sum and
divides by the expected cohort. Their shared settings (`--dp`, the clip, the
noise or target epsilon, delta) are `tffpipe.privacy.settings.Settings`, which
each receives with its own (`DpSettings`); the accounting is `tffpipe.privacy`.
"""

import dataclasses
from typing import Any

from tffpipe import components
from tffpipe.aggregation import base
from tffpipe.errors import ConfigError
from tffpipe.privacy import settings as privacy_settings


@dataclasses.dataclass(frozen=True)
class DpSettings:
    """What a DP mechanism receives as its settings.

    Attributes:
      shared: the settings every mechanism shares (`--dp_*`).
      own: the mechanism's own settings (None for those without).
    """

    shared: privacy_settings.Settings
    own: Any = None


class DpLayer(base.Layer):
    """Base of a DP mechanism layer."""

    role = "mean"
    needs_uniform_weighting = True
    rules: tuple[components.Rule, ...] = (
        components.refuses(
            lambda s, run: bool(run.cohort_changed_by),
            "--dp={run.dp} with {run.cohort_changed_by}: the privacy accounting assumes a cohort sampled "
            "uniformly at random, but which clients report depends on their speed and availability",
        ),
        components.refuses(
            lambda s, run: run.client_weighting == "num_examples",
            "--dp={run.dp} needs --client_weighting=uniform: DP bounds each client's contribution, and "
            "weighting by number of examples lets a client with many examples exceed that bound",
        ),
    )

    def active(self, settings: DpSettings, run: components.Selection) -> bool:
        return run.dp == self.dp_mechanism

    def check(self, settings: DpSettings, run: components.Selection) -> None:
        dp = settings.shared
        if (dp.noise_multiplier is None) == (dp.target_epsilon is None):
            raise ConfigError(
                f"--dp={self.dp_mechanism} needs exactly one of --dp_noise_multiplier and --dp_target_epsilon"
            )

    def resume_fingerprint(self, settings: DpSettings, run: components.Selection) -> dict:
        # The epsilon of the rounds already run was accounted at their cohort
        # size; a noise solved for --dp_target_epsilon, and accounting by
        # participation, also depend on the planned rounds.
        found: dict[str, Any] = {"clients_per_round": run.clients_per_round}
        if settings.shared.target_epsilon is not None or not self.amplified_by_sampling:
            found["rounds"] = run.rounds
        return found

    def noise_detail(self, ctx: base.Context) -> str:
        return f"Gaussian, stddev {ctx.noise_multiplier:.4g} x clip on the sum"

    def lines_below_sum(self, ctx):
        return [base.Line("mean", f"uniform, divided by the expected {ctx.clients_per_round} clients per round")]
