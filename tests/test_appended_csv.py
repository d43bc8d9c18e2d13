import csv
import pathlib

import numpy as np

from tffpipe import results
from tffpipe.program import appended_csv


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_rounds_are_appended_without_rewriting_earlier_rows(tmp_path):
    path = str(tmp_path / "m.csv")
    table = appended_csv.AppendedCsv(path, "round")
    table.release({"loss": np.float32(0.5), "acc": 1 / 3}, 1)
    first = pathlib.Path(path).read_bytes()
    table.release({"loss": 0.25, "acc": np.float64(2 / 3)}, 2)
    second = pathlib.Path(path).read_bytes()
    assert second.startswith(first) and len(second) > len(first)
    rows = _rows(path)
    assert [r["round"] for r in rows] == ["1", "2"]
    assert float(rows[0]["loss"]) == float(np.float32(0.5))
    assert float(rows[0]["acc"]) == 1 / 3 and float(rows[1]["acc"]) == 2 / 3  # exact round trip


def test_new_columns_rewrite_the_header_with_earlier_rows_blank(tmp_path):
    path = str(tmp_path / "m.csv")
    table = appended_csv.AppendedCsv(path, "round")
    table.release({"loss": 1.0}, 1)
    table.release({"loss": 0.5, "eval/accuracy": 0.9}, 2)
    table.release({"loss": 0.4}, 3)
    assert _rows(path) == [
        {"round": "1", "loss": "1.0", "eval/accuracy": ""},
        {"round": "2", "loss": "0.5", "eval/accuracy": "0.9"},
        {"round": "3", "loss": "0.4", "eval/accuracy": ""},
    ]


def test_a_repeated_round_replaces_it_and_every_later_row(tmp_path):
    path = str(tmp_path / "m.csv")
    table = appended_csv.AppendedCsv(path, "round")
    for r in (1, 2, 3):
        table.release({"loss": float(r)}, r)
    table.release({"loss": 9.0}, 2)
    table.release({"loss": 10.0}, 3)
    assert [(r["round"], r["loss"]) for r in _rows(path)] == [("1", "1.0"), ("2", "9.0"), ("3", "10.0")]


def test_a_row_cut_by_a_kill_is_dropped_before_the_next_append(tmp_path):
    path = str(tmp_path / "m.csv")
    table = appended_csv.AppendedCsv(path, "round")
    table.release({"loss": 1.0, "acc": 0.5}, 1)
    table.release({"loss": 0.75, "acc": 0.625}, 2)
    whole = pathlib.Path(path).read_bytes()
    with open(path, "wb") as f:
        f.write(whole[:-6])  # round 2's row, cut mid-write
    assert results.read_csv(path)["round"].tolist() == [1]
    reopened = appended_csv.AppendedCsv(path, "round")
    reopened.release({"loss": 0.7, "acc": 0.6}, 2)
    assert [(r["round"], r["loss"], r["acc"]) for r in _rows(path)] == [("1", "1.0", "0.5"), ("2", "0.7", "0.6")]
    frame = results.read_csv(path)
    assert frame["loss"].tolist() == [1.0, 0.7]
