"""Spotting a diverged round, and saying so in one line.

TFF keeps a diverging run going quietly: a client whose model update is not
finite is given weight 0 and its training metrics are reset
(`model_delta_client_work`), and a non-finite aggregate is skipped by the
optimizer finalizer (`update_non_finite`). A run with a learning rate far too
high therefore trains nothing and still reports a loss and `done`. This
module reads the round's figures for those signs.
"""

import dataclasses
import math
from typing import Any
from collections.abc import Mapping

import numpy as np

from tffpipe import errors


class Diverged(errors.UserError, RuntimeError):
    """Training diverged and `--on_divergence=stop`; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Context:
    """What the check needs besides the round's figures.

    Attributes:
      learning_rates: `{flag: value}` of the rates in effect, named in the hint.
      counts_each_example: the algorithm's `train/num_examples` counts every
        example a client trains (so a shortfall is clients skipped).
    """

    learning_rates: Mapping[str, float]
    counts_each_example: bool


def symptoms(metrics: Mapping[str, float], model_weights: Any, expected_examples: int | None) -> list[str]:
    """What in a round's figures shows divergence (empty for a healthy round).

    Args:
      metrics: the round's flat metrics (`train/loss`, `.../update_non_finite`, ...).
      model_weights: the model weights after the round (trainable and not).
      expected_examples: the examples the reporting clients train, when the
        algorithm's `train/num_examples` counts each of them; else None.
    """
    found = []
    loss = metrics.get("train/loss")
    if loss is not None and not math.isfinite(loss):
        found.append(f"the training loss is {loss}")
    if any(name.endswith("update_non_finite") and value for name, value in metrics.items()):
        found.append("the aggregated model update was not finite and was skipped")
    counted = metrics.get("train/num_examples")
    if expected_examples and counted is not None and counted < expected_examples:
        found.append(
            f"updates of clients holding {expected_examples - int(counted)} of {expected_examples} "
            "examples were not finite and were left out"
        )
    if not _finite(model_weights):
        found.append("the model weights are not finite")
    return found


def line(round_num: int, found: list[str], context: Context, last_finite_round: int | None, stopping: bool) -> str:
    """The one line that reports a diverged round."""
    rates = ", ".join(f"--{flag}={value:g}" for flag, value in context.learning_rates.items())
    text = f"round {round_num} diverged: {'; '.join(found)}; likely cause: a learning rate too high ({rates})"
    if not stopping:
        return f"warning: {text} (--on_divergence=warn: training goes on)"
    if last_finite_round:
        advice = (
            f"the checkpoint of round {last_finite_round} holds the last finite weights: "
            "lower the rate and rerun to resume from it"
        )
    else:
        advice = "no earlier round was trained: lower the rate and rerun"
    return f"{text}; {advice}, or pass --on_divergence=warn to go on"


def _finite(model_weights: Any) -> bool:
    if model_weights is None:
        return True
    values = list(getattr(model_weights, "trainable", [])) + list(getattr(model_weights, "non_trainable", []))
    return all(np.all(np.isfinite(np.asarray(v))) for v in values if np.issubdtype(np.asarray(v).dtype, np.floating))
