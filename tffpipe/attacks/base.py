"""What an attack is: how a malicious client changes what it contributes.

Attack modules import TensorFlow inside their methods, never at import: the
launcher reads their settings before TensorFlow loads. An attack sees its
settings in a small `Context`, never the run's configuration; which other
components it refuses is its `rules` (`tffpipe.components.Rule`), checked in
`tffpipe/config/components.py`.
"""

import dataclasses
from typing import Any

from tffpipe import components


@dataclasses.dataclass(frozen=True)
class Context:
    """What an attack is given.

    Attributes:
      fraction: `--attack_fraction`, the share of training clients that attack.
      target: `--attack_target`, the class targeted attacks relabel to.
      scale: `--attack_scale` (k).
      settings: the attack's own settings (None for those without).
      clients_per_round: the cohort size (None until fitted to the task).
      seed: `--seed` (who attacks).
    """

    fraction: float
    target: int
    scale: float
    settings: Any = None
    clients_per_round: int | None = None
    seed: int = 0


class Attack:
    """Base class of an attack; subclasses override what they need.

    Data-poisoning attacks change the batches of the attackers' training
    datasets (`poison`); the clients then train honestly on them.
    Update-poisoning attacks (`UpdateAttack`) let the attackers train
    honestly and change the update they send.
    """

    key: str = ""
    poisons_updates: bool = False
    Settings: type | None = None
    summary: str = ""  # one line for the run's description

    # Combinations with other components the attack refuses.
    rules: tuple[components.Rule, ...] = ()

    def check(self, ctx: Context, run: components.Selection) -> None:
        """Refuses its own settings that cannot work in this run (`ConfigError`)."""

    def check_task(self, ctx: Context, labels: "LabelInfo") -> None:
        """Refuses a task the attack cannot run on (`ConfigError`)."""

    def poison(self, x: Any, y: Any, ctx: Context, labels: "LabelInfo") -> tuple[Any, Any]:
        """The attacker's version of one training batch."""
        return x, y

    def describe(self, ctx: Context) -> str:
        return self.summary


class UpdateAttack(Attack):
    """An attack on the update an attacker sends (`attacks/client_work.py` applies it).

    Only algorithms whose clients send a model delta (`Algorithm.client_work`)
    can run it: the attack wraps their client work.
    """

    poisons_updates = True
    # Whether `poisoned_update` needs the benign updates' per-coordinate mean
    # and standard deviation (kept in the client work's state).
    needs_benign_statistics: bool = False

    rules = (
        components.requires(
            lambda ctx, run: _sends_model_delta(run.algorithm),
            lambda ctx, run: (
                f"--attack={run.attack} changes the model delta a client sends, which only --algorithm=fedavg "
                f"and fedprox clients send; --algorithm={run.algorithm} does not"
            ),
        ),
    )

    def options(self, ctx: Context) -> "UpdateOptions":
        """The attack's numbers for this run (`ctx` fitted to the task)."""
        return UpdateOptions(scale=ctx.scale, alie_z=0.0)

    def poisoned_update(self, update: list[Any], seed: Any, options: "UpdateOptions", benign: Any = None) -> list[Any]:
        """The attacker's update from its honest one (flat list of tensors).

        Args:
          update: the honest update's tensors.
          seed: an int64 scalar, different for every (round, attacker).
          options: the attack's numbers (scale, z).
          benign: for `needs_benign_statistics`, (mean, std) lists like
            `update`, from the benign updates of the previous round.
        """
        raise NotImplementedError


def _sends_model_delta(algorithm: str) -> bool:
    from tffpipe.learning import registry

    return registry.get(algorithm).sends_model_delta


class UpdateOptions:
    """The numbers an update attack uses, fixed for the run.

    Attributes:
      scale: `--attack_scale` (k).
      alie_z: how many standard deviations ALIE shifts the mean by.
    """

    def __init__(self, scale: float, alie_z: float):
        self.scale = scale
        self.alie_z = alie_z


class LabelInfo:
    """What the label attacks need to know of a task's labels.

    Attributes:
      integer: whether labels are integer class indices.
      num_classes: the model's output width (classes), for integer labels.
      task: the task's name, for messages.
    """

    def __init__(self, integer: bool, num_classes: int, task: str):
        self.integer = integer
        self.num_classes = num_classes
        self.task = task
