"""Client-level (epsilon, delta) accounting for DP federated training.

All the mathematics is `dp_accounting`'s: the RDP accountant, its DP events
and `calibrate_dp_mechanism`. This module only states which event one round of
training is, for the client sampling the program does, and pairs it with the
neighbouring relation the accountant supports for that sampling:

* Poisson sampling (each client joins a round independently with probability
  q = clients_per_round / num_clients): `PoissonSampledDpEvent`, add-or-remove-one;
* fixed-size sampling without replacement: `SampledWithoutReplacementDpEvent`,
  replace-one.
"""

import enum
import functools

import dp_accounting
from dp_accounting import rdp


class Sampling(enum.Enum):
    POISSON = "poisson"
    FIXED_SIZE = "fixed_size"


_RELATION = {
    Sampling.POISSON: dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    Sampling.FIXED_SIZE: dp_accounting.NeighboringRelation.REPLACE_ONE,
}


def round_event(
    noise_multiplier: float, *, clients_per_round: int, num_clients: int, sampling: Sampling
) -> dp_accounting.DpEvent:
    """The DP event of one round of the Gaussian mechanism on sampled clients."""
    if not 1 <= clients_per_round <= num_clients:
        raise ValueError(
            f"clients_per_round must be between 1 and {num_clients}, got {clients_per_round}"
        )
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling is Sampling.POISSON:
        return dp_accounting.PoissonSampledDpEvent(clients_per_round / num_clients, gaussian)
    return dp_accounting.SampledWithoutReplacementDpEvent(
        num_clients, clients_per_round, gaussian
    )


def training_event(
    noise_multiplier: float,
    rounds: int,
    *,
    clients_per_round: int,
    num_clients: int,
    sampling: Sampling,
) -> dp_accounting.DpEvent:
    """The DP event of `rounds` rounds of training."""
    return dp_accounting.SelfComposedDpEvent(
        round_event(
            noise_multiplier,
            clients_per_round=clients_per_round,
            num_clients=num_clients,
            sampling=sampling,
        ),
        rounds,
    )


def _accountant(sampling: Sampling) -> rdp.RdpAccountant:
    return rdp.RdpAccountant(neighboring_relation=_RELATION[sampling])


def epsilon(
    noise_multiplier: float,
    rounds: int,
    *,
    clients_per_round: int,
    num_clients: int,
    delta: float,
    sampling: Sampling = Sampling.POISSON,
) -> float:
    """Epsilon at `delta` after `rounds` rounds, from the RDP accountant.

    Zero rounds spend nothing; a noise multiplier of 0 spends infinitely much.
    """
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    accountant = _accountant(sampling)
    accountant.compose(
        training_event(
            noise_multiplier,
            rounds,
            clients_per_round=clients_per_round,
            num_clients=num_clients,
            sampling=sampling,
        )
    )
    return float(accountant.get_epsilon(delta))


def noise_for_target_epsilon(
    target_epsilon: float,
    rounds: int,
    *,
    clients_per_round: int,
    num_clients: int,
    delta: float,
    sampling: Sampling = Sampling.POISSON,
) -> float:
    """The smallest noise multiplier whose epsilon after `rounds` meets the target."""
    if target_epsilon <= 0:
        raise ValueError(f"target epsilon must be positive, got {target_epsilon}")
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(sampling),
            functools.partial(
                training_event,
                rounds=rounds,
                clients_per_round=clients_per_round,
                num_clients=num_clients,
                sampling=sampling,
            ),
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
            tol=1e-4,
        )
    )
