"""`results/clients.csv`: one row per evaluation round and evaluation client.

Columns: `round`, `client_id`, `num_examples`, then every metric measured for
that client in that round (held-out metrics under their names, the
personalization evaluation's under `personalized/...`). The file is
rewritten whole through a temporary file and a rename at every evaluation,
so it is never half-written; on resume the rows of rounds after the
checkpoint are dropped, so each (round, client) appears once.
"""

import collections
import os
from typing import Any
from collections.abc import Mapping

from tffpipe.program import csv_table
from tffpipe.program import files

ROUND = "round"
CLIENT = "client_id"
EXAMPLES = "num_examples"
_FIRST = (ROUND, CLIENT, EXAMPLES)

Key = tuple[int, str]


def read(path: str) -> tuple[list[str], dict[Key, dict[str, Any]]]:
    """The columns and whole rows (by round and client) of `path`; empty if it does not exist.

    A cut last line is left out (`incomplete_rounds` names its round).

    Raises:
      ValueError: the file is not a clients CSV (no integer `round` or no `client_id`).
    """
    if not os.path.exists(path):
        return list(_FIRST), {}
    table = _read_table(path)
    return table.fieldnames, _by_key(table)


def incomplete_rounds(path: str) -> dict[int, str]:
    """The rounds of `path` that lack some of their rows, each with the reason.

    Rows are written sorted by round, so a file cut short loses the end of
    its last round: the round of a cut last line, and any round with fewer
    client rows than the file's fullest round, are incomplete.

    Raises:
      ValueError: (or `csv.Error`, `UnicodeDecodeError`) the file is unreadable.
    """
    if not os.path.exists(path):
        return {}
    table = _read_table(path)
    counts = collections.Counter(int(row[ROUND]) for row in table.rows)
    found = {}
    if table.cut is not None:
        cut_round = _cut_round(table, counts)
        if cut_round is not None:
            found[cut_round] = f"its last line was cut short ({_shorten(table.cut)!r})"
    most = max(counts.values(), default=0)
    for round_num, count in sorted(counts.items()):
        if count < most and round_num not in found:
            found[round_num] = f"it has {count} of {most} client rows"
    return found


def _by_key(table: csv_table.Table) -> dict[Key, dict[str, Any]]:
    return {(int(row[ROUND]), row[CLIENT]): row for row in table.rows}  # a repeated key: the last wins


def _read_table(path: str) -> csv_table.Table:
    table = csv_table.read(path, text_columns=(CLIENT,))
    if ROUND not in table.fieldnames or CLIENT not in table.fieldnames:
        raise ValueError(f"{path} has no {ROUND!r} and {CLIENT!r} columns")
    for row in table.rows:
        int(row[ROUND])  # ValueError: not a clients CSV
    return table


def _cut_round(table: csv_table.Table, counts: Mapping[int, int]) -> int | None:
    """The round of the cut line: its own first field when whole; the last whole row's round when that
    field is not a number; None when the line was cut inside its first field."""
    try:
        return int(table.cut_key) if table.cut_key is not None else None
    except ValueError:
        pass
    return max(counts, default=None)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write(path: str, columns: list[str], rows: Mapping[Key, Mapping[str, Any]]) -> None:
    files.write_csv_atomic(path, columns, (rows[key] for key in sorted(rows)))


def trim(path: str, last_round: int) -> int:
    """Drops the rows of rounds after `last_round` and a cut last line; returns how many rows were dropped.

    Raises:
      ValueError: (or `csv.Error`, `UnicodeDecodeError`) the file is unreadable.
    """
    table = _read_table(path)
    rows = _by_key(table)
    kept = {key: row for key, row in rows.items() if key[0] <= last_round}
    if len(kept) != len(rows) or table.cut is not None:
        write(path, table.fieldnames, kept)
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
