"""What a run measures after a round: held-out evaluation and personalization, recorded.

Shared by the synchronous round loop (`loop.py`) and the asynchronous one
(`fedbuff.py`): every `--eval_every` rounds and after the last, the held-out
evaluation (federated and per client, `evaluation.py`); every
`--personalize_every` rounds and after the last, the personalization
evaluation (`personalization.py`); their per-client rows go to
`results/clients.csv`.
"""

from typing import Any
from collections.abc import Callable

from tffpipe import config as config_lib
from tffpipe.program import client_metrics
from tffpipe.program import clients_csv
from tffpipe.program import evaluation
from tffpipe.program import outputs
from tffpipe.program import personalization
from tffpipe.tasks import Task


class Reports:
    """Runs the evaluations due after each round and records them.

    Attributes:
      final: the newest held-out evaluation.
      evaluated_round: the round it measured, or None.
    """

    def __init__(
        self,
        task: Task,
        cfg: config_lib.RunConfig,
        paths: outputs.RunPaths,
        print_fn: Callable[[str], None],
        triggered: Callable[[Any], Any] | None = None,
    ):
        self._schedule = cfg.schedule
        self._personalize_every = cfg.personalization.every
        self._print = print_fn
        self._evaluator = evaluation.Evaluator(task, cfg, print_fn, triggered)
        self._personalizer = (
            personalization.Personalizer(task, cfg, self._evaluator, print_fn) if self._personalize_every else None
        )
        self._clients_log = clients_csv.ClientsLog(paths.clients_csv)
        self.final = evaluation.Evaluation({}, {})
        self.evaluated_round: int | None = None

    def after_round(self, round_num: int, model_weights: Any) -> tuple[dict[str, float], dict[str, list[float]]]:
        """The round's evaluation metrics and TensorBoard histograms (empty when none is due)."""
        is_last = round_num == self._schedule.rounds
        found, histograms = {}, {}
        every = self._schedule.eval_every
        if is_last or (every and round_num % every == 0):
            self.final = self._evaluator(model_weights)
            self.evaluated_round = round_num
            found.update(self.final.metrics)
            histograms.update(client_metrics.histograms(evaluation.CLIENTS_PREFIX, self.final.clients))
            self._clients_log.record(round_num, self.final.clients)
        if self._personalizer is not None and (is_last or round_num % self._personalize_every == 0):
            report = self._personalizer(model_weights)
            found.update(report.metrics)
            histograms.update(client_metrics.histograms(personalization.PREFIX, report.clients))
            self._clients_log.record(round_num, report.clients, prefix=personalization.PREFIX)
            self._print(report.describe(round_num))
        return found, histograms

    def final_evaluation(self, rounds_done: int, model_weights: Any) -> evaluation.Evaluation:
        """The held-out evaluation of the final model (evaluated again only if it was not)."""
        if self.evaluated_round != rounds_done:  # resumed at the end, or stopped early
            self.final = self._evaluator(model_weights)
        return self.final
