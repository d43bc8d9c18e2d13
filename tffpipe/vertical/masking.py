"""Secure sums of the parties' embeddings: pairwise masks over fixed-point values.

The masking is the in-process runtime's (`aggregation/protocols/pairwise_masks.py`,
Bonawitz et al. 2017): every pair of parties shares a fresh seed each step,
and their masks cancel in the sum, so the active party learns only the sum
of the embeddings. Embeddings are real numbers, so each party first encodes
its embedding in fixed point (`FRACTION_BITS` binary digits after the point)
as a residue modulo 2**63, negatives wrapping around; the sum is decoded the
same way. The fixed-point error is at most n x 2**-25 per value.
"""

from collections.abc import Sequence

import numpy as np

from tffpipe.aggregation.protocols import pairwise_masks

FRACTION_BITS = 24
MODULUS = pairwise_masks.MAX_MODULUS
_SCALE = float(2**FRACTION_BITS)
# Sums must stay within (-MODULUS / 2, MODULUS / 2) in fixed point.
LIMIT = MODULUS / 2 / _SCALE


def encode(values: np.ndarray) -> np.ndarray:
    """Real values as fixed-point residues modulo `MODULUS` (uint64)."""
    fixed = np.round(np.asarray(values, np.float64) * _SCALE).astype(np.int64)
    return (fixed.astype(np.uint64)) % np.uint64(MODULUS)


def decode(residues: np.ndarray) -> np.ndarray:
    """Fixed-point residues back to real values (residues above MODULUS / 2 are negative)."""
    # In integers: float64 cannot hold residues near 2**63 to the unit.
    signed = np.asarray(residues, np.uint64).astype(np.int64)
    signed = np.where(signed >= MODULUS // 2, signed - np.int64(MODULUS - 1) - 1, signed)
    return signed.astype(np.float64) / _SCALE


class EmbeddingSum:
    """One step's secure sum of `num_parties` embeddings of the same shape."""

    def __init__(self, num_parties: int):
        self._masks = pairwise_masks.PairwiseMasks(num_parties)
        self.num_parties = num_parties

    def masked(self, party: int, embedding: np.ndarray) -> np.ndarray:
        """What party `party` sends: its embedding, encoded and masked.

        Raises:
          ValueError: a value too large for the fixed-point sum.
        """
        embedding = np.asarray(embedding)
        if embedding.size and np.max(np.abs(embedding)) * self.num_parties >= LIMIT:
            raise ValueError(f"an embedding value of {np.max(np.abs(embedding)):.3g} is too large for the secure sum")
        return self._masks.mask(party, 0, encode(embedding), MODULUS)

    @staticmethod
    def unmasked_sum(masked: Sequence[np.ndarray]) -> np.ndarray:
        """The sum of the parties' masked embeddings: the true sum, as float32."""
        return decode(pairwise_masks.masked_sum(masked, MODULUS)).astype(np.float32)
