"""The plain mean: weighted by number of examples, or uniform.

The last mean in the registry, used when no DP mechanism is. Under secure
sums the weights (or the count) are summed securely as well, as in TFF's
`tff.learning.secure_aggregator`.
"""

from tffpipe.aggregation import base


class Mean(base.Layer):
    key = "mean"
    outside_buffer_ok = True  # the buffer's own mean replaces it
    role = "mean"

    def active(self, settings, run) -> bool:
        return True

    def build(self, inner, ctx):
        import tensorflow_federated as tff

        if ctx.weighted:
            # 2^20 - 1 bounds the securely summed weights (TFF's choice: about
            # a million examples a round).
            weights = (
                tff.aggregators.SecureSumFactory(upper_bound_threshold=float(2**20 - 1), lower_bound_threshold=0.0)
                if ctx.secure
                else None
            )
            return tff.aggregators.MeanFactory(value_sum_factory=inner, weight_sum_factory=weights)
        count = (
            tff.aggregators.SecureSumFactory(upper_bound_threshold=1, lower_bound_threshold=0) if ctx.secure else None
        )
        return tff.aggregators.UnweightedMeanFactory(value_sum_factory=inner, count_sum_factory=count)

    def lines(self, ctx):
        return [base.Line("mean", "weighted by number of examples" if ctx.weighted else "uniform")]


LAYER = Mean()
