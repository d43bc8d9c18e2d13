"""Frozen settings of one training run.

The launcher turns flags into a `RunConfig`; library code only ever sees this
record, never `FLAGS`. `RunConfig.to_dict()` is what `config.json` holds, and
`RunConfig.fingerprint()` is the subset that must not change across a resume.
"""

import dataclasses
import json
import os
import re
from typing import Any, Mapping

OPTIMIZERS = ("sgd", "sgdm", "adam", "yogi", "adagrad")
# Clients a round when --clients_per_round is not given (fewer if the task has fewer).
DEFAULT_CLIENTS_PER_ROUND = 10
ALGORITHMS = ("fedavg", "fedprox", "fedsgd", "mime_lite")
CLIENT_WEIGHTINGS = ("num_examples", "uniform")
DP_MECHANISMS = ("none", "fixed", "adaptive", "tree", "distributed")
COMPRESSIONS = ("none", "uniform_quantization")


class ConfigError(ValueError):
    """A setting is invalid; the message is one line meant for the user."""


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Which task to build and the keyword options of its factory.

    Attributes:
      name: a registered task name, or `package.module:factory`.
      options: keyword arguments for the task factory (task-specific flags).
      data_dir: where public datasets are kept (None: the task's default).
        Not part of the fingerprint: moving the files does not change a run.
    """

    name: str = "digits"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """How each client iterates over its local data during training.

    Attributes:
      epochs: passes over the local data per round.
      batch_size: local batch size.
      max_elements: cap on local examples per round; None for all of them.
      shuffle_buffer: shuffle buffer size; 0 or 1 disables shuffling.
    """

    epochs: int = 2
    batch_size: int = 20
    max_elements: int | None = None
    shuffle_buffer: int = 100


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """A `tff.learning.optimizers` optimizer and its hyperparameters.

    Hyperparameters left at None take TFF's default for that optimizer; a
    value set for an optimizer that has no such hyperparameter is an error.

    Attributes:
      name: one of `OPTIMIZERS`.
      learning_rate: the learning rate.
      momentum: sgdm only (None: 0.9).
      beta_1: adam and yogi only.
      beta_2: adam and yogi only.
      epsilon: adam, yogi and adagrad (Reddi et al. 2021's tau).
    """

    name: str = "sgd"
    learning_rate: float = 0.1
    momentum: float | None = None
    beta_1: float | None = None
    beta_2: float | None = None
    epsilon: float | None = None


# Which optimizer takes which hyperparameter (the `tff.learning.optimizers`
# builders' keyword arguments).
OPTIMIZER_HYPERPARAMETERS = {
    "momentum": ("sgdm",),
    "beta_1": ("adam", "yogi"),
    "beta_2": ("adam", "yogi"),
    "epsilon": ("adam", "yogi", "adagrad"),
}


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
    """The federated algorithm.

    Attributes:
      name: one of `ALGORITHMS`.
      client_weighting: how client updates are averaged: by their number of
        examples or uniformly. None picks uniform under DP, num_examples
        otherwise.
      proximal_strength: FedProx's mu (None: 0.01); only for fedprox.
    """

    name: str = "fedavg"
    client_weighting: str | None = None
    proximal_strength: float | None = None

    @property
    def resolved_proximal_strength(self) -> float:
        return 0.01 if self.proximal_strength is None else self.proximal_strength


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy of the model aggregation.

    Options left at None are unset; setting one that the mechanism does not
    use is an error.

    Attributes:
      mechanism: one of `DP_MECHANISMS`.
      clip_norm: L2 clipping norm of each client update (the initial norm
        under adaptive clipping). None: 0.1 for adaptive, 1.0 otherwise.
      noise_multiplier: noise standard deviation / clipping norm.
      target_epsilon: solve for the noise multiplier that spends this epsilon
        after all rounds (instead of `noise_multiplier`).
      max_epsilon: stop before the round that would exceed this epsilon.
      delta: the delta of the reported (epsilon, delta); None: 1e-5.
      target_quantile: adaptive clipping's target unclipped quantile (None: 0.5).
      clip_learning_rate: adaptive clipping's learning rate (None: 0.2).
      distributed_bits: bit width of the secure sum under distributed DP
        (None: 20).
    """

    mechanism: str = "none"
    clip_norm: float | None = None
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_epsilon: float | None = None
    delta: float | None = None
    target_quantile: float | None = None
    clip_learning_rate: float | None = None
    distributed_bits: int | None = None

    @property
    def enabled(self) -> bool:
        return self.mechanism != "none"

    @property
    def resolved_clip_norm(self) -> float:
        if self.clip_norm is not None:
            return self.clip_norm
        return 0.1 if self.mechanism == "adaptive" else 1.0

    @property
    def resolved_delta(self) -> float:
        return 1e-5 if self.delta is None else self.delta

    @property
    def resolved_target_quantile(self) -> float:
        return 0.5 if self.target_quantile is None else self.target_quantile

    @property
    def resolved_clip_learning_rate(self) -> float:
        return 0.2 if self.clip_learning_rate is None else self.clip_learning_rate

    @property
    def resolved_distributed_bits(self) -> int:
        return 20 if self.distributed_bits is None else self.distributed_bits


@dataclasses.dataclass(frozen=True)
class AggregationConfig:
    """How client updates are combined on the server.

    Attributes:
      zeroing: zero out client updates whose norm is far above the others'.
      secure: sum updates with secure aggregation.
      compression: one of `COMPRESSIONS`.
      compression_bits: bits per value under uniform quantization (None: 8).
      compression_min_elements: tensors with fewer elements are sent as is.
      dp: the differential privacy mechanism.
    """

    zeroing: bool = True
    secure: bool = False
    compression: str = "none"
    compression_bits: int | None = None
    compression_min_elements: int = 20000
    dp: PrivacyConfig = PrivacyConfig()

    @property
    def resolved_compression_bits(self) -> int:
        return 8 if self.compression_bits is None else self.compression_bits

    @property
    def uses_secure_sum(self) -> bool:
        return self.secure or self.dp.mechanism == "distributed"


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Rounds, client sampling, evaluation and checkpoint cadence.

    Attributes:
      rounds: total number of training rounds.
      clients_per_round: clients sampled uniformly without replacement a round;
        None: `DEFAULT_CLIENTS_PER_ROUND`, or every training client when the
        task has fewer (resolved by `program.fit_to_task`).
      seed: seeds the data partition, the initial model and client sampling.
      eval_every: federated evaluation every this many rounds (and at the end);
        0 evaluates only at the end.
      checkpoint_every: save program state every this many rounds (and at the
        end).
      keep_checkpoints: how many of the latest checkpoints to keep.
      eval_batch_size: batch size for evaluation clients.
      eval_clients: evaluate on at most this many evaluation clients, the
        same seeded sample every time; 0 evaluates on all of them.
    """

    rounds: int = 50
    clients_per_round: int | None = None
    seed: int = 0
    eval_every: int = 10
    checkpoint_every: int = 5
    keep_checkpoints: int = 3
    eval_batch_size: int = 64
    eval_clients: int = 100


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where a run writes: `root_dir/experiment_name/`."""

    root_dir: str = "/tmp/tffpipe"
    experiment_name: str = "default"

    @property
    def run_dir(self) -> str:
        return os.path.join(self.root_dir, self.experiment_name)


RUNTIMES = ("cpp", "inprocess", "remote")
PREFETCH_CLIENTS = ("auto", "on", "off")
_WORKER_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where rounds execute. Not part of the fingerprint: either runtime
    resumes the other's checkpoints.

    Attributes:
      name: "cpp" (TFF's C++ worker), "inprocess" (the round's TensorFlow
        parts in the launcher's process, on every device: `tffpipe.runtimes.inprocess`)
        or "remote" (TFF worker services on other machines: `tffpipe.runtimes.remote`).
      gpus: inprocess: "all", "none" or GPU indices such as "0,1".
      clients_per_gpu: inprocess: clients trained at once on each GPU (each
        gets a logical GPU with its share of the memory).
      parallel_clients: inprocess without GPUs: clients trained at once on
        each CPU device.
      cpu_devices: inprocess: split the CPU into this many logical devices.
      prefetch_clients: inprocess: "on" reads each slot's next client into
        memory while the current one trains, "off" does not, "auto" does it
        when clients train on GPUs only (on the CPU, reading ahead competes
        with training for the same cores).
      workers: remote: the worker services, "HOST:PORT" each.
      worker_wait_sec: remote: how long a worker that stops answering is
        waited for before its share of the clients moves to the others.
    """

    name: str = "cpp"
    gpus: str = "all"
    clients_per_gpu: int = 1
    parallel_clients: int = 2
    cpu_devices: int = 1
    prefetch_clients: str = "auto"
    workers: tuple[str, ...] = ()
    worker_wait_sec: float = 30.0


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs."""

    task: TaskConfig = TaskConfig()
    client: ClientConfig = ClientConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    client_optimizer: OptimizerConfig = OptimizerConfig("sgd", 0.1)
    server_optimizer: OptimizerConfig = OptimizerConfig("sgd", 1.0)
    aggregation: AggregationConfig = AggregationConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    output: OutputConfig = OutputConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def client_weighting(self) -> str:
        """The algorithm's client weighting, resolved: uniform under DP."""
        if self.algorithm.client_weighting is not None:
            return self.algorithm.client_weighting
        return "uniform" if self.aggregation.dp.enabled else "num_examples"

    def fingerprint(self) -> dict[str, Any]:
        """The settings that shape the model, the data and the saved state.

        A checkpoint written under one fingerprint is refused under another.
        """
        return {
            "task": self.task.name,
            "task_options": dict(sorted(self.task.options.items())),
            "seed": self.schedule.seed,
            "algorithm": self.algorithm.name,
            "client_optimizer": self.client_optimizer.name,
            "server_optimizer": self.server_optimizer.name,
            # The aggregator's state structure, and the privacy spent so far,
            # depend on these.
            "zeroing": self.aggregation.zeroing,
            "secure_aggregation": self.aggregation.uses_secure_sum,
            "compression": self.aggregation.compression,
            "dp": self.aggregation.dp.mechanism,
            "dp_clip_norm": self.aggregation.dp.clip_norm,
            "dp_noise_multiplier": self.aggregation.dp.noise_multiplier,
            "dp_target_epsilon": self.aggregation.dp.target_epsilon,
        }


def fingerprint_to_json(fingerprint: Mapping[str, Any]) -> str:
    return json.dumps(fingerprint, sort_keys=True)


def fingerprint_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any]
) -> list[str]:
    """Lists `name: saved -> current` for every differing fingerprint entry."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            for sub in sorted(set(old) | set(new)):
                if old.get(sub) != new.get(sub):
                    diffs.append(f"{key}.{sub}: {old.get(sub)!r} -> {new.get(sub)!r}")
        elif old != new:
            diffs.append(f"{key}: {old!r} -> {new!r}")
    return diffs


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(config: RunConfig) -> None:
    """Checks every setting that can be checked without building the task.

    Raises:
      ConfigError: with a one-line reason naming the flag.
    """
    s, c = config.schedule, config.client
    _require(s.rounds >= 1, f"--rounds must be at least 1, got {s.rounds}")
    _require(
        s.clients_per_round is None or s.clients_per_round >= 1,
        f"--clients_per_round must be at least 1, got {s.clients_per_round}",
    )
    _require(s.eval_clients >= 0, f"--eval_clients must be >= 0, got {s.eval_clients}")
    _require(s.eval_every >= 0, f"--eval_every must be >= 0, got {s.eval_every}")
    _require(
        s.checkpoint_every >= 1,
        f"--checkpoint_every must be at least 1, got {s.checkpoint_every}",
    )
    _require(
        s.keep_checkpoints >= 1,
        f"--keep_checkpoints must be at least 1, got {s.keep_checkpoints}",
    )
    _require(
        s.eval_batch_size >= 1,
        f"--eval_batch_size must be at least 1, got {s.eval_batch_size}",
    )
    _require(c.epochs >= 1, f"--client_epochs must be at least 1, got {c.epochs}")
    _require(
        c.batch_size >= 1, f"--client_batch_size must be at least 1, got {c.batch_size}"
    )
    _require(
        c.max_elements is None or c.max_elements >= 1,
        f"--client_max_elements must be at least 1, got {c.max_elements}",
    )
    _require(
        c.shuffle_buffer >= 0,
        f"--client_shuffle_buffer must be >= 0, got {c.shuffle_buffer}",
    )
    for prefix, opt in (
        ("client", config.client_optimizer),
        ("server", config.server_optimizer),
    ):
        _validate_optimizer(prefix, opt)
    _validate_algorithm(config)
    _validate_aggregation(config)
    _validate_runtime(config.runtime)
    _require(bool(config.output.experiment_name), "--experiment_name must not be empty")
    _require(
        os.sep not in config.output.experiment_name,
        f"--experiment_name must be a single folder name, got {config.output.experiment_name!r}",
    )


def _validate_runtime(r: RuntimeConfig) -> None:
    _one_of("--runtime", r.name, RUNTIMES)
    _one_of("--prefetch_clients", r.prefetch_clients, PREFETCH_CLIENTS)
    for flag, value in (
        ("--clients_per_gpu", r.clients_per_gpu),
        ("--parallel_clients", r.parallel_clients),
        ("--cpu_devices", r.cpu_devices),
    ):
        _require(value >= 1, f"{flag} must be at least 1, got {value}")
    if r.name == "remote":
        _require(r.workers, "--runtime=remote needs --workers=HOST:PORT,HOST:PORT,...")
    else:
        _require(not r.workers, f"--workers applies to --runtime=remote, not --runtime={r.name}")
    for address in r.workers:
        _require(
            _WORKER_ADDRESS.match(address) is not None and 0 < int(address.rsplit(":", 1)[1]) < 65536,
            f"--workers: {address!r} is not HOST:PORT",
        )
    _require(len(set(r.workers)) == len(r.workers), "--workers lists a worker twice")
    _require(r.worker_wait_sec >= 0, f"--worker_wait_sec must be at least 0, got {r.worker_wait_sec:g}")
    gpus_ok = r.gpus in ("all", "none") or all(p.isdigit() for p in r.gpus.split(","))
    _require(gpus_ok, f"--gpus must be 'all', 'none' or GPU indices like '0,1', got {r.gpus!r}")


def _one_of(flag: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, f"{flag}={value!r} is not one of: {', '.join(choices)}")


def _validate_optimizer(prefix: str, opt: OptimizerConfig) -> None:
    _one_of(f"--{prefix}_optimizer", opt.name, OPTIMIZERS)
    _require(
        opt.learning_rate > 0,
        f"--{prefix}_learning_rate must be positive, got {opt.learning_rate}",
    )
    for field, optimizers in OPTIMIZER_HYPERPARAMETERS.items():
        value = getattr(opt, field)
        if value is None:
            continue
        _require(
            opt.name in optimizers,
            f"--{prefix}_{field} applies to --{prefix}_optimizer="
            f"{'|'.join(optimizers)}, not {opt.name}",
        )
    for field in ("momentum", "beta_1", "beta_2"):
        value = getattr(opt, field)
        _require(
            value is None or 0 <= value < 1,
            f"--{prefix}_{field} must be in [0, 1), got {value}",
        )
    _require(
        opt.epsilon is None or opt.epsilon > 0,
        f"--{prefix}_epsilon must be positive, got {opt.epsilon}",
    )


def _validate_algorithm(config: RunConfig) -> None:
    algorithm = config.algorithm
    _one_of("--algorithm", algorithm.name, ALGORITHMS)
    if algorithm.client_weighting is not None:
        _one_of("--client_weighting", algorithm.client_weighting, CLIENT_WEIGHTINGS)
    if algorithm.proximal_strength is not None:
        _require(
            algorithm.name == "fedprox",
            f"--proximal_strength applies to --algorithm=fedprox, not {algorithm.name}",
        )
        _require(
            algorithm.proximal_strength > 0,
            f"--proximal_strength must be positive, got {algorithm.proximal_strength}",
        )


def _validate_aggregation(config: RunConfig) -> None:
    agg = config.aggregation
    dp = agg.dp
    _one_of("--compression", agg.compression, COMPRESSIONS)
    _one_of("--dp", dp.mechanism, DP_MECHANISMS)
    if agg.compression == "none":
        _require(
            agg.compression_bits is None,
            "--compression_bits applies to --compression=uniform_quantization",
        )
    bits = agg.resolved_compression_bits
    _require(
        1 <= bits <= 16,
        f"--compression_bits={bits} is outside 1..16: TFF's uniform quantization "
        "rounds in float32, which holds at most 16-bit levels exactly "
        "(and 32 bits would not compress)",
    )
    _require(
        agg.compression_min_elements >= 0,
        f"--compression_min_elements must be >= 0, got {agg.compression_min_elements}",
    )
    _require(
        not (agg.secure and agg.compression != "none"),
        "--secure_aggregation cannot be combined with --compression: secure sums "
        "need integers in a fixed range, and uniform quantization scales each "
        "client's values by its own min and max (secure aggregation already "
        "sends quantised integers)",
    )
    if not dp.enabled:
        for field in (
            "clip_norm", "noise_multiplier", "target_epsilon", "max_epsilon",
            "delta", "target_quantile", "clip_learning_rate", "distributed_bits",
        ):
            _require(
                getattr(dp, field) is None,
                f"--dp_{field} has no effect without differential privacy: "
                "set --dp=fixed|adaptive|tree|distributed",
            )
        return
    _validate_privacy(config)


def _validate_privacy(config: RunConfig) -> None:
    agg, dp, clients = config.aggregation, config.aggregation.dp, config.schedule.clients_per_round
    mechanism = dp.mechanism
    _require(
        (dp.noise_multiplier is None) != (dp.target_epsilon is None),
        f"--dp={mechanism} needs exactly one of --dp_noise_multiplier and "
        "--dp_target_epsilon",
    )
    _require(
        config.client_weighting == "uniform",
        f"--dp={mechanism} needs --client_weighting=uniform: DP bounds each "
        "client's contribution, and weighting by number of examples lets a "
        "client with many examples exceed that bound",
    )
    _require(
        config.algorithm.name != "mime_lite",
        "--dp cannot be used with --algorithm=mime_lite: Mime-lite clients also "
        "upload full-batch gradients, which the DP aggregator does not protect",
    )
    _require(
        agg.compression == "none",
        "--dp cannot be combined with --compression: quantising a clipped update "
        "can raise its norm above the clip, which voids the DP guarantee "
        "(--dp=distributed quantises with a privacy analysis)",
    )
    _require(dp.resolved_clip_norm > 0, f"--dp_clip_norm must be positive, got {dp.clip_norm}")
    _require(
        dp.noise_multiplier is None or dp.noise_multiplier >= 0,
        f"--dp_noise_multiplier must be >= 0, got {dp.noise_multiplier}",
    )
    for field in ("target_epsilon", "max_epsilon"):
        value = getattr(dp, field)
        _require(value is None or value > 0, f"--dp_{field} must be positive, got {value}")
    _require(
        0 < dp.resolved_delta < 1, f"--dp_delta must be in (0, 1), got {dp.delta}"
    )
    if mechanism != "adaptive":
        for field in ("target_quantile", "clip_learning_rate"):
            _require(
                getattr(dp, field) is None,
                f"--dp_{field} applies to --dp=adaptive, not --dp={mechanism}",
            )
    else:
        _require(
            0 <= dp.resolved_target_quantile <= 1,
            f"--dp_target_quantile must be in [0, 1], got {dp.target_quantile}",
        )
        _require(
            dp.resolved_clip_learning_rate > 0,
            f"--dp_clip_learning_rate must be positive, got {dp.clip_learning_rate}",
        )
        _require(
            not agg.secure,
            "--dp=adaptive cannot be combined with --secure_aggregation: the "
            "clipping norm changes every round, so the secure sum has no fixed "
            "integer range; use --dp=fixed or --dp=distributed",
        )
        if dp.noise_multiplier is not None and clients is not None:
            check_adaptive_noise(dp.noise_multiplier, clients)
    if mechanism != "distributed":
        _require(
            dp.distributed_bits is None,
            f"--dp_distributed_bits applies to --dp=distributed, not --dp={mechanism}",
        )
    else:
        bits = dp.resolved_distributed_bits
        _require(
            1 <= bits <= 22,
            f"--dp_distributed_bits must be in 1..22 (TFF's limit: float32 holds "
            f"integers up to 2^24 exactly), got {bits}",
        )
        _require(
            clients is None or 2**bits >= clients,
            f"--dp_distributed_bits={bits} is too small for {clients} clients per "
            "round: the secure sum of their values would wrap around",
        )


def check_adaptive_noise(noise_multiplier: float, clients_per_round: int) -> None:
    """Adaptive clipping spends part of the noise on the clipped count.

    TFF noises the count of clipped clients with stddev 0.05 x clients per
    round, which only fits in the total budget when the noise multiplier is
    below 0.1 x clients per round.

    Raises:
      ConfigError: the noise multiplier is too large for the cohort.
    """
    _require(
        noise_multiplier < 0.1 * clients_per_round,
        f"--dp=adaptive needs a noise multiplier below 0.1 x --clients_per_round "
        f"= {0.1 * clients_per_round:g} (adaptive clipping also noises the count "
        f"of clipped clients, with stddev 0.05 x clients per round), got "
        f"{noise_multiplier:g}: sample more clients per round or use --dp=fixed",
    )
