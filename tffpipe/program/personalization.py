"""Personalization evaluation: how much fine-tuning the global model helps each client.

Each evaluation client splits its own examples, by a draw seeded from the
run's seed and its id, into a personalization part (`--personalize_split`)
and a test part. The global model is measured on the test part, fine-tuned
on the personalization part (`--personalize_epochs` passes of SGD), and
measured again; the gain is the difference in the headline metric (accuracy,
or the loss's decrease).

The fine-tuning is one round of TFF's FedAvg on that single client with a
server learning rate of 1 and a plain mean: the server's new model is then
exactly the client's fine-tuned model, and both it and the measurements run
through the run's runtime like every other process. TFF's own
`build_personalization_eval_computation` does the same per client, but it
returns a reservoir sample of metrics that carries no client identities (so
`clients.csv` could not name the clients) and, being a bare computation
rather than a round, cannot run on the in-process runtime.
"""

import dataclasses
import functools
from typing import Any
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe import config as config_lib
from tffpipe.config import components as config_components
from tffpipe.learning import builder
from tffpipe.program import client_metrics
from tffpipe.program import evaluation
from tffpipe.program import sampling
from tffpipe.runtimes import registry as runtime_registry
from tffpipe.tasks import Task

PREFIX = "personalized/"
BASELINE = "baseline_"
GAIN = "gain"


@dataclasses.dataclass(frozen=True)
class Report:
    """One personalization evaluation.

    Attributes:
      metrics: distributions over clients: `personalized/<metric>_p10` (after
        fine-tuning), `personalized/baseline_<metric>_p10` (the global model
        on the same examples), `personalized/gain_mean`, ...
      clients: per client, `baseline_<metric>`, `<metric>` and `gain`.
      skipped: clients with too few examples to split.
      headline: the metric the gain is measured in.
    """

    metrics: dict[str, float]
    clients: dict[str, dict[str, float]]
    skipped: list[str]
    headline: str | None

    def describe(self, round_num: int) -> str:
        """One line: the headline metric's p10 and mean before and after, and the gain."""
        if not self.clients:
            return f"personalization at round {round_num}: no evaluation client has 2 examples to split"
        m, h = self.metrics, self.headline
        line = (
            f"personalization at round {round_num} ({len(self.clients)} clients): {h} p10 "
            f"{m[f'{PREFIX}{BASELINE}{h}_p10']:.4f} -> {m[f'{PREFIX}{h}_p10']:.4f}, mean "
            f"{m[f'{PREFIX}{BASELINE}{h}_mean']:.4f} -> {m[f'{PREFIX}{h}_mean']:.4f}, "
            f"gain mean {m[f'{PREFIX}{GAIN}_mean']:+.4f}"
        )
        if self.skipped:
            line += f"; {len(self.skipped)} client(s) with fewer than 2 examples skipped"
        return line


def split_mask(num_examples: int, fraction: float, seed: int, client_id: str) -> np.ndarray:
    """Which of a client's examples are for fine-tuning: a seeded draw of round(fraction * n).

    At least one example is on each side (a client needs 2 examples).
    """
    rng = sampling.client_rng(seed, client_id)
    chosen = min(max(1, round(fraction * num_examples)), num_examples - 1)
    mask = np.zeros(num_examples, dtype=bool)
    mask[rng.permutation(num_examples)[:chosen]] = True
    return mask


def _select(examples: tf.data.Dataset, wanted: tf.Tensor) -> tf.data.Dataset:
    return examples.enumerate().filter(lambda i, _: tf.gather(wanted, i)).map(lambda _, e: e)


def _count(batches: tf.data.Dataset) -> tf.Tensor:
    return batches.unbatch().reduce(np.int64(0), lambda n, _: n + 1)


def _split(
    batches: tf.data.Dataset, tune_mask: tf.Tensor, epochs: int, batch_size: int, eval_batch_size: int
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    examples = batches.unbatch()
    tune = _select(examples, tune_mask).repeat(epochs).batch(batch_size)
    return tune, _select(examples, tf.logical_not(tune_mask)).batch(eval_batch_size)


class Personalizer:
    """Fine-tunes the global model on each evaluation client and measures the gain."""

    def __init__(
        self,
        task: Task,
        cfg: config_lib.RunConfig,
        evaluator: evaluation.Evaluator,
        print_fn: Callable[[str], None],
    ):
        self._task = task
        self._settings = cfg.personalization
        self._seed = cfg.schedule.seed
        self._eval_batch_size = cfg.schedule.eval_batch_size
        self._evaluator = evaluator
        runtime = runtime_registry.get(cfg.runtime.name)
        process = builder.build_single_client_trainer(
            builder.build_model_fn(task),
            tff.learning.optimizers.build_sgdm(learning_rate=self._settings.learning_rate),
            runtime.loop_implementation(),
        )
        self._fine_tune = runtime.evaluation(process, config_components.runtime_context(cfg), print_fn)
        self._state = self._fine_tune.initialize()
        # Traced once: eager `unbatch`, `reduce`, `filter` and `map` register
        # new functions for every client at every evaluation, kept for good
        # (about 0.5 MiB per client and evaluation here).
        self._count = tf.function(_count)
        self._split = tf.function(
            functools.partial(
                _split,
                epochs=self._settings.epochs,
                batch_size=self._settings.batch_size,
                eval_batch_size=self._eval_batch_size,
            ),
            reduce_retracing=True,
        )

    def _parts(self, client_id: str) -> tuple[tf.data.Dataset, tf.data.Dataset] | None:
        """The client's (fine-tuning, test) datasets, batched; None below 2 examples."""
        examples = self._task.eval_dataset(client_id, self._eval_batch_size)
        count = int(self._count(examples))
        if count < 2:
            return None
        mask = split_mask(count, self._settings.split, self._seed, client_id)
        return self._split(examples, tf.constant(mask))

    def fine_tuned(self, model_weights: Any, data: tf.data.Dataset) -> Any:
        """`model_weights` after fine-tuning on `data` (already repeated and batched)."""
        state = self._fine_tune.set_model_weights(self._state, model_weights)
        return self._fine_tune.get_model_weights(self._fine_tune.next(state, [data]).state)

    def __call__(self, model_weights: Any) -> Report:
        clients, skipped = {}, []
        for client_id in self._evaluator.client_ids:
            parts = self._parts(client_id)
            if parts is None:
                skipped.append(client_id)
                continue
            tune, test = parts
            before = evaluation.strip_prefix(self._evaluator.evaluate(model_weights, [test]))
            after = before
            if self._settings.epochs > 0:
                tuned = self.fine_tuned(model_weights, tune)
                after = evaluation.strip_prefix(self._evaluator.evaluate(tuned, [test]))
            clients[client_id] = {
                **{f"{BASELINE}{k}": v for k, v in before.items() if k not in client_metrics.COUNT_METRICS},
                **after,
            }
        headline = client_metrics.headline_metric(
            client_metrics.model_metrics(
                {c: {k: v for k, v in m.items() if not k.startswith(BASELINE)} for c, m in clients.items()}
            )
        )
        if headline is not None:
            sign = 1.0 if client_metrics.higher_is_better(headline) else -1.0
            for figures in clients.values():
                figures[GAIN] = sign * (figures[headline] - figures[f"{BASELINE}{headline}"])
        return Report(client_metrics.distribution_metrics(PREFIX, clients), clients, skipped, headline)
