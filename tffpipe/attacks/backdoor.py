"""`--attack=backdoor`: a trigger stamped on some of the attackers' examples, relabelled to a target.

The trigger (Bagdasaryan et al., AISTATS 2020; Gu et al., BadNets 2017): on
images (examples of rank 2 or more) a 3 x 3 patch at the bottom right set
to 1.0 (images scaled to [0, 1]); on tabular examples the first 3 features
set to 3.0 (a value 3 standard deviations out on standardised features). The
attack succeeds when held-out examples carrying the trigger are classified as
`--attack_target`: `eval/backdoor_success` measures that share, over
held-out examples whose true label is not the target.
"""

import dataclasses

from tffpipe import settings
from tffpipe.attacks import base
from tffpipe.errors import ConfigError

PATCH = 3
IMAGE_VALUE = 1.0
TABULAR_VALUE = 3.0


@dataclasses.dataclass(frozen=True)
class Settings:
    poison_fraction: float = settings.setting(
        0.5,
        "Share of each attacker batch that carries the trigger (relabelled to --attack_target).",
        flag="attack_poison_fraction",
        group="attacks",
        check=settings.in_range(0, 1),
        applies=("attack", ("backdoor",)),
        resume=settings.MUST_MATCH,
    )


def stamp(x):
    """`x` (a batch) with the trigger on every example."""
    import tensorflow as tf

    example_shape = x.shape[1:]
    if len(example_shape) >= 2:
        mask = tf.pad(
            tf.ones([PATCH, PATCH] + list(example_shape[2:]), x.dtype),
            [[example_shape[0] - PATCH, 0], [example_shape[1] - PATCH, 0]] + [[0, 0]] * (len(example_shape) - 2),
        )
        value = IMAGE_VALUE
    else:
        width = min(PATCH, int(example_shape[0]))
        mask = tf.pad(tf.ones([width], x.dtype), [[0, int(example_shape[0]) - width]])
        value = TABULAR_VALUE
    return x * (1 - mask) + mask * value


class Backdoor(base.Attack):
    key = "backdoor"
    Settings = Settings

    def check_task(self, ctx, labels):
        if not labels.integer or labels.num_classes < 2:
            raise ConfigError(f"--attack=backdoor needs integer class labels; task {labels.task!r} has none")
        if ctx.target >= labels.num_classes:
            raise ConfigError(
                f"--attack_target={ctx.target} is not a class of task {labels.task!r} (0..{labels.num_classes - 1})"
            )

    def poison(self, x, y, ctx, labels):
        import tensorflow as tf

        share = ctx.settings.poison_fraction
        n = tf.shape(x)[0]
        # The first ceil(share x batch) examples of each (shuffled) batch.
        count = tf.cast(tf.math.ceil(share * tf.cast(n, tf.float32)), tf.int32)
        poisoned = tf.range(n) < count
        x = tf.where(tf.reshape(poisoned, [-1] + [1] * (len(x.shape) - 1)), stamp(x), x)
        target = tf.fill(tf.shape(y), tf.cast(ctx.target, y.dtype))
        y = tf.where(tf.reshape(poisoned, [-1] + [1] * (len(y.shape) - 1)), target, y)
        return x, y

    def triggered_eval(self, x, y, ctx):
        """Held-out batch -> its examples of other classes, triggered and labelled the target."""
        import tensorflow as tf

        target = tf.cast(ctx.target, y.dtype)
        keep = tf.reshape(y, [tf.shape(y)[0], -1])[:, 0] != target
        x, y = tf.boolean_mask(x, keep), tf.boolean_mask(y, keep)
        return stamp(x), tf.fill(tf.shape(y), target)

    def describe(self, ctx):
        return (
            f"backdoor: a trigger on {ctx.settings.poison_fraction:.0%} of each attacker batch, "
            f"relabelled to class {ctx.target}"
        )


ATTACK = Backdoor()
