"""`--secure_protocol=ckks`: clients encrypt their secure-sum inputs under the run's public CKKS key; the server adds ciphertexts; only the key holder decrypts, and only the sum.

CKKS (Cheon, Kim, Kim, Song 2017) through TenSEAL (Microsoft SEAL); nothing
here is hand-written cryptography. CKKS is approximate: a decrypted sum is
the true sum plus a small error. The values TFF's secure sums carry are
integers (the clipped, weighted update quantised by `SecureSumFactory`), so
the key holder rounds the decrypted sum and gets it exactly, as long as the
sum stays below 2^`exact_bits` (the double-precision decoding's limit, 2^47,
and the room the moduli leave above the scale); a round whose sums could
exceed it is refused in one line. The result is bit-for-bit that of
masking, at the cost of ciphertext traffic (about 235 KB per 4,096 values at
the 128-bit preset).

Roles (`base.py`): `CkksKeys` (clients: the public context only),
`CkksAggregator` (server: the public context only, adds ciphertexts),
`ckks_keys.KeyHolder` (the secret context; decrypts sums).
"""

import dataclasses
import functools
import hashlib
import math
import threading
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

from tffpipe import errors
from tffpipe import settings
from tffpipe.aggregation.protocols import base

# Largest total coefficient modulus (bits) for each security level and
# polynomial degree: the homomorphic encryption standard's tables (classical
# attacks, ternary secrets), as SEAL's `CoeffModulus::MaxBitCount` encodes them.
MAX_MODULUS_BITS = {
    128: {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881},
    192: {1024: 19, 2048: 37, 4096: 75, 8192: 152, 16384: 305, 32768: 611},
    256: {1024: 14, 2048: 29, 4096: 58, 8192: 118, 16384: 237, 32768: 476},
}
DEGREES = (1024, 2048, 4096, 8192, 16384, 32768)
# security level -> (polynomial degree, coefficient moduli bits, scale bits).
# Sums need no multiplicative depth, only room above the scale for 2^47: two
# data primes and the special one. Against TenSEAL's usual 60,40,40,60
# (depth 2), 60,40,60 encrypts in 3.4 ms a ciphertext instead of 4.3 and
# sends 235 KB instead of 332 (measured here, degree 8192).
PRESETS = {
    128: (8192, (60, 40, 60), 40),
    192: (8192, (50, 40, 50), 40),
    256: (16384, (60, 40, 60), 40),
}
# SEAL decodes through double-precision FFTs: measured here (degree 8192 and
# 16384), integer sums round exactly up to 2^50 (error 0.375) and not at 2^55
# (error 12); 2^47 leaves a factor of 8 to spare.
DOUBLE_EXACT_BITS = 47
# Fresh-encryption noise is about 2^-15 of a unit at scale 2^30 (measured
# error 3.3e-5); below that, thousands of clients' noise nears 0.5.
MIN_SCALE_BITS = 30

_APPLIES = ("secure_protocol", ("ckks",))


def _moduli_check(text: str) -> str | None:
    if not text:
        return None
    parts = text.split(",")
    if not all(p.strip().isdigit() for p in parts):
        return "must be comma-separated bit sizes like 60,40,40,60"
    if len(parts) < 2:
        return "must list at least two moduli (data and the special prime)"
    if any(not 20 <= int(p) <= 60 for p in parts):
        return "must have each bit size in 20..60 (SEAL's limits)"
    return None


@dataclasses.dataclass(frozen=True)
class Settings:
    security: int = settings.setting(
        128,
        "CKKS preset named by its security level in bits (homomorphic encryption standard): 128 "
        "(degree 8192, moduli 60,40,60, scale 2^40), 192 (degree 8192, moduli 50,40,50) or 256 "
        "(degree 16384, moduli 60,40,60).",
        flag="ckks_security",
        group="aggregation",
        choices=tuple(PRESETS),
        applies=_APPLIES,
        resume=settings.MUST_MATCH,
    )
    poly_modulus_degree: int = settings.setting(
        0,
        "CKKS polynomial degree (research override; 0: the preset's); refused below --ckks_security.",
        flag="ckks_poly_modulus_degree",
        group="aggregation",
        choices=(0,) + DEGREES,
        applies=_APPLIES,
        resume=settings.MUST_MATCH,
        default_text="the preset's",
    )
    coeff_mod_bits: str = settings.setting(
        "",
        "CKKS coefficient moduli bit sizes, comma-separated, the last the special prime (research "
        "override; empty: the preset's); refused below --ckks_security.",
        flag="ckks_coeff_mod_bits",
        group="aggregation",
        check=_moduli_check,
        applies=_APPLIES,
        resume=settings.MUST_MATCH,
        default_text="the preset's",
    )
    scale_bits: int = settings.setting(
        0,
        f"CKKS scale as a power of two (research override; 0: the preset's); at least {MIN_SCALE_BITS}.",
        flag="ckks_scale_bits",
        group="aggregation",
        check=lambda v: (
            None if v == 0 or MIN_SCALE_BITS <= v <= 60 else f"must be 0 (the preset's) or in {MIN_SCALE_BITS}..60"
        ),
        applies=_APPLIES,
        resume=settings.MUST_MATCH,
        default_text="the preset's",
    )


@dataclasses.dataclass(frozen=True)
class Parameters:
    """A CKKS context's parameters."""

    security: int
    degree: int
    moduli: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        return self.degree // 2

    @property
    def exact_bits(self) -> int:
        """Integer sums below 2^exact_bits decrypt and round exactly."""
        data_bits = sum(self.moduli[:-1])  # the last prime only serves key switching
        return min(DOUBLE_EXACT_BITS, data_bits - self.scale_bits - 2)

    def describe(self) -> str:
        return (
            f"CKKS, {self.security}-bit preset: degree {self.degree}, moduli "
            f"{','.join(map(str, self.moduli))} bits, scale 2^{self.scale_bits}"
        )


def parameters(s: Settings) -> Parameters:
    """The parameters `s` names, checked.

    Raises:
      ConfigError: less than the chosen security level, or too little precision.
    """
    degree, moduli, scale = PRESETS[s.security]
    p = Parameters(
        s.security,
        s.poly_modulus_degree or degree,
        tuple(int(b) for b in s.coeff_mod_bits.split(",")) if s.coeff_mod_bits else moduli,
        s.scale_bits or scale,
    )
    total, limit = sum(p.moduli), MAX_MODULUS_BITS[p.security][p.degree]
    if total > limit:
        raise errors.ConfigError(
            f"--secure_protocol=ckks: moduli of {total} bits at degree {p.degree} give less than "
            f"{p.security}-bit security (the homomorphic encryption standard allows at most {limit} bits); "
            "use fewer or smaller moduli, or a larger --ckks_poly_modulus_degree"
        )
    if p.exact_bits < 33:
        raise errors.ConfigError(
            f"--secure_protocol=ckks: moduli {','.join(map(str, p.moduli))} with scale 2^{p.scale_bits} leave "
            f"{p.exact_bits} bits for the sum, too little for 32-bit secure-sum values; the data moduli "
            "(all but the last) must exceed the scale by at least 35 bits"
        )
    return p


def check(s: Settings) -> None:
    """Refuses settings below the chosen security level or with too little room for the sum (`ConfigError`)."""
    parameters(s)


def make_context(p: Parameters) -> Any:
    """A new secret CKKS context (TenSEAL) with these parameters."""
    import tenseal as ts

    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=p.degree, coeff_mod_bit_sizes=list(p.moduli))
    context.global_scale = 2.0**p.scale_bits
    return context


def public_bytes(context: Any) -> bytes:
    """`context` serialized with its public key only (no secret, relinearisation or Galois keys)."""
    return context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


_CONTEXTS: dict[bytes, Any] = {}
_CONTEXTS_LOCK = threading.Lock()


def public_context(blob: bytes) -> Any:
    """The public context serialized in `blob`, deserialized once per process.

    Raises:
      ValueError: `blob` holds a secret key (a public context never does).
    """
    import tenseal as ts

    digest = hashlib.sha256(blob).digest()
    with _CONTEXTS_LOCK:
        if digest not in _CONTEXTS:
            context = ts.context_from(blob)
            if context.is_private():
                raise ValueError("a CKKS context given to clients or the server holds a secret key")
            _CONTEXTS.clear()  # one run's context at a time
            _CONTEXTS[digest] = context
        return _CONTEXTS[digest]


def chunks(flat: np.ndarray, slots: int) -> list[np.ndarray]:
    """`flat` cut into ciphertext-sized pieces (TenSEAL would warn and pack a longer vector the same way)."""
    return [flat[i : i + slots] for i in range(0, max(len(flat), 1), slots)]


class CkksKeys(base.RoundKeys):
    """What clients hold: the run's public context."""

    what_is_sent = "public CKKS key"

    def __init__(self, context_blob: bytes, slots: int):
        self.context_blob = context_blob
        self.slots = slots

    def for_clients(self, clients: Sequence[int]) -> "CkksKeys":
        return self

    def protect(self, client: int, values: Sequence[np.ndarray], moduli: Sequence[int]) -> list[bytes]:
        """The client's secure-sum inputs, flattened into one vector, encrypted, serialized."""
        import tenseal as ts

        for value, modulus in zip(values, moduli):
            array = np.asarray(value)
            if array.size and (array.min() < 0 or array.max() >= modulus):
                raise ValueError(f"secure sum input outside [0, {modulus}): min {array.min()}, max {array.max()}")
        context = public_context(self.context_blob)
        flat = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values])
        return [ts.ckks_vector(context, piece.tolist()).serialize() for piece in chunks(flat, self.slots)]

    def partial_sum(self, moduli: Sequence[int]) -> "CiphertextSum":
        return CiphertextSum(self.context_blob)


class CiphertextSum(base.PartialSum):
    """Ciphertexts added piece by piece under the public context (no secret key)."""

    def __init__(self, context_blob: bytes):
        super().__init__()
        self.context_blob = context_blob
        self._total: list[Any] | None = None

    def _add(self, protected: Sequence[bytes]) -> None:
        import tenseal as ts

        context = public_context(self.context_blob)
        vectors = [ts.ckks_vector_from(context, piece) for piece in protected]
        if self._total is None:
            self._total = vectors
            return
        for running, vector in zip(self._total, vectors):
            running.add_(vector)

    def value(self) -> list[bytes] | None:
        return None if self._total is None else [vector.serialize() for vector in self._total]


class CkksAggregator:
    """The server's part: adds ciphertexts under the public context; holds no secret key."""

    def __init__(self, context_blob: bytes):
        self.context_blob = context_blob

    def add(self, partials: Sequence[Sequence[bytes] | None]) -> list[bytes]:
        """The ciphertext sum, piece by piece, of the partial sums (or single uploads)."""
        return CiphertextSum(self.context_blob).add_all(partials) or []


def decode_sum(values: np.ndarray, moduli: Sequence[int], shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """A decrypted flat sum back as one exact uint64 array per secure value, each taken mod its modulus."""
    integers = np.rint(values).astype(np.int64)
    out, start = [], 0
    for modulus, shape in zip(moduli, shapes):
        size = int(np.prod(shape)) if shape else 1
        out.append((integers[start : start + size] % int(modulus)).astype(np.uint64).reshape(shape))
        start += size
    return out


class CkksProtocol(base.SecureProtocol):
    """Clients encrypt, `CkksAggregator` adds, the key holder decrypts the sum."""

    key = "ckks"

    def __init__(self, params: Parameters, holder: Any, context_blob: bytes, close: Callable[[], None] = lambda: None):
        """Args:
        params: the context's parameters.
        holder: has `reveal(summed pieces, moduli, shapes)` (a `ckks_keys.KeyHolder`, or a
          handle on one in another process).
        context_blob: the public context the holder published.
        close: releases the holder.
        """
        self.params = params
        self._holder = holder
        self.aggregator = CkksAggregator(context_blob)
        self._close = close
        self.summary = f"CKKS encryption ({params.security}-bit preset)"

    def round_keys(self, num_clients: int, moduli: Sequence[int], largest_sums: Sequence[int]) -> CkksKeys:
        needed = max((int(s).bit_length() for s in largest_sums), default=0)
        if needed > self.params.exact_bits:
            raise errors.UserError(
                f"--secure_protocol=ckks: with {num_clients} clients the secure sums reach 2^{needed}, beyond "
                f"the 2^{self.params.exact_bits} that CKKS decodes exactly at these parameters; use fewer "
                "clients a round or --secure_protocol=masking"
            )
        return CkksKeys(self.aggregator.context_blob, self.params.slots)

    def total(self, partials, moduli, shapes) -> list[np.ndarray]:
        return self._holder.reveal(self.aggregator.add(partials), list(moduli), [tuple(s) for s in shapes])

    def note(self, runtime: str) -> str:
        where = (
            "a key-holder actor of its own (the launcher's node) holds the secret key, reads it from the "
            "run folder and decrypts only the summed ciphertext"
            if runtime == "ray"
            else "the key holder, a separate object in this process, holds the secret key and decrypts only "
            "the summed ciphertext (the separation is of code, not of trust: whoever runs this process can read "
            "the key in the run folder)"
        )
        return (
            f"secure sum: {self.params.describe()}: clients encrypt under the public key and the server adds "
            f"ciphertexts without any secret; {where}"
        )

    def close(self) -> None:
        self._close()


@functools.cache
def ciphertext_bytes(p: Parameters) -> int:
    """The serialized size of one fresh ciphertext at `p` (measured once, under a throwaway key:
    a ciphertext looks random whatever it encrypts, so its compressed size does not depend on it)."""
    import tenseal as ts

    return len(ts.ckks_vector(make_context(p), [0.0] * p.slots).serialize())


def upload_bytes(s: Settings) -> Callable[[Sequence[int], Sequence[int]], int]:
    """Bytes one client uploads for secure values of these sizes: whole ciphertexts of `slots` values."""
    p = parameters(s)

    def count(elements: Sequence[int], bits: Sequence[int]) -> int:
        del bits  # every value takes a slot, whatever its width
        return math.ceil(sum(elements) / p.slots) * ciphertext_bytes(p)

    return count


def build(s: Settings, key_dir: str, holder_factory: Callable[[str, Parameters], Any] | None = None) -> CkksProtocol:
    """The run's CKKS protocol with its keys in `key_dir` (made on first use, read on resume).

    Args:
      s: the CKKS settings.
      key_dir: the run's key folder.
      holder_factory: starts the key holder elsewhere (Ray); returns (holder,
        close). By default a `ckks_keys.KeyHolder` in this process.
    """
    from tffpipe.aggregation.protocols import ckks_keys

    params = parameters(s)
    if holder_factory is None:
        holder, close = ckks_keys.KeyHolder.load_or_create(key_dir, params), (lambda: None)
    else:
        holder, close = holder_factory(key_dir, params)
    return CkksProtocol(params, holder, holder.public_context(), close)
