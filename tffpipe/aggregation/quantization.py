"""Compression of client uploads by uniform quantization (`EncodedSumFactory`, Suresh et al. 2017).

`tff.learning.compression_aggregator` hard-codes 8 bits; this is its stack
with the bit width and size threshold from the settings.
"""

import dataclasses

from tffpipe import components
from tffpipe import settings
from tffpipe.aggregation import base

METHODS = ("none", "uniform_quantization")


@dataclasses.dataclass(frozen=True)
class Settings:
    method: str = settings.setting(
        "none",
        "Compress client uploads: uniform_quantization (EncodedSumFactory).",
        flag="compression",
        group="aggregation",
        choices=METHODS,
        resume=settings.MUST_MATCH,
        short=True,
    )
    bits: int = settings.setting(
        8,
        "Bits per value under --compression.",
        flag="compression_bits",
        group="aggregation",
        check=settings.integer_range(
            1,
            16,
            " (TFF's uniform quantization rounds in float32, which holds at most "
            "16-bit levels exactly, and 32 bits would not compress)",
        ),
        applies=("compression", ("uniform_quantization",)),
        resume=settings.MUST_MATCH,
    )
    min_elements: int = settings.setting(
        20000,
        "Under --compression, tensors with fewer elements are sent unquantised.",
        flag="compression_min_elements",
        group="aggregation",
        check=settings.at_least(0),
        applies=("compression", ("uniform_quantization",)),
        resume=settings.MUST_MATCH,
    )


class Quantization(base.Layer):
    key = "quantization"
    Settings = Settings
    role = "sum"
    rules = (
        components.refuses(
            lambda s, run: run.secure_aggregation,
            "--secure_aggregation cannot be combined with --compression: secure sums need integers in a "
            "fixed range, and uniform quantization scales each client's values by its own min and max "
            "(secure aggregation already sends quantised integers)",
        ),
        components.refuses(
            lambda s, run: run.dp != "none",
            "--dp cannot be combined with --compression: quantising a clipped update can raise its norm "
            "above the clip, which voids the DP guarantee (--dp=distributed quantises with a privacy analysis)",
        ),
    )

    def active(self, settings, run) -> bool:
        return settings.method != "none"

    def build(self, inner, ctx):
        import tensorflow_federated as tff

        s = ctx.settings
        return tff.aggregators.EncodedSumFactory.quantize_above_threshold(
            quantization_bits=s.bits, threshold=s.min_elements
        )

    def lines(self, ctx):
        s = ctx.settings
        return [base.Line("quantization", f"uniform, {s.bits} bits per value, tensors over {s.min_elements} elements")]


LAYER = Quantization()
