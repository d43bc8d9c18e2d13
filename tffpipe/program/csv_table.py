"""Reading a results CSV whose last line may have been cut short.

tffpipe appends a row per round (or evaluation client) in one write; a kill
during that write, a copy that ran out of space or a filesystem that lost
its tail can still cut the last line. A cut line would otherwise be read as a row
with a truncated number and blank columns. `read` returns only whole rows
and hands back the cut last line for its caller to report.
"""

import csv
import dataclasses
import io


@dataclasses.dataclass
class Table:
    """A CSV's header, whole rows, and its cut last line (None when whole).

    Attributes:
      fieldnames: the header's column names.
      rows: one dict per whole row, in file order (absent fields empty).
      cut: the text of a last line that did not parse into a whole row.
      cut_key: the first field of the cut line, when it is whole (its round).
    """

    fieldnames: list[str]
    rows: list[dict[str, str]]
    cut: str | None = None
    cut_key: str | None = None


def read(path: str, text_columns: tuple[str, ...] = ()) -> Table:
    """The rows of the CSV at `path`.

    The last line is whole when the file ends with a line break, it has
    every column, and every non-empty value outside `text_columns` is a
    number. Earlier lines are taken as written.

    Raises:
      OSError, UnicodeDecodeError, csv.Error: the file cannot be read as CSV.
    """
    with open(path, newline="", encoding="utf-8") as f:
        text = f.read()
    lines = list(csv.reader(io.StringIO(text)))
    if not lines:
        return Table([], [])
    fieldnames, records = lines[0], lines[1:]
    table = Table(fieldnames, [])
    for index, fields in enumerate(records):
        is_last = index == len(records) - 1
        if is_last and not _whole(fields, fieldnames, text_columns, text.endswith(("\n", "\r"))):
            table.cut = _last_line(text)
            table.cut_key = fields[0] if len(fields) > 1 else None
            break
        row = dict(zip(fieldnames, fields))
        for name in fieldnames[len(fields) :]:
            row[name] = ""
        table.rows.append(row)
    return table


def _whole(fields: list[str], fieldnames: list[str], text_columns: tuple[str, ...], ends_line: bool) -> bool:
    if not ends_line or len(fields) != len(fieldnames):
        return False
    for name, value in zip(fieldnames, fields):
        if value == "" or name in text_columns:
            continue
        try:
            float(value)
        except ValueError:
            return False
    return True


def _last_line(text: str) -> str:
    return text.rstrip("\r\n").rsplit("\n", 1)[-1].rstrip("\r")
