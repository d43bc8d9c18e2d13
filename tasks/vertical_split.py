"""Shared by the built-in vertical tasks: which people each party holds."""

from collections.abc import Sequence

import numpy as np


def party_rows(num_people: int, parties: Sequence[str], overlap: float, seed: int) -> dict[str, np.ndarray]:
    """Row indices each party holds: a seeded `overlap` share held by every
    party, the rest dealt to one party each (round robin over a shuffle)."""
    order = np.random.default_rng([seed, 0xFEA7]).permutation(num_people)
    shared = int(round(overlap * num_people))
    rows = {party: list(order[:shared]) for party in parties}
    for i, person in enumerate(order[shared:]):
        rows[parties[i % len(parties)]].append(person)
    return {party: np.sort(np.asarray(r, dtype=np.int64)) for party, r in rows.items()}


def standardised(x: np.ndarray) -> np.ndarray:
    """Each party standardises its own columns with its own rows' statistics."""
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
