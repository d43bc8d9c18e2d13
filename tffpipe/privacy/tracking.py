"""Per-round privacy bookkeeping of a DP training run.

Reads what the TFF aggregator reports (its DP event, its clipping norm, the
distributed mechanism's quantisation figures) and turns it into
`privacy/...` metrics with `tffpipe.privacy.accounting.RunAccountant`.
"""

import collections
from typing import Any
from collections.abc import Mapping, Sequence

import dp_accounting

from tffpipe.aggregation import base
from tffpipe.privacy import accounting as privacy
from tffpipe.privacy import calibration


def dp_event_from_state(learning_state: Any) -> dp_accounting.DpEvent | None:
    """The DP event of the last round, as the aggregator's state records it.

    Returns None for a freshly initialised state, or when the state carries no
    event (or an unsupported one, as tree aggregation and distributed DP do).
    """
    # `DifferentiallyPrivateFactory` states carry their round's DP event.
    states = base.find_mappings(getattr(learning_state, "aggregator", learning_state), ("dp_event", "is_init_state"))
    if len(states) != 1 or bool(states[0]["is_init_state"]):
        return None
    event = dp_accounting.DpEvent.from_named_tuple(_as_named_tuple(states[0]["dp_event"]))
    if isinstance(event, dp_accounting.UnsupportedDpEvent):
        return None
    return event


def _as_named_tuple(value: Any) -> Any:
    """Rebuilds `DpEvent.to_named_tuple()` output that TFF returned as mappings."""
    if hasattr(value, "_asdict"):
        value = value._asdict()
    if isinstance(value, Mapping):
        fields = {k: _as_named_tuple(v) for k, v in value.items()}
        if "module_name" in fields and "class_name" in fields:
            fields["module_name"] = _text(fields["module_name"])
            fields["class_name"] = _text(fields["class_name"])
            return collections.namedtuple("DpEventTuple", list(fields))(**fields)
        return fields
    if isinstance(value, (list, tuple)):
        return [_as_named_tuple(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PrivacyTracker:
    """Epsilon after every round, the budget guard and the mechanism's DP figures."""

    def __init__(self, cfg: Any, stack: Any, train_client_ids: Sequence[str]):
        dp = cfg.privacy
        self.layer = stack.dp_layer
        self.delta = dp.delta
        self.max_epsilon = dp.max_epsilon
        self.num_clients = len(train_client_ids)
        self.clients_per_round = cfg.schedule.clients_per_round
        self.noise_multiplier = stack.noise_multiplier
        self.accountant = privacy.RunAccountant(
            noise_multiplier=stack.noise_multiplier,
            clients_per_round=cfg.schedule.clients_per_round,
            num_clients=self.num_clients,
            delta=self.delta,
            participation=(
                None if self.layer.amplified_by_sampling else calibration.participation(cfg, train_client_ids)
            ),
        )
        self._round_event: dp_accounting.DpEvent | None = None
        self._memo: dict = {"settings": stack.dp_settings, "clip": stack.clip_norm}
        self.epsilon = 0.0

    def notes(self, rounds: int) -> list[str]:
        """Lines to print at start: the budget of the whole run, and warnings."""
        lines = []
        planned = self.accountant.epsilon(rounds)
        lines.append(
            f"privacy: noise multiplier {self.noise_multiplier:.4g}; {rounds} rounds spend "
            f"epsilon {planned:.3g} at delta {self.delta:g} ({self.accountant.relation}; "
            + (
                "no sampling amplification"
                if self.accountant.by_participation
                else f"{self.clients_per_round} of {self.num_clients} clients sampled without replacement each round"
            )
            + ")"
        )
        if self.delta > 0.1 / self.num_clients:
            lines.append(
                f"warning: --dp_delta={self.delta:g} is not well below 1 / "
                f"{self.num_clients} training clients = {1 / self.num_clients:.3g}; "
                "a guarantee with such a delta allows one client's data to leak"
            )
        if planned > 10:
            lines.append(
                f"warning: epsilon {planned:.3g} is a weak guarantee; more clients per "
                "round, more training clients or more noise lower it"
            )
        return lines

    def restore(self, rounds_done: int, learning_state: Any) -> None:
        """Picks up the last round's event from a restored state."""
        self._round_event = dp_event_from_state(learning_state)
        self._memo["clip"] = None  # the restored state's clip is unknown until a round runs
        self.epsilon = self.accountant.epsilon(rounds_done, self._round_event)

    def stop_reason(self, next_round: int) -> str | None:
        """Why round `next_round` must not run, or None."""
        if self.max_epsilon is None:
            return None
        predicted = self.accountant.epsilon(next_round, self._round_event)
        if predicted <= self.max_epsilon:
            return None
        return (
            f"stopping before round {next_round}: it would bring epsilon to "
            f"{predicted:.4g}, above --dp_max_epsilon={self.max_epsilon:g} "
            f"(spent so far: {self.epsilon:.4g} at delta {self.delta:g})"
        )

    def after_round(
        self, round_num: int, learning_state: Any, aggregator_metrics: Mapping[str, Any]
    ) -> dict[str, float]:
        """Epsilon after this round and the aggregator's privacy figures."""
        event = dp_event_from_state(learning_state)
        metrics, better_event = self.layer.privacy_figures(aggregator_metrics, self.noise_multiplier, self._memo)
        event = better_event or event
        if event is not None:
            self._round_event = event
        self.epsilon = self.accountant.epsilon(round_num, self._round_event)
        metrics["privacy/epsilon"] = self.epsilon
        metrics["privacy/noise_multiplier"] = float(self.noise_multiplier)
        return metrics

    def summary(self, rounds_done: int) -> str:
        return (
            f"privacy: (epsilon {self.epsilon:.4g}, delta {self.delta:g}) after "
            f"{rounds_done} rounds ({self.accountant.relation})"
        )
