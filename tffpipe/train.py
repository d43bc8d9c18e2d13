"""`python -m tffpipe.train`: federated training from the command line.

Parses flags into a frozen `RunConfig`, builds the task and hands both to
`tffpipe.program.loop.run`. Rerunning the same command resumes the run.

  python -m tffpipe.train --task=digits --rounds=50 --root_dir=/tmp/tffpipe
  python -m tffpipe.train --flagfile=my_run.flags
"""

import os
import sys
import tempfile

from absl import app
from absl import flags

from tffpipe.program import checkpoints
from tffpipe import compat
from tffpipe import config as config_lib
from tffpipe.runtimes import devices
from tffpipe.runtimes import inprocess
from tffpipe.runtimes import memory
from tffpipe.runtimes import processes
from tffpipe.program import loop
from tffpipe.tasks import public_data
from tffpipe.runtimes import remote
from tffpipe import tasks
from tffpipe.tasks import listing as task_listing

# --- What to train -----------------------------------------------------------
flags.DEFINE_string(
    "task", "digits",
    "A registered task name (see --list_tasks) or a factory path such as "
    "my_pkg.my_module:create_task.")
flags.DEFINE_bool("list_tasks", False, "Print the registered tasks and exit.")
flags.DEFINE_string(
    "data_dir", public_data.DEFAULT_DATA_DIR,
    "Folder holding the public datasets' files (emnist_all.sqlite, ...); a "
    "missing file is downloaded there (TFF's own cache folder by default).")
# --- Schedule ----------------------------------------------------------------
flags.DEFINE_integer("rounds", 50, "Number of federated training rounds.")
flags.DEFINE_integer(
    "clients_per_round", None,
    "Training clients sampled uniformly without replacement each round "
    f"(default {config_lib.DEFAULT_CLIENTS_PER_ROUND}, or every training client "
    "when the task has fewer).")
flags.DEFINE_integer(
    "seed", 0, "Seeds the data partition, the initial model and client sampling.")
flags.DEFINE_integer(
    "eval_every", 10,
    "Evaluate on the held-out clients every this many rounds (and after the "
    "last round); 0 evaluates only after the last round.")
flags.DEFINE_integer(
    "eval_batch_size", 64, "Batch size of the evaluation clients.")
flags.DEFINE_integer(
    "eval_clients", 100,
    "Evaluate on at most this many evaluation clients, the same seeded sample "
    "each time; 0 evaluates on all of them.")
flags.DEFINE_integer(
    "checkpoint_every", 5, "Save a checkpoint every this many rounds (and after the last).")
flags.DEFINE_integer("keep_checkpoints", 3, "How many of the newest checkpoints to keep.")
# --- Client training ---------------------------------------------------------
flags.DEFINE_integer("client_epochs", 2, "Local passes over each client's data per round.")
flags.DEFINE_integer("client_batch_size", 20, "Local batch size.")
flags.DEFINE_integer(
    "client_max_elements", 0,
    "Use at most this many local examples per round; 0 uses all of them.")
flags.DEFINE_integer(
    "client_shuffle_buffer", 100, "Local shuffle buffer size; 0 disables shuffling.")
# --- Algorithm ---------------------------------------------------------------
flags.DEFINE_enum(
    "algorithm", "fedavg", list(config_lib.ALGORITHMS),
    "Federated algorithm: fedavg (McMahan et al. 2017; with --server_optimizer="
    "adam|yogi|adagrad it is FedAdam/FedYogi/FedAdagrad, Reddi et al. 2021), "
    "fedprox (Li et al. 2020), fedsgd, mime_lite (Karimireddy et al. 2021).")
flags.DEFINE_enum(
    "client_weighting", None, list(config_lib.CLIENT_WEIGHTINGS),
    "Average client updates weighted by num_examples or uniformly. Default: "
    "uniform under --dp (required there), num_examples otherwise.")
flags.DEFINE_float(
    "proximal_strength", None, "FedProx's proximal term mu (default 0.01); fedprox only.")
# --- Optimizers --------------------------------------------------------------
_OPTIMIZER_HELP = "One of: " + ", ".join(config_lib.OPTIMIZERS) + "."
flags.DEFINE_string(
    "client_optimizer", "sgd",
    "Client optimizer (Mime-lite's base optimizer; unused by fedsgd). " + _OPTIMIZER_HELP)
flags.DEFINE_float("client_learning_rate", 0.1, "Client learning rate.")
flags.DEFINE_string(
    "server_optimizer", "sgd",
    "Server optimizer; adam, yogi and adagrad give Reddi et al.'s adaptive "
    "federated optimizers. " + _OPTIMIZER_HELP)
flags.DEFINE_float(
    "server_learning_rate", 1.0,
    "Server learning rate (1.0 with sgd is plain FedAvg).")
_HYPERPARAMETER_HELP = {
    "momentum": "Momentum of sgdm (default 0.9).",
    "beta_1": "First-moment decay of adam and yogi (TFF default 0.9).",
    "beta_2": "Second-moment decay of adam and yogi (TFF default 0.999; Reddi et al. use 0.99).",
    "epsilon": "Adaptivity tau of adam, yogi and adagrad (TFF defaults: adam 1e-7, yogi 1e-3, adagrad 1e-7).",
}
for _prefix in ("client", "server"):
    for _field, _help in _HYPERPARAMETER_HELP.items():
        flags.DEFINE_float(f"{_prefix}_{_field}", None, f"{_prefix.capitalize()} optimizer: {_help}")
# --- Aggregation and privacy -------------------------------------------------
flags.DEFINE_bool(
    "zeroing", True,
    "Zero out client updates whose norm is far above the others' (adaptive "
    "bound); non-finite updates are always dropped by TFF's client work.")
flags.DEFINE_bool(
    "secure_aggregation", False,
    "Sum client updates with secure aggregation (the protocol is simulated by "
    "TFF's test runtime; its quantisation is exact).")
flags.DEFINE_enum(
    "compression", "none", list(config_lib.COMPRESSIONS),
    "Compress client uploads: uniform_quantization (EncodedSumFactory).")
flags.DEFINE_integer(
    "compression_bits", None, "Bits per value under --compression (1..16, default 8).")
flags.DEFINE_integer(
    "compression_min_elements", 20000,
    "Under --compression, tensors with fewer elements are sent unquantised.")
flags.DEFINE_enum(
    "dp", "none", list(config_lib.DP_MECHANISMS),
    "Client-level differential privacy: fixed (Gaussian, fixed clipping; "
    "McMahan et al. 2018), adaptive (clipping to a quantile; Andrew et al. "
    "2021), tree (DP-FTRL tree aggregation; Kairouz et al. 2021), distributed "
    "(distributed discrete Gaussian with secure aggregation; Kairouz et al. 2021).")
flags.DEFINE_float(
    "dp_clip_norm", None,
    "L2 clipping norm of each client update (initial norm under --dp=adaptive). "
    "Default 1.0, or 0.1 under --dp=adaptive.")
flags.DEFINE_float("dp_noise_multiplier", None, "Noise stddev divided by the clipping norm.")
flags.DEFINE_float(
    "dp_target_epsilon", None,
    "Solve for the noise multiplier that spends this epsilon after --rounds rounds.")
flags.DEFINE_float(
    "dp_max_epsilon", None,
    "Stop cleanly before the round that would bring epsilon above this.")
flags.DEFINE_float("dp_delta", None, "Delta of the reported (epsilon, delta); default 1e-5.")
flags.DEFINE_float(
    "dp_target_quantile", None,
    "--dp=adaptive: quantile of update norms the clip adapts to (default 0.5).")
flags.DEFINE_float(
    "dp_clip_learning_rate", None, "--dp=adaptive: learning rate of the clip (default 0.2).")
flags.DEFINE_integer(
    "dp_distributed_bits", None,
    "--dp=distributed: bit width of the secure modular sum (1..22, default 20).")
# --- Runtime -----------------------------------------------------------------
flags.DEFINE_enum(
    "runtime", "cpp", list(config_lib.RUNTIMES),
    "Where rounds run: cpp (TFF's C++ worker process), inprocess (the round "
    "compiled to TFF's MapReduceForm and run in this process with TensorFlow, "
    "on GPUs when there are any; secure sums use pairwise masking), or remote "
    "(each round's clients split across the TFF workers in --workers).")
flags.DEFINE_string(
    "gpus", "all", "--runtime=inprocess: GPUs to train clients on: all, none, or indices like 0,1.")
flags.DEFINE_integer(
    "clients_per_gpu", 1,
    "--runtime=inprocess: clients trained at once on each GPU (each gets a logical "
    "GPU with its share of the memory).")
flags.DEFINE_integer(
    "parallel_clients", 2,
    "--runtime=inprocess without GPUs: clients trained at once on each CPU device.")
flags.DEFINE_integer(
    "cpu_devices", 1,
    "--runtime=inprocess: split the CPU into this many logical devices (tests use it "
    "to exercise the multi-GPU placement on a CPU).")
flags.DEFINE_enum(
    "prefetch_clients", "auto", list(config_lib.PREFETCH_CLIENTS),
    "--runtime=inprocess: read each slot's next client into memory while the "
    "current one trains: on, off, or auto (on when clients train on GPUs; on the "
    "CPU it competes with training for the cores).")
flags.DEFINE_list(
    "workers", [],
    "--runtime=remote: TFF worker services (`python -m tffpipe.worker`) as "
    "HOST:PORT,HOST:PORT,...")
flags.DEFINE_float(
    "worker_wait_sec", 30.0,
    "--runtime=remote: seconds a worker is waited for: at the start (at least 1), "
    "and when it stops answering, before its share runs again on the other workers.")
# --- Outputs -----------------------------------------------------------------
flags.DEFINE_string(
    "root_dir", os.path.join(tempfile.gettempdir(), "tffpipe"),
    "Folder holding experiments; a run writes to ROOT_DIR/EXPERIMENT_NAME.")
flags.DEFINE_string(
    "experiment_name", "default",
    "Name of this run's folder; rerunning with the same name resumes it.")

FLAGS = flags.FLAGS

_FLAG_DEFINERS = {
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
}


def _define_task_flags() -> dict[str, dict[str, str]]:
    """Defines `--<task>_<option>` for every option of every registered task.

    A plug-in whose module does not import gets no flags; `--list_tasks`
    says why.

    Returns:
      task name -> {option name -> flag name}.
    """
    task_flags = {}
    for name, entry in tasks.registered_tasks().items():
        try:
            options = tasks.factory_options(tasks.load_factory(entry.path))
        except tasks.TaskError:
            continue
        task_flags[name] = {}
        for option, spec in options.items():
            flag_name = f"{name}_{option}"
            help_text = f"[task {name}] {spec.help}"
            if spec.choices and all(isinstance(c, str) for c in spec.choices):
                flags.DEFINE_enum(flag_name, spec.default, list(spec.choices), help_text)
            elif type(spec.default) in _FLAG_DEFINERS:
                _FLAG_DEFINERS[type(spec.default)](flag_name, spec.default, help_text)
            else:
                continue
            task_flags[name][option] = flag_name
    return task_flags


_TASK_FLAGS = _define_task_flags()


def _task_config() -> config_lib.TaskConfig:
    for other, names in _TASK_FLAGS.items():
        if other == FLAGS.task:
            continue
        for flag_name in names.values():
            if FLAGS[flag_name].present:
                raise config_lib.ConfigError(
                    f"--{flag_name} applies to task {other!r}, not --task={FLAGS.task}"
                )
    options = {
        option: FLAGS[flag_name].value
        for option, flag_name in _TASK_FLAGS.get(FLAGS.task, {}).items()
    }
    return config_lib.TaskConfig(name=FLAGS.task, options=options, data_dir=FLAGS.data_dir)


def _optimizer_config(prefix: str) -> config_lib.OptimizerConfig:
    return config_lib.OptimizerConfig(
        FLAGS[f"{prefix}_optimizer"].value,
        FLAGS[f"{prefix}_learning_rate"].value,
        **{field: FLAGS[f"{prefix}_{field}"].value for field in _HYPERPARAMETER_HELP},
    )


def _check_fedsgd_flags() -> None:
    if FLAGS.algorithm != "fedsgd":
        return
    for field in ("optimizer", "learning_rate", *_HYPERPARAMETER_HELP):
        if FLAGS[f"client_{field}"].present:
            raise config_lib.ConfigError(
                f"--client_{field} has no effect with --algorithm=fedsgd: clients send "
                "the gradient of their local data and the server optimizer applies it"
            )


def config_from_flags() -> config_lib.RunConfig:
    """Builds the frozen run config from the parsed flags.

    Raises:
      ConfigError: a flag value is invalid.
    """
    _check_fedsgd_flags()
    return config_lib.RunConfig(
        task=_task_config(),
        client=config_lib.ClientConfig(
            epochs=FLAGS.client_epochs,
            batch_size=FLAGS.client_batch_size,
            max_elements=FLAGS.client_max_elements or None,
            shuffle_buffer=FLAGS.client_shuffle_buffer,
        ),
        algorithm=config_lib.AlgorithmConfig(
            name=FLAGS.algorithm,
            client_weighting=FLAGS.client_weighting,
            proximal_strength=FLAGS.proximal_strength,
        ),
        client_optimizer=_optimizer_config("client"),
        server_optimizer=_optimizer_config("server"),
        aggregation=config_lib.AggregationConfig(
            zeroing=FLAGS.zeroing,
            secure=FLAGS.secure_aggregation,
            compression=FLAGS.compression,
            compression_bits=FLAGS.compression_bits,
            compression_min_elements=FLAGS.compression_min_elements,
            dp=config_lib.PrivacyConfig(
                mechanism=FLAGS.dp,
                clip_norm=FLAGS.dp_clip_norm,
                noise_multiplier=FLAGS.dp_noise_multiplier,
                target_epsilon=FLAGS.dp_target_epsilon,
                max_epsilon=FLAGS.dp_max_epsilon,
                delta=FLAGS.dp_delta,
                target_quantile=FLAGS.dp_target_quantile,
                clip_learning_rate=FLAGS.dp_clip_learning_rate,
                distributed_bits=FLAGS.dp_distributed_bits,
            ),
        ),
        schedule=config_lib.ScheduleConfig(
            rounds=FLAGS.rounds,
            clients_per_round=FLAGS.clients_per_round,
            seed=FLAGS.seed,
            eval_every=FLAGS.eval_every,
            checkpoint_every=FLAGS.checkpoint_every,
            keep_checkpoints=FLAGS.keep_checkpoints,
            eval_batch_size=FLAGS.eval_batch_size,
            eval_clients=FLAGS.eval_clients,
        ),
        output=config_lib.OutputConfig(
            root_dir=FLAGS.root_dir, experiment_name=FLAGS.experiment_name
        ),
        runtime=config_lib.RuntimeConfig(
            name=FLAGS.runtime,
            gpus=FLAGS.gpus,
            clients_per_gpu=FLAGS.clients_per_gpu,
            parallel_clients=FLAGS.parallel_clients,
            cpu_devices=FLAGS.cpu_devices,
            prefetch_clients=FLAGS.prefetch_clients,
            workers=tuple(FLAGS.workers),
            worker_wait_sec=FLAGS.worker_wait_sec,
        ),
    )


def check_writable(directory: str) -> None:
    """Creates `directory` and proves a file can be written there.

    Raises:
      ConfigError: the folder cannot be created or written.
    """
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test_"):
            pass
    except OSError as e:
        raise config_lib.ConfigError(
            f"--root_dir: cannot write to {directory}: {e.strerror or e}"
        ) from e


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    processes.exit_now(code)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a one-line error instead of a usage dump."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(str(e))
    return []


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        compat.quiet_library_logs()
    if FLAGS.list_tasks:
        print(task_listing.task_table(), flush=True)
        processes.exit_now(0)
    processes.install_worker_reaper(handle_sigterm=True)
    memory.limit_arenas_in_this_process()
    try:
        cfg = config_from_flags()
        if cfg.runtime.name == "inprocess":
            devices.configure(cfg.runtime)  # before TensorFlow starts its devices
        if cfg.runtime.name == "remote":
            # Before the data is loaded and the processes are built.
            remote.check_workers(
                cfg.runtime.workers, max(cfg.runtime.worker_wait_sec, remote.MIN_CONNECT_SEC)
            )
        task = tasks.create_task(
            cfg.task.name, dict(cfg.task.options), seed=cfg.schedule.seed,
            data_dir=cfg.task.data_dir,
        )
        cfg = loop.fit_to_task(cfg, task)
        check_writable(cfg.output.run_dir)
        print(loop.describe_run(cfg, task), flush=True)
        result = loop.run(cfg, task)
    except (
        config_lib.ConfigError,
        tasks.TaskError,
        checkpoints.ResumeError,
        devices.DeviceError,
        inprocess.InProcessUnsupported,
        remote.WorkerUnavailable,
        remote.NoWorkersLeft,
        remote.NotMergeable,
    ) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume from the last checkpoint", 130)
    summary = ", ".join(
        f"{k} {v:.4f}" for k, v in sorted(result.final_eval.items()) if "/num_" not in k
    )
    print(f"done: {result.rounds_done} rounds; held-out {summary}", flush=True)
    print(f"model exported to {os.path.join(cfg.output.run_dir, 'export')}", flush=True)
    processes.exit_now(0)


def run_main() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run_main()
