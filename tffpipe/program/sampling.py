"""Seeded client sampling that depends only on the seed and the round."""

import hashlib
from collections.abc import Sequence

import numpy as np


def sample_clients(client_ids: Sequence[str], clients_per_round: int, *, seed: int, round_num: int) -> list[str]:
    """Samples `clients_per_round` distinct clients uniformly for one round.

    The sample is a pure function of (client_ids, clients_per_round, seed,
    round_num), so a resumed run sees exactly the rounds the original would.
    """
    if not 1 <= clients_per_round <= len(client_ids):
        raise ValueError(f"cannot sample {clients_per_round} of {len(client_ids)} clients")
    rng = np.random.default_rng([seed, round_num])
    chosen = rng.choice(len(client_ids), size=clients_per_round, replace=False)
    return [client_ids[i] for i in chosen]


def client_seed(seed: int, round_num: int, position: int) -> int:
    """A shuffle seed for the `position`-th sampled client of a round."""
    return int(np.random.default_rng([seed, round_num, position]).integers(2**31 - 1))


def client_rng(seed: int, client_id: str, *keys: int) -> np.random.Generator:
    """A generator seeded by the run's seed, `keys` and the client's id (hashed, so ids of any form work)."""
    digest = hashlib.sha256(client_id.encode("utf-8")).digest()
    return np.random.default_rng([seed, *keys, int.from_bytes(digest[:8], "little")])
