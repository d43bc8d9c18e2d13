"""TensorFlow devices for the in-process runtime: GPU choice and logical splits.

Splitting one physical device into several logical devices lets several
clients train on it at once, each with its own slice of memory. TFF's C++
executor cannot use such virtual GPUs, which is why this lives with the
in-process runtime. The CPU can be split the same way; the tests use that to
exercise the code path GPUs take.

Logical devices must be configured before TensorFlow initializes its devices
(before the first op runs), so the launcher calls `configure` first.
"""

import os
import shutil
import subprocess
from typing import TYPE_CHECKING

from absl import logging
import tensorflow as tf

from tffpipe import errors

if TYPE_CHECKING:
    from tffpipe.runtimes import inprocess

_DEFAULT_GPU_MEMORY_MB = 4096
# The (gpus, clients_per_gpu, cpu_devices) applied in this process, if any.
_configured: tuple | None = None


class DeviceError(errors.UserError, ValueError):
    """Device settings that cannot be applied."""


def _chosen_gpus(spec: str, physical: list) -> list:
    if spec == "all":
        return physical
    if spec in ("none", ""):
        return []
    try:
        indices = [int(i) for i in spec.split(",")]
    except ValueError:
        raise DeviceError(f"--gpus must be 'all', 'none' or GPU indices like '0,1', got {spec!r}") from None
    missing = [i for i in indices if not 0 <= i < len(physical)]
    if missing:
        raise DeviceError(f"--gpus={spec}: no GPU {missing[0]}; TensorFlow sees {len(physical)} GPU(s)")
    return [physical[i] for i in indices]


def gpu_memory_mb() -> list[int]:
    """Total memory of each GPU from nvidia-smi (empty when unavailable)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return [int(line.strip()) for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def configure(settings: "inprocess.Settings") -> None:
    """Makes the chosen GPUs visible and splits devices into logical ones.

    Raises:
      DeviceError: unknown GPUs, bad counts, or TensorFlow already initialized.
    """
    global _configured  # noqa: PLW0603 (once per process)
    wanted = (settings.gpus, settings.clients_per_gpu, settings.cpu_devices)
    if _configured == wanted:
        return  # a second run in the same process (a notebook): already in place
    physical = tf.config.list_physical_devices("GPU")
    chosen = _chosen_gpus(settings.gpus, physical)
    try:
        if physical:
            tf.config.set_visible_devices(chosen, "GPU")
        if settings.clients_per_gpu > 1:
            totals = gpu_memory_mb()
            for gpu in chosen:
                index = physical.index(gpu)
                total = totals[index] if index < len(totals) else _DEFAULT_GPU_MEMORY_MB
                share = int(total * 0.9) // settings.clients_per_gpu
                tf.config.set_logical_device_configuration(
                    gpu,
                    [tf.config.LogicalDeviceConfiguration(memory_limit=share)] * settings.clients_per_gpu,
                )
        if settings.cpu_devices > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * settings.cpu_devices
            )
    except RuntimeError as e:  # "cannot be modified after being initialized"
        raise DeviceError(f"devices can only be configured before TensorFlow starts: {e}") from e
    _give_every_slot_an_inter_op_thread(
        len(chosen) * settings.clients_per_gpu or settings.cpu_devices * settings.parallel_clients
    )
    _configured = wanted


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), which TensorFlow sizes its thread pools by."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _give_every_slot_an_inter_op_thread(slots: int) -> None:
    """At least one inter-op thread per client slot.

    TensorFlow sizes its inter-op pool by the CPUs in the process's affinity;
    with fewer threads than slots, the slots' calls and their datasets' reads
    wait on each other: 100 digits clients on 2 slots, process limited to one
    core, 2.6 to 2.9 s a round against 0.81 to 0.93 s with 2 threads.
    """
    if slots <= usable_cpus() or tf.config.threading.get_inter_op_parallelism_threads():
        return  # TensorFlow's default has a thread per slot, or the user chose
    try:
        tf.config.threading.set_inter_op_parallelism_threads(slots)
    except RuntimeError:  # TensorFlow already started (a notebook's second run): keep its pool
        logging.info("inter-op threads left at TensorFlow's %d", tf.config.threading.get_inter_op_parallelism_threads())


def client_slots(settings: "inprocess.Settings") -> list[str]:
    """One device name per concurrent client: every logical GPU if any, else the CPU.

    On the CPU, each logical CPU device gets `parallel_clients` slots.
    """
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if gpus:
        return gpus
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return [name for name in cpus for _ in range(settings.parallel_clients)]


def describe() -> str:
    """The devices TensorFlow sees, for logs and `tffpipe.doctor`."""
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    text = f"{len(cpus)} logical CPU device(s), {len(gpus)} logical GPU device(s)"
    logging.info("devices: %s", [d.name for d in cpus + gpus])
    return text
