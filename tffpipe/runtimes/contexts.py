"""Chooses where a learning process's rounds run.

`--runtime=cpp` runs them in TFF's C++ worker, in the execution context the
process needs; `--runtime=inprocess` runs them in this process
(`tffpipe.runtimes.inprocess`); `--runtime=remote` on TFF workers elsewhere
(`tffpipe.runtimes.remote`).

TFF's default C++ context cannot run secure-sum intrinsics ("Cannot embed a
federated value"). Its test context replaces them with insecure bodies that
keep their arithmetic: bit-width quantisation and modular wrap-around are
exact, only the cryptographic protocol is simulated.
"""

import contextlib
from typing import Callable, Iterator

import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.compiler import tree_analysis
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl

from tffpipe import config as config_lib
from tffpipe.runtimes import devices
from tffpipe.runtimes import inprocess
from tffpipe.runtimes import remote

SECURE_INTRINSICS = (
    "federated_secure_sum",
    "federated_secure_sum_bitwidth",
    "federated_secure_modular_sum",
    "federated_secure_select",
)

SIMULATED_PROTOCOL_NOTE = (
    "secure aggregation: the process uses secure-sum intrinsics, so it runs in TFF's "
    "test runtime, which simulates the cryptographic protocol while its arithmetic "
    "(quantisation, modular wrap-around) is exact"
)

REMOTE_SECURE_NOTE = (
    "secure aggregation: TFF's workers cannot run secure-sum intrinsics, so they run "
    "their arithmetic (quantisation, modular wrap-around: exact) and the launcher "
    "merges the workers' partial sums; the cryptographic protocol is simulated"
)


def uses_secure_sum(computation: tff.Computation) -> bool:
    """Whether the computation calls any secure aggregation intrinsic."""
    tree = computation.to_building_block()
    return any(tree_analysis.contains_called_intrinsic(tree, uri) for uri in SECURE_INTRINSICS)


@contextlib.contextmanager
def execution_context_for(
    process: tff.learning.templates.LearningProcess, print_fn: Callable[[str], None]
) -> Iterator[bool]:
    """Runs the body in TFF's test C++ context when the process needs secure sums.

    The previous context is back in place afterwards.

    Yields:
      Whether the test context is in use.
    """
    if not uses_secure_sum(process.next):
        yield False
        return
    print_fn(SIMULATED_PROTOCOL_NOTE)
    with test_runtime():
        yield True


@contextlib.contextmanager
def test_runtime() -> Iterator[None]:
    """Runs the body in a fresh TFF test C++ context, which executes secure sums."""
    context = tff.backends.test.create_sync_test_cpp_execution_context()
    with context_stack_impl.context_stack.install(context):
        yield


@contextlib.contextmanager
def running(
    process: tff.learning.templates.LearningProcess,
    runtime_cfg: config_lib.RuntimeConfig,
    print_fn: Callable[[str], None],
) -> Iterator[object]:
    """Yields what runs `process`'s rounds on the configured runtime.

    With "cpp" that is `process` itself, inside the TFF context it needs; with
    "inprocess" an `inprocess.InProcessProcess` with the same interface.

    With "remote" it is `process` itself, with every TFF computation run
    across the workers (evaluation included).

    Raises:
      inprocess.InProcessUnsupported: the process cannot run in-process.
      remote.WorkerUnavailable: a worker does not answer.
      remote.NotMergeable: the round cannot be split across workers.
    """
    if runtime_cfg.name == "inprocess":
        runner = inprocess.build(
            process, devices.client_slots(runtime_cfg), print_fn=print_fn,
            prefetch_clients=runtime_cfg.prefetch_clients,
        )
        try:
            yield runner
        finally:
            runner.close()
        return
    if runtime_cfg.name == "remote":
        remote.check_mergeable(process.next)
        context = remote.FailoverContext(
            runtime_cfg.workers, runtime_cfg.worker_wait_sec, print_fn
        )
        print_fn(remote.describe(runtime_cfg.workers, runtime_cfg.worker_wait_sec))
        if uses_secure_sum(process.next):
            print_fn(REMOTE_SECURE_NOTE)
        with context_stack_impl.context_stack.install(context):
            yield process
        return
    with execution_context_for(process, print_fn):
        yield process
