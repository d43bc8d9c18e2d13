"""A checkpoint version as plain arrays: one `.npz` of the state's leaves and a JSON header.

TFF's `FileProgramStateManager` writes each version as a SavedModel (a
`tf.Module` holding one variable per leaf): about 130 ms for a digits-sized
state here, against about 2 ms for the same arrays through `numpy.savez`, an
fsync and a rename. TFF offers no lighter format, so this module writes one;
the state's structure comes from TFF's own flattening (`compat.structure_utils`),
and versions written by TFF's manager are still read by `checkpoints.py`.

A version is a folder `program_state_N` holding `state.npz` and `state.json`,
written into `program_state_N_tempXXXX` first and renamed into place, so a
kill mid-save leaves no half-written version (the temporary folder is removed
by the next run). Nothing is pickled: strings and bytes are stored as arrays
and their kind is named in the header.
"""

import json
import os
import secrets
import shutil
from typing import Any

import numpy as np

ARRAYS_FILE = "state.npz"
HEADER_FILE = "state.json"
FORMAT = "tffpipe-arrays-1"


class NotArrays(ValueError):
    """A state leaf that this format cannot hold (the caller falls back to TFF's)."""


def holds_arrays(path: str) -> bool:
    """Whether the version folder `path` was written by this module."""
    return os.path.exists(os.path.join(path, HEADER_FILE))


def write(path: str, leaves: list[Any], header: dict[str, Any]) -> None:
    """Writes `leaves` and `header` as the version folder `path`, atomically and durably.

    Raises:
      NotArrays: a leaf is not a number, an array, a string or bytes.
      FileExistsError: `path` exists.
    """
    arrays, kinds = zip(*[_to_array(leaf) for leaf in leaves], strict=True) if leaves else ((), ())
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists")
    temp = f"{path}_temp{secrets.randbelow(9000) + 1000}"
    os.makedirs(temp)
    try:
        with open(os.path.join(temp, ARRAYS_FILE), "wb") as f:
            np.savez(f, *arrays)
            f.flush()
            os.fsync(f.fileno())
        with open(os.path.join(temp, HEADER_FILE), "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "kinds": list(kinds), **header}, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(temp)
        os.rename(temp, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def read(path: str) -> tuple[list[Any], dict[str, Any]]:
    """(the leaves, the header) of the version folder `path`.

    Raises:
      ValueError: the files are damaged or of another format (the message
        says which).
      OSError: they cannot be read.
    """
    with open(os.path.join(path, HEADER_FILE), encoding="utf-8") as f:
        header = json.load(f)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{HEADER_FILE} is not a {FORMAT} header")
    kinds = header.pop("kinds")
    with np.load(os.path.join(path, ARRAYS_FILE), allow_pickle=False) as stored:
        if len(stored.files) != len(kinds):
            raise ValueError(f"{ARRAYS_FILE} holds {len(stored.files)} arrays, the header names {len(kinds)}")
        leaves = [_from_array(stored[f"arr_{i}"], kind) for i, kind in enumerate(kinds)]
    return leaves, header


def _to_array(leaf: Any) -> tuple[np.ndarray, str]:
    if isinstance(leaf, bytes):
        return np.frombuffer(leaf, dtype=np.uint8), "bytes"
    if isinstance(leaf, str):
        return np.frombuffer(leaf.encode(), dtype=np.uint8), "str"
    try:
        array = np.asarray(leaf)
    except Exception as e:
        raise NotArrays(f"a state leaf of type {type(leaf).__name__} is not an array") from e
    if array.dtype.kind not in "biufc":
        # Objects, and strings inside arrays (numpy's fixed-width bytes drop trailing NULs).
        raise NotArrays(f"a state leaf of dtype {array.dtype} is not numeric")
    return array, "array"


def _from_array(array: np.ndarray, kind: str) -> Any:
    if kind == "bytes":
        return array.tobytes()
    if kind == "str":
        return array.tobytes().decode()
    if kind == "array":
        return array
    raise ValueError(f"unknown leaf kind {kind!r} in {HEADER_FILE}")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
