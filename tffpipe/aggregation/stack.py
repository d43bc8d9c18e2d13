"""Composes the model-update aggregator from the registered layers.

Outermost first, a stack is: wrappers (a user's layer, zeroing) -> the mean
(a DP mechanism, or the plain mean) -> the sum (secure sum, quantization, or
TFF's plain sum). The factory is built from the inside out; each layer is one
module of this folder (`registry.LAYERS`).
"""

import dataclasses
from typing import Any
from collections.abc import Mapping

from tffpipe.aggregation import base
from tffpipe.aggregation import registry
from tffpipe.components import Selection


@dataclasses.dataclass(frozen=True)
class Stack:
    """What `build` derived from the layers' settings.

    Attributes:
      lines: the printed stack, outermost first.
      weighted: whether the factory is a `WeightedAggregationFactory`.
      uses_secure_sum: whether the process will call secure-sum intrinsics.
      noise_multiplier: the DP noise multiplier (solved from a target epsilon
        when one was given); None without DP.
      noise_from_target: whether `noise_multiplier` was solved for.
      clip_norm: the DP clipping norm (initial norm under adaptive clipping).
      dp_layer: the active DP mechanism, if any.
      dp_settings: that mechanism's own settings, if any.
    """

    lines: tuple[base.Line, ...]
    weighted: bool
    uses_secure_sum: bool
    noise_multiplier: float | None = None
    noise_from_target: bool = False
    clip_norm: float | None = None
    dp_layer: base.Layer | None = None
    dp_settings: Any = None

    def describe(self) -> str:
        """The stack as a short indented tree, one layer a line."""
        heads = ["  " * depth + ("└ " if depth else "") + line.name for depth, line in enumerate(self.lines)]
        width = max(len(head) for head in heads)
        out = ["aggregation stack (outermost first):"]
        for head, line in zip(heads, self.lines):
            out.append(f"  {head.ljust(width)}  {line.detail}")
        return "\n".join(out)

    @property
    def summary(self) -> str:
        """`zeroing -> DP -> secure sum -> mean`."""
        return " -> ".join(line.name for line in self.lines)


def build(
    settings: Mapping[str, Any],
    run: Selection,
    noise_multiplier: float | None = None,
    noise_from_target: bool = False,
) -> tuple[Any, Stack]:
    """The model-update aggregation factory of the run's layers.

    Args:
      settings: {layer key: that layer's settings} (`config.components.stack_settings`).
      run: the run's selection, fitted to the task (its cohort size known).
      noise_multiplier: the DP noise multiplier, as given or solved for a
        target epsilon (`tffpipe.privacy.calibration`); None without DP.
      noise_from_target: whether `noise_multiplier` was solved for.

    Returns:
      The factory (weighted unless the client weighting is uniform) and what
      was derived.

    Raises:
      ConfigError: a setting that only fails once the task is known.
    """
    from tffpipe import compat  # TensorFlow: not for flag checks

    compat.allow_deeply_nested_computations()
    layers = registry.active_layers(settings, run)
    dp_layer = next((layer for layer in layers if layer.dp_mechanism), None)
    wrappers = [layer for layer in layers if layer.role == "wrapper"]
    (mean,) = [layer for layer in layers if layer.role == "mean"]
    sums = [layer for layer in layers if layer.role == "sum"]
    shared = base.Context(
        settings=None,
        weighted=run.weighting == "num_examples",
        secure=any(layer.secure_sum for layer in layers),
        clients_per_round=run.clients_per_round or 0,  # known once fitted to the task
        noise_multiplier=noise_multiplier,
        clip_norm=run.dp_clip_norm,
        record_bound=run.dp_clip_norm if mean.clips_records else None,
    )

    def ctx(layer: base.Layer) -> base.Context:
        return dataclasses.replace(shared, settings=settings[layer.key])

    value_sum = sums[0].build(None, ctx(sums[0])) if sums else None
    factory = mean.build(value_sum, ctx(mean))
    for layer in sums:
        factory = layer.around_mean(factory, ctx(layer))
    for layer in reversed(wrappers):
        factory = layer.build(factory, ctx(layer))
    lines = [line for layer in wrappers for line in layer.lines(ctx(layer))]
    lines += [line for layer in sums for line in layer.lines_around_mean(ctx(layer))]
    lines += mean.lines(ctx(mean))
    lines += [line for layer in sums for line in layer.lines(ctx(layer))]
    lines += mean.lines_below_sum(ctx(mean))
    return factory, Stack(
        lines=tuple(lines),
        weighted=shared.weighted,
        uses_secure_sum=shared.secure,
        noise_multiplier=noise_multiplier,
        noise_from_target=noise_from_target,
        clip_norm=run.dp_clip_norm,
        dp_layer=dp_layer,
        dp_settings=settings[dp_layer.key].own if dp_layer is not None else None,
    )
