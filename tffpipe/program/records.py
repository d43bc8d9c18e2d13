"""Keeping a run's records whole across kills and resumes.

A run records every round twice: a row of `results/metrics.csv` and
TensorBoard scalars in `logdir/`. On resume from the checkpoint of round N:
  * what a killed run recorded after round N is dropped (round N+1 is
    trained again and recorded once);
  * rounds 1..N missing from one record are rebuilt from the other;
  * an unreadable `metrics.csv` is moved aside (`metrics.csv.unreadable`)
    and rebuilt from TensorBoard;
  * rounds missing from both are named; they cannot be recovered.
Every change is reported in the lines `reconcile` returns.
"""

import csv
import dataclasses
import glob
import os
from typing import Any

from absl import logging
import numpy as np
import tensorflow as tf

from tffpipe.program import clients_csv
from tffpipe.program import files
from tffpipe.program import outputs

UNREADABLE_SUFFIX = ".unreadable"


class UnreadableRecords(ValueError):
    """A metrics file that is not a tffpipe metrics CSV."""


@dataclasses.dataclass
class Reconciled:
    """What `reconcile` did: records dropped after the checkpoint, and notes."""

    dropped: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)


def read_metrics_csv(path: str) -> tuple[list[str], dict[int, dict[str, str]]]:
    """The field names and rows (by round) of a metrics CSV.

    Raises:
      UnreadableRecords: not a CSV with an integer `round` column.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fieldnames = list(reader.fieldnames or [])
            if outputs.ROUND_KEY not in fieldnames:
                raise UnreadableRecords(f"no {outputs.ROUND_KEY!r} column")
            rows = {}
            for line, row in enumerate(reader, start=2):
                try:
                    rows[int(row[outputs.ROUND_KEY])] = row  # a repeated round: the last wins
                except (TypeError, ValueError):
                    raise UnreadableRecords(f"line {line}: round {row[outputs.ROUND_KEY]!r}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise UnreadableRecords(str(e)) from e
    return fieldnames, rows


def write_metrics_csv(path: str, fieldnames: list[str], rows: dict[int, dict[str, Any]]) -> None:
    files.write_csv_atomic(path, fieldnames, (rows[r] for r in sorted(rows)))


def event_files(logdir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True))


def _read_events(path: str) -> tuple[list[tuple[bytes, Any]], bool]:
    """The (record, event) pairs of one event file, and whether it ends in a partial record.

    A record cut short by a kill ends the file's readable part.
    """
    events = []
    try:
        for record in tf.data.TFRecordDataset(path):
            data = record.numpy()
            events.append((data, tf.compat.v1.Event.FromString(data)))
    except tf.errors.DataLossError:
        return events, True
    return events, False


def read_scalars(logdir: str) -> dict[int, dict[str, float]]:
    """The scalars of every step in the TensorBoard logs (partial records end a file).

    Only the run's own event files: the `sim_clock` folder repeats some
    scalars against simulated time.
    """
    found: dict[int, dict[str, float]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        events, partial = _read_events(path)
        if partial:
            logging.warning("%s ends in a partial record", path)
        for _, event in events:
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name not in ("scalars", ""):
                    continue
                scalar = tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                if np.ndim(scalar) == 0:
                    found.setdefault(event.step, {})[value.tag] = float(scalar)
    return found


def truncate_event_files(logdir: str, last_round: int) -> int:
    """Drops TensorBoard events with a step above `last_round`.

    TensorBoard only purges orphaned steps when a file marks a restart, which
    TF2 summary writers do not do; so the events a killed run wrote past its
    last checkpoint are removed here, each file rewritten atomically. A record
    cut short by the kill ends that file's readable part.

    Returns:
      The number of events dropped.
    """
    dropped = 0
    for path in event_files(logdir):
        events, partial = _read_events(path)
        kept = [record for record, event in events if event.step <= last_round]
        removed = len(events) - len(kept) + int(partial)
        if partial:
            logging.warning("%s ends in a partial record; it was dropped", path)
        if removed:
            temp_path = path + ".tmp"
            with tf.io.TFRecordWriter(temp_path) as writer:
                for record in kept:
                    writer.write(record)
            os.replace(temp_path, path)
            dropped += removed
    return dropped


def reconcile(paths: outputs.RunPaths, last_round: int) -> Reconciled:
    """Makes both records hold rounds 1..`last_round` once each, as far as possible."""
    result = Reconciled()
    fieldnames, rows = _readable_csv(paths.metrics_csv, result)
    fieldnames = fieldnames or [outputs.ROUND_KEY]
    kept = {r: row for r, row in rows.items() if r <= last_round}
    result.dropped += len(rows) - len(kept)
    result.dropped += truncate_event_files(paths.logdir, last_round)
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
        result.notes.append(
            f"metrics.csv: rebuilt {_spans(from_tensorboard)} from the TensorBoard logs"
        )
    if from_tensorboard or len(kept) != len(rows):
        write_metrics_csv(paths.metrics_csv, fieldnames, kept)

    from_csv = sorted((wanted - set(scalars)) & set(kept))
    if from_csv:
        _write_scalars(paths.logdir, {r: kept[r] for r in from_csv})
        result.notes.append(f"TensorBoard logs: rebuilt {_spans(from_csv)} from metrics.csv")

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
        return read_metrics_csv(path)
    except (UnreadableRecords, OSError) as e:
        target = path + UNREADABLE_SUFFIX
        os.replace(path, target)
        result.notes.append(f"metrics.csv is unreadable ({e}); moved to {target}")
        return [], {}


def _write_scalars(logdir: str, rows: dict[int, dict[str, Any]]) -> None:
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for round_num, row in sorted(rows.items()):
            for name, text in row.items():
                if name == outputs.ROUND_KEY or text in ("", None):
                    continue
                try:
                    tf.summary.scalar(name, float(text), step=round_num)
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
