"""Program logic: the round loop with sampling, evaluation, checkpoints and outputs.

Never reads flags: everything comes from a `RunConfig`. A rerun with the same
config continues from the newest readable checkpoint.
"""

import dataclasses
import time
from typing import Any
from collections.abc import Callable

from absl import logging
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe import compat
from tffpipe import config as config_lib
from tffpipe.config import components as config_components
from tffpipe import errors
from tffpipe.aggregation.protocols import registry as secure_protocols
from tffpipe.attacks import simulation as attack_simulation
from tffpipe.learning import registry as algorithm_registry
from tffpipe.privacy import tracking as privacy_tracking
from tffpipe.program import assembly
from tffpipe.program import checkpoints
from tffpipe.program import client_sources
from tffpipe.program import clock as clock_lib
from tffpipe.program import client_metrics
from tffpipe.program import communication
from tffpipe.program import divergence
from tffpipe.program import evaluation
from tffpipe.program import files
from tffpipe.program import metrics as metrics_lib
from tffpipe.program import outputs
from tffpipe.program import records
from tffpipe.program import reports
from tffpipe.program import resume
from tffpipe.program import round_hooks
from tffpipe.program import rounds
from tffpipe.program import sampling
from tffpipe.runtimes import registry as runtime_registry
from tffpipe.tasks import ClientSpec, Task


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a finished run reports.

    Attributes:
      rounds_done: rounds in the final state.
      resumed_from: the checkpoint round this invocation started from.
      final_eval: held-out metrics of the final model (over all evaluated
        clients together).
      final_clients: each evaluation client's own metrics of the final model.
      model_weights: the final global model weights.
      epsilon: the privacy spent (DP runs), else None.
      stopped_early: why the run stopped before `--rounds`, else None.
      diverged_rounds: rounds that diverged under `--on_divergence=warn`.
    """

    rounds_done: int
    resumed_from: int
    final_eval: dict[str, float]
    model_weights: tff.learning.models.ModelWeights
    epsilon: float | None = None
    stopped_early: str | None = None
    final_clients: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    diverged_rounds: tuple[int, ...] = ()

    @property
    def worst_served(self) -> str:
        """One line naming the worst-served tenth of the evaluation clients."""
        return client_metrics.worst_decile_line(self.final_clients)


def fit_to_task(cfg: config_lib.RunConfig, task: Task) -> config_lib.RunConfig:
    """Resolves and checks the settings that depend on the built task.

    An unset `clients_per_round` becomes `DEFAULT_CLIENTS_PER_ROUND`, or every
    training client when the task has fewer (cross-silo tasks).

    Raises:
      ConfigError: with a one-line reason.
    """
    num_train = len(task.train_data.client_ids)
    clients = cfg.schedule.clients_per_round
    if clients is None:
        clients = min(config_lib.DEFAULT_CLIENTS_PER_ROUND, num_train)
        cfg = dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, clients_per_round=clients))
    if clients > num_train:
        raise config_lib.ConfigError(
            f"--clients_per_round={clients} is larger than the {num_train} training clients of task {task.name!r}"
        )
    sampled = clock_lib.cohort(clients, cfg.clock.over_selection)
    if sampled > num_train:
        raise config_lib.ConfigError(
            f"--over_selection={cfg.clock.over_selection:g} samples {sampled} clients a round, more "
            f"than the {num_train} training clients of task {task.name!r}"
        )
    return cfg


def describe_run(cfg: config_lib.RunConfig, task: Task) -> str:
    """The run's first line: clients, evaluation, rounds and output folder."""
    num_eval = len(task.eval_data.client_ids)
    kind = "held-out" if task.eval_split == "held_out_clients" else "test-split"
    used = cfg.schedule.eval_clients
    evaluation = (
        f"evaluation on {used:,} of {num_eval:,} {kind} clients"
        if used and used < num_eval
        else f"{num_eval:,} {kind} evaluation clients"
    )
    return (
        f"task {task.name}: {len(task.train_data.client_ids):,} training clients, "
        f"{evaluation}; {cfg.schedule.rounds} rounds of {cfg.schedule.clients_per_round} "
        f"clients; outputs in {cfg.output.run_dir}"
    )


def client_spec(cfg: config_lib.RunConfig) -> ClientSpec:
    c = cfg.client
    return ClientSpec(
        num_epochs=c.epochs,
        batch_size=c.batch_size,
        max_elements=c.max_elements or None,
        shuffle_buffer_size=c.shuffle_buffer,
    )


def run(
    cfg: config_lib.RunConfig,
    task: Task,
    *,
    print_fn: Callable[[str], None] = lambda line: print(line, flush=True),
) -> RunResult:
    """Trains `task` under `cfg`, resuming from the newest checkpoint if any.

    Args:
      cfg: the run's settings.
      task: the task built from `cfg.task`.
      print_fn: receives the progress lines.

    Returns:
      The run's final round count, starting round, held-out metrics and weights.

    Raises:
      UserError: settings that do not fit the task, checkpoints that exist but
        cannot be resumed from, a process the runtime cannot run, workers that
        do not answer.
    """
    cfg = fit_to_task(cfg, task)
    schedule = cfg.schedule
    print_fn("building the federated learning and evaluation processes...")
    client_ids = list(task.train_data.client_ids)
    runtime = runtime_registry.get(cfg.runtime.name)
    with compat.quiet_tensorflow_errors():
        process, stack = assembly.build_learning_process(task, cfg, client_ids, runtime.loop_implementation())
    print_fn(f"algorithm {cfg.algorithm.name}, client weighting {cfg.client_weighting}")
    print_fn(stack.describe())
    simulation = None
    if cfg.attack.name != "none":
        simulation = attack_simulation.Simulation(cfg.attack.name, config_components.attack_context(cfg), task)
        print_fn(simulation.describe())
    traffic = traffic_metrics(process, print_fn, secure_protocols.upload_bytes(cfg.aggregation.secure))
    tracker = None
    if stack.dp_layer is not None:
        tracker = privacy_tracking.PrivacyTracker(cfg, stack, client_ids)
        if stack.noise_from_target:
            print_fn(
                f"privacy: noise multiplier {stack.noise_multiplier:.4f} solved for "
                f"--dp_target_epsilon={cfg.privacy.target_epsilon:g} after "
                f"{schedule.rounds} rounds"
            )
        for line in tracker.notes(schedule.rounds):
            print_fn(line)
    with runtime.running(process, config_components.runtime_context(cfg), print_fn) as runner:
        try:
            return _train(cfg, task, runner, tracker, traffic, simulation, print_fn)
        except (OSError, tf.errors.OpError) as e:
            if not files.is_disk_full(e):
                raise
            raise DiskFull(_disk_full_message(cfg.output.run_dir, e)) from e


class DiskFull(errors.UserError, OSError):
    """The disk holding the run folder is full; what was saved stays whole."""


def _disk_full_message(run_dir: str, error: BaseException) -> str:
    where = getattr(error, "filename", None) or run_dir
    newest = checkpoints.newest_round(outputs.RunPaths(run_dir).checkpoints)
    intact = (
        f"the checkpoint of round {newest} is intact" if newest is not None else "no checkpoint had been written yet"
    )
    return f"no space left on the device holding {where}; {intact}: free space and rerun the same command to resume"


def _train(
    cfg: config_lib.RunConfig,
    task: Task,
    process: Any,
    tracker: privacy_tracking.PrivacyTracker | None,
    traffic_metrics: dict[str, float],
    simulation: attack_simulation.Simulation | None,
    print_fn: Callable[[str], None],
) -> RunResult:
    """The rounds, from the newest checkpoint on, in the current TFF context."""
    schedule = cfg.schedule
    paths = outputs.RunPaths(cfg.output.run_dir)
    client_ids = list(task.train_data.client_ids)
    algorithm = algorithm_registry.get(cfg.algorithm.name)
    state = process.set_model_weights(process.initialize(), assembly.initial_weights(task, cfg))
    ckpt = checkpoints.CheckpointManager(
        paths.checkpoints, keep=cfg.output.keep_checkpoints, fingerprint=cfg.fingerprint()
    )
    removed = outputs.remove_leftover_temporaries(paths)
    if removed:
        logging.info("removed what interrupted writes left: %s", ", ".join(removed))
    restored = resume.restore(ckpt, state, paths, print_fn)
    start_round = 0
    if restored is not None:
        start_round = restored.round_num
        state = resume.with_current_hparams(process, state, restored.learning_state)
        if tracker is not None:
            tracker.restore(start_round, state)
    log = resume.open_records(
        paths,
        cfg,
        start_round if restored is not None else None,
        print_fn,
        {"attackers": simulation.attackers} if simulation is not None else None,
    )

    spec = client_spec(cfg)
    source = client_sources.TrainSource(
        client_sources.TaskRecipe.of(cfg), spec, cfg if simulation is not None else None
    )
    clock = build_clock(cfg, task, spec, traffic_metrics)
    clock.elapsed_sec = _elapsed_at(
        paths, start_round, lambda r: clock.plan(r, _sampled(client_ids, clock, schedule, r))
    )
    training = _SynchronousRounds(
        process, state, task, client_ids, clock, schedule, source, simulation, print_fn, algorithm.counts_each_example
    )
    reports_hook = round_hooks.EvaluationHook(
        reports.Reports(task, cfg, paths, print_fn, simulation.triggered_eval() if simulation else None)
    )
    watch = round_hooks.DivergenceHook(divergence_context(cfg, algorithm), schedule.on_divergence == "stop")
    hooks: list[rounds.Hook] = [round_hooks.ClockHook(clock), rounds.Metrics(traffic_metrics)]
    if simulation is not None:
        hooks.append(round_hooks.AttackHook(simulation))
    if tracker is not None:
        hooks.append(round_hooks.PrivacyHook(tracker))
    hooks += [watch, reports_hook]
    hooks += round_hooks.standard_hooks(log, ckpt, cfg.output.checkpoint_every)
    run = rounds.RoundLoop(training, hooks, start_round, schedule.rounds, print_fn)
    run.run()

    rounds_done = run.rounds_done
    weights = process.get_model_weights(training.state())
    if start_round >= schedule.rounds:
        print_fn(f"{paths.run_dir} already holds {start_round} rounds (--rounds={schedule.rounds})")
    final = reports_hook.reports.final_evaluation(rounds_done, weights)
    outputs.export_keras_model(assembly.keras_model(task, cfg, weights), paths.export)
    logging.info("exported the final model to %s", paths.export)
    if tracker is not None:
        print_fn(tracker.summary(rounds_done))
    return RunResult(
        rounds_done=rounds_done,
        resumed_from=start_round,
        final_eval={k: v for k, v in final.metrics.items() if k.startswith(evaluation.EVAL_PREFIX)},
        model_weights=weights,
        epsilon=tracker.epsilon if tracker else None,
        stopped_early=run.stopped_early,
        final_clients=final.clients,
        diverged_rounds=tuple(watch.diverged),
    )


class _SynchronousRounds:
    """The synchronous rounds of a TFF learning process: sample, plan on the clock, build data, `next`."""

    def __init__(
        self,
        process: Any,
        state: Any,
        task: Task,
        client_ids: list[str],
        clock: clock_lib.Clock,
        schedule: config_lib.ScheduleConfig,
        source: client_sources.TrainSource,
        simulation: attack_simulation.Simulation | None,
        print_fn: Callable[[str], None],
        count_examples: bool,
    ):
        """`count_examples`: whether rounds count the examples their clients should train (divergence checks)."""
        self._process, self._state, self._task = process, state, task
        self._client_ids, self._clock, self._schedule = client_ids, clock, schedule
        self._source, self._simulation, self._print_fn = source, simulation, print_fn
        self._count_examples = count_examples

    def state(self) -> Any:
        return self._state

    def train_round(self, round_num: int) -> rounds.Round:
        schedule = self._schedule
        sampled = _sampled(self._client_ids, self._clock, schedule, round_num)
        plan = self._clock.plan(round_num, sampled)
        # Seeds by position in the sample: a client's data does not depend on who else reports.
        reporting = set(plan.reporting)
        chosen = [
            (cid, sampling.client_seed(schedule.seed, round_num, i))
            for i, cid in enumerate(sampled)
            if cid in reporting
        ]
        datasets = client_sources.ClientDatasets(self._source, chosen, self._task, self._simulation)
        train_start = time.monotonic()
        round_metrics: dict[str, float] = {}
        aggregator_metrics: Any = {}  # a round no client reported has none
        if datasets:
            output = _next(self._process, self._state, datasets, [cid for cid, _ in chosen], round_num)
            self._state = output.state
            round_metrics = metrics_lib.flatten(output.metrics)
            aggregator_metrics = output.metrics.get("aggregator", {})
        else:
            self._print_fn(f"round {round_num}: no sampled client reported; the model is unchanged")
        round_metrics[TRAIN_SEC] = time.monotonic() - train_start
        return rounds.Round(
            number=round_num,
            metrics=round_metrics,
            model=self._process.get_model_weights(self._state),
            trained=bool(datasets),
            expected_examples=sum(self._clock.examples(cid) for cid, _ in chosen) if self._count_examples else None,
            details=round_hooks.RoundDetails(plan, self._state, aggregator_metrics),
        )


# The training call alone (`process.next`); `round_time_sec` is the whole round.
TRAIN_SEC = "round/train_sec"


class ClientFailed(errors.UserError, RuntimeError):
    """A client's work raised during a round; the message names the client."""


def _next(process, state, datasets, client_ids: list[str], round_num: int):
    """`process.next`, with a failing client named by its id (runtimes that know which one failed)."""
    try:
        return process.next(state, client_sources.for_process(process, datasets))
    except errors.UserError as e:
        index = getattr(e, "index", None)
        if index is None or not 0 <= index < len(client_ids):
            raise
        raise ClientFailed(f"round {round_num}: the work of client {client_ids[index]} failed: {e}") from e


def divergence_context(cfg: config_lib.RunConfig, algorithm) -> divergence.Context:
    """What the divergence check names and counts for this run."""
    rates = {"client_learning_rate": cfg.client_optimizer.learning_rate} if algorithm.uses_client_optimizer else {}
    rates["server_learning_rate"] = cfg.server_optimizer.learning_rate
    return divergence.Context(rates, algorithm.counts_each_example)


def _elapsed_at(paths: outputs.RunPaths, round_num: int, plan_of: Callable[[int], clock_lib.RoundPlan]) -> float:
    """The simulated time after `round_num` rounds: as recorded, else replayed.

    The reconciled `metrics.csv` holds it; without that row (records lost),
    the rounds' plans are replayed, which counts the examples of every client
    they sampled.
    """
    if round_num == 0:
        return 0.0
    try:
        _, rows = records.read_metrics_csv(paths.metrics_csv)
        return float(rows[round_num][outputs.SIM_ELAPSED])
    except (OSError, KeyError, ValueError, records.UnreadableRecords):
        return sum(plan_of(r).round_sec for r in range(1, round_num + 1))


def _sampled(client_ids, clock, schedule, round_num: int) -> list[str]:
    """The round's sampled clients: a pure function of the seed and the round."""
    return sampling.sample_clients(client_ids, clock.cohort, seed=schedule.seed, round_num=round_num)


def build_clock(cfg, task: Task, spec: ClientSpec, traffic_metrics: dict[str, float]) -> clock_lib.Clock:
    """The run's simulated clock; a client's examples per round are counted once."""
    counted: dict[str, int] = {}

    def examples_of(client_id: str) -> int:
        if client_id not in counted:
            counted[client_id] = spec.num_epochs * task.client_examples(client_id, spec.max_elements)
        return counted[client_id]

    try:
        return clock_lib.Clock(
            cfg.clock,
            cfg.schedule.seed,
            list(task.train_data.client_ids),
            examples_of,
            download_bytes=traffic_metrics.get("comm/download_bytes_per_client", 0.0),
            upload_bytes=traffic_metrics.get("comm/upload_bytes_per_client", 0.0),
            clients_per_round=cfg.schedule.clients_per_round,
        )
    except clock_lib.ClockError as e:
        raise config_lib.ConfigError(str(e)) from e


def traffic_metrics(process, print_fn: Callable[[str], None], secure_upload=None) -> dict[str, float]:
    """Prints and returns the bytes each client sends and receives per round.

    Args:
      process: the learning process.
      print_fn: where the line goes.
      secure_upload: the run's secure protocol's upload size (see
        `communication.client_traffic`).
    """
    try:
        traffic = communication.client_traffic(process, secure_upload)
    except Exception as e:
        # The sizes are a report, not a requirement: never fail a run on them.
        print_fn(f"traffic per client: not derivable ({type(e).__name__}: {e})")
        return {}
    print_fn(traffic.describe())
    return {
        "comm/download_bytes_per_client": float(traffic.download_bytes),
        "comm/upload_bytes_per_client": float(traffic.upload_bytes),
    }
