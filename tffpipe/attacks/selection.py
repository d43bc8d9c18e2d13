"""Which training clients are malicious: a seeded fraction, chosen once for the run."""

from collections.abc import Sequence

import numpy as np

# Keeps the attackers' draw apart from the partition's and the sampling's.
_STREAM = 0xA77AC4


def attackers(client_ids: Sequence[str], fraction: float, seed: int) -> list[str]:
    """round(fraction x clients) of `client_ids`, the same for a seed on every call (and resume).

    A round's number of attackers then varies with the clients it samples, as
    it would in practice.
    """
    count = int(round(fraction * len(client_ids)))
    rng = np.random.default_rng([seed, _STREAM])
    chosen = rng.choice(len(client_ids), size=count, replace=False)
    return sorted(client_ids[i] for i in chosen)
