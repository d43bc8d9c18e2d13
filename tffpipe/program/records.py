"""Keeping a run's records whole across kills and resumes.

A run records every round twice: a row of `results/metrics.csv` and
TensorBoard scalars in `logdir/`. On resume from the checkpoint of round N:
  * what a killed run recorded after round N is dropped (round N+1 is
    trained again and recorded once);
  * rounds 1..N missing from one record are rebuilt from the other;
  * an unreadable `metrics.csv` is moved aside (`metrics.csv.unreadable`)
    and rebuilt from TensorBoard;
  * a `metrics.csv` line cut short is dropped (and the round rebuilt from
    TensorBoard); an event file's corrupt records are skipped and every
    valid one kept (`event_files`), values they held are rebuilt from
    `metrics.csv`;
  * rounds missing from both are named; they cannot be recovered.
Every change is reported in the lines `reconcile` returns. Damage that no
record can repair (`rounds_to_retrain`) makes the resume start before it.
"""

import csv
import dataclasses
import glob
import os
from typing import Any

import numpy as np
import tensorflow as tf

from tffpipe.program import clients_csv
from tffpipe.program import csv_table
from tffpipe.program import event_files as event_reader
from tffpipe.program import files
from tffpipe.program import outputs
import contextlib

UNREADABLE_SUFFIX = ".unreadable"


class UnreadableRecords(ValueError):
    """A metrics file that is not a tffpipe metrics CSV."""


@dataclasses.dataclass
class Reconciled:
    """What `reconcile` did: records dropped after the checkpoint, and notes."""

    dropped: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    rewrite_csv: bool = False


@dataclasses.dataclass
class MetricsTable:
    """A metrics CSV: field names, whole rows by round, and a cut last line.

    Attributes:
      cut: the text of a last line cut short (left out of `rows`), or None.
      cut_round: its round, when the line still shows it.
    """

    fieldnames: list[str]
    rows: dict[int, dict[str, str]]
    cut: str | None = None
    cut_round: int | None = None


def read_metrics_table(path: str) -> MetricsTable:
    """The metrics CSV at `path`, its cut last line set apart.

    Raises:
      UnreadableRecords: not a CSV with an integer `round` column.
    """
    try:
        table = csv_table.read(path)
    except (UnicodeDecodeError, csv.Error) as e:
        raise UnreadableRecords(str(e)) from e
    if outputs.ROUND_KEY not in table.fieldnames:
        raise UnreadableRecords(f"no {outputs.ROUND_KEY!r} column")
    rows = {}
    for line, row in enumerate(table.rows, start=2):
        try:
            rows[int(row[outputs.ROUND_KEY])] = row  # a repeated round: the last wins
        except (TypeError, ValueError):
            raise UnreadableRecords(f"line {line}: round {row[outputs.ROUND_KEY]!r}") from None
    cut_round = None
    if table.cut is not None:
        with contextlib.suppress(ValueError):
            cut_round = int(table.cut_key) if table.cut_key is not None else None
    return MetricsTable(table.fieldnames, rows, table.cut, cut_round)


def read_metrics_csv(path: str) -> tuple[list[str], dict[int, dict[str, str]]]:
    """The field names and whole rows (by round) of a metrics CSV.

    Raises:
      UnreadableRecords: not a CSV with an integer `round` column.
    """
    table = read_metrics_table(path)
    return table.fieldnames, table.rows


def write_metrics_csv(path: str, fieldnames: list[str], rows: dict[int, dict[str, Any]]) -> None:
    files.write_csv_atomic(path, fieldnames, (rows[r] for r in sorted(rows)))


def event_files(logdir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True))


def read_scalars(logdir: str) -> dict[int, dict[str, float]]:
    """The scalars of every step in the TensorBoard logs (corrupt records skipped).

    The `sim_clock/` copies (some scalars against simulated time) are left
    out, as are the files of a `sim_clock` folder that runs before these
    copies moved into the run's own files left.
    """
    found: dict[int, dict[str, float]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for data in event_reader.read(path).records:
            event = tf.compat.v1.Event.FromString(data)
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name not in ("scalars", "") or value.tag.startswith(
                    outputs.SIM_CLOCK_PREFIX
                ):
                    continue
                scalar = tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                if np.ndim(scalar) == 0:
                    found.setdefault(event.step, {})[outputs.metric_name(value.tag)] = float(scalar)
    return found


def truncate_event_files(logdir: str, last_round: int, notes: list[str] | None = None) -> int:
    """Drops TensorBoard events with a step above `last_round`, and damaged records.

    TensorBoard only purges orphaned steps when a file marks a restart, which
    TF2 summary writers do not do; so the events a killed run wrote past its
    last checkpoint are removed here, each file rewritten atomically. Corrupt
    records are skipped and every valid record around them kept; a record cut
    short at the end of a file (a kill mid-write) is dropped.

    Args:
      logdir: the run's TensorBoard folder.
      last_round: the checkpoint's round.
      notes: receives a line for each file with corrupt records.

    Returns:
      The number of events dropped for being after `last_round`.
    """
    dropped = 0
    for path in event_files(logdir):
        found = event_reader.read(path)
        kept = [data for data in found.records if tf.compat.v1.Event.FromString(data).step <= last_round]
        if found.corrupt and notes is not None:
            notes.append(
                f"{os.path.relpath(path, os.path.dirname(logdir))}: skipped {found.corrupt} corrupt "
                f"stretch(es) ({found.corrupt_bytes} bytes); kept its {len(found.records)} valid records"
            )
        if len(kept) != len(found.records) or not found.whole:
            temp_path = path + ".tmp"
            with tf.io.TFRecordWriter(temp_path) as writer:
                for data in kept:
                    writer.write(data)
            os.replace(temp_path, path)
            dropped += len(found.records) - len(kept)
    return dropped


def rounds_to_retrain(paths: outputs.RunPaths, last_round: int) -> dict[int, str]:
    """Rounds up to `last_round` whose records are damaged beyond repair, with the reason.

    `clients.csv` cannot be rebuilt from anything, so a round missing some
    of its rows must be evaluated again; a `metrics.csv` row cut short can
    be rebuilt from TensorBoard unless TensorBoard lacks that round too.
    Unreadable files are left to `reconcile`.
    """
    found: dict[int, str] = {}
    try:
        for round_num, reason in clients_csv.incomplete_rounds(paths.clients_csv).items():
            if round_num <= last_round:
                found[round_num] = f"clients.csv: round {round_num} is incomplete ({reason})"
    except (ValueError, OSError, UnicodeDecodeError, csv.Error):
        pass
    try:
        table = read_metrics_table(paths.metrics_csv) if os.path.exists(paths.metrics_csv) else None
    except (UnreadableRecords, OSError):
        table = None
    if (
        table is not None
        and table.cut_round is not None
        and table.cut_round <= last_round
        and table.cut_round not in read_scalars(paths.logdir)
        and table.cut_round not in found
    ):
        found[table.cut_round] = (
            f"metrics.csv: the row of round {table.cut_round} was cut short and the TensorBoard logs lack that round"
        )
    return found


def reconcile(paths: outputs.RunPaths, last_round: int) -> Reconciled:
    """Makes both records hold rounds 1..`last_round` once each, as far as possible."""
    result = Reconciled()
    fieldnames, rows = _readable_csv(paths.metrics_csv, result)
    fieldnames = fieldnames or [outputs.ROUND_KEY]
    kept = {r: row for r, row in rows.items() if r <= last_round}
    result.dropped += len(rows) - len(kept)
    result.dropped += truncate_event_files(paths.logdir, last_round, result.notes)
    if os.path.exists(paths.clients_csv):
        try:
            result.dropped += clients_csv.trim(paths.clients_csv, last_round)
        except (ValueError, OSError, UnicodeDecodeError, csv.Error) as e:
            # Per-client rows cannot be rebuilt from anything else; training goes on.
            target = paths.clients_csv + UNREADABLE_SUFFIX
            os.replace(paths.clients_csv, target)
            result.notes.append(f"clients.csv is unreadable ({e}); moved to {target}")
    scalars = {step: v for step, v in read_scalars(paths.logdir).items() if 1 <= step <= last_round}
    wanted = set(range(1, last_round + 1))

    from_tensorboard = sorted((wanted - set(kept)) & set(scalars))
    for round_num in from_tensorboard:
        kept[round_num] = {outputs.ROUND_KEY: round_num, **scalars[round_num]}
        for name in scalars[round_num]:
            if name not in fieldnames:
                fieldnames.append(name)
    if from_tensorboard:
        result.notes.append(f"metrics.csv: rebuilt {_spans(from_tensorboard)} from the TensorBoard logs")
    if from_tensorboard or len(kept) != len(rows) or result.rewrite_csv:
        write_metrics_csv(paths.metrics_csv, fieldnames, kept)

    missing = {r: _absent_from(kept[r], scalars.get(r, {})) for r in sorted(wanted & set(kept))}
    missing = {r: values for r, values in missing.items() if values}
    if missing:
        _write_scalars(paths.logdir, missing)
        whole = sorted(r for r in missing if r not in scalars)
        partly = sorted(r for r in missing if r in scalars)
        if whole:
            result.notes.append(f"TensorBoard logs: rebuilt {_spans(whole)} from metrics.csv")
        if partly:
            count = sum(len(missing[r]) for r in partly)
            result.notes.append(
                f"TensorBoard logs: rebuilt {count} missing value(s) of {_spans(partly)} from metrics.csv"
            )

    lost = sorted(wanted - set(kept))
    if lost:
        result.notes.append(
            f"warning: no record of {_spans(lost)} survives (metrics.csv and the TensorBoard "
            "logs both lack them); training goes on from the checkpoint, these rows stay missing"
        )
    return result


def _readable_csv(path: str, result: Reconciled) -> tuple[list[str], dict[int, dict[str, Any]]]:
    if not os.path.exists(path):
        return [], {}
    try:
        table = read_metrics_table(path)
    except (UnreadableRecords, OSError) as e:
        target = path + UNREADABLE_SUFFIX
        os.replace(path, target)
        result.notes.append(f"metrics.csv is unreadable ({e}); moved to {target}")
        return [], {}
    if table.cut is not None:
        which = f"the row of round {table.cut_round}" if table.cut_round is not None else "its last line"
        result.notes.append(f"metrics.csv: {which} was cut short ({table.cut[:60]!r}); dropped")
        result.rewrite_csv = True
    return table.fieldnames, table.rows


def _absent_from(row: dict[str, Any], scalars: dict[str, float]) -> dict[str, Any]:
    """The values of a metrics.csv row that the TensorBoard step lacks."""
    return {
        name: text
        for name, text in row.items()
        if name != outputs.ROUND_KEY and text not in ("", None) and name not in scalars
    }


def _write_scalars(logdir: str, rows: dict[int, dict[str, Any]]) -> None:
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for round_num, row in sorted(rows.items()):
            for name, text in row.items():
                if name == outputs.ROUND_KEY or text in ("", None):
                    continue
                try:
                    tf.summary.scalar(outputs.tensorboard_tag(name), float(text), step=round_num)
                except ValueError:
                    continue
    writer.close()


def _spans(rounds: list[int]) -> str:
    """[1, 2, 3, 5] -> "rounds 1-3, 5"."""
    spans, start = [], None
    for i, r in enumerate(rounds):
        if start is None:
            start = r
        if i + 1 == len(rounds) or rounds[i + 1] != r + 1:
            spans.append(f"{start}" if start == r else f"{start}-{r}")
            start = None
    return ("round " if len(rounds) == 1 else "rounds ") + ", ".join(spans)


def reset(paths: outputs.RunPaths) -> None:
    """Removes metrics and event files of an earlier run that left no checkpoint."""
    for path in event_files(paths.logdir):
        os.remove(path)
    for path in (
        paths.metrics_csv,
        paths.metrics_csv + UNREADABLE_SUFFIX,
        paths.clients_csv,
        paths.clients_csv + UNREADABLE_SUFFIX,
    ):
        if os.path.exists(path):
            os.remove(path)
