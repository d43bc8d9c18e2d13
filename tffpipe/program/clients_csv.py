"""`results/clients.csv`: one row per evaluation round and evaluation client.

Columns: `round`, `client_id`, `num_examples`, then every metric measured for
that client in that round (held-out metrics under their names, the
personalization evaluation's under `personalized/...`). The file is
rewritten whole through a temporary file and a rename at every evaluation,
so it is never half-written; on resume the rows of rounds after the
checkpoint are dropped, so each (round, client) appears once.
"""

import csv
import os
from typing import Any, Mapping

from tffpipe.program import files

ROUND = "round"
CLIENT = "client_id"
EXAMPLES = "num_examples"
_FIRST = (ROUND, CLIENT, EXAMPLES)

Key = tuple[int, str]


def read(path: str) -> tuple[list[str], dict[Key, dict[str, Any]]]:
    """The columns and rows (by round and client) of `path`; empty if it does not exist.

    Raises:
      ValueError: the file is not a clients CSV (no integer `round` or no `client_id`).
    """
    if not os.path.exists(path):
        return list(_FIRST), {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        if ROUND not in columns or CLIENT not in columns:
            raise ValueError(f"{path} has no {ROUND!r} and {CLIENT!r} columns")
        rows = {}
        for row in reader:
            rows[(int(row[ROUND]), row[CLIENT])] = row  # a repeated key: the last wins
    return columns, rows


def write(path: str, columns: list[str], rows: Mapping[Key, Mapping[str, Any]]) -> None:
    files.write_csv_atomic(path, columns, (rows[key] for key in sorted(rows)))


def trim(path: str, last_round: int) -> int:
    """Drops the rows of rounds after `last_round`; returns how many were dropped.

    Raises:
      ValueError: (or `csv.Error`, `UnicodeDecodeError`) the file is unreadable.
    """
    columns, rows = read(path)
    kept = {key: row for key, row in rows.items() if key[0] <= last_round}
    if len(kept) != len(rows):
        write(path, columns, kept)
    return len(rows) - len(kept)


class ClientsLog:
    """Adds a round's per-client figures to `clients.csv`, rewriting it atomically."""

    def __init__(self, path: str):
        self._path = path
        self._columns, self._rows = read(path)

    def record(self, round_num: int, per_client: Mapping[str, Mapping[str, float]], prefix: str = "") -> None:
        """Merges `{client id: {metric: value}}` into the rows of `round_num`.

        Args:
          round_num: the evaluation round.
          per_client: the figures of each client; `num_examples` fills its
            own column, every other name gets `prefix` in front.
          prefix: distinguishes evaluations of the same round.
        """
        for client_id, metrics in per_client.items():
            row = self._rows.setdefault((round_num, client_id), {ROUND: round_num, CLIENT: client_id})
            for name, value in metrics.items():
                if name == "num_batches":
                    continue
                column = name if name == EXAMPLES and not prefix else f"{prefix}{name}"
                if column not in self._columns:
                    self._columns.append(column)
                row[column] = value
        write(self._path, self._columns, self._rows)
