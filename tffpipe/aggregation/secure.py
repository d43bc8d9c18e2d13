"""Secure aggregation: client values are summed with `SecureSumFactory` (Bonawitz et al. 2017).

Secure sums need integers in a fixed range. Under a DP mechanism that clips
every record, the range is the clip; otherwise this layer adds TFF's adaptive
clipping around the mean and an adaptive range for the sum, as
`tff.learning.secure_aggregator` does (restated here so that the mean can be
any of the stack's).
"""

import dataclasses

from tffpipe import components
from tffpipe import settings
from tffpipe.aggregation import base
from tffpipe.aggregation.protocols import ckks as ckks_protocol
from tffpipe.aggregation.protocols import registry as protocols


@dataclasses.dataclass(frozen=True)
class Settings:
    enabled: bool = settings.setting(
        False,
        "Sum client updates with secure aggregation (--runtime=cpp: protocol "
        "simulated by TFF's test runtime, arithmetic exact; inprocess: pairwise masking).",
        flag="secure_aggregation",
        group="aggregation",
        resume=settings.MUST_MATCH,
        short=True,
        effective=lambda run, value: value or run.uses_secure_sum,
    )
    protocol: str = settings.setting(
        "masking",
        "How the in-process and Ray runtimes execute secure sums: masking (pairwise masks that "
        "cancel in the sum) or ckks (homomorphic encryption: the server adds ciphertexts, a key holder "
        "decrypts only the sum).",
        flag="secure_protocol",
        group="aggregation",
        choices=protocols.PROTOCOLS,
        resume=settings.MUST_MATCH,
    )
    ckks: ckks_protocol.Settings = settings.group(ckks_protocol.Settings)


def _runtime_runs_protocols(runtime: str) -> bool:
    from tffpipe.runtimes import registry as runtimes

    return runtimes.get(runtime).executes_secure_sums


class SecureSum(base.Layer):
    key = "secure"
    Settings = Settings
    role = "sum"
    secure_sum = True
    # Checked whatever the layer's state: --secure_protocol may be given alone.
    checked_when_inactive = True
    rules = (
        components.refuses(
            lambda s, run: protocols.needs_our_engine(s.protocol) and not run.uses_secure_sum,
            "--secure_protocol={s.protocol} protects secure sums and this run has none: add --secure_aggregation",
        ),
        components.refuses(
            lambda s, run: protocols.needs_our_engine(s.protocol) and not _runtime_runs_protocols(run.runtime),
            "--secure_protocol={s.protocol} needs --runtime=inprocess, ray or auto: TFF's own runtime "
            "(--runtime={run.runtime}) executes secure sums itself and cannot run another protocol",
        ),
    )

    def active(self, settings, run) -> bool:
        return settings.enabled

    def check(self, settings, run) -> None:
        if protocols.needs_our_engine(settings.protocol):
            protocols.check(settings)

    def build(self, inner, ctx):
        import tensorflow_federated as tff

        if ctx.record_bound is not None:
            # Clipped records lie in [-C, C] coordinate-wise: a fixed integer range.
            return tff.aggregators.SecureSumFactory(upper_bound_threshold=float(ctx.record_bound))
        bound = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
            initial_estimate=50.0,
            target_quantile=0.95,
            learning_rate=1.0,
            multiplier=2.0,
            secure_estimation=True,
        )
        return tff.aggregators.SecureSumFactory(bound)

    def around_mean(self, mean_factory, ctx):
        if ctx.record_bound is not None:
            return mean_factory
        import tensorflow_federated as tff

        norm = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
            initial_estimate=1.0, target_quantile=0.8, learning_rate=0.2, secure_estimation=True
        )
        return tff.aggregators.clipping_factory(
            norm,
            mean_factory,
            clipped_count_sum_factory=tff.aggregators.SecureSumFactory(
                upper_bound_threshold=1, lower_bound_threshold=0
            ),
        )

    def lines_around_mean(self, ctx):
        if ctx.record_bound is not None:
            return []
        return [base.Line("clipping", "adaptive L2 norm towards the 0.8 quantile (bounds the integer range)")]

    def lines(self, ctx):
        if ctx.record_bound is not None:
            bound = f"{ctx.record_bound:g}"
            return [base.Line("secure sum", f"clipped values in [-{bound}, {bound}] quantised to 32-bit integers")]
        return [base.Line("secure sum", "values quantised to 32-bit integers within the clipping norm")]


LAYER = SecureSum()
