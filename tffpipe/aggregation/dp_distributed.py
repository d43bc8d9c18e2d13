"""Distributed DP: clients add discrete Gaussian shares; a secure modular sum adds them (Kairouz, Liu, Steinke 2021)."""

import dataclasses

from tffpipe import settings
from tffpipe.aggregation import base
from tffpipe.aggregation import dp
from tffpipe.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Settings:
    bits: int = settings.setting(
        20,
        "Bit width of the secure modular sum.",
        flag="dp_distributed_bits",
        group="privacy",
        check=settings.integer_range(1, 22, " (TFF's limit: float32 holds integers up to 2^24 exactly)"),
        applies=("dp", ("distributed",)),
        resume=settings.MUST_MATCH,
    )


class DpDistributed(dp.DpLayer):
    key = "dp_distributed"
    Settings = Settings
    dp_mechanism = "distributed"
    secure_sum = True
    own_sum = True

    def check(self, settings, run) -> None:
        super().check(settings, run)
        bits, clients = settings.own.bits, run.clients_per_round
        if clients is not None and 2**bits < clients:
            raise ConfigError(
                f"--dp_distributed_bits={bits} is too small for {clients} clients per "
                "round: the secure sum of their values would wrap around"
            )

    def build(self, inner, ctx):
        import tensorflow_federated as tff
        from tffpipe.compat import distributed_dp

        ddp = distributed_dp.DistributedDpSumFactory(
            noise_multiplier=ctx.noise_multiplier,
            expected_clients_per_round=ctx.clients_per_round,
            bits=ctx.settings.own.bits,
            l2_clip=ctx.clip_norm,
            mechanism="distributed_dgauss",
            rotation_type="hd",
        )
        # As in `tff.learning.ddp_secure_aggregator`, which fixes adaptive
        # clipping and the Skellam mechanism; DistributedDpSumFactory itself
        # is not exported by TFF 0.87.
        return tff.aggregators.UnweightedMeanFactory(
            value_sum_factory=ddp,
            count_sum_factory=tff.aggregators.SecureSumFactory(upper_bound_threshold=1, lower_bound_threshold=0),
        )

    def lines(self, ctx):
        return [
            base.Line("clipping", f"fixed L2 norm {ctx.clip_norm:g}, randomised Hadamard rotation"),
            base.Line(
                "DP",
                f"distributed discrete Gaussian: each client adds its share of "
                f"stddev {ctx.noise_multiplier:.4g} x clip (Kairouz et al. 2021)",
            ),
            base.Line("secure sum", f"{ctx.settings.own.bits}-bit modular sum of the noisy integers"),
            base.Line("mean", "uniform, divided by the securely summed client count"),
        ]

    def lines_below_sum(self, ctx):
        return []

    def privacy_figures(self, aggregator_metrics, noise_multiplier, memo):
        found = base.find_mappings(aggregator_metrics, ("l2_clip", "scale_factor", "scaled_inflated_l2"))
        if not found:
            return {}, None
        import dp_accounting

        q = found[0]
        # Rounding inflates the sensitivity slightly; the noise is relative to
        # the clip before it.
        inflation = float(q["scaled_inflated_l2"]) / (float(q["l2_clip"]) * float(q["scale_factor"]))
        return (
            {"privacy/sensitivity_inflation": inflation},
            dp_accounting.GaussianDpEvent(noise_multiplier / inflation),
        )


LAYER = DpDistributed()
