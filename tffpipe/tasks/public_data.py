"""The files of TFF's public federated datasets, and writing files in their format.

TFF's loaders (`tff.simulation.datasets.emnist.load_data(cache_dir=...)` and
the like) read an SQLite file from their cache folder and download it when it
is missing. They download straight into the final name, with no timeout, so an
interrupted download leaves a truncated file that later runs take for the real
one. `dataset_file` fetches first, with a timeout, into a temporary name, and
renames it only when complete; then the TFF loader finds the file and reads it.
"""

import contextlib
import os
import shutil
import socket
import sqlite3
import tarfile
import tempfile
import urllib.error
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe.compat import tff_download
from tffpipe.config import DEFAULT_DATA_DIR  # noqa: F401 (re-exported: the built-in tasks' default)
from tffpipe.errors import TaskError
from tffpipe.program import files

BASE_URL = "https://storage.googleapis.com/tff-datasets-public/"
# Set to fetch the same files from a mirror (a folder URL ending in "/").
MIRROR_ENV = "TFFPIPE_DATASET_MIRROR"
_TIMEOUT_SEC = 60


def dataset_file(data_dir: str, filename: str, archive: str) -> str:
    """The path of `filename` in `data_dir`, downloading it if it is missing.

    Args:
      data_dir: the folder holding dataset files (`--data_dir`).
      filename: the file TFF's loader reads, e.g. `emnist_all.sqlite`.
      archive: the name it is published under at `BASE_URL`: `FILE.lzma`
        (decompressed on the fly) or a `.tar.bz2` holding `filename`.

    Returns:
      The path of the complete file.

    Raises:
      TaskError: the file is missing and cannot be downloaded; the message
        names the file expected and where to get it.
    """
    path = os.path.join(os.path.expanduser(data_dir), filename)
    if not os.path.exists(path):
        _download(path, filename, archive)
    if path.endswith(".sqlite"):
        index_by_client(path)
    return path


def _download(path: str, filename: str, archive: str) -> None:
    url = os.environ.get(MIRROR_ENV, BASE_URL) + archive
    print(f"{path} not found; downloading {url}", flush=True)
    try:
        with _socket_timeout(_TIMEOUT_SEC):
            if archive.endswith(".lzma"):
                files.produce_file_atomic(path, lambda temp: tff_download._fetch_lzma_file(url, temp))
            else:
                files.produce_file_atomic(path, lambda temp: _fetch_from_tar(url, filename, temp))
    except (OSError, urllib.error.URLError, EOFError, tarfile.TarError) as e:
        reason = getattr(e, "reason", None) or e
        reason = getattr(reason, "strerror", None) or reason
        raise TaskError(
            f"dataset file {path} is missing and downloading it failed ({reason}); "
            f"download {url}, {'decompress it (unxz) ' if archive.endswith('.lzma') else 'extract it '}"
            f"into {os.path.dirname(path)}, or pass --data_dir=FOLDER holding {filename}"
        ) from e


# TFF's SQLite files have no index: TFF reads a client's examples with
# `WHERE client_id = ...`, a scan of the whole file for every client a round
# trains, counts or evaluates (0.4 s a client for 3,400 synthetic EMNIST
# clients here, 430 MB; more for the real files).
_CLIENT_INDEX = "tffpipe_examples_by_client"


def index_by_client(path: str) -> None:
    """Gives a TFF SQLite file an index on (client_id, split_name), once.

    Rows come back in the same order as without it (SQLite orders equal keys
    by row id, the order of a scan). A file that cannot be written is read as
    it is, with a warning.
    """
    with contextlib.closing(sqlite3.connect(path, timeout=600)) as db:
        try:
            present = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (_CLIENT_INDEX,)
            ).fetchone()
        except sqlite3.DatabaseError:
            return  # not a database: TFF's loader says so
        if present:
            return
        size = os.path.getsize(path)
        if size > 100 * 2**20:
            print(
                f"indexing {path} by client ({size / 2**30:.1f} GiB; once, so reading a client "
                "does not scan the whole file)...",
                flush=True,
            )
        try:
            db.execute(f"CREATE INDEX IF NOT EXISTS {_CLIENT_INDEX} ON examples (client_id, split_name)")
            db.commit()
        except sqlite3.OperationalError as e:
            print(
                f"warning: {path} has no index by client and cannot be given one ({e}); "
                "every client read scans the whole file",
                flush=True,
            )


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    # TFF's downloader calls urlopen without a timeout; an unreachable host
    # that drops packets would otherwise hang the run.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _fetch_from_tar(url: str, member: str, dest: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        archive = tf.keras.utils.get_file(os.path.basename(url), origin=url, cache_dir=scratch)
        with tarfile.open(archive) as tar:
            source = tar.extractfile(member)
            if source is None:
                raise tarfile.TarError(f"{url} holds no file {member}")
            with source, open(dest, "wb") as out:
                shutil.copyfileobj(source, out)


def write_sql_client_data(path: str, splits: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]) -> None:
    """Writes client data as a TFF SQLite file, as TFF's loaders read it.

    Each split is written by `tff.simulation.datasets.save_to_sql_client_data`;
    the splits are then merged into one file, since a client id may appear in
    several splits (EMNIST's writers have train and test examples) and TFF's
    writer gives each client one split.

    Args:
      path: the SQLite file to write, replaced atomically.
      splits: split name -> client id -> feature name -> array whose first axis
        indexes that client's examples. Every client has the same features.
    """

    def produce(temp_path: str) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            parts = []
            for index, (split, clients) in enumerate(splits.items()):
                part = os.path.join(scratch, f"{index}.sqlite")
                ids = list(clients)
                tff.simulation.datasets.save_to_sql_client_data(
                    ids,
                    lambda cid, clients=clients: tf.data.Dataset.from_tensor_slices(dict(clients[cid])),
                    part,
                    allow_overwrite=True,
                    split_names_by_client_id={cid: split for cid in ids},
                )
                parts.append(part)
            shutil.copyfile(parts[0], temp_path)
            with contextlib.closing(sqlite3.connect(temp_path)) as db:
                for part in parts[1:]:
                    db.execute("ATTACH DATABASE ? AS part", (part,))
                    db.execute("INSERT INTO examples SELECT * FROM part.examples")
                    db.execute("INSERT INTO client_metadata SELECT * FROM part.client_metadata")
                    db.commit()
                    db.execute("DETACH DATABASE part")
            index_by_client(temp_path)

    files.produce_file_atomic(path, produce)
