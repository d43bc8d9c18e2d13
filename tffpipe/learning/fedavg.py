"""FedAvg (McMahan et al. 2017); with an adaptive server optimizer FedAdam, FedYogi or FedAdagrad (Reddi et al. 2021)."""

from tffpipe.learning import base


class FedAvg(base.Algorithm):
    key = "fedavg"
    counts_each_example = True
    sends_model_delta = True

    def build(self, parts):
        import tensorflow_federated as tff

        if parts.weighted:
            return tff.learning.algorithms.build_weighted_fed_avg(
                parts.model_fn, client_weighting=self.client_weighting(parts), **common_arguments(parts)
            )
        return tff.learning.algorithms.build_unweighted_fed_avg(parts.model_fn, **common_arguments(parts))

    def client_work(self, parts):
        import tensorflow_federated as tff

        return tff.learning.templates.build_model_delta_client_work(
            parts.model_fn,
            parts.client_optimizer,
            self.client_weighting(parts),
            loop_implementation=parts.loop_implementation,
        )

    def stacked_form(self, parts):
        from tffpipe.learning import stacked

        return stacked.build(parts, self.client_work(parts), self.client_weighting(parts))


def common_arguments(parts: base.Parts) -> dict:
    """The keyword arguments FedAvg and FedProx builders share."""
    return dict(
        client_optimizer_fn=parts.client_optimizer,
        server_optimizer_fn=parts.server_optimizer,
        model_aggregator=parts.model_aggregator,
        loop_implementation=parts.loop_implementation,
    )


ALGORITHM = FedAvg()
