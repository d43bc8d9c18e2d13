"""`--robust_norm_bound`: clip each client update to an L2 norm before it is aggregated.

Norm bounding (Sun et al., "Can you really backdoor federated learning?",
2019) limits what one client can move the model by; it composes with the
mean and with every `--robust` rule. TFF's `clipping_factory` does the
clipping; this layer only places it in the stack.
"""

import dataclasses

from tffpipe import settings
from tffpipe.aggregation import base


@dataclasses.dataclass(frozen=True)
class Settings:
    bound: float | None = settings.setting(
        None,
        "Clip every client update to this L2 norm before aggregating (Sun et al. 2019); composes with --robust.",
        flag="robust_norm_bound",
        group="aggregation",
        check=settings.positive,
        resume=settings.MUST_MATCH,
        default_text="off",
    )


class NormBound(base.Layer):
    key = "norm_bound"
    Settings = Settings

    def active(self, settings, run) -> bool:
        return settings.bound is not None

    def build(self, inner, ctx):
        import tensorflow_federated as tff

        return tff.aggregators.clipping_factory(float(ctx.settings.bound), inner)

    def lines(self, ctx):
        return [base.Line("norm bound", f"each update clipped to L2 norm {ctx.settings.bound:g}")]


LAYER = NormBound()
