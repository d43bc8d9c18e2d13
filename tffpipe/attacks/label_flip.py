"""`--attack=label_flip`: attackers train on labels y -> (y + 1) mod C (data poisoning)."""

from tffpipe.attacks import base
from tffpipe.errors import ConfigError


class LabelFlip(base.Attack):
    key = "label_flip"
    summary = "label flipping: every label y becomes (y + 1) mod C"

    def check_task(self, ctx, labels):
        if not labels.integer or labels.num_classes < 2:
            raise ConfigError(f"--attack={self.key} needs integer class labels; task {labels.task!r} has none")

    def poison(self, x, y, ctx, labels):
        import tensorflow as tf

        return x, (y + tf.ones_like(y)) % tf.cast(labels.num_classes, y.dtype)


ATTACK = LabelFlip()
