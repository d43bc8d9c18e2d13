"""What an attack is: how a malicious client changes what it contributes.

Attack modules import TensorFlow inside their methods, never at import: the
launcher reads their settings before TensorFlow loads.
"""

from typing import Any


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

    def settings(self, cfg: Any) -> Any:
        return getattr(cfg.attack, self.key)

    def check(self, cfg: Any) -> None:
        """Refuses settings that do not fit the attack (`ConfigError`)."""

    def check_task(self, cfg: Any, labels: "LabelInfo") -> None:
        """Refuses a task the attack cannot run on (`ConfigError`)."""

    def poison(self, x: Any, y: Any, cfg: Any, labels: "LabelInfo") -> tuple[Any, Any]:
        """The attacker's version of one training batch."""
        return x, y

    def describe(self, cfg: Any) -> str:
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

    def check(self, cfg: Any) -> None:
        from tffpipe.errors import ConfigError
        from tffpipe.learning import registry

        if not registry.get(cfg.algorithm.name).sends_model_delta:
            raise ConfigError(
                f"--attack={self.key} changes the model delta a client sends, which only "
                f"--algorithm=fedavg and fedprox clients send; --algorithm={cfg.algorithm.name} does not"
            )

    def options(self, cfg: Any) -> "UpdateOptions":
        """The attack's numbers for this run (`cfg` fitted to the task)."""
        return UpdateOptions(scale=cfg.attack.scale, alie_z=0.0)

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
