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
from typing import Callable, Iterator

from absl import app
from absl import flags
import numpy as np
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tffpipe import compat
from tffpipe import config as config_lib
from tffpipe.runtimes import devices
from tffpipe.runtimes import memory
from tffpipe.runtimes import processes
from tffpipe.tasks import public_data

flags.DEFINE_string("task", "digits", "Task whose data and memory needs to check.")
flags.DEFINE_string("data_dir", public_data.DEFAULT_DATA_DIR, "Folder of the public datasets' files.")
flags.DEFINE_integer("clients_per_round", 10, "Cohort size to estimate memory for.")
flags.DEFINE_enum(
    "runtime", "all", ["all", *config_lib.RUNTIMES],
    "Runtime(s) to check and smoke-test: all, cpp, inprocess or remote (all "
    "includes remote when --workers is given).")
flags.DEFINE_string("gpus", "all", "--runtime=inprocess: GPUs to use (all, none, or indices like 0,1).")
flags.DEFINE_list(
    "workers", [], "--runtime=remote: the worker services to check, HOST:PORT,HOST:PORT,...")
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
                FAIL, requirement.name,
                f"{version} installed, but tffpipe needs {requirement.specifier}; run `uv sync`",
            )
        else:
            yield Check(OK, requirement.name, version)


def check_gpu_libraries(tensorflow_gpus: int, driver_gpus: int) -> Check | None:
    """GPUs the NVIDIA driver shows that TensorFlow cannot use, with the fix."""
    if driver_gpus and not tensorflow_gpus:
        return Check(
            WARN, "gpu libraries",
            f"nvidia-smi shows {driver_gpus} GPU(s) but TensorFlow sees none: install the "
            "CUDA libraries TensorFlow 2.14 needs with `uv sync --extra gpu` (BUILD_NOTES.md)",
        )
    return None


def check_devices(runtimes: list[str], runtime_cfg: config_lib.RuntimeConfig) -> Iterator[Check]:
    """What TensorFlow sees, and where each runtime will train clients."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    gpus = tf.config.list_physical_devices("GPU")
    built = "built with CUDA" if tf.test.is_built_with_cuda() else "built without CUDA"
    yield Check(OK, "tensorflow devices", f"{len(gpus)} GPU(s) seen; TensorFlow {tf.__version__} {built}")
    libraries = check_gpu_libraries(len(gpus), len(devices.gpu_memory_mb()))
    if libraries is not None:
        yield libraries
    if "cpp" in runtimes:
        if gpus:
            yield Check(
                WARN, "runtime cpp",
                "clients train on the CPU: TFF's worker_binary is built without CUDA; "
                "use --runtime=inprocess to train on the GPU(s)",
            )
        else:
            yield Check(OK, "runtime cpp", "clients train on the CPU in TFF's worker")
    if "inprocess" in runtimes:
        slots = devices.client_slots(runtime_cfg)
        used = sorted(set(slots))
        where = f"{len(slots)} client slot(s) on {', '.join(used)}"
        if gpus and not any("GPU" in name for name in used):
            yield Check(WARN, "runtime inprocess", f"{where}; GPUs present but not used (--gpus={runtime_cfg.gpus})")
        else:
            yield Check(OK, "runtime inprocess", where)


def check_worker_binary(path: str) -> Check:
    """TFF's worker binary exists and may be executed."""
    if not os.path.isfile(path):
        return Check(FAIL, "worker binary", f"missing at {path}; reinstall tensorflow-federated (`uv sync --reinstall`)")
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


def check_memory(needed: int, available: int | None, what: str) -> Check:
    """Free memory against the estimate."""
    if available is None:
        return Check(WARN, "memory", f"cannot read free memory; {what} needs about {needed / _MIB:,.0f} MiB")
    detail = f"{available / _MIB:,.0f} MiB free; {what} needs about {needed / _MIB:,.0f} MiB"
    if available < needed:
        return Check(FAIL, "memory", detail + "; lower --clients_per_round or free memory")
    if available < 1.5 * needed:
        return Check(WARN, "memory", detail + " (little headroom)")
    return Check(OK, "memory", detail)


def _synthetic_task():
    """A tiny task on random data, so the smoke run needs no files."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tffpipe import tasks  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(0)
    x = rng.random((60, 4), dtype=np.float32)
    y = rng.integers(0, 3, 60).astype(np.int32)
    return tasks.from_arrays(
        "doctor", x, y, lambda: tf.keras.Sequential([tf.keras.layers.Dense(3, input_shape=(4,))]),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        num_clients=4, partition="iid", eval_fraction=0.25,
    )


def check_workers(addresses: list[str], timeout_sec: float = 5.0) -> Iterator[Check]:
    """Whether each remote worker accepts connections."""
    from tffpipe.runtimes import remote  # pylint: disable=g-import-not-at-top

    if not addresses:
        yield Check(FAIL, "runtime remote", "no workers to check: pass --workers=HOST:PORT,...")
        return
    for address in addresses:
        try:
            remote.check_workers([address], timeout_sec)
            yield Check(OK, f"worker {address}", "accepts connections")
        except remote.WorkerUnavailable as e:
            yield Check(FAIL, f"worker {address}", str(e).split(": ", 1)[1])


def smoke_round(runtime_cfg: config_lib.RuntimeConfig) -> Check:
    """One FedAvg round of three synthetic clients on the given runtime."""
    from tffpipe.learning import builder  # pylint: disable=g-import-not-at-top
    from tffpipe.runtimes import contexts as runtime  # pylint: disable=g-import-not-at-top
    from tffpipe import tasks  # pylint: disable=g-import-not-at-top

    name = f"smoke round {runtime_cfg.name}"
    start = time.perf_counter()
    try:
        task = _synthetic_task()
        cfg = config_lib.RunConfig(runtime=runtime_cfg)
        with compat.quiet_tensorflow_errors():
            process, _ = builder.build_learning_process(task, cfg, task.train_data.client_ids)
        spec = tasks.ClientSpec(num_epochs=1, batch_size=5)
        data = [task.client_dataset(c, spec, seed=i) for i, c in enumerate(task.train_data.client_ids)]
        with runtime.running(process, runtime_cfg, print_fn=lambda line: None) as runner:
            output = runner.next(runner.initialize(), data)
        examples = int(output.metrics["client_work"]["train"]["num_examples"])
    except Exception as e:  # pylint: disable=broad-except
        # Any failure is the finding; report it in one line.
        text = str(e).strip().splitlines()
        return Check(FAIL, name, f"{type(e).__name__}: {text[0] if text else ''}")
    return Check(OK, name, f"{examples} examples trained in {time.perf_counter() - start:.1f} s")


def _task_checks(task_name: str, data_dir: str, clients_per_round: int) -> Iterator[Check]:
    from tffpipe import tasks  # pylint: disable=g-import-not-at-top

    try:
        task = tasks.create_task(task_name, {}, seed=0, data_dir=data_dir)
    except tasks.TaskError as e:
        yield Check(FAIL, f"task {task_name}", str(e))
        return
    params = int(sum(np.prod(v.shape) for v in task.model_builder().weights))
    cohort = min(clients_per_round, len(task.train_data.client_ids))
    yield Check(
        OK, f"task {task_name}",
        f"{len(task.train_data.client_ids):,} training clients, model of {params:,} parameters",
    )
    yield check_memory(
        estimate_memory_bytes(params, cohort), available_memory_bytes(),
        f"{cohort} clients a round",
    )


def run_checks(
    task_name: str, data_dir: str, clients_per_round: int, runtimes: list[str],
    runtime_cfg: config_lib.RuntimeConfig, smoke: bool,
) -> Iterator[Check]:
    """All checks, in the order a user would fix them."""
    try:
        metadata = importlib.metadata.metadata("tffpipe")
        requirements = importlib.metadata.requires("tffpipe") or []
    except importlib.metadata.PackageNotFoundError:
        yield Check(FAIL, "tffpipe", "not installed in this environment; run `uv sync` in the repository")
        return
    yield check_python(metadata.get("Requires-Python"))
    yield from check_packages(requirements, importlib.metadata.version)
    yield from check_devices(runtimes, runtime_cfg)
    yield check_worker_binary(processes.binary_path())
    if "remote" in runtimes:
        worker_checks = list(check_workers(list(runtime_cfg.workers)))
        yield from worker_checks
        if any(c.status == FAIL for c in worker_checks):
            runtimes = [r for r in runtimes if r != "remote"]
    yield from _task_checks(task_name, data_dir, clients_per_round)
    if smoke:
        for name in runtimes:
            workers = runtime_cfg.workers if name == "remote" else ()
            yield smoke_round(dataclasses.replace(runtime_cfg, name=name, workers=workers))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        processes.exit_now(2)
    if not FLAGS["verbosity"].present:
        compat.quiet_library_logs()
    processes.install_worker_reaper(handle_sigterm=True)
    memory.limit_arenas_in_this_process()
    if FLAGS.runtime == "all":
        runtimes = ["cpp", "inprocess"] + (["remote"] if FLAGS.workers else [])
    else:
        runtimes = [FLAGS.runtime]
    # Every runtime's settings in one config; smoke rounds set the name.
    runtime_cfg = config_lib.RuntimeConfig(
        name="inprocess", gpus=FLAGS.gpus, workers=tuple(FLAGS.workers)
    )
    failed = False
    try:
        if "inprocess" in runtimes:
            devices.configure(runtime_cfg)  # before TensorFlow starts its devices
    except devices.DeviceError as e:
        print(Check(FAIL, "devices", str(e)).line(), flush=True)
        failed = True
    for check in run_checks(
        FLAGS.task, FLAGS.data_dir, FLAGS.clients_per_round, runtimes, runtime_cfg, FLAGS.smoke
    ):
        print(check.line(), flush=True)
        failed = failed or check.status == FAIL
    print("some checks failed: see the FAIL lines" if failed else "all checks passed", flush=True)
    processes.exit_now(1 if failed else 0)


if __name__ == "__main__":
    app.run(main)
