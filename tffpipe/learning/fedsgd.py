"""FedSGD: clients send the gradient of their data; the server optimizer applies it (McMahan et al. 2017)."""

from tffpipe.errors import ConfigError
from tffpipe.learning import base


class FedSgd(base.Algorithm):
    key = "fedsgd"
    counts_each_example = True
    uses_client_optimizer = False

    def check(self, ctx, run):
        for flag in sorted(run.given):
            if flag.startswith("client_") and flag.split("_", 1)[1] in (
                "optimizer",
                "learning_rate",
                "momentum",
                "beta_1",
                "beta_2",
                "epsilon",
            ):
                raise ConfigError(
                    f"--{flag} has no effect with --algorithm=fedsgd: clients send "
                    "the gradient of their local data and the server optimizer applies it"
                )

    def build(self, parts):
        import tensorflow_federated as tff

        aggregator = parts.model_aggregator
        if not parts.weighted:
            # FedSGD only takes a weighted aggregator; a uniform one ignores weights.
            aggregator = tff.aggregators.as_weighted_aggregator(aggregator)
        return tff.learning.algorithms.build_fed_sgd(
            parts.model_fn,
            server_optimizer_fn=parts.server_optimizer,
            model_aggregator=aggregator,
            loop_implementation=parts.loop_implementation,
        )


ALGORITHM = FedSgd()
