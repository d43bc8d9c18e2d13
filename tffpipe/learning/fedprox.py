"""FedProx: a proximal term keeps local training near the global model (Li et al. 2020)."""

import dataclasses

from tffpipe import settings
from tffpipe.learning import base
from tffpipe.learning import fedavg


@dataclasses.dataclass(frozen=True)
class Settings:
    proximal_strength: float = settings.setting(
        0.01,
        "FedProx's proximal term mu.",
        flag="proximal_strength",
        group="algorithm",
        check=settings.positive,
        applies=("algorithm", ("fedprox",)),
    )


class FedProx(base.Algorithm):
    key = "fedprox"
    counts_each_example = True
    Settings = Settings
    sends_model_delta = True

    def build(self, parts):
        import tensorflow_federated as tff

        mu = parts.context.settings.proximal_strength
        if parts.weighted:
            return tff.learning.algorithms.build_weighted_fed_prox(
                parts.model_fn,
                proximal_strength=mu,
                client_weighting=self.client_weighting(parts),
                **fedavg.common_arguments(parts),
            )
        return tff.learning.algorithms.build_unweighted_fed_prox(
            parts.model_fn, proximal_strength=mu, **fedavg.common_arguments(parts)
        )

    def client_work(self, parts):
        import tensorflow_federated as tff

        return tff.learning.templates.proximal_client_work.build_model_delta_client_work(
            parts.model_fn,
            parts.client_optimizer,
            self.client_weighting(parts),
            delta_l2_regularizer=parts.context.settings.proximal_strength,
            loop_implementation=parts.loop_implementation,
        )


ALGORITHM = FedProx()
