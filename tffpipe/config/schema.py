"""Frozen settings of one training run, each declared once.

Every setting is a field declared with `settings.setting(...)`: its flag name,
default, help, choices and checks live there, and the launcher's flags and
`tffpipe.run`'s keyword arguments are generated from it. Settings of one
aggregation layer, algorithm or runtime are declared in that extension's
module and gathered here from the registries. Library code only ever sees a
`RunConfig`, never `FLAGS`.

`RunConfig.to_dict()` is what `config.json` holds; `RunConfig.fingerprint()`
(`fingerprint.py`) holds the effective values of the settings that must
match on resume. This module imports no TensorFlow.
"""

import dataclasses
import os
import tempfile
import unicodedata
from typing import TYPE_CHECKING, Any
from collections.abc import Mapping

from tffpipe import settings
from tffpipe.aggregation import registry as aggregation_registry
from tffpipe.attacks import registry as attack_registry
from tffpipe.learning import registry as algorithm_registry
from tffpipe.privacy.settings import Settings as PrivacyConfig
from tffpipe.program import clock
from tffpipe.runtimes import registry as runtime_registry
from tffpipe.settings import MUST_MATCH, NOT_APPLICABLE, group, setting

if TYPE_CHECKING:
    # Built from the registries below with make_dataclass; their fields, for
    # editors and mypy, are in the generated groups.pyi.
    from tffpipe.config.groups import (
        AggregationConfig,
        AlgorithmConfig,
        AttackConfig,
        ClientOptimizerConfig,
        RuntimeConfig,
        ServerOptimizerConfig,
    )

OPTIMIZERS = ("sgd", "sgdm", "adam", "yogi", "adagrad")
# Clients a round when --clients_per_round is not given (fewer if the task has fewer).
DEFAULT_CLIENTS_PER_ROUND = 10
CLIENT_WEIGHTINGS = ("auto", "num_examples", "uniform")
# TFF's own default cache folder, so files its loaders downloaded are found.
DEFAULT_DATA_DIR = os.path.join(os.path.expanduser("~"), ".tff")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Which task to build, the keyword options of its factory, and where its data is."""

    name: str = setting(
        "digits",
        "A registered task name (see --list_tasks) or a factory path such as my_pkg.my_module:create_task.",
        flag="task",
        group="run",
        resume=MUST_MATCH,
        short=True,
    )
    # Keyword options of the task factory, from its generated --<task>_<option> flags.
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data_dir: str = setting(
        DEFAULT_DATA_DIR,
        "Folder holding the public datasets' files (emnist_all.sqlite, ...); "
        "a missing file is downloaded there (TFF's own cache folder by default).",
        flag="data_dir",
        group="run",
        resume=NOT_APPLICABLE,
        default_text="~/.tff",
    )


MAX_ROUNDS = 10**9


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Rounds, client sampling, the seed and evaluation cadence."""

    rounds: int = setting(
        50,
        "Number of federated training rounds.",
        flag="rounds",
        group="run",
        check=settings.all_of(settings.at_least(1), settings.at_most(MAX_ROUNDS)),
        short=True,
    )
    clients_per_round: int | None = setting(
        None,
        "Training clients sampled uniformly without replacement each round.",
        flag="clients_per_round",
        group="run",
        check=settings.at_least(1),
        short=True,
        default_text=f"{DEFAULT_CLIENTS_PER_ROUND}, or every training client when the task has fewer",
    )
    seed: int = setting(
        0,
        "Seeds the data partition, the initial model and client sampling.",
        flag="seed",
        group="run",
        resume=MUST_MATCH,
        short=True,
    )
    eval_every: int = setting(
        10,
        "Evaluate on the held-out clients every this many rounds (and after the last); "
        "0 evaluates only after the last round.",
        flag="eval_every",
        group="run",
        check=settings.at_least(0),
        short=True,
    )
    eval_batch_size: int = setting(
        64,
        "Batch size of the evaluation clients.",
        flag="eval_batch_size",
        group="run",
        check=settings.at_least(1),
    )
    eval_clients: int = setting(
        100,
        "Evaluate on at most this many evaluation clients, the same seeded sample each "
        "time; 0 evaluates on all of them.",
        flag="eval_clients",
        group="run",
        check=settings.at_least(0),
    )
    on_divergence: str = setting(
        "stop",
        "What a diverged round does (a training loss or model update that is not finite, "
        "or client updates skipped as non-finite): stop keeps the last checkpoint with finite "
        "weights and exits non-zero; warn prints the same line and goes on.",
        flag="on_divergence",
        group="run",
        choices=("stop", "warn"),
    )


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """How each client iterates over its local data during training."""

    epochs: int = setting(
        2,
        "Local passes over each client's data per round.",
        flag="client_epochs",
        group="clients",
        check=settings.at_least(1),
        short=True,
    )
    batch_size: int = setting(
        20,
        "Local batch size.",
        flag="client_batch_size",
        group="clients",
        check=settings.at_least(1),
        short=True,
    )
    max_elements: int = setting(
        0,
        "Use at most this many local examples per round; 0 uses all of them.",
        flag="client_max_elements",
        group="clients",
        check=settings.at_least(0),
    )
    shuffle_buffer: int = setting(
        100,
        "Local shuffle buffer size; 0 disables shuffling.",
        flag="client_shuffle_buffer",
        group="clients",
        check=settings.at_least(0),
    )


def _optimizer_group(prefix: str, learning_rate: float, help_text: str) -> type:
    """The settings of the client or the server optimizer (`--<prefix>_...`).

    Which optimizer takes which hyperparameter is the `tff.learning.optimizers`
    builders' signatures (`test_config` checks this table against them); it is
    restated here because importing TFF to read them would cost seconds before
    a flag error could be reported.
    """
    selector = f"{prefix}_optimizer"
    who = prefix.capitalize()
    fields = [
        (
            "name",
            str,
            setting(
                "sgd",
                f"{help_text} One of: {', '.join(OPTIMIZERS)}.",
                flag=selector,
                group="algorithm",
                choices=OPTIMIZERS,
                resume=MUST_MATCH,
                short=True,
            ),
        ),
        (
            "learning_rate",
            float,
            setting(
                learning_rate,
                f"{who} learning rate.",
                flag=f"{prefix}_learning_rate",
                group="algorithm",
                check=settings.positive,
                short=True,
            ),
        ),
        (
            "momentum",
            float,
            setting(
                0.9,
                f"{who} optimizer: momentum of sgdm.",
                flag=f"{prefix}_momentum",
                group="algorithm",
                check=settings.in_range(0, 1, closed_high=False),
                applies=(selector, ("sgdm",)),
            ),
        ),
        (
            "beta_1",
            float | None,
            setting(
                None,
                f"{who} optimizer: first-moment decay of adam and yogi.",
                flag=f"{prefix}_beta_1",
                group="algorithm",
                check=settings.in_range(0, 1, closed_high=False),
                applies=(selector, ("adam", "yogi")),
                default_text="TFF's, 0.9",
            ),
        ),
        (
            "beta_2",
            float | None,
            setting(
                None,
                f"{who} optimizer: second-moment decay of adam and yogi (Reddi et al. use 0.99).",
                flag=f"{prefix}_beta_2",
                group="algorithm",
                check=settings.in_range(0, 1, closed_high=False),
                applies=(selector, ("adam", "yogi")),
                default_text="TFF's, 0.999",
            ),
        ),
        (
            "epsilon",
            float | None,
            setting(
                None,
                f"{who} optimizer: adaptivity tau of adam, yogi and adagrad.",
                flag=f"{prefix}_epsilon",
                group="algorithm",
                check=settings.positive,
                applies=(selector, ("adam", "yogi", "adagrad")),
                default_text="TFF's: adam 1e-7, yogi 1e-3, adagrad 1e-7",
            ),
        ),
    ]
    cls = dataclasses.make_dataclass(f"{who}OptimizerConfig", fields, frozen=True)
    cls.__doc__ = f"The {prefix} optimizer (`tff.learning.optimizers`) and its hyperparameters."
    cls.__module__ = __name__
    return cls


if not TYPE_CHECKING:  # type checkers read the fields from groups.pyi
    ClientOptimizerConfig = _optimizer_group(
        "client", 0.1, "Client optimizer (Mime-lite's base optimizer; unused by fedsgd)."
    )
    ServerOptimizerConfig = _optimizer_group(
        "server",
        1.0,
        "Server optimizer; adam, yogi and adagrad give Reddi et al.'s adaptive "
        "federated optimizers, and sgd at learning rate 1.0 is plain FedAvg.",
    )


def _check_algorithm(name: str) -> str | None:
    if algorithm_registry.is_known(name):
        return None
    return (
        f"must be one of: {', '.join(algorithm_registry.ALGORITHMS)} (or a builder path such as my_pkg.my_module:build)"
    )


def _algorithm_group() -> type:
    fields = [
        (
            "name",
            str,
            setting(
                "fedavg",
                "Federated algorithm: fedavg (McMahan et al. 2017; with --server_optimizer="
                "adam|yogi|adagrad it is FedAdam/FedYogi/FedAdagrad, Reddi et al. 2021), fedprox "
                "(Li et al. 2020), fedsgd, mime_lite (Karimireddy et al. 2021), fedrecon (federated "
                "reconstruction, Singhal et al. 2021), fedbuff (buffered asynchronous aggregation on the "
                "simulated clock, Nguyen et al. 2022), or your own builder as my_pkg.my_module:build.",
                flag="algorithm",
                group="algorithm",
                check=_check_algorithm,
                resume=MUST_MATCH,
                short=True,
            ),
        ),
        (
            "client_weighting",
            str,
            setting(
                "auto",
                "Average client updates weighted by num_examples or uniformly; auto: "
                "uniform under --dp (required there), num_examples otherwise.",
                flag="client_weighting",
                group="algorithm",
                choices=CLIENT_WEIGHTINGS,
                # The weighted and unweighted means keep differently shaped states.
                resume=MUST_MATCH,
                effective=lambda run, value: run.weighting,
            ),
        ),
        *[(key, cls, group(cls)) for key, cls in algorithm_registry.settings_groups()],
        # Keyword options of a user's builder, from its generated flags.
        ("options", Mapping[str, Any], dataclasses.field(default_factory=dict)),
    ]
    cls = dataclasses.make_dataclass("AlgorithmConfig", fields, frozen=True)
    cls.__doc__ = "The federated algorithm and the settings of each built-in algorithm."
    cls.__module__ = __name__
    return cls


if not TYPE_CHECKING:
    AlgorithmConfig = _algorithm_group()


def _aggregation_group() -> type:
    fields = [(key, cls, group(cls)) for key, cls in aggregation_registry.settings_groups()]
    cls = dataclasses.make_dataclass("AggregationConfig", fields, frozen=True)
    cls.__doc__ = "How client updates are combined: the settings of each aggregation layer, by layer."
    cls.__module__ = __name__
    return cls


if not TYPE_CHECKING:
    AggregationConfig = _aggregation_group()


def _attack_group() -> type:
    attacks = attack_registry.ATTACKS
    fields = [
        (
            "name",
            str,
            setting(
                "none",
                "Simulate malicious clients. Data poisoning: label_flip (labels y -> y + 1 mod C), "
                "backdoor (a trigger stamped on their examples, relabelled to --attack_target). Update "
                "poisoning: sign_flip (update x -k), scale (update x k), gaussian (noise of the update's "
                "norm), alie (benign mean - z x std; Baruch et al. 2019).",
                flag="attack",
                group="attacks",
                choices=("none",) + attacks,
                resume=MUST_MATCH,
                short=True,
            ),
        ),
        (
            "fraction",
            float,
            setting(
                0.2,
                "Share of the training clients that attack, chosen once from --seed (a round's "
                "number of attackers varies with the clients it samples).",
                flag="attack_fraction",
                group="attacks",
                check=settings.open_interval(0, 1),
                applies=("attack", attacks),
                resume=MUST_MATCH,
                short=True,
            ),
        ),
        (
            "target",
            int,
            setting(
                0,
                "The class a backdoor's triggered examples are relabelled to.",
                flag="attack_target",
                group="attacks",
                check=settings.at_least(0),
                applies=("attack", ("backdoor",)),
                resume=MUST_MATCH,
            ),
        ),
        (
            "scale",
            float,
            setting(
                10.0,
                "k of the update attacks: sign_flip sends the update times -k, scale times k.",
                flag="attack_scale",
                group="attacks",
                check=settings.positive,
                applies=("attack", ("sign_flip", "scale")),
                resume=MUST_MATCH,
            ),
        ),
        *[(key, cls, group(cls)) for key, cls in attack_registry.settings_groups()],
    ]
    cls = dataclasses.make_dataclass("AttackConfig", fields, frozen=True)
    cls.__doc__ = "Simulated malicious clients: the attack, who attacks, and each attack's settings."
    cls.__module__ = __name__
    return cls


if not TYPE_CHECKING:
    AttackConfig = _attack_group()


def _runtime_group() -> type:
    fields = [
        (
            "name",
            str,
            setting(
                "auto",
                "Where rounds run: auto (inprocess when the round compiles to TFF's "
                "MapReduceForm, else cpp), cpp (TFF's C++ worker process), inprocess (the round in "
                "this process with TensorFlow, on GPUs when there are any; secure sums use pairwise "
                "masking), or remote (each round's clients split across the TFF workers in --workers).",
                flag="runtime",
                group="runtime",
                choices=runtime_registry.RUNTIMES,
                resume=NOT_APPLICABLE,
                short=True,
            ),
        ),
        *[(key, cls, group(cls)) for key, cls in runtime_registry.settings_groups()],
    ]
    cls = dataclasses.make_dataclass("RuntimeConfig", fields, frozen=True)
    cls.__doc__ = (
        "Where rounds execute, and each runtime's settings. Not part of the fingerprint: "
        "every runtime resumes the others' checkpoints."
    )
    cls.__module__ = __name__
    return cls


if not TYPE_CHECKING:
    RuntimeConfig = _runtime_group()


@dataclasses.dataclass(frozen=True)
class ClockConfig:
    """Devices on a simulated clock: speeds, links, dropouts, deadlines (`tffpipe/program/clock.py`).

    They decide which clients' updates each round aggregates, so they must
    match on resume (the clock is replayed from round 1).
    """

    client_speed: str = setting(
        "constant:100",
        "Each training client's compute speed in examples per second: constant:V, "
        "lognormal:MEDIAN,SIGMA or uniform:LOW,HIGH, drawn once from --seed and its id.",
        flag="client_speed",
        group="clock",
        check=clock.spec_check,
        resume=MUST_MATCH,
    )
    client_downlink: str = setting(
        "constant:1e6",
        "Each client's download bandwidth in bytes per second (same forms).",
        flag="client_downlink",
        group="clock",
        check=clock.spec_check,
        resume=MUST_MATCH,
    )
    client_uplink: str = setting(
        "constant:1e6",
        "Each client's upload bandwidth in bytes per second (same forms).",
        flag="client_uplink",
        group="clock",
        check=clock.spec_check,
        resume=MUST_MATCH,
    )
    client_profiles: str = setting(
        "",
        "A CSV with columns client_id, speed, downlink, uplink (a device trace) that gives "
        "every training client's values instead of the three draws.",
        flag="client_profiles",
        group="clock",
        resume=MUST_MATCH,
    )
    client_dropout: float = setting(
        0.0,
        "Probability that a sampled client fails before reporting, drawn per round and client.",
        flag="client_dropout",
        group="clock",
        check=settings.in_range(0, 1, closed_high=False),
        resume=MUST_MATCH,
        short=True,
    )
    round_deadline_sec: float = setting(
        0.0,
        "Clients that finish later in simulated seconds are left out of the round; 0: no deadline.",
        flag="round_deadline_sec",
        group="clock",
        check=settings.at_least(0),
        resume=MUST_MATCH,
        short=True,
    )
    over_selection: float = setting(
        1.0,
        "Sample ceil(this x --clients_per_round) clients; the first --clients_per_round to finish report.",
        flag="over_selection",
        group="clock",
        check=settings.at_least(1),
        resume=MUST_MATCH,
    )

    @property
    def changes_cohort(self) -> bool:
        """Whether some sampled clients may not report (dropouts, a deadline, over-selection)."""
        return bool(self.cohort_changed_by)

    @property
    def cohort_changed_by(self) -> str:
        """The first flag that makes some sampled clients not report, or ""."""
        if self.client_dropout > 0:
            return "--client_dropout"
        return self.rounds_closed_by

    @property
    def rounds_closed_by(self) -> str:
        """The first flag that closes a round before every sampled client reports, or ""."""
        for flag, on in (
            ("--round_deadline_sec", self.round_deadline_sec > 0),
            ("--over_selection", self.over_selection > 1),
        ):
            if on:
                return flag
        return ""


@dataclasses.dataclass(frozen=True)
class PersonalizationConfig:
    """How well fine-tuning the global model serves each evaluation client.

    Measured by `tffpipe/program/personalization.py`; nothing here changes
    training, so every setting may change on resume.
    """

    every: int = setting(
        0,
        "Every this many rounds (and after the last), fine-tune the global model on part "
        "of each evaluation client's data and measure it on the rest, before and after; 0 "
        "turns it off.",
        flag="personalize_every",
        group="personalization",
        check=settings.at_least(0),
        short=True,
    )
    epochs: int = setting(
        1,
        "Passes of fine-tuning over each client's personalization part (0 measures the "
        "global model on the same split).",
        flag="personalize_epochs",
        group="personalization",
        check=settings.at_least(0),
    )
    learning_rate: float = setting(
        0.05,
        "SGD learning rate of the fine-tuning.",
        flag="personalize_learning_rate",
        group="personalization",
        check=settings.positive,
    )
    batch_size: int = setting(
        16,
        "Batch size of the fine-tuning.",
        flag="personalize_batch_size",
        group="personalization",
        check=settings.at_least(1),
    )
    split: float = setting(
        0.5,
        "Share of each evaluation client's examples used for fine-tuning (a seeded draw); "
        "the rest measure the model before and after.",
        flag="personalize_split",
        group="personalization",
        check=settings.open_interval(0, 1),
    )


@dataclasses.dataclass(frozen=True)
class VerticalConfig:
    """Vertical federated learning: how the parties' embeddings combine, and what each adds.

    These apply to vertical tasks only (`tffpipe/vertical/`); which other
    settings a vertical task accepts is listed there.
    """

    combine: str = setting(
        "task",
        "How the parties' embeddings combine: sum (a pairwise-masked secure sum: the "
        "active party sees only the total), concat (the active party sees each embedding), or "
        "task (the task's own choice; sum for the built-in tasks).",
        flag="vertical_combine",
        group="vertical",
        choices=("task", "sum", "concat"),
        resume=MUST_MATCH,
        short=True,
    )
    embedding_noise: float = setting(
        0.0,
        "Standard deviation of the Gaussian noise each passive party adds to every "
        "embedding it sends (a defence against feature reconstruction).",
        flag="vertical_embedding_noise",
        group="vertical",
        check=settings.at_least(0),
        resume=MUST_MATCH,
    )
    overlap: float = setting(
        0.8,
        "Built-in vertical tasks: share of the people every party holds; the others are "
        "held by one party only, as in practice.",
        flag="vertical_overlap",
        group="vertical",
        check=settings.in_range(0, 1, closed_high=True),
        resume=MUST_MATCH,
    )


MAX_NAME_BYTES = 255


def _experiment_name_check(name: str) -> str | None:
    if os.sep in name or name in (".", ".."):
        return "must be a single folder name"
    control = [c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    if control:
        return f"must not contain control characters (it holds {control[0]!r})"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"must be at most {MAX_NAME_BYTES} bytes long, the longest folder name a filesystem takes"
    return None


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where a run writes (`root_dir/experiment_name/`) and how often it checkpoints.

    An empty `experiment_name` is resolved when the `RunConfig` is built
    (`tffpipe.run_names`), so `run_dir` always names one folder.
    """

    root_dir: str = setting(
        os.path.join(tempfile.gettempdir(), "tffpipe"),
        "Folder holding experiments; a run writes to ROOT_DIR/EXPERIMENT_NAME.",
        flag="root_dir",
        group="outputs",
        resume=NOT_APPLICABLE,
        short=True,
    )
    experiment_name: str = setting(
        "",
        "Name of this run's folder; rerunning with the same name resumes it. Empty: named "
        "after the task and the settings that must match on resume and differ from their "
        "defaults, with a short hash of them (digits-digits_alpha=0.1-1a2b3c4d; digits at "
        "every default), so rerunning a command resumes it and another command gets its own.",
        flag="experiment_name",
        group="outputs",
        check=_experiment_name_check,
        resume=NOT_APPLICABLE,
        short=True,
    )
    hparams: tuple[str, ...] = setting(
        (),
        "Settings (by flag name) TensorBoard's HParams table lists for this run, right after the "
        "task, algorithm and rounds and before the other settings that differ from their defaults "
        "(a sweep passes the settings it sweeps).",
        flag="hparams",
        group="outputs",
        resume=NOT_APPLICABLE,
    )
    checkpoint_every: int = setting(
        5,
        "Save a checkpoint every this many rounds (and after the last).",
        flag="checkpoint_every",
        group="outputs",
        check=settings.at_least(1),
    )
    keep_checkpoints: int = setting(
        3,
        "How many of the newest checkpoints to keep.",
        flag="keep_checkpoints",
        group="outputs",
        check=settings.at_least(1),
    )

    @property
    def run_dir(self) -> str:
        return os.path.join(self.root_dir, self.experiment_name)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs."""

    task: TaskConfig = group(TaskConfig)
    schedule: ScheduleConfig = group(ScheduleConfig)
    client: ClientConfig = group(ClientConfig)
    clock: ClockConfig = group(ClockConfig)
    algorithm: AlgorithmConfig = group(AlgorithmConfig)
    client_optimizer: ClientOptimizerConfig = group(ClientOptimizerConfig)
    server_optimizer: ServerOptimizerConfig = group(ServerOptimizerConfig)
    privacy: PrivacyConfig = group(PrivacyConfig)
    aggregation: AggregationConfig = group(AggregationConfig)
    attack: AttackConfig = group(AttackConfig)
    personalization: PersonalizationConfig = group(PersonalizationConfig)
    runtime: RuntimeConfig = group(RuntimeConfig)
    vertical: VerticalConfig = group(VerticalConfig)
    output: OutputConfig = group(OutputConfig)

    def __post_init__(self):
        validate(self)
        if not self.output.experiment_name:
            from tffpipe import run_names

            # Frozen, so set the resolved name the way dataclasses' own __init__ sets fields.
            named = dataclasses.replace(self.output, experiment_name=run_names.name_for(self))
            object.__setattr__(self, "output", named)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def client_weighting(self) -> str:
        """The client weighting in effect: uniform under DP unless set."""
        from tffpipe.config import components

        return components.selection(self).weighting

    def fingerprint(self) -> dict[str, Any]:
        """The effective values of the settings that must match on resume.

        A checkpoint written under one fingerprint is refused under another;
        an explicit default is the same value as an omitted one.
        """
        from tffpipe.config import fingerprint

        return fingerprint.compute(self)


def validate(config: RunConfig) -> None:
    """Checks every setting and combination that can be checked without the task.

    Raises:
      ConfigError: with a one-line reason naming the flag.
    """
    from tffpipe.config import components

    settings.check_values(config)
    components.check(config)
    from tffpipe import run_names

    run_names.check_hparams(config)
