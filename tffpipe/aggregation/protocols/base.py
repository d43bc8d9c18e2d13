"""What a secure-sum protocol is, as the in-process engine runs it.

TFF's secure-sum intrinsics hand the engine, per client, integer vectors in
[0, modulus) (the clipped, weighted update as TFF's `SecureSumFactory`
quantised it, and any counts) and expect back their exact sum, taken modulo
the modulus for `federated_secure_modular_sum`. A protocol splits that into
three roles:

  clients   `RoundKeys.protect`: each client's vectors, protected, in the
            client's slot (a thread, or a Ray actor);
  server    `PartialSum` (beside the clients: a slot's or an actor's running
            sum, so that a round holds one sum per slot rather than every
            client's upload) and `Protocol.total`'s summing part: they
            combine protected vectors without any secret;
  keys      whatever turns the combined value into the plain sum (nothing for
            masking, whose masks cancel; the CKKS key holder's decryption).
"""

import abc
import threading
from typing import Any
from collections.abc import Sequence

import numpy as np


class RoundKeys(abc.ABC):
    """What one round's clients hold to protect their secure-sum inputs (picklable)."""

    what_is_sent: str = ""  # how the Ray runtime's traffic line names it

    @abc.abstractmethod
    def for_clients(self, clients: Sequence[int]) -> "RoundKeys":
        """The part of the keys `clients` (round positions) hold, for shipping to another process."""

    @abc.abstractmethod
    def protect(self, client: int, values: Sequence[np.ndarray], moduli: Sequence[int]) -> Any:
        """Client `client`'s secure-sum inputs, protected for upload.

        Raises:
          ValueError: a value outside [0, modulus).
        """

    @abc.abstractmethod
    def partial_sum(self, moduli: Sequence[int]) -> "PartialSum":
        """An empty running sum of protected uploads (needs no secret)."""


class PartialSum(abc.ABC):
    """A running sum of some clients' protected uploads; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0

    def add(self, protected: Any) -> None:
        """Adds one client's upload (or another partial sum's `value()`)."""
        with self._lock:
            self._add(protected)
            self.count += 1

    def add_all(self, partials: Sequence[Any]) -> Any:
        """Adds every upload or partial sum (None entries skipped); returns `value()`."""
        for partial in partials:
            if partial is not None:
                self.add(partial)
        return self.value()

    @abc.abstractmethod
    def _add(self, protected: Any) -> None:
        """Adds under the lock."""

    @abc.abstractmethod
    def value(self) -> Any:
        """The sum so far, in the form an upload has (None before any add): picklable."""


class SecureProtocol(abc.ABC):
    """One secure-sum protocol of a run."""

    key: str = ""
    summary: str = ""  # the runtime line's words: "pairwise masking"

    @abc.abstractmethod
    def round_keys(self, num_clients: int, moduli: Sequence[int], largest_sums: Sequence[int]) -> RoundKeys:
        """The keys of a round of `num_clients` clients.

        Args:
          num_clients: clients in the round.
          moduli: per secure value, the modulus its sum is taken in.
          largest_sums: per secure value, the largest its sum over the
            round's clients can be before the modulus is applied.

        Raises:
          UserError: the protocol cannot sum values of these moduli exactly.
        """

    @abc.abstractmethod
    def total(
        self, partials: Sequence[Any], moduli: Sequence[int], shapes: Sequence[tuple[int, ...]]
    ) -> list[np.ndarray]:
        """The plain sum of every client's inputs, one uint64 array per secure value.

        Args:
          partials: `PartialSum.value()`s (or single uploads) that together
            cover the round's clients once each; None entries are skipped.
          moduli: per secure value, its modulus.
          shapes: per secure value, its shape.
        """

    @abc.abstractmethod
    def note(self, runtime: str) -> str:
        """One line on what the protocol protects, from whom, on `runtime` ("inprocess" or "ray")."""

    def close(self) -> None:  # noqa: B027 (optional: most protocols hold nothing)
        """Releases what the protocol holds (a key holder's actor)."""


def plain_upload_bytes(elements: Sequence[int], bits: Sequence[int]) -> int:
    """Bytes of secure values of these sizes and bit widths sent as they are (masked vectors are)."""
    return sum((n * b + 7) // 8 for n, b in zip(elements, bits))
