"""A sweep's plan: the grid of settings and seeds, expanded into trials, each checked as the launcher checks flags.

A trial is one ordinary run (`python -m tffpipe.train` with the sweep's
common flags plus its own values of the swept settings). Nothing here
imports TensorFlow, so a bad grid is reported before any trial starts.
"""

import dataclasses
import hashlib
import itertools
import json
import os
from typing import Any
from collections.abc import Sequence

from absl import flags

from tffpipe import cli
from tffpipe import errors
from tffpipe import run_names
from tffpipe import config as config_lib

SEED = "seed"
# Where trials write is the sweep's to decide.
_NOT_SWEPT = ("root_dir", "experiment_name")


@dataclasses.dataclass(frozen=True)
class Trial:
    """One run of the sweep.

    Attributes:
      name: its run folder's name (the swept settings and the seed, `algorithm=fedprox-seed=1`).
      values: the swept settings' values as given on the command line, seed included.
      flags: every flag the trial's launcher gets, but where it writes.
      rounds: the rounds it trains.
    """

    name: str
    values: dict[str, str]
    flags: tuple[str, ...]
    rounds: int


@dataclasses.dataclass(frozen=True)
class Plan:
    """A whole sweep: its swept settings (grid order, then seed), common flags and trials."""

    axes: dict[str, list[str]]
    seeds: list[int]
    common_flags: tuple[str, ...]
    trials: list[Trial]

    @property
    def swept(self) -> list[str]:
        """The settings that vary between trials, seed last when there is more than one."""
        return list(self.axes) + ([SEED] if len(self.seeds) > 1 else [])

    def default_name(self) -> str:
        """`sweep-<swept settings>-<hash of the common flags>`: the same command names the same folder.

        Values and seeds are left out of the hash, so that adding a value or a
        seed to a sweep reruns only the new trials.
        """
        digest = hashlib.sha256(json.dumps([list(self.axes), sorted(self.common_flags)]).encode()).hexdigest()
        return "-".join(["sweep", run_names.safe(",".join(self.swept) or "seeds"), digest[:8]])


def parse_grid(text: str) -> tuple[str, list[str]]:
    """`--grid client_learning_rate=0.02,0.05` -> ("client_learning_rate", ["0.02", "0.05"]).

    Raises:
      ConfigError: not `NAME=VALUE[,VALUE...]`.
    """
    name, sep, values = text.partition("=")
    name = name.strip().removeprefix("--")
    items = [v.strip() for v in values.split(",")] if sep else []
    if not name or not items or any(not v for v in items):
        raise errors.ConfigError(
            f"--grid {text!r}: expected NAME=VALUE[,VALUE...], e.g. --grid client_learning_rate=0.02,0.05"
        )
    return name, items


def load_sweep_file(path: str) -> tuple[dict[str, list[str]], int | None, list[str]]:
    """A YAML sweep file: `grid:` (setting: [values]), optional `seeds:` (a count) and `flags:` (setting: value).

    Values that hold commas (`client_speed: [lognormal:50,1.0, ...]`) go in a file.

    Raises:
      ConfigError: the file is missing, not YAML, or not of that shape.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except OSError as e:
        raise errors.ConfigError(f"--sweep_file={path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise errors.ConfigError(f"--sweep_file={path}: not YAML ({str(e).splitlines()[0]})") from e
    loaded = loaded or {}
    unknown = sorted(set(loaded) - {"grid", "seeds", "flags"}) if isinstance(loaded, dict) else ["(not a mapping)"]
    if unknown:
        raise errors.ConfigError(f"--sweep_file={path}: unknown key {unknown[0]!r}; expected grid, seeds and flags")
    grid, common = loaded.get("grid") or {}, loaded.get("flags") or {}
    if not isinstance(grid, dict) or not isinstance(common, dict):
        raise errors.ConfigError(f"--sweep_file={path}: grid and flags must map setting names to values")
    axes = {}
    for name, given in grid.items():
        values = given if isinstance(given, list) else [given]
        if not values:
            raise errors.ConfigError(f"--sweep_file={path}: grid entry {name!r} has no values")
        axes[str(name)] = [flag_text(v) for v in values]
    seeds = loaded.get("seeds")
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool)):
        raise errors.ConfigError(f"--sweep_file={path}: seeds must be a whole number, got {seeds!r}")
    return axes, seeds, [f"--{name}={flag_text(value)}" for name, value in common.items()]


def flag_text(value: Any) -> str:
    """A YAML value as the launcher's flag takes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(flag_text(v) for v in value)
    return str(value)


def make_plan(axes: dict[str, list[str]], seeds: int | None, common_flags: Sequence[str]) -> Plan:
    """Every combination of the axes' values, times each seed, as checked trials.

    Seeds are the common `--seed` (0 unless given) and the next `seeds - 1`.

    Raises:
      ConfigError, TaskError: a swept or common setting the launcher would refuse,
        naming the trial.
    """
    for name in axes:
        if name in _NOT_SWEPT:
            raise errors.ConfigError(
                f"--grid {name}: the sweep decides where trials write; give --root_dir or --sweep_name"
            )
        if len(set(axes[name])) != len(axes[name]):
            raise errors.ConfigError(f"--grid {name}: a value is listed twice")
    if seeds is not None and seeds < 1:
        raise errors.ConfigError(f"--seeds must be at least 1, got {seeds}")
    if seeds is not None and SEED in axes:
        raise errors.ConfigError("--grid seed and --seeds both choose seeds; give one")
    common = tuple(f for f in common_flags if not f.startswith(tuple(f"--{n}=" for n in _NOT_SWEPT)))
    base = check_flags(common, "the common flags")
    for name, values in axes.items():  # a wrong name or value is reported as the grid's
        check_flags(common + (f"--{name}={values[0]}",), f"--grid {name}")
    first_seed = base.schedule.seed
    seed_values = [first_seed + i for i in range(seeds or 1)]
    trials = []
    for combination in itertools.product(*axes.values()):
        chosen = dict(zip(axes, combination))
        for seed in seed_values:
            trial_values = {**chosen, **({SEED: str(seed)} if seeds else {})}
            swept = [*axes, *([SEED] if seeds and seeds > 1 else [])]
            trial_flags = common + tuple(f"--{n}={v}" for n, v in trial_values.items()) + _hparams_flag(common, swept)
            name = run_names.safe("-".join(f"{n}={v}" for n, v in trial_values.items())) or "trial"
            cfg = check_flags(trial_flags, f"trial {name}")
            trials.append(Trial(name, trial_values, trial_flags, cfg.schedule.rounds))
    return Plan(axes=dict(axes), seeds=seed_values, common_flags=common, trials=trials)


def _hparams_flag(common: Sequence[str], axes: Sequence[str]) -> tuple[str, ...]:
    """`--hparams` naming the swept settings (with any the common flags name), so TensorBoard lists them for every trial."""
    given = [f.split("=", 1)[1] for f in common if f.startswith("--hparams=")]
    names = list(dict.fromkeys([n for text in given[-1:] for n in text.split(",") if n] + list(axes)))
    return (f"--hparams={','.join(names)}",) if names else ()


def check_flags(trial_flags: Sequence[str], what: str) -> config_lib.RunConfig:
    """The config a launcher would build from `trial_flags`; its refusal names `what`.

    Raises:
      ConfigError, TaskError: `what: <the launcher's one-line error>`.
    """
    try:
        return cli.parse(["train", *trial_flags])
    except flags.Error as e:
        raise errors.ConfigError(f"{what}: {str(e).removeprefix('ERROR:: ')}") from e
    except errors.UserError as e:
        raise type(e)(f"{what}: {e}") from e


def trial_root(sweep_dir: str) -> str:
    """Where a sweep's trials write their run folders."""
    return os.path.join(sweep_dir, "trials")
