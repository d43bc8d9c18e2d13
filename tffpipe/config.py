"""Frozen settings of one training run.

The launcher turns flags into a `RunConfig`; library code only ever sees this
record, never `FLAGS`. `RunConfig.to_dict()` is what `config.json` holds, and
`RunConfig.fingerprint()` is the subset that must not change across a resume.
"""

import dataclasses
import json
import os
from typing import Any, Mapping

OPTIMIZERS = ("sgd", "sgdm", "adam")


class ConfigError(ValueError):
    """A setting is invalid; the message is one line meant for the user."""


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Which task to build and the keyword options of its factory.

    Attributes:
      name: a registered task name, or `package.module:factory`.
      options: keyword arguments for the task factory (task-specific flags).
    """

    name: str = "digits"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """How each client iterates over its local data during training.

    Attributes:
      epochs: passes over the local data per round.
      batch_size: local batch size.
      max_elements: cap on local examples per round; None for all of them.
      shuffle_buffer: shuffle buffer size; 0 or 1 disables shuffling.
    """

    epochs: int = 2
    batch_size: int = 20
    max_elements: int | None = None
    shuffle_buffer: int = 100


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """A `tff.learning.optimizers` optimizer by name and learning rate."""

    name: str = "sgd"
    learning_rate: float = 0.1


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Rounds, client sampling, evaluation and checkpoint cadence.

    Attributes:
      rounds: total number of training rounds.
      clients_per_round: clients sampled uniformly without replacement a round.
      seed: seeds the data partition, the initial model and client sampling.
      eval_every: federated evaluation every this many rounds (and at the end);
        0 evaluates only at the end.
      checkpoint_every: save program state every this many rounds (and at the
        end).
      keep_checkpoints: how many of the latest checkpoints to keep.
      eval_batch_size: batch size for evaluation clients.
    """

    rounds: int = 50
    clients_per_round: int = 10
    seed: int = 0
    eval_every: int = 10
    checkpoint_every: int = 5
    keep_checkpoints: int = 3
    eval_batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where a run writes: `root_dir/experiment_name/`."""

    root_dir: str = "/tmp/tffpipe"
    experiment_name: str = "default"

    @property
    def run_dir(self) -> str:
        return os.path.join(self.root_dir, self.experiment_name)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs."""

    task: TaskConfig = TaskConfig()
    client: ClientConfig = ClientConfig()
    client_optimizer: OptimizerConfig = OptimizerConfig("sgd", 0.1)
    server_optimizer: OptimizerConfig = OptimizerConfig("sgd", 1.0)
    schedule: ScheduleConfig = ScheduleConfig()
    output: OutputConfig = OutputConfig()

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that shape the model, the data and the saved state.

        A checkpoint written under one fingerprint is refused under another.
        """
        return {
            "task": self.task.name,
            "task_options": dict(sorted(self.task.options.items())),
            "seed": self.schedule.seed,
            "client_optimizer": self.client_optimizer.name,
            "server_optimizer": self.server_optimizer.name,
        }


def fingerprint_to_json(fingerprint: Mapping[str, Any]) -> str:
    return json.dumps(fingerprint, sort_keys=True)


def fingerprint_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any]
) -> list[str]:
    """Lists `name: saved -> current` for every differing fingerprint entry."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            for sub in sorted(set(old) | set(new)):
                if old.get(sub) != new.get(sub):
                    diffs.append(f"{key}.{sub}: {old.get(sub)!r} -> {new.get(sub)!r}")
        elif old != new:
            diffs.append(f"{key}: {old!r} -> {new!r}")
    return diffs


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(config: RunConfig) -> None:
    """Checks every setting that can be checked without building the task.

    Raises:
      ConfigError: with a one-line reason naming the flag.
    """
    s, c = config.schedule, config.client
    _require(s.rounds >= 1, f"--rounds must be at least 1, got {s.rounds}")
    _require(
        s.clients_per_round >= 1,
        f"--clients_per_round must be at least 1, got {s.clients_per_round}",
    )
    _require(s.eval_every >= 0, f"--eval_every must be >= 0, got {s.eval_every}")
    _require(
        s.checkpoint_every >= 1,
        f"--checkpoint_every must be at least 1, got {s.checkpoint_every}",
    )
    _require(
        s.keep_checkpoints >= 1,
        f"--keep_checkpoints must be at least 1, got {s.keep_checkpoints}",
    )
    _require(
        s.eval_batch_size >= 1,
        f"--eval_batch_size must be at least 1, got {s.eval_batch_size}",
    )
    _require(c.epochs >= 1, f"--client_epochs must be at least 1, got {c.epochs}")
    _require(
        c.batch_size >= 1, f"--client_batch_size must be at least 1, got {c.batch_size}"
    )
    _require(
        c.max_elements is None or c.max_elements >= 1,
        f"--client_max_elements must be at least 1, got {c.max_elements}",
    )
    _require(
        c.shuffle_buffer >= 0,
        f"--client_shuffle_buffer must be >= 0, got {c.shuffle_buffer}",
    )
    for prefix, opt in (
        ("client", config.client_optimizer),
        ("server", config.server_optimizer),
    ):
        _require(
            opt.name in OPTIMIZERS,
            f"--{prefix}_optimizer={opt.name!r} is not one of: {', '.join(OPTIMIZERS)}",
        )
        _require(
            opt.learning_rate > 0,
            f"--{prefix}_learning_rate must be positive, got {opt.learning_rate}",
        )
    _require(bool(config.output.experiment_name), "--experiment_name must not be empty")
    _require(
        os.sep not in config.output.experiment_name,
        f"--experiment_name must be a single folder name, got {config.output.experiment_name!r}",
    )
