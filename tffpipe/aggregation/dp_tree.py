"""DP-FTRL: tree aggregation of the noise across rounds, with no sampling assumption (Kairouz et al. 2021).

Its epsilon comes from the clients' actual participation
(`tffpipe.privacy.accounting.tree_sensitivity`), not from sampling.
"""

from tffpipe.aggregation import base
from tffpipe.aggregation import dp


class DpTree(dp.DpLayer):
    key = "dp_tree"
    dp_mechanism = "tree"
    clips_records = True
    amplified_by_sampling = False

    def build(self, inner, ctx):
        return _TreeAggregationFactory(ctx.noise_multiplier, ctx.clients_per_round, ctx.clip_norm, inner)

    def lines(self, ctx):
        return [
            base.Line("clipping", f"fixed L2 norm {ctx.clip_norm:g}"),
            base.Line("DP", f"tree aggregation (DP-FTRL), stddev {ctx.noise_multiplier:.4g} x clip per tree node"),
        ]


def _TreeAggregationFactory(noise_multiplier, clients_per_round, clip_norm, record_factory):
    """DP-FTRL tree aggregation, built when the value type is known.

    `DifferentiallyPrivateFactory.tree_aggregation` needs the record specs up
    front; the learning process only reveals them to `create`.
    """
    import tensorflow_federated as tff

    class TreeAggregationFactory(tff.aggregators.UnweightedAggregationFactory):
        def create(self, value_type):
            return tff.aggregators.DifferentiallyPrivateFactory.tree_aggregation(
                noise_multiplier,
                float(clients_per_round),
                clip_norm,
                record_specs=tff.types.type_to_tf_tensor_specs(value_type),
                record_aggregation_factory=record_factory,
            ).create(value_type)

    return TreeAggregationFactory()


LAYER = DpTree()
