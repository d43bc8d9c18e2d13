"""The CKKS key holder: makes the run's keys once, keeps them in the run folder, decrypts sums.

The secret context is written once per run (`<run>/keys/ckks_secret_context.bin`,
readable by its owner only) and read back on resume, so a resumed run uses
the keys it started with. Only the holder loads it; clients and the server
get `public_context()`.
"""

import dataclasses
import json
import os
from typing import Any
from collections.abc import Sequence

import numpy as np

from tffpipe import errors
from tffpipe.aggregation.protocols import ckks
from tffpipe.program import files

FILE_NAME = "ckks_secret_context.bin"


class KeyHolder:
    """Holds the secret CKKS context; decrypts only what it is handed (the server's sum)."""

    def __init__(self, secret_context: Any):
        self.__context = secret_context  # name-mangled: nothing outside this class reads it

    @classmethod
    def load_or_create(cls, key_dir: str, params: ckks.Parameters) -> "KeyHolder":
        """The holder of the keys in `key_dir`, made and saved there if there are none.

        Raises:
          UserError: the folder's keys were made with other parameters, or cannot be read.
        """
        import tenseal as ts

        path = os.path.join(key_dir, FILE_NAME)
        wanted = {**dataclasses.asdict(params), "moduli": list(params.moduli)}  # as JSON reads it back
        if os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    header, blob = f.read().split(b"\n", 1)
                saved = json.loads(header)
                context = ts.context_from(blob)
            except (OSError, ValueError) as e:
                raise errors.UserError(f"cannot read the run's CKKS keys in {path}: {errors.first_line(e)}") from e
            if saved != wanted:
                raise errors.UserError(
                    f"the CKKS keys in {path} were made for {saved}, not {wanted}: resume with the run's "
                    "own --ckks_* settings, or start a new run"
                )
            return cls(context)
        context = ckks.make_context(params)
        blob = context.serialize(
            save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
        )
        header = json.dumps(wanted).encode()

        def write(temp_path: str) -> None:
            os.chmod(temp_path, 0o600)
            with open(temp_path, "wb") as f:
                f.write(header + b"\n" + blob)
                f.flush()
                os.fsync(f.fileno())

        os.makedirs(key_dir, mode=0o700, exist_ok=True)
        files.produce_file_atomic(path, write)
        return cls(context)

    def public_context(self) -> bytes:
        """The context with its public key only, for clients and the server."""
        return ckks.public_bytes(self.__context)

    def reveal(
        self, summed: Sequence[bytes], moduli: Sequence[int], shapes: Sequence[tuple[int, ...]]
    ) -> list[np.ndarray]:
        """The plain sum: `summed` decrypted, rounded, split into the secure values, each mod its modulus."""
        import tenseal as ts

        pieces = [np.asarray(ts.ckks_vector_from(self.__context, piece).decrypt()) for piece in summed]
        flat = np.concatenate(pieces) if pieces else np.zeros(0)
        return ckks.decode_sum(flat, moduli, shapes)
