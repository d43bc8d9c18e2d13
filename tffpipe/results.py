"""Finished (or interrupted) runs read back as pandas DataFrames: `tffpipe.load_run`, `tffpipe.load_runs`.

A run folder holds `config.json` (its settings), `results/metrics.csv` (a row
per round) and `results/clients.csv` (a row per evaluation client and round).
"""

import dataclasses
import glob
import io
import json
import os
import warnings
from typing import Any

import pandas

from tffpipe import config as config_lib
from tffpipe import settings
from tffpipe.errors import UserError


@dataclasses.dataclass(frozen=True)
class Run:
    """One run folder, read.

    Attributes:
      path: the folder.
      config: every setting by its flag name (`{"rounds": 20, "dp": "fixed", ...}`).
      metrics: a row per finished round (`round`, `train/loss`, `eval/accuracy`, ...).
      clients: a row per evaluation client and evaluated round (`round`, `client_id`, metrics).
    """

    path: str
    config: dict[str, Any]
    metrics: pandas.DataFrame
    clients: pandas.DataFrame


def flat_settings(nested: dict[str, Any]) -> dict[str, Any]:
    """A saved run's nested settings (`config.json`'s "settings") by flag name."""
    flat = {}
    for flag, item in settings.by_flag(config_lib.RunConfig).items():
        node: Any = nested
        for name in item.path:
            if not isinstance(node, dict) or name not in node:
                break
            node = node[name]
        else:
            flat[flag] = node
    return flat


def read_csv(path: str) -> pandas.DataFrame:
    """A results CSV as a DataFrame (empty when the file is missing or empty; NaN for empty cells).

    Floats are parsed round-trip, so each value is exactly the one written
    (pandas' default parser can differ in the last bit). A last line without
    its line break (a row a killed run was appending) is left out.
    """
    if not os.path.exists(path):
        return pandas.DataFrame()
    with open(path, newline="", encoding="utf-8") as f:
        text = f.read()
    if not text.endswith(("\n", "\r")):
        text = text[: max(text.rfind("\n"), text.rfind("\r")) + 1]
    if not text.strip():
        return pandas.DataFrame()
    return pandas.read_csv(io.StringIO(text), float_precision="round_trip")


def load_run(path: str) -> Run:
    """The run in folder `path` (`root_dir/experiment_name`).

    Raises:
      UserError: `path` is not a run folder, or its `config.json` cannot be read.
    """
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"{path} is not a run folder: it has no config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            saved = json.load(f)
        nested = saved["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {config_path}: {e}") from e
    results = os.path.join(path, "results")
    return Run(
        path=path,
        config=flat_settings(nested),
        metrics=read_csv(os.path.join(results, "metrics.csv")),
        clients=read_csv(os.path.join(results, "clients.csv")),
    )


def load_runs(pattern: str) -> pandas.DataFrame:
    """The metrics of every run folder matching `pattern` (a glob), in one DataFrame.

    Each row is one round of one run; the column `run` names the run's folder
    and there is a column per setting whose value differs between the runs
    (`client_learning_rate`, `seed`, ...), so that
    `frame.groupby("client_learning_rate")["eval/accuracy"]` compares them.

    Raises:
      UserError: no run folder matches.
    """
    folders = sorted(p for p in glob.glob(pattern) if os.path.isfile(os.path.join(p, "config.json")))
    if not folders:
        raise UserError(f"no run folder (a folder with config.json) matches {pattern!r}")
    runs = [load_run(folder) for folder in folders]
    shown = {flag: [_hashable(run.config.get(flag)) for run in runs] for flag in runs[0].config}
    differing = [flag for flag, values in shown.items() if len(set(values)) > 1]
    frames = []
    for run in runs:
        # Columns a run never filled (no DP, no evaluation yet) come back as NaN from the others.
        frame = run.metrics.dropna(axis=1, how="all")
        frame.insert(0, "run", os.path.basename(os.path.normpath(run.path)))
        for offset, flag in enumerate(differing, start=1):
            frame.insert(offset, flag, [run.config.get(flag)] * len(frame))
        frames.append(frame)
    with warnings.catch_warnings():
        # A setting that is None in every row of one run (no DP noise multiplier) is all-NA
        # there; pandas 2.2 warns that it will let such columns decide dtypes. The values
        # are what the runs saved either way.
        warnings.simplefilter("ignore", FutureWarning)
        return pandas.concat(frames, ignore_index=True)


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
