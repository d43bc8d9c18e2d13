"""Zeroing: an update whose norm is far above the others' counts as zero.

TFF's client work already zeroes non-finite updates (with weight 0) in every
algorithm here; zeroing catches the finite but huge ones, so one broken client
cannot ruin the model. It is TFF's own adaptive zeroing
(`model_update_aggregator._default_zeroing`, private in TFF), restated with
public symbols so that it can wrap any stack.
"""

import dataclasses
import math

from tffpipe import settings
from tffpipe.aggregation import base


@dataclasses.dataclass(frozen=True)
class Settings:
    enabled: bool = settings.setting(
        True,
        "Zero out client updates whose norm is far above the others' (adaptive "
        "bound); non-finite updates are always dropped by TFF's client work.",
        flag="zeroing",
        group="aggregation",
        resume=settings.MUST_MATCH,
        short=True,
    )


class Zeroing(base.Layer):
    key = "zeroing"
    outside_buffer_ok = True  # on by default; the buffer does without it
    Settings = Settings

    def active(self, settings, run) -> bool:
        return settings.enabled

    def build(self, inner, ctx):
        import tensorflow_federated as tff

        norm = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
            initial_estimate=10.0,
            target_quantile=0.98,
            learning_rate=math.log(10.0),
            multiplier=2.0,
            increment=1.0,
            secure_estimation=ctx.secure,
        )
        count_factory = (
            tff.aggregators.SecureSumFactory(upper_bound_threshold=1, lower_bound_threshold=0) if ctx.secure else None
        )
        return tff.aggregators.zeroing_factory(norm, inner, zeroed_count_sum_factory=count_factory)

    def lines(self, ctx):
        return [base.Line("zeroing", "updates above an adaptive norm bound (2 x the 0.98 quantile + 1) count as 0")]


LAYER = Zeroing()
