"""A CSV with one row per round, appended as rounds finish.

`tff.program.CSVFileReleaseManager` reads and rewrites the whole file at
every release, in its append mode too (it first removes the rows at or
after the new key, which is a rewrite whenever the previous round's row is
there): a median of 9 ms a release over rounds 1-250, 73 ms over rounds
1,251-1,500 (`benchmarks/records_release.py`). Here a round's row is one `write` to
the end of the file; the file is rewritten (a temporary file and a rename)
only when a row brings new columns or repeats an earlier round. A row cut
short by a kill mid-write is set apart by the readers (`csv_table.read`,
`results.read_csv`) and dropped when the run resumes.
"""

import csv
import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from tffpipe.program import csv_table
from tffpipe.program import files


class AppendedCsv:
    """Rows keyed by an integer column (`key`), appended in key order.

    Args:
      path: the CSV; created with only the key column when missing.
      key: the name of the key column (the first).
    """

    def __init__(self, path: str, key: str):
        self._path = path
        self._key = key
        if os.path.exists(path):
            table = csv_table.read(path)
            self._fieldnames = table.fieldnames or [key]
            if table.cut is not None:
                # A row cut by a kill: appending after it would glue the next row to it.
                files.write_csv_atomic(path, self._fieldnames, table.rows)
            self._last = max((k for k in map(self._key_of, table.rows) if k is not None), default=None)
        else:
            files.write_csv_atomic(path, [key], [])
            self._fieldnames, self._last = [key], None

    def _key_of(self, row: Mapping[str, Any]) -> int | None:
        try:
            return int(row[self._key])
        except (KeyError, TypeError, ValueError):
            return None

    def release(self, values: Mapping[str, Any], key: int) -> None:
        """Writes `values` as the row of `key`; rows of `key` and later are replaced."""
        row = {self._key: int(key), **{name: _plain(value) for name, value in values.items()}}
        new = [name for name in row if name not in self._fieldnames]
        if new or (self._last is not None and key <= self._last):
            self._rewrite(row, new)
        else:
            out = io.StringIO()
            csv.DictWriter(out, fieldnames=self._fieldnames).writerow(row)
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, out.getvalue().encode("utf-8"))  # one write: a kill cuts at most this row
            finally:
                os.close(fd)
        self._last = int(key)

    def _rewrite(self, row: dict[str, Any], new: list[str]) -> None:
        table = csv_table.read(self._path)
        kept = [r for r in table.rows if (self._key_of(r) or 0) < row[self._key]]
        self._fieldnames = [*self._fieldnames, *new]
        files.write_csv_atomic(self._path, self._fieldnames, [*kept, row])


def _plain(value: Any) -> Any:
    """A value as the CSV shows it: numbers as Python numbers (shortest round-trip text)."""
    return np.asarray(value).tolist()
