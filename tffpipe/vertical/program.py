"""A vertical run: alignment, epochs of split-model training, evaluation, checkpoints, outputs.

The same run folder as a horizontal run (`config.json`, `checkpoints/`,
`logdir/`, `results/metrics.csv`, `export/`), the same resume (the newest
readable checkpoint, settings fingerprint checked, records reconciled) and
the same progress line. A round of a vertical task is one epoch over the
aligned training rows in batches of `--client_batch_size`; the rows' order
in each epoch and every party's noise come from `--seed`, so a resumed run
reaches the same weights as an uninterrupted one.
"""

import dataclasses
import os
from typing import Any
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tffpipe import config as config_lib
from tffpipe.errors import ConfigError
from tffpipe.learning import optimizers
from tffpipe.program import checkpoints
from tffpipe.program import files
from tffpipe.program import outputs
from tffpipe.program import resume
from tffpipe.program import round_hooks
from tffpipe.program import rounds
from tffpipe.tasks import vertical as vertical_task
from tffpipe.vertical import parties as parties_lib
from tffpipe.vertical import protocol
from tffpipe.vertical import psi

# The settings a vertical run reads besides the `vertical` group; every other
# setting belongs to horizontal training and must stay at its default.
SHARED_FLAGS = frozenset(
    {
        "task",
        "rounds",
        "seed",
        "data_dir",
        "eval_every",
        "eval_batch_size",
        "client_batch_size",
        "client_optimizer",
        "client_learning_rate",
        "client_momentum",
        "client_beta_1",
        "client_beta_2",
        "client_epsilon",
        "root_dir",
        "experiment_name",
        "checkpoint_every",
        "keep_checkpoints",
    }
)


@dataclasses.dataclass(frozen=True)
class VerticalRunResult:
    """What a finished vertical run reports.

    Attributes:
      rounds_done: epochs in the final state.
      resumed_from: the checkpoint epoch this invocation started from.
      final_eval: held-out metrics of the final models.
      model: the assembled Keras model (a dict of each party's features in).
      epsilon: always None (no differential privacy here).
    """

    rounds_done: int
    resumed_from: int
    final_eval: dict[str, float]
    model: tf.keras.Model
    epsilon: float | None = None


def check_settings(cfg: config_lib.RunConfig, task_name: str, vertical: bool) -> None:
    """Refuses settings that do not apply to the task's kind.

    A vertical task takes `SHARED_FLAGS` and the `--vertical_*` settings; a
    horizontal one takes everything but the `--vertical_*` settings. A setting
    counts as given when its value differs from its default.

    Raises:
      ConfigError: naming the first setting that does not apply.
    """
    from tffpipe import settings

    for flag, item in settings.by_flag(config_lib.RunConfig).items():
        value = settings.get(cfg, item.path)
        if value == item.default:
            continue
        is_vertical_setting = item.spec.group == "vertical"
        if vertical and not is_vertical_setting and flag not in SHARED_FLAGS:
            raise ConfigError(
                f"--{flag} applies to horizontal tasks; {task_name!r} is a vertical task "
                "(its parties hold different features of the same people)"
            )
        if not vertical and is_vertical_setting:
            raise ConfigError(f"--{flag} applies to vertical tasks; {task_name!r} is a horizontal task")


def combine_of(cfg: config_lib.RunConfig, task: vertical_task.VerticalTask) -> str:
    """The combine in effect (`--vertical_combine`, or the task's own).

    Raises:
      ConfigError: `sum` with bottom models of different widths.
    """
    combine = task.combine if cfg.vertical.combine == "task" else cfg.vertical.combine
    widths = task.embedding_widths()
    if combine == "sum" and len(set(widths.values())) > 1:
        raise ConfigError(
            f"--vertical_combine=sum adds the embeddings, but the parties' bottom models of "
            f"task {task.name!r} have different widths {widths}; use --vertical_combine=concat"
        )
    return combine


def describe_run(cfg: config_lib.RunConfig, task: vertical_task.VerticalTask) -> str:
    names = ", ".join(f"{p.name} ({p.features.shape[1]} features, {len(p.ids):,} people)" for p in task.parties)
    return (
        f"task {task.name}: vertical, parties {names}; {task.active.name} holds the labels; "
        f"{cfg.schedule.rounds} rounds (one epoch each); outputs in {cfg.output.run_dir}"
    )


def run(
    cfg: config_lib.RunConfig, task: vertical_task.VerticalTask, *, print_fn: Callable[[str], None] = print
) -> VerticalRunResult:
    """Aligns the parties' samples, trains (or resumes) and exports.

    Raises:
      UserError: settings that do not fit the task, no shared samples,
        unreadable or mismatched checkpoints.
    """
    combine = combine_of(cfg, task)
    seed = cfg.schedule.seed
    alignment = psi.align(
        {p.name: p.ids for p in task.parties},
        task.active.name,
        test_fraction=task.test_fraction,
        seed=seed,
        print_fn=print_fn,
    )
    for (labels_holder, passive), size in alignment.pair_sizes.items():
        print_fn(f"private set intersection: {labels_holder} and {passive} share {size:,} people")
    print_fn(
        f"aligned {len(alignment.train_ids) + len(alignment.test_ids):,} people held by every party: "
        f"{len(alignment.train_ids):,} to train on, {len(alignment.test_ids):,} held out; "
        "alignment messages: " + ", ".join(f"{n} sent {b:,} bytes" for n, b in alignment.sent_bytes.items())
    )
    print_fn(
        "combine: "
        + (
            "secure sum of the embeddings (pairwise masks; the active party sees only the total)"
            if combine == "sum"
            else "concatenation (the active party sees each party's embedding)"
        )
        + (
            f"; passive parties add Gaussian noise of std {cfg.vertical.embedding_noise:g} to what they send"
            if cfg.vertical.embedding_noise
            else ""
        )
    )
    active, passives = _build_parties(cfg, task, alignment, combine)
    everyone = [active, *passives]
    return _train(cfg, task, active, passives, everyone, combine, print_fn)


def _build_parties(
    cfg: config_lib.RunConfig, task: vertical_task.VerticalTask, alignment: psi.Alignment, combine: str
) -> tuple[parties_lib.ActiveParty, list[parties_lib.BottomParty]]:
    tf.keras.utils.set_random_seed(cfg.schedule.seed)
    optimizer = optimizers.build_optimizer(cfg.client_optimizer)
    active = parties_lib.ActiveParty(
        task.active,
        task.labels,
        task.top_model_fn(task.combined_width(combine)),
        task.loss_builder(),
        task.metrics_builder(),
        alignment.train_ids,
        alignment.test_ids,
        optimizer,
        optimizer,
        0.0,  # the active party's own embedding never leaves it
        cfg.schedule.seed,
    )
    passives = [
        parties_lib.BottomParty(
            party, alignment.train_ids, alignment.test_ids, optimizer, cfg.vertical.embedding_noise, cfg.schedule.seed
        )
        for party in task.parties[1:]
    ]
    return active, passives


def _state(everyone) -> dict[str, Any]:
    return {party.name: party.state() for party in everyone}


def _train(
    cfg: config_lib.RunConfig,
    task: vertical_task.VerticalTask,
    active: parties_lib.ActiveParty,
    passives: list[parties_lib.BottomParty],
    everyone: list[parties_lib.BottomParty],
    combine: str,
    print_fn: Callable[[str], None],
) -> VerticalRunResult:
    schedule = cfg.schedule
    paths = outputs.RunPaths(cfg.output.run_dir)
    ckpt = checkpoints.CheckpointManager(
        paths.checkpoints, keep=cfg.output.keep_checkpoints, fingerprint=cfg.fingerprint()
    )
    outputs.remove_leftover_temporaries(paths)
    restored = resume.restore(ckpt, _state(everyone), paths, print_fn)
    start = 0
    if restored is not None:
        start = restored.round_num
        for party in everyone:
            party.load_state(restored.learning_state[party.name])
    log = resume.open_records(paths, cfg, start if restored is not None else None, print_fn)
    training = _Epochs(active, passives, everyone, combine, schedule.seed, cfg.client.batch_size)
    held_out = _Evaluation(active, passives, combine, schedule)
    hooks: list[rounds.Hook] = [held_out]
    hooks += round_hooks.standard_hooks(log, ckpt, cfg.output.checkpoint_every)
    rounds.RoundLoop(training, hooks, start, schedule.rounds, print_fn).run()
    rounds_done = max(start, schedule.rounds)
    if start >= schedule.rounds:
        print_fn(f"{paths.run_dir} already holds {start} rounds (--rounds={schedule.rounds})")
    final_eval = held_out.metrics
    if held_out.evaluated != rounds_done:
        final_eval = protocol.evaluate(active, passives, combine, schedule.eval_batch_size)
    model = assembled_model(active, passives, combine)
    _export(paths.export, everyone, active, model)
    return VerticalRunResult(rounds_done=rounds_done, resumed_from=start, final_eval=final_eval, model=model)


class _Epochs:
    """A vertical run's rounds: one epoch each over the aligned rows, in an order drawn from the seed."""

    def __init__(
        self,
        active: parties_lib.ActiveParty,
        passives: list[parties_lib.BottomParty],
        everyone: list[parties_lib.BottomParty],
        combine: str,
        seed: int,
        batch_size: int,
    ):
        self._active, self._passives, self._everyone = active, passives, everyone
        self._combine, self._seed, self._batch = combine, seed, batch_size

    def state(self) -> dict[str, Any]:
        return _state(self._everyone)

    def train_round(self, round_num: int) -> rounds.Round:
        active, passives, everyone = self._active, self._passives, self._everyone
        num_train = active.num_rows("train")
        order = np.random.default_rng([self._seed, round_num]).permutation(num_train)
        traffic = protocol.Traffic.empty([p.name for p in everyone])
        for metric in active.metrics:
            metric.reset_state()
        total_loss, steps = 0.0, 0
        for step, first in enumerate(range(0, num_train, self._batch)):
            positions = order[first : first + self._batch]
            loss = protocol.train_step(active, passives, positions, self._combine, traffic, (round_num, step))
            total_loss += loss * len(positions)
            steps += 1
        metrics = {"train/loss": total_loss / num_train, "train/num_examples": float(num_train)}
        metrics.update({f"train/{m.name}": float(m.result()) for m in active.metrics})
        for party in everyone:
            metrics[f"comm/{party.name}/sent_bytes_per_step"] = traffic.sent[party.name] / steps
            metrics[f"comm/{party.name}/received_bytes_per_step"] = traffic.received[party.name] / steps
        return rounds.Round(round_num, metrics)


class _Evaluation(rounds.Hook):
    """Evaluates the parties' models on the held-out rows every `--eval_every` epochs and after the last."""

    def __init__(
        self,
        active: parties_lib.ActiveParty,
        passives: list[parties_lib.BottomParty],
        combine: str,
        schedule: config_lib.ScheduleConfig,
    ):
        self._active, self._passives, self._combine, self._schedule = active, passives, combine, schedule
        self.metrics: dict[str, float] = {}
        self.evaluated: int | None = None

    def on_evaluation(self, loop, trained):
        every = self._schedule.eval_every
        if trained.number == self._schedule.rounds or (every and trained.number % every == 0):
            self.metrics = protocol.evaluate(
                self._active, self._passives, self._combine, self._schedule.eval_batch_size
            )
            self.evaluated = trained.number
            trained.metrics.update(self.metrics)


def assembled_model(active, passives, combine: str) -> tf.keras.Model:
    """One Keras model for end-to-end inference: a dict of each party's features -> prediction."""
    everyone = [active, *passives]
    inputs = {p.name: tf.keras.Input(shape=p.bottom.model.input_shape[1:], name=p.name) for p in everyone}
    embeddings = [p.bottom.model(inputs[p.name]) for p in everyone]
    layer = tf.keras.layers.Add() if combine == "sum" else tf.keras.layers.Concatenate()
    return tf.keras.Model(inputs, active.top.model(layer(embeddings)), name="vertical_model")


def _export(path: str, everyone, active, model: tf.keras.Model) -> None:
    """export/<party>/ (each party's bottom model), export/top/, export/model/ (assembled), atomically."""

    def write(tmp: str) -> None:
        for party in everyone:
            outputs.save_keras_model(party.bottom.model, os.path.join(tmp, party.name))
        outputs.save_keras_model(active.top.model, os.path.join(tmp, "top"))
        outputs.save_keras_model(model, os.path.join(tmp, "model"))

    files.replace_dir_atomic(path, write)
