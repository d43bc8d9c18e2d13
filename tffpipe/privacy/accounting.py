"""Client-level (epsilon, delta) accounting for DP federated training.

All the mathematics is `dp_accounting`'s: the RDP accountant, its DP events
and `calibrate_dp_mechanism`. This module only states which event one round of
training is and pairs it with the neighbouring relation the accountant
supports for it. The program samples a fixed number of clients without
replacement each round: `SampledWithoutReplacementDpEvent`, under the
replace-one relation. DP-FTRL's tree aggregation does not rely on sampling at
all: its epsilon comes from the sensitivity of the noisy tree, for the clients'
actual participation (`tree_sensitivity`), under add-or-remove-one.
"""

import collections
import functools
import math
from collections.abc import Iterable, Sequence
from typing import TypeAlias

import dp_accounting
from dp_accounting import rdp


Relation: TypeAlias = dp_accounting.NeighboringRelation
# Sampling a fixed-size cohort without replacement is analysed under replace-one.
SAMPLED = Relation.REPLACE_ONE
# An unsampled mechanism (the tree's Gaussian) is analysed under add-or-remove-one.
UNSAMPLED = Relation.ADD_OR_REMOVE_ONE


def round_event(noise_multiplier: float, *, clients_per_round: int, num_clients: int) -> dp_accounting.DpEvent:
    """The DP event of one round of the Gaussian mechanism on a sampled cohort."""
    if not 1 <= clients_per_round <= num_clients:
        raise ValueError(f"clients_per_round must be between 1 and {num_clients}, got {clients_per_round}")
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    return dp_accounting.SampledWithoutReplacementDpEvent(
        num_clients, clients_per_round, dp_accounting.GaussianDpEvent(noise_multiplier)
    )


def training_event(
    noise_multiplier: float,
    rounds: int,
    *,
    clients_per_round: int,
    num_clients: int,
) -> dp_accounting.DpEvent:
    """The DP event of `rounds` rounds of training."""
    return dp_accounting.SelfComposedDpEvent(
        round_event(
            noise_multiplier,
            clients_per_round=clients_per_round,
            num_clients=num_clients,
        ),
        rounds,
    )


def _accountant(relation: Relation) -> rdp.RdpAccountant:
    return rdp.RdpAccountant(neighboring_relation=relation)


def epsilon(
    noise_multiplier: float,
    rounds: int,
    *,
    clients_per_round: int,
    num_clients: int,
    delta: float,
) -> float:
    """Epsilon at `delta` after `rounds` rounds, from the RDP accountant.

    Zero rounds spend nothing; a noise multiplier of 0 spends infinitely much.
    """
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    return _epsilon_of(
        training_event(
            noise_multiplier,
            rounds,
            clients_per_round=clients_per_round,
            num_clients=num_clients,
        ),
        SAMPLED,
        delta,
    )


def noise_for_target_epsilon(
    target_epsilon: float,
    rounds: int,
    *,
    clients_per_round: int,
    num_clients: int,
    delta: float,
) -> float:
    """The smallest noise multiplier whose epsilon after `rounds` meets the target."""
    return _calibrate(
        functools.partial(
            training_event,
            rounds=rounds,
            clients_per_round=clients_per_round,
            num_clients=num_clients,
        ),
        SAMPLED,
        target_epsilon,
        delta,
    )


def _calibrate(make_event, relation: Relation, target_epsilon: float, delta: float) -> float:
    """The smallest noise multiplier z whose `make_event(z)` spends `target_epsilon`."""
    if target_epsilon <= 0:
        raise ValueError(f"target epsilon must be positive, got {target_epsilon}")
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(relation),
            make_event,
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
            tol=1e-4,
        )
    )


def tree_sensitivity(participation: Iterable[Sequence[int]], rounds: int) -> float:
    """L2 sensitivity of TFF's tree aggregation after `rounds` rounds, in clip norms.

    `DifferentiallyPrivateFactory.tree_aggregation` keeps a binary tree over
    rounds: each node sums the clipped updates of a dyadic block of rounds and
    carries its own Gaussian noise of stddev z * C; what the server releases is
    computed from completed nodes only. A client that takes part in m rounds
    of one node moves it by at most m * C, so the squared sensitivity is the
    largest, over clients, sum over completed nodes of m^2 (one participation
    in a run of T rounds gives about log2(T) + 1, as in Kairouz et al. 2021).
    TF Privacy reports `UnsupportedDpEvent` for this query, hence the
    derivation here.

    Args:
      participation: for each client, the (1-based) rounds it took part in.
      rounds: rounds completed so far.

    Returns:
      The sensitivity divided by the clipping norm.
    """
    worst = 0
    for client_rounds in participation:
        leaves = [r - 1 for r in client_rounds if 1 <= r <= rounds]
        total, size = 0, 1
        while size <= rounds:
            completed_nodes = rounds // size
            counts = collections.Counter(leaf // size for leaf in leaves if leaf // size < completed_nodes)
            total += sum(m * m for m in counts.values())
            size *= 2
        worst = max(worst, total)
    return math.sqrt(worst)


def gaussian_noise_for_target_epsilon(target_epsilon: float, delta: float) -> float:
    """Noise multiplier of one unsampled Gaussian mechanism that meets the target."""
    return _calibrate(dp_accounting.GaussianDpEvent, UNSAMPLED, target_epsilon, delta)


class RunAccountant:
    """Epsilon of a training run after any number of rounds.

    Sampled mechanisms (fixed and adaptive clipping, distributed DP) compose a
    per-round event under fixed-size sampling without replacement; pass the
    event the TFF aggregator reports in its state where there is one. Tree
    aggregation uses the clients' participation and no sampling amplification.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        clients_per_round: int,
        num_clients: int,
        delta: float,
        participation: Sequence[Sequence[int]] | None = None,
    ):
        """Args:
        noise_multiplier: the run's noise multiplier.
        clients_per_round: the cohort size.
        num_clients: the training clients.
        delta: the reported delta.
        participation: for a mechanism not amplified by sampling (tree
          aggregation), the rounds each client takes part in; None for
          sampled mechanisms.
        """
        self.by_participation = participation is not None
        self.noise_multiplier = noise_multiplier
        self.clients_per_round = clients_per_round
        self.num_clients = num_clients
        self.delta = delta
        self._participation = participation

    @property
    def relation(self) -> str:
        """The neighbouring relation the reported epsilon holds for."""
        if self.by_participation:
            return "add-or-remove-one client"
        return "replace-one client"

    def planned_round_event(self) -> dp_accounting.DpEvent:
        """The unsampled event of one round as configured."""
        return dp_accounting.GaussianDpEvent(self.noise_multiplier)

    def epsilon(self, rounds: int, round_event: dp_accounting.DpEvent | None = None) -> float:
        """Epsilon at the run's delta after `rounds` rounds.

        Args:
          rounds: rounds completed (or about to be).
          round_event: the unsampled DP event of one round as the aggregator
            reports it; None uses the configured Gaussian mechanism.
        """
        if rounds == 0:
            return 0.0
        if self._participation is not None:
            sensitivity = tree_sensitivity(self._participation, rounds)
            if sensitivity == 0:
                return 0.0
            if self.noise_multiplier == 0:
                return math.inf
            return _epsilon_of(
                dp_accounting.GaussianDpEvent(self.noise_multiplier / sensitivity),
                UNSAMPLED,
                self.delta,
            )
        event = round_event or self.planned_round_event()
        if _is_noiseless(event):
            return math.inf
        return _epsilon_of(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.SampledWithoutReplacementDpEvent(self.num_clients, self.clients_per_round, event),
                rounds,
            ),
            SAMPLED,
            self.delta,
        )


def _is_noiseless(event: dp_accounting.DpEvent) -> bool:
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return event.noise_multiplier == 0
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return any(_is_noiseless(e) for e in event.events)
    return False


_EPSILON_CACHE: dict[tuple[str, Relation, float], float] = {}


def _epsilon_of(event: dp_accounting.DpEvent, relation: Relation, delta: float) -> float:
    # Events holding lists (ComposedDpEvent) are unhashable: key on their repr.
    key = (repr(event), relation, delta)
    if key not in _EPSILON_CACHE:
        accountant = _accountant(relation)
        accountant.compose(event)
        _EPSILON_CACHE[key] = float(accountant.get_epsilon(delta))
    return _EPSILON_CACHE[key]


def noise_for_run(
    target_epsilon: float,
    rounds: int,
    *,
    clients_per_round: int,
    num_clients: int,
    delta: float,
    participation: Sequence[Sequence[int]] | None = None,
) -> float:
    """The noise multiplier that spends `target_epsilon` after `rounds` rounds.

    With `participation` (tree aggregation) the epsilon comes from the
    clients' participation and no sampling; otherwise from fixed-size
    sampling without replacement.
    """
    if participation is not None:
        sensitivity = tree_sensitivity(participation, rounds)
        return sensitivity * gaussian_noise_for_target_epsilon(target_epsilon, delta)
    return noise_for_target_epsilon(
        target_epsilon,
        rounds,
        clients_per_round=clients_per_round,
        num_clients=num_clients,
        delta=delta,
    )
