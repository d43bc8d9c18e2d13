"""Mime-lite: the server optimizer's state is applied on the clients (Karimireddy et al. 2021).

Clients also upload full-batch gradients, aggregated by an independent copy
of the stack.
"""

from tffpipe import components
from tffpipe.learning import base


class MimeLite(base.Algorithm):
    key = "mime_lite"
    counts_each_example = True

    rules = (
        components.refuses(
            lambda ctx, run: run.dp != "none",
            "--dp cannot be used with --algorithm=mime_lite: Mime-lite clients also upload full-batch "
            "gradients, which the DP aggregator does not protect",
        ),
    )

    def build(self, parts):
        import tensorflow_federated as tff

        common = dict(
            base_optimizer=parts.client_optimizer,
            server_optimizer=parts.server_optimizer,
            model_aggregator=parts.model_aggregator,
            full_gradient_aggregator=parts.make_aggregator(),
            loop_implementation=parts.loop_implementation,
        )
        if parts.weighted:
            return tff.learning.algorithms.build_weighted_mime_lite(
                parts.model_fn, client_weighting=self.client_weighting(parts), **common
            )
        return tff.learning.algorithms.build_unweighted_mime_lite(parts.model_fn, **common)


ALGORITHM = MimeLite()
