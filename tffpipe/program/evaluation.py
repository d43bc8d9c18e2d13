"""Held-out evaluation of model weights: the federated figure and each client's own.

Every evaluation runs the task's TFF evaluation process (`build_fed_eval`)
through the run's runtime twice over the same seeded sample of evaluation
clients: once on all of them together (the `eval/...` figures: metrics summed
over clients, then finalized, as TFF does) and once per client, whose
figures are exactly those of evaluating that client alone. The per-client
figures give the distribution over clients (`eval_clients/...`) and the rows
of `results/clients.csv`.
"""

import dataclasses
from typing import Any
from collections.abc import Callable

from tffpipe import config as config_lib
from tffpipe.config import components as config_components
from tffpipe.program import assembly
from tffpipe.program import client_metrics
from tffpipe.program import client_sources
from tffpipe.program import metrics as metrics_lib
from tffpipe.program import sampling
from tffpipe.runtimes import registry as runtime_registry
from tffpipe.tasks import Task

EVAL_PREFIX = "eval/"
CLIENTS_PREFIX = "eval_clients/"


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluation's figures.

    Attributes:
      metrics: `eval/<metric>` over all evaluated clients together, the
        distribution over clients (`eval_clients/<metric>_p10`, ...) and,
        under a backdoor attack, `eval/backdoor_success`.
      clients: each evaluated client's own metrics (`{client id: {metric: value}}`).
    """

    metrics: dict[str, float]
    clients: dict[str, dict[str, float]]


def sample_eval_clients(task: Task, cfg: config_lib.RunConfig) -> list[str]:
    """The seeded sample of at most `--eval_clients` evaluation clients, the same every time."""
    ids = list(task.eval_data.client_ids)
    wanted = cfg.schedule.eval_clients
    if wanted and wanted < len(ids):
        ids = sampling.sample_clients(ids, wanted, seed=cfg.schedule.seed, round_num=0)
    return ids


def strip_prefix(metrics: dict[str, float]) -> dict[str, float]:
    return {k[len(EVAL_PREFIX) :]: v for k, v in metrics.items() if k.startswith(EVAL_PREFIX)}


class Evaluator:
    """Federated evaluation of model weights on the task's evaluation clients.

    Datasets are built per call, so nothing is held between evaluations.
    """

    def __init__(
        self,
        task: Task,
        cfg: config_lib.RunConfig,
        print_fn: Callable[[str], None],
        triggered: Callable[[Any], Any] | None = None,
    ):
        self._triggered = triggered
        self._task = task
        self._source = client_sources.EvalSource(client_sources.TaskRecipe.of(cfg), cfg.schedule.eval_batch_size)
        self.client_ids = sample_eval_clients(task, cfg)
        runtime = runtime_registry.get(cfg.runtime.name)
        self._process = runtime.evaluation(
            assembly.build_evaluation_process(task, runtime.loop_implementation(), cfg),
            config_components.runtime_context(cfg),
            print_fn,
        )
        self._state = self._process.initialize()

    def evaluate(self, model_weights, datasets) -> dict[str, float]:
        """`eval/<metric>` of `model_weights` on `datasets` (one per client) together."""
        state = self._process.set_model_weights(self._state, model_weights)
        output = self._process.next(state, client_sources.for_process(self._process, datasets))
        return metrics_lib.eval_metrics(output.metrics)

    def __call__(self, model_weights) -> Evaluation:
        datasets = client_sources.ClientDatasets(self._source, self.client_ids, self._task)
        found = self.evaluate(model_weights, datasets)
        clients = {
            cid: strip_prefix(self.evaluate(model_weights, datasets[i : i + 1]))
            for i, cid in enumerate(self.client_ids)
        }
        found.update(client_metrics.distribution_metrics(CLIENTS_PREFIX, clients))
        if self._triggered is not None:
            # The same clients' examples of other classes, carrying the
            # backdoor's trigger and labelled with its target: their accuracy
            # is the share the backdoor turns.
            triggered = self.evaluate(model_weights, [self._triggered(datasets[i]) for i in range(len(datasets))])
            found["eval/backdoor_success"] = triggered["eval/accuracy"]
        return Evaluation(found, clients)
