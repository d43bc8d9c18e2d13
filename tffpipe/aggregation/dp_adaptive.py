"""DP with adaptive clipping: the clip follows a quantile of update norms, privately (Andrew et al. 2021)."""

import dataclasses
import math

from tffpipe import components
from tffpipe import settings
from tffpipe.aggregation import base
from tffpipe.aggregation import dp
from tffpipe.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Settings:
    target_quantile: float = settings.setting(
        0.5,
        "Quantile of update norms the clip adapts to.",
        flag="dp_target_quantile",
        group="privacy",
        check=settings.in_range(0, 1),
        applies=("dp", ("adaptive",)),
        resume=settings.MUST_MATCH,
    )
    clip_learning_rate: float = settings.setting(
        0.2,
        "Learning rate of the clip.",
        flag="dp_clip_learning_rate",
        group="privacy",
        check=settings.positive,
        applies=("dp", ("adaptive",)),
        resume=settings.MUST_MATCH,
    )


class DpAdaptive(dp.DpLayer):
    key = "dp_adaptive"
    Settings = Settings
    dp_mechanism = "adaptive"
    default_clip_norm = 0.1

    rules = dp.DpLayer.rules + (
        components.refuses(
            lambda s, run: run.secure_aggregation,
            "--dp=adaptive cannot be combined with --secure_aggregation: the clipping norm changes every "
            "round, so the secure sum has no fixed integer range; use --dp=fixed or --dp=distributed",
        ),
    )

    def check(self, settings, run) -> None:
        super().check(settings, run)
        noise = settings.shared.noise_multiplier
        if noise is not None and run.clients_per_round is not None:
            self.check_noise(noise, run.clients_per_round)

    def check_noise(self, noise_multiplier, clients_per_round) -> None:
        # TFF noises the count of clipped clients with stddev 0.05 x clients per
        # round, which only fits in the total budget below 0.1 x clients per round.
        if noise_multiplier >= 0.1 * clients_per_round:
            raise ConfigError(
                f"--dp=adaptive needs a noise multiplier below 0.1 x --clients_per_round "
                f"= {0.1 * clients_per_round:g} (adaptive clipping also noises the count "
                f"of clipped clients, with stddev 0.05 x clients per round), got "
                f"{noise_multiplier:g}: sample more clients per round or use --dp=fixed"
            )

    def build(self, inner, ctx):
        import tensorflow_federated as tff

        s = ctx.settings.own
        return tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
            noise_multiplier=ctx.noise_multiplier,
            clients_per_round=float(ctx.clients_per_round),
            initial_l2_norm_clip=ctx.clip_norm,
            target_unclipped_quantile=s.target_quantile,
            learning_rate=s.clip_learning_rate,
        )

    def lines(self, ctx):
        s = ctx.settings.own
        return [
            base.Line(
                "clipping",
                f"adaptive L2 norm from {ctx.clip_norm:g} towards the {s.target_quantile:g} "
                "quantile (Andrew et al. 2021)",
            ),
            base.Line("DP", self.noise_detail(ctx) + " (total, including the clipped count)"),
        ]

    def privacy_figures(self, aggregator_metrics, noise_multiplier, memo):
        found = base.find_mappings(aggregator_metrics, ("clip",))
        if not found:
            return {}, None
        s = memo["settings"]
        new_clip = float(found[0]["clip"])
        metrics = {"privacy/clip_norm": new_clip}
        if memo.get("clip"):
            # Inverts TF Privacy's geometric update of the clip,
            # clip' = clip * exp(-lr * (unclipped - target)): the noised
            # fraction of unclipped clients, itself private.
            unclipped = s.target_quantile - math.log(new_clip / memo["clip"]) / s.clip_learning_rate
            metrics["privacy/clipped_fraction"] = 1.0 - min(1.0, max(0.0, unclipped))
        memo["clip"] = new_clip
        return metrics, None


LAYER = DpAdaptive()
