"""Applying the chosen attack in a run: who attacks, their poisoned data, the attack's metrics."""

from typing import Any
from collections.abc import Callable, Sequence

import tensorflow as tf

from tffpipe.attacks import base
from tffpipe.attacks import registry
from tffpipe.attacks import selection


class Simulation:
    """The run's malicious clients and what they do.

    Args:
      name: `--attack` (not "none").
      ctx: the attack's settings and context.
      task: the task (its labels decide whether label attacks can run).

    Raises:
      ConfigError: the attack cannot run on this task.
    """

    def __init__(self, name: str, ctx: base.Context, task: Any):
        self._ctx = ctx
        self.attack = registry.get(name)
        self.labels = label_info(task)
        self.attack.check_task(ctx, self.labels)
        ids = list(task.train_data.client_ids)
        self.attackers = selection.attackers(ids, ctx.fraction, ctx.seed)
        self._attackers = frozenset(self.attackers)
        self._num_train = len(ids)
        # One traced function maps every attacker dataset: an eager
        # `dataset.map` registers a new function per call, kept for good
        # (about 90 KiB per attacker per round here).
        self._poison = tf.function(lambda dataset: dataset.map(lambda x, y: self.attack.poison(x, y, ctx, self.labels)))

    def describe(self) -> str:
        return (
            f"attack: {self.attack.describe(self._ctx)}; {len(self.attackers)} of "
            f"{self._num_train} training clients attack ({self._ctx.fraction:.0%}, chosen by --seed)"
        )

    def client_data(self, client_id: str, dataset: tf.data.Dataset, client_seed: int) -> Any:
        """What `client_id` contributes to a round's process, given its honest dataset.

        Data attacks: the dataset, poisoned if the client attacks. Update
        attacks: the dataset with the client's attacker token (0 if honest,
        else a nonzero seed from `client_seed` for the attack's draws).
        """
        attacker = client_id in self._attackers
        if self.attack.poisons_updates:
            from tffpipe.attacks import client_work

            return client_work.client_data(dataset, 1 + client_seed % (2**62) if attacker else 0)
        return self._poison(dataset) if attacker else dataset

    def round_metrics(self, sampled: Sequence[str]) -> dict[str, float]:
        return {"attack/attackers_in_round": float(sum(cid in self._attackers for cid in sampled))}

    def triggered_eval(self) -> Callable[[tf.data.Dataset], tf.data.Dataset] | None:
        """Maps a held-out dataset to the one whose accuracy is the backdoor's success, if any."""
        transform = getattr(self.attack, "triggered_eval", None)
        if transform is None:
            return None
        return tf.function(lambda dataset: dataset.map(lambda x, y: transform(x, y, self._ctx)))


def label_info(task: Any) -> base.LabelInfo:
    """Whether the task's labels are class indices, and how many classes its model has."""
    _, y = task.sample_batch_dataset(1).element_spec
    integer = y.dtype.is_integer
    width = task.model_builder().output_shape[-1] if integer else 0
    return base.LabelInfo(integer=integer, num_classes=int(width or 0), task=task.name)
