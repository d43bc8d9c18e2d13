"""Pairwise additive masking for secure sums (Bonawitz et al., CCS 2017).

Every pair of clients (i, j) shares a seed; client i adds the pair's mask to
its integer vector when i < j and subtracts it when i > j, all modulo M. Each
masked vector alone is uniform in Z_M, and the masks cancel in the sum, so
the server adds masked vectors and learns only the total. In the protocol the
pair seed comes from a Diffie-Hellman key agreement; here it is drawn from the
operating system's entropy and handed to the two clients of the pair.

Out of scope, as docs/algorithms.md says: client dropout (the protocol's secret
sharing of seeds for recovery). A client that fails makes the round fail.

TFF offers the secure-sum intrinsics but no executor that masks; this module
is the masking for the in-process runtime.
"""

import itertools
import secrets
from collections.abc import Sequence

import numpy as np

# Masks and sums are computed in uint64; a modulus up to 2**63 keeps the sum of
# two residues below 2**64.
MAX_MODULUS = 2**63


def largest_sum(kind: str, bound: int, num_clients: int) -> int:
    """The largest sum of `num_clients` clients' values of this kind, before any modulus."""
    largest_value = int(bound) - 1 if kind == "modular" else 2 ** int(bound) - 1 if kind == "bitwidth" else int(bound)
    return num_clients * largest_value


def exact_sum_modulus(kind: str, bound: int, num_clients: int) -> int:
    """The smallest modulus in which the masked sum still equals the true sum.

    Args:
      kind: "bitwidth" (values in [0, 2**bound)), "max_input" (values in
        [0, bound]) or "modular" (values in [0, bound), the sum taken mod bound).
      bound: the intrinsic's parameter for this value.
      num_clients: how many clients contribute.
    """
    if kind == "modular":
        return int(bound)
    return largest_sum(kind, bound, num_clients) + 1


class PairwiseMasks:
    """The pairwise masks of one round's clients."""

    def __init__(self, num_clients: int, seeds: dict[tuple[int, int], int] | None = None):
        """Args:
        num_clients: clients in the round.
        seeds: one seed per pair (i, j), i < j; by default fresh random ones.
        """
        self.num_clients = num_clients
        self._seeds = seeds or {pair: secrets.randbits(128) for pair in itertools.combinations(range(num_clients), 2)}

    def for_clients(self, clients: Sequence[int]) -> "PairwiseMasks":
        """The masks of `clients` alone: only the seeds of pairs they belong to (what they would hold)."""
        mine = set(clients)
        return PairwiseMasks(
            self.num_clients, {pair: s for pair, s in self._seeds.items() if pair[0] in mine or pair[1] in mine}
        )

    def mask(self, client: int, leaf: int, values: np.ndarray, modulus: int) -> np.ndarray:
        """Client `client`'s masked copy of `values` (its `leaf`-th secure value).

        Raises:
          ValueError: a value outside [0, modulus), or a modulus over 2**63.
        """
        if not 1 < modulus <= MAX_MODULUS:
            raise ValueError(f"secure sum modulus {modulus} is outside (1, 2**63]")
        values = np.asarray(values)
        if values.size and (values.min() < 0 or values.max() >= modulus):
            raise ValueError(f"secure sum input outside [0, {modulus}): min {values.min()}, max {values.max()}")
        m = np.uint64(modulus)
        masked = values.astype(np.uint64)
        for other in range(self.num_clients):
            if other == client:
                continue
            pair = (min(client, other), max(client, other))
            rng = np.random.default_rng([self._seeds[pair], leaf])
            pad = rng.integers(0, modulus, size=values.shape, dtype=np.uint64)
            masked = (masked + (pad if client < other else (m - pad) % m)) % m
        return masked


def mask_client(
    masks: PairwiseMasks, client: int, values: Sequence[np.ndarray], moduli: Sequence[int]
) -> list[np.ndarray]:
    """Client `client`'s masked copies of its secure-sum inputs, one per (value, modulus)."""
    return [masks.mask(client, leaf, value, modulus) for leaf, (value, modulus) in enumerate(zip(values, moduli))]


def masked_sum(masked: Sequence[np.ndarray], modulus: int) -> np.ndarray:
    """The sum of masked vectors modulo `modulus`: the true sum, unmasked."""
    m = np.uint64(modulus)
    total = np.zeros_like(np.asarray(masked[0], dtype=np.uint64))
    for vector in masked:
        total = (total + np.asarray(vector, dtype=np.uint64)) % m
    return total
