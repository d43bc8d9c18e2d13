"""A simulated clock: devices of different speeds and links, dropouts, deadlines.

Every training client has a compute speed (examples per second) and link
bandwidths (bytes per second, down and up), drawn once from the run's seed
and its id (`--client_speed`, `--client_downlink`, `--client_uplink`), or
read from a CSV of per-client values (`--client_profiles`). A client's
simulated time in a round is

    download bytes / downlink + examples trained / speed + upload bytes / uplink,

with the bytes the run derives from its round (so `--compression` shortens
the upload). In each round a client fails before reporting with probability
`--client_dropout` (seeded by the round and its id).

A synchronous round samples ceil(`--over_selection` x clients per round)
clients; the clients that report are, in order of finishing, those done by
`--round_deadline_sec` (if set), at most `--clients_per_round` of them. The
round aggregates exactly the reporting clients. It lasts until the last
reporting client finishes, or until the deadline when fewer than needed
reported and some sampled client had not (a server cannot tell a dropped
client from a slow one); without a deadline, a failed client is noticed at
once (a closed connection).

This module imports no TensorFlow: the launcher checks the specifications
with the other flags.
"""

import csv
import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from tffpipe.program import sampling

KINDS = ("constant", "lognormal", "uniform")
_STREAMS = {"speed": 1, "downlink": 2, "uplink": 3, "dropout": 4}


class ClockError(ValueError):
    """A client specification that cannot be used (one line)."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """A distribution of one per-client quantity: `constant:V`, `lognormal:MEDIAN,SIGMA`, `uniform:LOW,HIGH`."""

    kind: str
    params: tuple[float, ...]

    def draw(self, rng: np.random.Generator) -> float:
        if self.kind == "constant":
            return self.params[0]
        if self.kind == "lognormal":
            median, sigma = self.params
            return float(median * math.exp(sigma * rng.standard_normal()))
        low, high = self.params
        return float(rng.uniform(low, high))


def parse_spec(text: str) -> Spec:
    """`lognormal:100,1.0` -> Spec("lognormal", (100.0, 1.0)).

    Raises:
      ClockError: not `KIND:NUMBERS` with a known kind, the right count of
        numbers, and positive values (sigma may be 0).
    """
    kind, _, numbers = text.partition(":")
    if kind not in KINDS:
        raise ClockError("must be constant:V, lognormal:MEDIAN,SIGMA or uniform:LOW,HIGH")
    try:
        params = tuple(float(n) for n in numbers.split(","))
    except ValueError:
        raise ClockError(f"{kind} takes numbers, not {numbers!r}") from None
    wanted = {"constant": 1, "lognormal": 2, "uniform": 2}[kind]
    if len(params) != wanted:
        raise ClockError(f"{kind} takes {wanted} number(s), not {len(params)}")
    if not all(math.isfinite(p) for p in params):
        raise ClockError("values must be finite")
    positive = params if kind != "lognormal" else params[:1]
    if any(p <= 0 for p in positive) or (kind == "lognormal" and params[1] < 0):
        raise ClockError("speeds and bandwidths must be positive (and sigma >= 0)")
    if kind == "uniform" and params[0] > params[1]:
        raise ClockError("uniform's low must not exceed its high")
    return Spec(kind, params)


def spec_check(text: str) -> str | None:
    """The reason a specification is invalid, or None (for the settings' checks)."""
    try:
        parse_spec(text)
    except ClockError as e:
        return str(e)
    return None


@dataclasses.dataclass(frozen=True)
class Profile:
    """One client's device: examples per second, bytes per second down and up."""

    speed: float
    downlink: float
    uplink: float

    def seconds(self, examples: int, download_bytes: float, upload_bytes: float) -> float:
        return download_bytes / self.downlink + examples / self.speed + upload_bytes / self.uplink


def _rng(seed: int, client_id: str, stream: str, round_num: int = 0) -> np.random.Generator:
    return sampling.client_rng(seed, client_id, _STREAMS[stream], round_num)


def read_profiles(path: str) -> dict[str, Profile]:
    """Per-client profiles from a CSV with columns client_id, speed, downlink, uplink.

    Raises:
      ClockError: a missing file or column, or a value that is not a positive number.
    """
    columns = ("client_id", "speed", "downlink", "uplink")
    if not os.path.exists(path):
        raise ClockError(f"--client_profiles: no file {path}")
    found = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ClockError(f"--client_profiles: {path} lacks column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                values = [float(row[c]) for c in columns[1:]]
            except ValueError:
                raise ClockError(f"--client_profiles: {path} line {line}: not a number") from None
            if not all(math.isfinite(v) and v > 0 for v in values):
                raise ClockError(f"--client_profiles: {path} line {line}: values must be positive")
            found[row["client_id"]] = Profile(*values)
    return found


class Population:
    """Every client's profile and availability, a pure function of the seed and its id."""

    def __init__(self, settings, seed: int, client_ids: Sequence[str]):
        """Args:
          settings: the run's `ClockConfig`.
          seed: the run's seed.
          client_ids: the training clients (a profiles CSV must cover them).

        Raises:
          ClockError: a bad profiles CSV, or one that lacks some clients.
        """
        self._seed = seed
        self._dropout = settings.client_dropout
        self._specs = {
            "speed": parse_spec(settings.client_speed),
            "downlink": parse_spec(settings.client_downlink),
            "uplink": parse_spec(settings.client_uplink),
        }
        self._profiles: dict[str, Profile] = {}
        if settings.client_profiles:
            self._profiles = read_profiles(settings.client_profiles)
            missing = [c for c in client_ids if c not in self._profiles]
            if missing:
                raise ClockError(
                    f"--client_profiles: {settings.client_profiles} has no row for {len(missing)} of "
                    f"the {len(client_ids)} training clients (e.g. {missing[0]!r})"
                )

    def profile(self, client_id: str) -> Profile:
        if client_id not in self._profiles:
            self._profiles[client_id] = Profile(
                *(spec.draw(_rng(self._seed, client_id, name)) for name, spec in self._specs.items())
            )
        return self._profiles[client_id]

    def drops_out(self, client_id: str, round_num: int) -> bool:
        if self._dropout == 0:
            return False
        return bool(_rng(self._seed, client_id, "dropout", round_num).uniform() < self._dropout)


@dataclasses.dataclass(frozen=True)
class RoundPlan:
    """Who reports in one synchronous round, and how long the round takes.

    Attributes:
      reporting: the clients whose updates are aggregated, in sampled order.
      dropped: sampled clients that failed before reporting.
      late: clients that finished after the round closed (past the deadline,
        or after the needed number had reported).
      round_sec: the round's simulated duration.
      seconds: each available client's simulated time.
    """

    reporting: list[str]
    dropped: list[str]
    late: list[str]
    round_sec: float
    seconds: Mapping[str, float]

    def metrics(self) -> dict[str, float]:
        return {
            "sim/round_sec": self.round_sec,
            "clients/reported": float(len(self.reporting)),
            "clients/dropped": float(len(self.dropped)),
            "clients/late": float(len(self.late)),
        }


def plan_round(
    sampled: Sequence[str],
    seconds: Mapping[str, float],
    dropped: set[str],
    *,
    needed: int,
    deadline_sec: float,
) -> RoundPlan:
    """Which sampled clients report, in a round that needs `needed` of them.

    Args:
      sampled: the round's sampled clients.
      seconds: each client's simulated time (dropped clients may be absent).
      dropped: the clients that fail before reporting.
      needed: `--clients_per_round`; the round closes at the needed-th report.
      deadline_sec: 0 for none.
    """
    available = [c for c in sampled if c not in dropped]
    on_time = [c for c in available if not deadline_sec or seconds[c] <= deadline_sec]
    order = sorted(on_time, key=lambda c: (seconds[c], sampled.index(c)))
    first = set(order[:needed])
    reporting = [c for c in sampled if c in first]
    late = [c for c in available if c not in first]
    if len(reporting) < needed and deadline_sec and len(reporting) < len(sampled):
        round_sec = deadline_sec
    else:
        round_sec = max((seconds[c] for c in reporting), default=0.0)
    return RoundPlan(reporting, [c for c in sampled if c in dropped], late, round_sec, dict(seconds))


def cohort(clients_per_round: int, over_selection: float) -> int:
    """How many clients a round samples: ceil(over_selection x clients_per_round)."""
    return math.ceil(over_selection * clients_per_round - 1e-9)


class Clock:
    """Plans each round of a run and keeps the simulated time.

    Args:
      settings: the run's `ClockConfig`.
      seed: the run's seed.
      client_ids: the training clients.
      examples_of: the examples a client trains in one round.
      download_bytes: what each client receives per round.
      upload_bytes: what each client sends per round.
      clients_per_round: the reports a round needs.
    """

    def __init__(
        self,
        settings,
        seed: int,
        client_ids: Sequence[str],
        examples_of: Callable[[str], int],
        *,
        download_bytes: float,
        upload_bytes: float,
        clients_per_round: int,
    ):
        self.population = Population(settings, seed, client_ids)
        self._settings = settings
        self._examples_of = examples_of
        self._download = download_bytes
        self._upload = upload_bytes
        self._needed = clients_per_round
        self.elapsed_sec = 0.0

    @property
    def cohort(self) -> int:
        return cohort(self._needed, self._settings.over_selection)

    def client_seconds(self, client_id: str) -> float:
        """The client's simulated time for one round of training."""
        return self.population.profile(client_id).seconds(self._examples_of(client_id), self._download, self._upload)

    def examples(self, client_id: str) -> int:
        """The examples `client_id` trains in one round (epochs included)."""
        return self._examples_of(client_id)

    def plan(self, round_num: int, sampled: Sequence[str]) -> RoundPlan:
        """The round's plan (does not advance the clock)."""
        dropped = {c for c in sampled if self.population.drops_out(c, round_num)}
        seconds = {c: self.client_seconds(c) for c in sampled if c not in dropped}
        return plan_round(
            sampled, seconds, dropped, needed=self._needed, deadline_sec=self._settings.round_deadline_sec
        )

    def advance(self, plan: RoundPlan) -> dict[str, float]:
        """Adds the round's duration; returns its `sim/...` and `clients/...` metrics."""
        self.elapsed_sec += plan.round_sec
        return {**plan.metrics(), "sim/elapsed_sec": self.elapsed_sec}
