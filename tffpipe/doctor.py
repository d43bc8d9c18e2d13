"""`python -m tffpipe.doctor`: checks the environment a run needs, in plain words.

  python -m tffpipe.doctor
  python -m tffpipe.doctor --task=emnist --data_dir=~/data --clients_per_round=50 --runtime=inprocess

Checks Python and the installed packages against tffpipe's pins, the GPUs
TensorFlow sees and whether the chosen runtime will train on them, TFF's
worker binary, that the task loads, free memory against an estimate for the
cohort, and runs one round on synthetic data on each runtime. Every line
starts with `ok`, `warn` or `FAIL`; the exit status is 1 if any check failed.
"""

import dataclasses
import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator

from absl import app
from absl import flags
import numpy as np
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tffpipe import compat
from tffpipe import config as config_lib
from tffpipe.config import components as config_components
from tffpipe import errors
from tffpipe import settings
from tffpipe.aggregation import robust
from tffpipe.runtimes import devices
from tffpipe.runtimes import memory
from tffpipe.runtimes import processes
from tffpipe.runtimes import registry as runtime_registry

flags.DEFINE_string("task", "digits", "Task whose data and memory needs to check.")
flags.DEFINE_string("data_dir", config_lib.DEFAULT_DATA_DIR, "Folder of the public datasets' files.")
flags.DEFINE_integer("clients_per_round", 10, "Cohort size to estimate memory for.")
flags.DEFINE_enum(
    "runtime",
    "all",
    ["all", *runtime_registry.RUNTIMES],
    "Runtime(s) to check and smoke-test: all (cpp and inprocess, remote when --workers is given, "
    "ray when --ray_address is) or one of " + ", ".join(runtime_registry.RUNTIMES) + ".",
)
flags.DEFINE_string("gpus", "all", "--runtime=inprocess: GPUs to use (all, none, or indices like 0,1).")
flags.DEFINE_list("workers", [], "--runtime=remote: the worker services to check, HOST:PORT,HOST:PORT,...")
flags.DEFINE_string(
    "ray_address",
    "",
    "--runtime=ray: the Ray cluster to check (HOST:PORT or auto); with --runtime=all, "
    "ray is checked only when this is given.",
)
flags.DEFINE_bool("ray_allow_unauthenticated", False, "--runtime=ray: accept a cluster without token authentication.")
flags.DEFINE_string(
    "tls_dir", "", "--runtime=remote: the launcher's certificate folder to check and call the workers with."
)
flags.DEFINE_bool("insecure_workers", False, "--runtime=remote: call the workers over plaintext gRPC.")
flags.DEFINE_bool("smoke", True, "Run one round on synthetic data on each checked runtime.")
FLAGS = flags.FLAGS

OK, WARN, FAIL = "ok", "warn", "FAIL"
_MIB = 1 << 20
# Resident memory of the launcher plus TFF's worker for a small model,
# measured with benchmarks/memory.py (about 750 + 800 MiB).
_BASE_MEMORY_BYTES = 1536 * _MIB
# Per client in the cohort: weights, update, gradients and optimizer state.
_COPIES_PER_CLIENT = 4


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of the report."""

    status: str
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:4s}  {self.name}: {self.detail}"


def check_python(requires: str | None) -> Check:
    """The running Python against the package's `Requires-Python`."""
    version = platform.python_version()
    if requires and version not in SpecifierSet(requires):
        return Check(FAIL, "python", f"{version}, but tffpipe needs {requires}")
    return Check(OK, "python", f"{version}" + (f" (needs {requires})" if requires else ""))


def check_packages(requirements: list[str], installed: Callable[[str], str]) -> Iterator[Check]:
    """Each pinned dependency against the installed version.

    Args:
      requirements: requirement strings, as in the package metadata.
      installed: returns a distribution's installed version; raises
        `importlib.metadata.PackageNotFoundError` when it is missing.
    """
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # optional extras, such as [gpu]
        try:
            version = installed(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            yield Check(FAIL, requirement.name, f"not installed (needs {requirement.specifier}); run `uv sync`")
            continue
        if requirement.specifier and version not in requirement.specifier:
            yield Check(
                FAIL,
                requirement.name,
                f"{version} installed, but tffpipe needs {requirement.specifier}; run `uv sync`",
            )
        else:
            yield Check(OK, requirement.name, version)


def check_gpu_libraries(tensorflow_gpus: int, driver_gpus: int) -> Check | None:
    """GPUs the NVIDIA driver shows that TensorFlow cannot use, with the fix."""
    if driver_gpus and not tensorflow_gpus:
        return Check(
            WARN,
            "gpu libraries",
            f"nvidia-smi shows {driver_gpus} GPU(s) but TensorFlow sees none: install the "
            "CUDA libraries TensorFlow 2.14 needs with `uv sync --extra gpu` (BUILD_NOTES.md)",
        )
    return None


def runtime_config(name: str, gpus: str = "all", workers: tuple[str, ...] = (), **more: object) -> config_lib.RunConfig:
    """A default run config on runtime `name`, with the doctor's settings that apply to it."""
    table = settings.by_flag(config_lib.RunConfig)
    values: dict[str, object] = {"runtime": name}
    for flag, value in (("gpus", gpus), ("workers", tuple(workers)), *more.items()):
        applies = table[flag].spec.applies_to()
        if applies is None or name in applies[1]:
            values[flag] = value
    return config_lib.from_values(values)


def check_devices() -> tuple[int, list[Check]]:
    """What TensorFlow sees: (number of GPUs, the checks)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    built = "built with CUDA" if tf.test.is_built_with_cuda() else "built without CUDA"
    checks = [Check(OK, "tensorflow devices", f"{len(gpus)} GPU(s) seen; TensorFlow {tf.__version__} {built}")]
    libraries = check_gpu_libraries(len(gpus), len(devices.gpu_memory_mb()))
    if libraries is not None:
        checks.append(libraries)
    return len(gpus), checks


def check_runtime(cfg: config_lib.RunConfig, gpus_seen: int) -> list[Check]:
    """Where the config's runtime will train clients (and whether its workers answer)."""
    runtime = runtime_registry.get(cfg.runtime.name)
    return [Check(*found) for found in runtime.doctor_checks(config_components.runtime_context(cfg), gpus_seen)]


def check_worker_binary(path: str) -> Check:
    """TFF's worker binary exists and may be executed."""
    if not os.path.isfile(path):
        return Check(
            FAIL, "worker binary", f"missing at {path}; reinstall tensorflow-federated (`uv sync --reinstall`)"
        )
    if not os.access(path, os.X_OK):
        return Check(FAIL, "worker binary", f"{path} is not executable; run `chmod +x {path}`")
    return Check(OK, "worker binary", f"{path} ({os.path.getsize(path) / _MIB:.0f} MiB)")


def estimate_memory_bytes(num_parameters: int, clients_per_round: int) -> int:
    """A rough upper estimate of a run's resident memory.

    Launcher and worker baseline, plus a few float32 copies of the model per
    client in the cohort. For EMNIST's cnn_dropout (1.2 M parameters) and 50
    clients a round it gives 2.5 GiB; benchmarks/memory.py measured a 2.2 GiB peak.
    """
    return _BASE_MEMORY_BYTES + clients_per_round * num_parameters * 4 * _COPIES_PER_CLIENT


def available_memory_bytes() -> int | None:
    """`MemAvailable` from /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(needed: int, available: int | None, what: str, name: str = "memory") -> Check:
    """Free memory against the estimate."""
    if available is None:
        return Check(WARN, name, f"cannot read free memory; {what} needs about {needed / _MIB:,.0f} MiB")
    detail = f"{available / _MIB:,.0f} MiB free; {what} needs about {needed / _MIB:,.0f} MiB"
    if available < needed:
        return Check(FAIL, name, detail + "; lower --clients_per_round or free memory")
    if available < 1.5 * needed:
        return Check(WARN, name, detail + " (little headroom)")
    return Check(OK, name, detail)


def _synthetic_task():
    """A tiny task on random data, so the smoke run needs no files."""
    import tensorflow as tf
    from tffpipe import tasks

    rng = np.random.default_rng(0)
    x = rng.random((60, 4), dtype=np.float32)
    y = rng.integers(0, 3, 60).astype(np.int32)
    return tasks.from_arrays(
        "doctor",
        x,
        y,
        lambda: tf.keras.Sequential([tf.keras.layers.Dense(3, input_shape=(4,))]),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        num_clients=4,
        partition="iid",
        eval_fraction=0.25,
    )


def smoke_round(cfg: config_lib.RunConfig) -> Check:
    """One FedAvg round of three synthetic clients on the config's runtime."""
    from tffpipe.program import assembly
    from tffpipe import tasks

    runtime = runtime_registry.get(cfg.runtime.name)
    name = f"smoke round {cfg.runtime.name}"
    start = time.perf_counter()
    try:
        task = _synthetic_task()
        with compat.quiet_tensorflow_errors():
            process, _ = assembly.build_learning_process(
                task, cfg, task.train_data.client_ids, runtime.loop_implementation()
            )
        spec = tasks.ClientSpec(num_epochs=1, batch_size=5)
        data = [task.client_dataset(c, spec, seed=i) for i, c in enumerate(task.train_data.client_ids)]
        with runtime.running(process, config_components.runtime_context(cfg), print_fn=lambda line: None) as runner:
            output = runner.next(runner.initialize(), data)
        examples = int(output.metrics["client_work"]["train"]["num_examples"])
    except Exception as e:
        # Any failure is the finding; report it in one line.
        text = str(e).strip().splitlines()
        return Check(FAIL, name, f"{type(e).__name__}: {text[0] if text else ''}")
    return Check(OK, name, f"{examples} examples trained in {time.perf_counter() - start:.1f} s")


def _task_checks(task_name: str, data_dir: str, clients_per_round: int) -> Iterator[Check]:
    from tffpipe import tasks

    try:
        task = tasks.create_task(task_name, {}, seed=0, data_dir=data_dir)
    except tasks.TaskError as e:
        yield Check(FAIL, f"task {task_name}", str(e))
        return
    params = int(sum(np.prod(v.shape) for v in task.model_builder().weights))
    cohort = min(clients_per_round, len(task.train_data.client_ids))
    yield Check(
        OK,
        f"task {task_name}",
        f"{len(task.train_data.client_ids):,} training clients, model of {params:,} parameters",
    )
    needed = estimate_memory_bytes(params, cohort)
    yield check_memory(needed, available_memory_bytes(), f"{cohort} clients a round")
    gathered = robust.server_memory_bytes(cohort, params)
    yield check_memory(
        needed + gathered,
        available_memory_bytes(),
        f"--robust (the server holds all {cohort} updates, {gathered / _MIB:,.1f} MiB more)",
        name="memory under --robust",
    )


def run_checks(
    task_name: str,
    data_dir: str,
    clients_per_round: int,
    configs: dict[str, config_lib.RunConfig],
    smoke: bool,
) -> Iterator[Check]:
    """All checks, in the order a user would fix them.

    Args:
      configs: runtime name -> a run config on it, for each runtime to check.
    """
    try:
        metadata = importlib.metadata.metadata("tffpipe")
        requirements = importlib.metadata.requires("tffpipe") or []
    except importlib.metadata.PackageNotFoundError:
        yield Check(FAIL, "tffpipe", "not installed in this environment; run `uv sync` in the repository")
        return
    yield check_python((metadata.get_all("Requires-Python") or [None])[0])
    yield from check_packages(requirements, importlib.metadata.version)
    gpus_seen, device_checks = check_devices()
    yield from device_checks
    runnable = []
    for cfg in configs.values():
        checks = check_runtime(cfg, gpus_seen)
        yield from checks
        if all(check.status != FAIL for check in checks):
            runnable.append(cfg)  # a runtime whose devices or workers fail gets no smoke round
    yield check_worker_binary(processes.binary_path())
    yield from _task_checks(task_name, data_dir, clients_per_round)
    if smoke:
        for cfg in runnable:
            yield smoke_round(cfg)


def _ray_flags() -> dict[str, object]:
    return {
        "ray_address": FLAGS.ray_address,
        "ray_allow_unauthenticated": FLAGS.ray_allow_unauthenticated,
        "tls_dir": FLAGS.tls_dir,
        "insecure_workers": FLAGS.insecure_workers,
    }


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        processes.exit_now(2)
    if not FLAGS["verbosity"].present:
        compat.quiet_library_logs()
    processes.raise_on_sigterm()
    memory.limit_arenas_in_this_process()
    failed = False
    try:
        if FLAGS.runtime == "all":
            # Every runtime that can run with the given flags (remote needs --workers).
            configs = {}
            for runtime in runtime_registry.runtimes():
                if runtime.chooses_another:
                    continue
                try:
                    cfg = runtime_config(runtime.key, FLAGS.gpus, tuple(FLAGS.workers), **_ray_flags())
                except config_lib.ConfigError:
                    continue
                if runtime.checked_by_default(config_components.runtime_context(cfg)):
                    configs[runtime.key] = cfg
        else:
            configs = {FLAGS.runtime: runtime_config(FLAGS.runtime, FLAGS.gpus, tuple(FLAGS.workers), **_ray_flags())}
        for cfg in configs.values():
            runtime_registry.get(cfg.runtime.name).configure_devices(
                config_components.runtime_context(cfg)
            )  # before TensorFlow starts them
    except (config_lib.ConfigError, devices.DeviceError) as e:
        print(Check(FAIL, "devices", str(e)).line(), flush=True)
        processes.exit_now(1)
    try:
        for check in run_checks(FLAGS.task, FLAGS.data_dir, FLAGS.clients_per_round, configs, FLAGS.smoke):
            print(check.line(), flush=True)
            failed = failed or check.status == FAIL
    except errors.Terminated:
        print("error: terminated (SIGTERM)", file=sys.stderr, flush=True)
        processes.exit_now(143)
    print("some checks failed: see the FAIL lines" if failed else "all checks passed", flush=True)
    processes.exit_now(1 if failed else 0)


if __name__ == "__main__":
    app.run(main)
