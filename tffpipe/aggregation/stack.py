"""Composes the model-update aggregator from the registered layers.

Outermost first, a stack is: wrappers (a user's layer, zeroing) -> the mean
(a DP mechanism, or the plain mean) -> the sum (secure sum, quantization, or
TFF's plain sum). The factory is built from the inside out; each layer is one
module of this folder (`registry.LAYERS`).
"""

import dataclasses
from typing import Any
from collections.abc import Sequence

from tffpipe.aggregation import base
from tffpipe.aggregation import registry
from tffpipe.privacy import calibration


@dataclasses.dataclass(frozen=True)
class Stack:
    """What `build_aggregator` derived from the config.

    Attributes:
      lines: the printed stack, outermost first.
      weighted: whether the factory is a `WeightedAggregationFactory`.
      uses_secure_sum: whether the process will call secure-sum intrinsics.
      noise_multiplier: the DP noise multiplier (solved from a target epsilon
        when one was given); None without DP.
      noise_from_target: whether `noise_multiplier` was solved for.
      clip_norm: the DP clipping norm (initial norm under adaptive clipping).
      dp_layer: the active DP mechanism, if any.
    """

    lines: tuple[base.Line, ...]
    weighted: bool
    uses_secure_sum: bool
    noise_multiplier: float | None = None
    noise_from_target: bool = False
    clip_norm: float | None = None
    dp_layer: base.Layer | None = None

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


def client_weighting(cfg: Any) -> str:
    """The client weighting in effect: as set, or uniform when a layer needs it (DP)."""
    if cfg.algorithm.client_weighting != "auto":
        return cfg.algorithm.client_weighting
    needs_uniform = any(layer.needs_uniform_weighting for layer in registry.active_layers(cfg))
    return "uniform" if needs_uniform else "num_examples"


def clip_norm(cfg: Any) -> float | None:
    """The DP clipping norm in effect: as set, or the mechanism's default."""
    layer = registry.dp_layer(cfg)
    if layer is None:
        return None
    return cfg.privacy.clip_norm if cfg.privacy.clip_norm is not None else layer.default_clip_norm


def build_aggregator(cfg: Any, train_client_ids: Sequence[str]) -> tuple[Any, Stack]:
    """The model-update aggregation factory the config asks for.

    Args:
      cfg: the run's settings (validated, fitted to the task).
      train_client_ids: the training clients, for privacy calibration.

    Returns:
      The factory (weighted unless the client weighting is uniform) and what
      was derived.

    Raises:
      ConfigError: a setting that only fails once the task is known.
    """
    from tffpipe import compat  # TensorFlow: not for flag checks

    compat.allow_deeply_nested_computations()
    layers = registry.active_layers(cfg)
    dp_layer = registry.dp_layer(cfg)
    noise, solved = (None, False)
    if dp_layer is not None:
        noise, solved = calibration.resolve_noise_multiplier(cfg, dp_layer, train_client_ids)
    wrappers = [layer for layer in layers if layer.role == "wrapper"]
    (mean,) = [layer for layer in layers if layer.role == "mean"]
    sums = [layer for layer in layers if layer.role == "sum"]
    clip = clip_norm(cfg)
    ctx = base.Context(
        config=cfg,
        weighted=client_weighting(cfg) == "num_examples",
        secure=any(layer.secure_sum for layer in layers),
        clients_per_round=cfg.schedule.clients_per_round,
        noise_multiplier=noise,
        clip_norm=clip,
        record_bound=clip if mean.clips_records else None,
    )
    value_sum = sums[0].build(None, ctx) if sums else None
    factory = mean.build(value_sum, ctx)
    for layer in sums:
        factory = layer.around_mean(factory, ctx)
    for layer in reversed(wrappers):
        factory = layer.build(factory, ctx)
    lines = [line for layer in wrappers for line in layer.lines(ctx)]
    lines += [line for layer in sums for line in layer.lines_around_mean(ctx)]
    lines += mean.lines(ctx)
    lines += [line for layer in sums for line in layer.lines(ctx)]
    lines += mean.lines_below_sum(ctx)
    return factory, Stack(
        lines=tuple(lines),
        weighted=ctx.weighted,
        uses_secure_sum=ctx.secure,
        noise_multiplier=noise,
        noise_from_target=solved,
        clip_norm=clip,
        dp_layer=dp_layer,
    )
