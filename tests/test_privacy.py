import math

import dp_accounting
from dp_accounting import rdp
import pytest

from tffpipe.privacy import accounting as privacy


@pytest.mark.parametrize(
    "z, rounds, k, n, delta",
    [(1.2, 100, 120, 3383, 1e-5), (0.8, 30, 10, 500, 1e-4), (2.0, 50, 14, 14, 1e-3)],
)
def test_epsilon_is_fixed_size_sampling_under_replace_one(z, rounds, k, n, delta):
    # The program samples a fixed-size cohort without replacement.
    got = privacy.epsilon(z, rounds, clients_per_round=k, num_clients=n, delta=delta)
    assert got == pytest.approx(_replace_one_epsilon(z, rounds, k, n, delta), rel=1e-9)


def test_tff_tutorial_setting_costs_more_than_its_poisson_figure():
    # TFF's DP tutorial reports about (2, 1e-5) for Poisson sampling of 120 of
    # 3,383 clients, z = 1.2, 100 rounds; replace-one on fixed-size cohorts
    # gives about twice that, which is what a tffpipe run spends.
    got = privacy.epsilon(1.2, 100, clients_per_round=120, num_clients=3383, delta=1e-5)
    assert got == pytest.approx(3.56, abs=0.05)


def test_more_noise_spends_less():
    eps = [privacy.epsilon(z, 50, clients_per_round=14, num_clients=14, delta=1e-3) for z in (1, 2, 5)]
    assert eps[0] > eps[1] > eps[2] > 0


def test_edge_cases():
    assert privacy.epsilon(1.0, 0, clients_per_round=1, num_clients=10, delta=1e-5) == 0.0
    assert math.isinf(privacy.epsilon(0.0, 3, clients_per_round=1, num_clients=10, delta=1e-5))
    with pytest.raises(ValueError, match="clients_per_round must be between 1 and 10, got 11"):
        privacy.epsilon(1.0, 3, clients_per_round=11, num_clients=10, delta=1e-5)


def test_noise_for_target_epsilon_is_the_smallest_that_meets_it():
    kwargs = dict(clients_per_round=120, num_clients=3383, delta=1e-5)
    z = privacy.noise_for_target_epsilon(2.0, 100, **kwargs)
    assert privacy.epsilon(z, 100, **kwargs) <= 2.0 + 1e-3
    assert privacy.epsilon(z - 0.01, 100, **kwargs) > 2.0


def _replace_one_epsilon(z, rounds, k, n, delta):
    accountant = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(
        dp_accounting.SampledWithoutReplacementDpEvent(n, k, dp_accounting.GaussianDpEvent(z)),
        rounds,
    )
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("z, rounds, k, n", [(1.0, 50, 10, 40), (1.2, 100, 120, 3383)])
def test_run_accountant_uses_the_programs_fixed_size_sampling(z, rounds, k, n):
    acc = privacy.RunAccountant(noise_multiplier=z, clients_per_round=k, num_clients=n, delta=1e-5)
    assert acc.epsilon(rounds) == pytest.approx(_replace_one_epsilon(z, rounds, k, n, 1e-5), rel=1e-9)
    assert acc.epsilon(0) == 0.0
    assert acc.epsilon(rounds // 2) < acc.epsilon(rounds)
    # Fixed-size sampling under replace-one costs more than Poisson's 1.99.
    if n == 3383:
        assert acc.epsilon(rounds) == pytest.approx(3.56, abs=0.05)


def test_run_accountant_prefers_the_aggregators_event():
    # Adaptive clipping's event: the value and the clipped count, composed.
    event = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(1.5), dp_accounting.GaussianDpEvent(2.0)])
    acc = privacy.RunAccountant(noise_multiplier=1.2, clients_per_round=10, num_clients=100, delta=1e-5)
    accountant = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_accounting.SampledWithoutReplacementDpEvent(100, 10, event), 20)
    assert acc.epsilon(20, event) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert math.isinf(acc.epsilon(3, dp_accounting.GaussianDpEvent(0.0)))


def test_tree_sensitivity_counts_every_completed_node():
    # One participation in 8 rounds: one node per level, 4 levels.
    assert privacy.tree_sensitivity([[1]], 8) == pytest.approx(2.0)
    assert privacy.tree_sensitivity([[1]], 1) == 1.0
    # Rounds 1 and 2 share the level-1 node: 1 + 1 + 2^2.
    assert privacy.tree_sensitivity([[1, 2]], 2) == pytest.approx(math.sqrt(6))
    # Round 3 of 3 rounds: only its leaf is complete.
    assert privacy.tree_sensitivity([[3]], 3) == 1.0
    # The worst client decides; rounds after `rounds` do not count.
    assert privacy.tree_sensitivity([[1], [1, 2], [5]], 2) == pytest.approx(math.sqrt(6))


def test_tree_epsilon_is_a_gaussian_with_the_tree_sensitivity():
    participation = [[1, 3], [2], [4]]
    acc = privacy.RunAccountant(
        noise_multiplier=3.0,
        clients_per_round=1,
        num_clients=3,
        delta=1e-5,
        participation=participation,
    )
    sensitivity = privacy.tree_sensitivity(participation, 4)
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(3.0 / sensitivity))
    assert acc.epsilon(4) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    noise = privacy.noise_for_run(
        acc.epsilon(4),
        4,
        clients_per_round=1,
        num_clients=3,
        delta=1e-5,
        participation=participation,
    )
    assert noise == pytest.approx(3.0, rel=1e-3)
