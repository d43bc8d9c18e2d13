"""Atomic file writes: a reader never sees a half-written file."""

import csv
import errno
import io
import json
import os
import shutil
import tempfile
from typing import Any
from collections.abc import Callable, Iterable, Mapping


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def write_csv_atomic(path: str, fieldnames: list[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Writes `rows` under the header `fieldnames` (absent fields empty), atomically."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fieldnames, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, out.getvalue())


def write_json_atomic(path: str, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def replace_dir_atomic(path: str, write: Callable[[str], None]) -> None:
    """Calls `write(temp_dir)`, then swaps the result into `path`.

    The old `path`, if any, stays complete until the new one is fully written.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    temp_dir = tempfile.mkdtemp(dir=parent, prefix=".tmp_" + os.path.basename(path))
    old_dir = None
    try:
        write(temp_dir)
        if os.path.exists(path):
            old_dir = temp_dir + ".old"
            os.rename(path, old_dir)
        os.rename(temp_dir, path)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        if old_dir and not os.path.exists(path):
            os.rename(old_dir, path)
        raise
    if old_dir:
        shutil.rmtree(old_dir, ignore_errors=True)


def produce_file_atomic(path: str, produce: Callable[[str], None]) -> None:
    """Calls `produce(temp_path)` to write a file, then renames it to `path`.

    For writers that take a path (downloads, SQLite); if `produce` fails or is
    interrupted, `path` is left as it was and the partial file is removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
    os.close(fd)
    try:
        produce(temp_path)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error` (or what it wraps) is a full disk or an exhausted quota.

    TensorFlow reports one as a `ResourceExhaustedError` (or another
    `OpError`) whose message holds the OS's text; Python as an `OSError`.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(error) for text in _DISK_FULL_TEXTS):
            return True
        error = error.__cause__ or error.__context__
    return False
