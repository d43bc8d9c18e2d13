"""What every client-level DP mechanism of the stack shares.

The mechanisms (`dp_fixed`, `dp_adaptive`, `dp_tree`, `dp_distributed`) are
`mean` layers: each clips client updates, adds Gaussian noise to their sum and
divides by the expected cohort. Their shared settings (`--dp`, the clip, the
noise or target epsilon, delta) are `config.PrivacyConfig`; the accounting is
`tffpipe.privacy`.
"""

from tffpipe.aggregation import base
from tffpipe.errors import ConfigError


class DpLayer(base.Layer):
    """Base of a DP mechanism layer."""

    role = "mean"
    needs_uniform_weighting = True

    def active(self, cfg) -> bool:
        return cfg.privacy.mechanism == self.dp_mechanism

    def check(self, cfg) -> None:
        if not self.active(cfg):
            return
        dp, mechanism = cfg.privacy, self.dp_mechanism
        if (dp.noise_multiplier is None) == (dp.target_epsilon is None):
            raise ConfigError(f"--dp={mechanism} needs exactly one of --dp_noise_multiplier and --dp_target_epsilon")
        if cfg.clock.changes_cohort:
            raise ConfigError(
                f"--dp={mechanism} with {cfg.clock.cohort_changed_by}: the privacy accounting assumes "
                "a cohort sampled uniformly at random, but which clients report depends on their "
                "speed and availability"
            )
        if cfg.algorithm.client_weighting == "num_examples":
            raise ConfigError(
                f"--dp={mechanism} needs --client_weighting=uniform: DP bounds each "
                "client's contribution, and weighting by number of examples lets a "
                "client with many examples exceed that bound"
            )

    def resume_fingerprint(self, cfg) -> dict:
        # The epsilon of the rounds already run was accounted at their cohort
        # size; a noise solved for --dp_target_epsilon, and accounting by
        # participation, also depend on the planned rounds.
        found = {"clients_per_round": cfg.schedule.clients_per_round}
        if cfg.privacy.target_epsilon is not None or not self.amplified_by_sampling:
            found["rounds"] = cfg.schedule.rounds
        return found

    def noise_detail(self, ctx: base.Context) -> str:
        return f"Gaussian, stddev {ctx.noise_multiplier:.4g} x clip on the sum"

    def lines_below_sum(self, ctx):
        return [base.Line("mean", f"uniform, divided by the expected {ctx.clients_per_round} clients per round")]
