"""The asynchronous run of `--algorithm=fedbuff`: clients on the simulated clock, a buffer, server updates.

Events are ordered by simulated time alone (ties by the order clients
started), so a run is a pure function of its settings and seed. The `n`-th
client to start is drawn from the clients not training (seeded by the seed
and `n`), fails before reporting with `--client_dropout`, and takes the
clock's time for its examples and bytes. Its update is computed when it
starts, from the model current then; a checkpoint holds the server model,
the server optimizer's state, the buffer and every client in flight with
its update, so a resumed run continues exactly as the original would.
"""

import dataclasses
import time
from typing import Any
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe import compat
from tffpipe import config as config_lib
from tffpipe.config import components as config_components
from tffpipe.program import assembly
from tffpipe.learning import fedbuff as fedbuff_lib
from tffpipe.learning import optimizers
from tffpipe.learning import registry as algorithm_registry
from tffpipe.program import checkpoints
from tffpipe.program import evaluation
from tffpipe.program import loop
from tffpipe.program import metrics as metrics_lib
from tffpipe.program import outputs
from tffpipe.program import reports
from tffpipe.program import resume
from tffpipe.program import round_hooks
from tffpipe.program import rounds
from tffpipe.program import sampling
from tffpipe.runtimes import registry as runtime_registry
from tffpipe.tasks import Task

_TRAIN_METRICS = ("loss", "accuracy")


@dataclasses.dataclass
class _Client:
    """A client in flight: when it finishes, from which model version, its update."""

    finish: float
    order: int  # the n-th client started; breaks ties in finishing time
    client_id: str
    start_version: int
    dropped: bool
    delta: list[np.ndarray]
    examples: float
    train: dict[str, float]


def run(cfg: config_lib.RunConfig, task: Task, *, print_fn: Callable[[str], None]) -> loop.RunResult:
    """Trains `task` with FedBuff under `cfg`, resuming from the newest checkpoint if any."""
    cfg = loop.fit_to_task(cfg, task)
    settings = cfg.algorithm.fedbuff
    client_ids = list(task.train_data.client_ids)
    if settings.concurrency > len(client_ids):
        raise config_lib.ConfigError(
            f"--async_concurrency={settings.concurrency} is larger than the {len(client_ids)} training "
            f"clients of task {task.name!r}"
        )
    print_fn("building the client trainer and the evaluation process...")
    runtime = runtime_registry.get(cfg.runtime.name)
    with compat.quiet_tensorflow_errors():
        trainer, _ = assembly.build_learning_process(task, cfg, client_ids, runtime.loop_implementation())
    print_fn(
        f"algorithm fedbuff: {settings.concurrency} clients training at once, a server update every "
        f"{settings.buffer_size} arrivals, {settings.staleness} staleness weights; the buffer aggregates "
        "in the launcher (the aggregation stack does not apply)"
    )
    traffic = loop.traffic_metrics(trainer, print_fn)
    with runtime.running(trainer, config_components.runtime_context(cfg), print_fn) as runner:
        return _Run(cfg, task, runner, traffic, print_fn).train()


class _Run:
    """One FedBuff run's state and event loop."""

    def __init__(
        self,
        cfg: config_lib.RunConfig,
        task: Task,
        trainer: Any,
        traffic: dict[str, float],
        print_fn: Callable[[str], None],
    ):
        self.cfg, self.task, self.trainer, self.print_fn = cfg, task, trainer, print_fn
        self.settings = cfg.algorithm.fedbuff
        self.client_ids = list(task.train_data.client_ids)
        self.spec = loop.client_spec(cfg)
        self.clock = loop.build_clock(cfg, task, self.spec, traffic)
        self.algorithm = algorithm_registry.get(cfg.algorithm.name)
        initial = assembly.initial_weights(task, cfg)
        self.weights = [np.asarray(w) for w in initial.trainable]
        self.non_trainable = [np.asarray(w) for w in initial.non_trainable]
        self.optimizer = optimizers.build_optimizer(cfg.server_optimizer)
        specs = [tf.TensorSpec(w.shape, w.dtype) for w in self.weights]
        self.optimizer_state = _numpy(self.optimizer.initialize(specs))
        self.trainer_state = trainer.initialize()
        self.version = 0
        self.now = 0.0
        self.started = 0
        self.expected_examples = 0
        self.buffer = [np.zeros_like(w) for w in self.weights]
        self.in_flight: list[_Client] = []

    # --- clients ---------------------------------------------------------

    def _model(self) -> tff.learning.models.ModelWeights:
        return tff.learning.models.ModelWeights(trainable=list(self.weights), non_trainable=list(self.non_trainable))

    def _start_client(self) -> None:
        """Starts the next client at the current time, from the current model."""
        self.started += 1
        n = self.started
        busy = {c.client_id for c in self.in_flight}
        idle = [c for c in self.client_ids if c not in busy]
        client_id = sampling.sample_clients(idle, 1, seed=self.cfg.schedule.seed, round_num=n)[0]
        population = self.clock.population
        dropped = population.drops_out(client_id, n)
        seconds = self.clock.client_seconds(client_id)
        delta, examples, train = [np.zeros_like(w) for w in self.weights], 0.0, {}
        if not dropped:
            data = self.task.client_dataset(
                client_id, self.spec, seed=sampling.client_seed(self.cfg.schedule.seed, n, 0)
            )
            state = self.trainer.set_model_weights(self.trainer_state, self._model())
            output = self.trainer.next(state, [data])
            trained = self.trainer.get_model_weights(output.state)
            delta = [w - np.asarray(t) for w, t in zip(self.weights, trained.trainable)]
            flat = metrics_lib.flatten(output.metrics)
            examples = float(flat.get("train/num_examples", 0))
            train = {m: float(flat[f"train/{m}"]) for m in _TRAIN_METRICS if f"train/{m}" in flat}
        self.in_flight.append(_Client(self.now + seconds, n, client_id, self.version, dropped, delta, examples, train))

    def _next_update(self) -> dict[str, float]:
        """Runs events until the buffer holds `--async_buffer_size` updates; applies them."""
        arrivals: list[Any] = []
        staleness: list[int] = []
        dropped = 0
        started_at = self.now
        while len(arrivals) < self.settings.buffer_size:
            client = min(self.in_flight, key=lambda c: (c.finish, c.order))
            self.in_flight.remove(client)
            self.now = client.finish
            if client.dropped:
                dropped += 1
            else:
                lag = self.version - client.start_version
                weight = fedbuff_lib.staleness_weight(self.settings.staleness, lag)
                self.buffer = [b + weight * d for b, d in zip(self.buffer, client.delta)]
                arrivals.append(client)
                staleness.append(lag)
            if len(arrivals) == self.settings.buffer_size:
                self._apply_buffer()
            self._start_client()
        examples = sum(c.examples for c in arrivals)
        self.expected_examples = sum(self.clock.examples(c.client_id) for c in arrivals)
        figures = {
            "sim/round_sec": self.now - started_at,
            "sim/elapsed_sec": self.now,
            "clients/reported": float(len(arrivals)),
            "clients/dropped": float(dropped),
            "clients/late": 0.0,
            "async/staleness_mean": float(np.mean(staleness)),
            "async/staleness_max": float(np.max(staleness)),
            "train/num_examples": examples,
        }
        for m in _TRAIN_METRICS:
            if all(m in c.train for c in arrivals) and examples:
                figures[f"train/{m}"] = sum(c.train[m] * c.examples for c in arrivals) / examples
        return figures

    def _apply_buffer(self) -> None:
        """The server optimizer applies the buffer's mean (its gradient, in TFF's sign)."""
        gradient = [tf.constant(b / self.settings.buffer_size) for b in self.buffer]
        state, weights = self.optimizer.next(
            _tensors(self.optimizer_state), [tf.constant(w) for w in self.weights], gradient
        )
        self.optimizer_state = _numpy(state)
        self.weights = [np.asarray(w) for w in weights]
        self.buffer = [np.zeros_like(w) for w in self.weights]
        self.version += 1

    def train_round(self, round_num: int) -> rounds.Round:
        """One server update: the events until the buffer is full."""
        round_start = time.monotonic()
        metrics = self._next_update()
        metrics[loop.TRAIN_SEC] = time.monotonic() - round_start
        return rounds.Round(round_num, metrics, model=self._model(), expected_examples=self.expected_examples)

    # --- checkpoints ---------------------------------------------------------

    def state(self) -> dict[str, Any]:
        clients = sorted(self.in_flight, key=lambda c: c.order)
        return {
            "weights": self.weights,
            "optimizer": self.optimizer_state,
            "scalars": np.array([self.version, self.started], np.int64),
            "now": np.array(self.now, np.float64),
            "clients": {
                "finish": np.array([c.finish for c in clients], np.float64),
                "order": np.array([c.order for c in clients], np.int64),
                "start_version": np.array([c.start_version for c in clients], np.int64),
                "dropped": np.array([c.dropped for c in clients], np.int64),
                "examples": np.array([c.examples for c in clients], np.float64),
                "train": np.array([[c.train.get(m, np.nan) for m in _TRAIN_METRICS] for c in clients], np.float64),
                "index": np.array([self.client_ids.index(c.client_id) for c in clients], np.int64),
                "deltas": [c.delta for c in clients],
            },
        }

    def _restore(self, saved: dict[str, Any]) -> None:
        self.weights = [np.asarray(w) for w in saved["weights"]]
        self.optimizer_state = _numpy(saved["optimizer"])
        self.version, self.started = (int(v) for v in np.asarray(saved["scalars"]))
        self.now = float(np.asarray(saved["now"]))
        c = saved["clients"]
        self.in_flight = [
            _Client(
                float(c["finish"][i]),
                int(c["order"][i]),
                self.client_ids[int(c["index"][i])],
                int(c["start_version"][i]),
                bool(c["dropped"][i]),
                [np.asarray(d) for d in c["deltas"][i]],
                float(c["examples"][i]),
                {m: float(v) for m, v in zip(_TRAIN_METRICS, np.asarray(c["train"][i])) if not np.isnan(v)},
            )
            for i in range(len(c["order"]))
        ]

    # --- the run -------------------------------------------------------------

    def train(self) -> loop.RunResult:
        cfg, schedule = self.cfg, self.cfg.schedule
        paths = outputs.RunPaths(cfg.output.run_dir)
        ckpt = checkpoints.CheckpointManager(
            paths.checkpoints, keep=cfg.output.keep_checkpoints, fingerprint=cfg.fingerprint()
        )
        outputs.remove_leftover_temporaries(paths)
        # The saved structure: as many clients in flight as --async_concurrency.
        self.in_flight = [
            _Client(0.0, 0, self.client_ids[0], 0, False, [np.zeros_like(w) for w in self.weights], 0.0, {})
            for _ in range(self.settings.concurrency)
        ]
        restored = resume.restore(ckpt, self.state(), paths, self.print_fn)
        start_round = 0
        if restored is not None:
            start_round = restored.round_num
            self._restore(restored.learning_state)
        else:
            self.in_flight = []
            for _ in range(self.settings.concurrency):
                self._start_client()
        log = resume.open_records(paths, cfg, start_round if restored is not None else None, self.print_fn)
        reports_hook = round_hooks.EvaluationHook(reports.Reports(self.task, cfg, paths, self.print_fn))
        watch = round_hooks.DivergenceHook(
            loop.divergence_context(cfg, self.algorithm), schedule.on_divergence == "stop"
        )
        hooks: list[rounds.Hook] = [watch, reports_hook]
        hooks += round_hooks.standard_hooks(log, ckpt, cfg.output.checkpoint_every)
        rounds.RoundLoop(self, hooks, start_round, schedule.rounds, self.print_fn).run()
        rounds_done = max(start_round, schedule.rounds)
        final = reports_hook.reports.final_evaluation(rounds_done, self._model())
        outputs.export_keras_model(assembly.keras_model(self.task, cfg, self._model()), paths.export)
        return loop.RunResult(
            rounds_done=rounds_done,
            resumed_from=start_round,
            final_eval={k: v for k, v in final.metrics.items() if k.startswith(evaluation.EVAL_PREFIX)},
            model_weights=self._model(),
            final_clients=final.clients,
            diverged_rounds=tuple(watch.diverged),
        )


def _numpy(structure: Any) -> Any:
    return tf.nest.map_structure(np.asarray, structure)


def _tensors(structure: Any) -> Any:
    return tf.nest.map_structure(tf.constant, structure)
