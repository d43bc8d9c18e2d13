"""TFF execution contexts the runtimes share: which one a process needs, and the test context.

TFF's default C++ context cannot run secure-sum intrinsics ("Cannot embed a
federated value"). Its test context replaces them with insecure bodies that
keep their arithmetic: bit-width quantisation and modular wrap-around are
exact, only the cryptographic protocol is simulated.
"""

import contextlib
from collections.abc import Callable, Iterator

import tensorflow_federated as tff
from tffpipe.compat import context_stack_impl, tree_analysis


SECURE_INTRINSICS = (
    "federated_secure_sum",
    "federated_secure_sum_bitwidth",
    "federated_secure_modular_sum",
    "federated_secure_select",
)

# What each runtime's secure sum protects, one line each (docs/security.md).
SIMULATED_PROTOCOL_NOTE = (
    "secure sum: simulated by TFF's test runtime: its arithmetic (quantisation, modular wrap-around) "
    "is exact, no cryptographic protocol runs, and the summing code sees every client's value"
)

REMOTE_SECURE_NOTE = (
    "secure sum: simulated: TFF's workers cannot run secure-sum intrinsics, so they run their "
    "arithmetic (quantisation, modular wrap-around: exact) and the launcher merges the workers' "
    "partial sums; no cryptographic protocol runs, and each worker sees its clients' values"
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
