"""Private set intersection of sample IDs (Diffie-Hellman PSI, Meadows 1986; Huberman et al. 1999).

Each party hashes its IDs into a prime-order group and raises them to a
secret exponent. Exponentiation commutes, so H(x)^ab = H(x)^ba tells two
parties that they share x, while a value H(x)^a alone reveals nothing of x
to a party without `a` (decisional Diffie-Hellman). The group is the
prime-order subgroup of Ed25519, through libsodium (PyNaCl):
`crypto_core_ed25519_from_uniform` hashes onto it (Elligator 2, cofactor
cleared) and `crypto_scalarmult_ed25519_noclamp` exponentiates. No curve
arithmetic is written here.

Two parties, the active one A and a passive one P, exchange three messages:
  1. A -> P: H(x)^a for A's IDs, in an order A shuffled;
  2. P -> A: (H(x)^a)^b in the same order, and H(y)^b for P's IDs in an
     order P shuffled;
  3. A -> P: the positions in P's list whose (H(y)^b)^a A also holds.
Each learns the IDs both hold (A from message 2, P from message 3) and the
size of the other's set, nothing else. With several passive parties the
active party intersects the pairwise results and sends every party the
aligned list, which holds only IDs that party has.
"""

import collections
import dataclasses
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from nacl import bindings

from tffpipe.errors import TaskError

POINT_BYTES = bindings.crypto_core_ed25519_BYTES
_DOMAIN = b"tffpipe/vertical/psi/v1"


def hash_to_group(sample_id: str) -> bytes:
    """H(x): the ID as a point of Ed25519's prime-order subgroup."""
    digest = hashlib.sha512(_DOMAIN + sample_id.encode("utf-8")).digest()
    return bindings.crypto_core_ed25519_from_uniform(digest[:32])


class PsiParty:
    """One party's side of the protocol: its IDs and its secret exponent.

    Args:
      name: the party's name, for messages.
      ids: its sample IDs (unique).
    """

    def __init__(self, name: str, ids: Sequence[str]):
        self.name = name
        self._ids = list(ids)
        self._key = _random_scalar()
        # The order this party sends its own blinded IDs in (message 1 or 2).
        self._order = list(range(len(self._ids)))
        secrets.SystemRandom().shuffle(self._order)

    def blind_own(self, tick: Callable[[], None] = lambda: None) -> list[bytes]:
        """H(x)^k of this party's IDs, in its secret shuffled order (`tick` after each)."""
        return [_ticked(self._raise(hash_to_group(self._ids[i])), tick) for i in self._order]

    def blind_received(self, blinded: Sequence[bytes], tick: Callable[[], None] = lambda: None) -> list[bytes]:
        """The other party's H(x)^k' raised to this party's key, order kept (`tick` after each)."""
        return [_ticked(self._raise(point), tick) for point in blinded]

    def ids_at(self, positions: Sequence[int]) -> list[str]:
        """This party's IDs at positions of the list `blind_own` sent."""
        return [self._ids[self._order[p]] for p in positions]

    def _raise(self, point: bytes) -> bytes:
        return bindings.crypto_scalarmult_ed25519_noclamp(self._key, point)


def _ticked(value: bytes, tick: Callable[[], None]) -> bytes:
    tick()
    return value


class Progress:
    """Prints `label: N% (done of total exponentiations)` at most every `every_sec` seconds."""

    def __init__(self, label: str, total: int, print_fn: Callable[[str], None], every_sec: float = 5.0):
        self._label, self._total, self._print, self._every = label, total, print_fn, every_sec
        self._done = 0
        self._last = time.monotonic()

    def tick(self) -> None:
        self._done += 1
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._print(
                f"{self._label}: {100 * self._done // max(self._total, 1)}% "
                f"({self._done:,} of {self._total:,} exponentiations)"
            )


@dataclasses.dataclass(frozen=True)
class PairResult:
    """What two parties learned: the shared IDs, and the bytes each sent."""

    shared: frozenset[str]
    active_sent_bytes: int
    passive_sent_bytes: int


def intersect_pair(active: PsiParty, passive: PsiParty, tick: Callable[[], None] = lambda: None) -> PairResult:
    """Runs the three messages between `active` and `passive`.

    Both parties' code sees only the messages (lists of group elements and
    positions); the returned set is what each of them learned. `tick` is
    called after each of the 2 x (|A| + |P|) exponentiations.
    """
    message1 = active.blind_own(tick)
    double_blinded_active = passive.blind_received(message1, tick)
    message2_own = passive.blind_own(tick)
    # A: which of its IDs P holds.
    double_blinded_passive = active.blind_received(message2_own, tick)
    in_passive = set(double_blinded_passive)
    active_positions = [i for i, v in enumerate(double_blinded_active) if v in in_passive]
    shared_by_active = set(active.ids_at(active_positions))
    # Message 3: the positions of P's list that A matched.
    in_active = set(double_blinded_active)
    message3 = [j for j, v in enumerate(double_blinded_passive) if v in in_active]
    shared_by_passive = set(passive.ids_at(message3))
    assert shared_by_active == shared_by_passive  # the same set, learned independently
    return PairResult(
        shared=frozenset(shared_by_active),
        active_sent_bytes=POINT_BYTES * len(message1) + 4 * len(message3),
        passive_sent_bytes=POINT_BYTES * (len(double_blinded_active) + len(message2_own)),
    )


def _as_strings(ids: Mapping[str, Sequence[str]], names: Sequence[str]) -> str:
    """The hint that IDs match only as identical strings, with each party's first few."""
    shown = "; ".join(
        f"{name!r} has " + ", ".join(repr(i) for i in list(ids[name])[:3]) + (", ..." if len(ids[name]) > 3 else "")
        for name in names
    )
    return f"IDs are compared as strings, so 1 and '1.0' or '00100' and 100 differ: {shown}"


def _random_scalar() -> bytes:
    while True:
        scalar = bindings.crypto_core_ed25519_scalar_reduce(secrets.token_bytes(64))
        if any(scalar):
            return scalar


@dataclasses.dataclass(frozen=True)
class Alignment:
    """The aligned samples every party trains on.

    Attributes:
      train_ids: the shared IDs of the training rows, in training order.
      test_ids: the shared IDs held out for evaluation.
      pair_sizes: (active, passive) -> how many IDs the pair shares.
      sent_bytes: party -> bytes it sent during the alignment.
    """

    train_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    pair_sizes: dict[tuple[str, str], int]
    sent_bytes: dict[str, int]


def align(
    ids: Mapping[str, Sequence[str]],
    active: str,
    *,
    test_fraction: float,
    seed: int,
    print_fn: Callable[[str], None] = lambda line: None,
) -> Alignment:
    """Finds the IDs every party holds by pairwise PSI with the active party.

    The active party intersects the pairwise results, orders them (sorted,
    then permuted by `seed`) and splits off `test_fraction` for evaluation;
    it tells every party the two lists, which hold only IDs that party has.
    `print_fn` receives a progress line every few seconds of a long pair.

    Raises:
      TaskError: a party with duplicate IDs, or no ID shared by all parties.
    """
    for name, party_ids in ids.items():
        repeated = [x for x, count in collections.Counter(party_ids).items() if count > 1]
        if repeated:
            raise TaskError(f"party {name!r} lists sample ID {repeated[0]!r} more than once")
    active_party = PsiParty(active, ids[active])
    shared = set(ids[active])
    pair_sizes, sent = {}, {name: 0 for name in ids}
    for name, party_ids in ids.items():
        if name == active:
            continue
        progress = Progress(
            f"private set intersection of {active} and {name}", 2 * (len(ids[active]) + len(party_ids)), print_fn
        )
        result = intersect_pair(active_party, PsiParty(name, party_ids), progress.tick)
        if not result.shared:
            raise TaskError(
                f"parties {active!r} and {name!r} share no sample ID: nothing to align ({_as_strings(ids, (active, name))})"
            )
        pair_sizes[(active, name)] = len(result.shared)
        sent[active] += result.active_sent_bytes
        sent[name] += result.passive_sent_bytes
        shared &= result.shared
    if not shared:
        raise TaskError(
            f"no sample ID is held by all of {', '.join(ids)}: nothing to align ({_as_strings(ids, tuple(ids))})"
        )
    ordered = sorted(shared)
    order = np.random.default_rng([seed, 0x5E7]).permutation(len(ordered))
    ordered = [ordered[i] for i in order]
    num_test = int(round(test_fraction * len(ordered)))
    if num_test < 1 or num_test >= len(ordered):
        raise TaskError(
            f"{len(ordered)} aligned samples cannot be split with test_fraction={test_fraction:g} "
            "into non-empty training and test sets"
        )
    return Alignment(
        train_ids=tuple(ordered[num_test:]),
        test_ids=tuple(ordered[:num_test]),
        pair_sizes=pair_sizes,
        sent_bytes=sent,
    )
