"""The noise multiplier of a DP run: as given, or solved from a target epsilon."""

from typing import Any
from collections.abc import Sequence

from tffpipe.errors import ConfigError
from tffpipe.privacy import accounting
from tffpipe.program import sampling


def participation(cfg: Any, train_client_ids: Sequence[str]) -> list[list[int]]:
    """The rounds each training client takes part in, for the whole run."""
    schedule = cfg.schedule
    rounds_of: dict[str, list[int]] = {cid: [] for cid in train_client_ids}
    for round_num in range(1, schedule.rounds + 1):
        for cid in sampling.sample_clients(
            list(train_client_ids), schedule.clients_per_round, seed=schedule.seed, round_num=round_num
        ):
            rounds_of[cid].append(round_num)
    return list(rounds_of.values())


def resolve_noise_multiplier(cfg: Any, layer: Any, train_client_ids: Sequence[str]) -> tuple[float, bool]:
    """The DP noise multiplier: as given, or solved from `--dp_target_epsilon`.

    Args:
      cfg: the run's settings.
      layer: the active DP layer (`tffpipe.aggregation.dp.DpLayer`).
      train_client_ids: the training clients.

    Returns:
      (noise multiplier, whether it was solved for).

    Raises:
      ConfigError: the solved noise does not fit the mechanism.
    """
    dp = cfg.privacy
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier, False
    noise = accounting.noise_for_run(
        dp.target_epsilon,
        cfg.schedule.rounds,
        clients_per_round=cfg.schedule.clients_per_round,
        num_clients=len(train_client_ids),
        delta=dp.delta,
        participation=None if layer.amplified_by_sampling else participation(cfg, train_client_ids),
    )
    try:
        layer.check_noise(noise, cfg.schedule.clients_per_round)
    except ConfigError as e:
        raise ConfigError(f"--dp_target_epsilon={dp.target_epsilon:g} needs noise multiplier {noise:.3f}; {e}") from e
    return noise, True
