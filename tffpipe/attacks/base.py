"""What an attack is: how a malicious client changes what it contributes.

Attack modules import TensorFlow inside their methods, never at import: the
launcher reads their settings before TensorFlow loads.
"""

from typing import Any


class Attack:
    """Base class of an attack; subclasses override what they need.

    Data-poisoning attacks change the batches of the attackers' training
    datasets (`poison`); the clients then train honestly on them.
    """

    key: str = ""
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
