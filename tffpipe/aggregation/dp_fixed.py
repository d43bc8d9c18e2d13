"""DP with fixed clipping: the Gaussian mechanism on clipped updates (DP-FedAvg, McMahan et al. 2018)."""

from tffpipe.aggregation import base
from tffpipe.aggregation import dp


class DpFixed(dp.DpLayer):
    key = "dp_fixed"
    dp_mechanism = "fixed"
    clips_records = True

    def build(self, inner, ctx):
        import tensorflow_federated as tff
        import tensorflow_privacy as tfp

        clip = ctx.clip_norm
        query = tfp.NormalizedQuery(
            tfp.GaussianSumQuery(l2_norm_clip=clip, stddev=clip * ctx.noise_multiplier),
            denominator=float(ctx.clients_per_round),
        )
        # `gaussian_fixed` builds exactly this query but cannot take a record
        # aggregation factory, which secure summing needs.
        return tff.aggregators.DifferentiallyPrivateFactory(query, inner)

    def lines(self, ctx):
        return [base.Line("clipping", f"fixed L2 norm {ctx.clip_norm:g}"), base.Line("DP", self.noise_detail(ctx))]


LAYER = DpFixed()
