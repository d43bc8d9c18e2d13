"""`--secure_protocol=masking`: pairwise additive masks that cancel in the sum (`pairwise_masks.py`)."""

from collections.abc import Sequence

import numpy as np

from tffpipe.aggregation.protocols import base
from tffpipe.aggregation.protocols import pairwise_masks


class MaskingKeys(base.RoundKeys):
    """A round's pairwise mask seeds (each client holds only its pairs')."""

    what_is_sent = "pairwise mask seeds"

    def __init__(self, masks: pairwise_masks.PairwiseMasks):
        self.masks = masks

    def for_clients(self, clients: Sequence[int]) -> "MaskingKeys":
        return MaskingKeys(self.masks.for_clients(clients))

    def protect(self, client: int, values: Sequence[np.ndarray], moduli: Sequence[int]) -> list[np.ndarray]:
        return pairwise_masks.mask_client(self.masks, client, values, moduli)

    def partial_sum(self, moduli: Sequence[int]) -> "MaskedSum":
        return MaskedSum(moduli)


class MaskedSum(base.PartialSum):
    """Masked vectors added modulo their moduli (still masked until every client is in)."""

    def __init__(self, moduli: Sequence[int]):
        super().__init__()
        self._moduli = list(moduli)
        self._total: list[np.ndarray] | None = None

    def _add(self, protected) -> None:
        if self._total is None:
            self._total = [np.asarray(v, dtype=np.uint64).copy() for v in protected]
            return
        self._total = [pairwise_masks.masked_sum([t, v], m) for t, v, m in zip(self._total, protected, self._moduli)]

    def value(self) -> list[np.ndarray] | None:
        return self._total


class MaskingProtocol(base.SecureProtocol):
    key = "masking"
    summary = "pairwise masking"

    def round_keys(self, num_clients: int, moduli: Sequence[int], largest_sums: Sequence[int]) -> MaskingKeys:
        return MaskingKeys(pairwise_masks.PairwiseMasks(num_clients))

    def total(self, partials, moduli, shapes) -> list[np.ndarray]:
        return MaskedSum(moduli).add_all(partials) or [np.zeros(shape, np.uint64) for shape in shapes]

    def note(self, runtime: str) -> str:
        if runtime == "ray":
            return (
                "secure sum: pairwise masks on the actors: each actor masks its clients' values with only their "
                "pair seeds and the launcher sums masked vectors, but the launcher makes every seed (the values "
                "are hidden in transit and from the summing code, not from the launcher's operator)"
            )
        return (
            "secure sum: pairwise masks in this process: the summing code sees only masked vectors, but every "
            "key is in this process (it measures the protocol's cost and exactness, and protects nothing from "
            "whoever runs it)"
        )


def build(settings, key_dir: str, holder_factory=None) -> MaskingProtocol:
    del settings, key_dir, holder_factory  # fresh seeds every round; nothing to keep
    return MaskingProtocol()


def upload_bytes(settings):
    """A masked vector is as large as the vector: `base.plain_upload_bytes`."""
    del settings
    return base.plain_upload_bytes
