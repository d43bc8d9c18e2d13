"""Work-arounds for TFF 0.87 and its dependencies, and the one place TFF's private names are imported."""

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

from absl import logging as absl_logging
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe import errors
from tffpipe.runtimes import processes


@functools.cache
def allow_deeply_nested_computations() -> None:
    """Lifts protobuf's (upb) nesting-depth limit of 100 for TFF computations.

    TFF serialises every federated computation into one nested `Computation`
    proto. Stacks such as the distributed discrete Gaussian aggregator on a CNN
    nest deeper than 100 levels, and upb then fails while TFF builds the
    process with `DecodeError: Error parsing message`; the pure-Python protobuf
    has no such limit but builds the same process about 10x slower (4.5 min
    against 30 s measured here). `SetAllowOversizeProtos` raises upb's limit.
    """
    try:
        from google._upb import _message
    except ImportError:  # another protobuf implementation: no upb limit
        return
    _message.SetAllowOversizeProtos(True)


@contextlib.contextmanager
def quiet_tensorflow_errors() -> Iterator[None]:
    """Silences TensorFlow's Python logger while TFF traces computations.

    Tracing secure aggregators and compiling MapReduceForms stamps assertion
    ops that TensorFlow then reports, one 20-line "Object was never used"
    ERROR each, although nothing is wrong.
    """
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def quiet_library_logs() -> None:
    """Shows warnings and errors only, for commands whose output is for people.

    TFF and TensorFlow log INFO lines for every checkpoint write, SavedModel
    asset and MapReduceForm compilation; they drown progress lines. Commands
    call this unless the user passed `--verbosity`.
    """
    absl_logging.set_verbosity(absl_logging.WARNING)
    tf.get_logger().setLevel("ERROR")


# --- TFF's private names ---------------------------------------------------
# tffpipe reaches into TFF 0.87 where its public API offers no way: the
# MapReduceForm and its TensorFlow parts (the in-process and Ray engines), the
# remote executor stack (the remote runtime's lost-worker handling), the
# runtime's context stack, the distributed DP factory TFF does not export, and
# the models and preprocessing of TFF's simulation baselines (built-in tasks).
# Every such name is imported here and nowhere else, after checking the
# installed TFF, so an upgrade fails in one line at import rather than deep
# inside a round.
SUPPORTED_TFF = "0.87.0"


def check_tff_version(installed: str) -> None:
    """Raises `UnsupportedTFF` unless `installed` is the TFF these private names come from."""
    if installed != SUPPORTED_TFF:
        raise UnsupportedTFF(
            f"tffpipe needs tensorflow-federated {SUPPORTED_TFF} (it uses parts of it that are not public "
            f"API), but {installed} is installed; run `uv sync --locked`"
        )


class UnsupportedTFF(errors.UserError, ImportError):
    """The installed TFF is not the version whose private names tffpipe uses."""


check_tff_version(tff.__version__)

from tensorflow_federated.proto.v0 import computation_pb2  # noqa: E402
from tensorflow_federated.python.aggregators import distributed_dp  # noqa: E402
from tensorflow_federated.python.common_libs import structure  # noqa: E402
from tensorflow_federated.python.core.backends.mapreduce import forms  # noqa: E402
from tensorflow_federated.python.core.backends.native import compiler as native_compiler  # noqa: E402
from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler  # noqa: E402
from tensorflow_federated.python.core.backends.test import compiler as test_compiler  # noqa: E402
from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation  # noqa: E402
from tensorflow_federated.python.core.impl.compiler import tree_analysis  # noqa: E402
from tensorflow_federated.python.core.impl.computation import computation_impl  # noqa: E402
from tensorflow_federated.python.core.impl.context_stack import context_base  # noqa: E402
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl  # noqa: E402
from tensorflow_federated.python.core.impl.context_stack import runtime_error_context  # noqa: E402
from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context  # noqa: E402
from tensorflow_federated.python.core.impl.execution_contexts import (  # noqa: E402
    mergeable_comp_execution_context as mergeable,
)
from tensorflow_federated.python.core.impl.executor_stacks import executor_factory  # noqa: E402
from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks  # noqa: E402
from tensorflow_federated.python.core.impl.executors import executors_errors  # noqa: E402
from tensorflow_federated.python.core.impl.executors import remote_executor  # noqa: E402
from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub  # noqa: E402
from tensorflow_federated.python.core.impl.types import computation_types  # noqa: E402
from tensorflow_federated.python.core.impl.types import placements  # noqa: E402
from tensorflow_federated.python.core.impl.types import type_conversions  # noqa: E402
from tensorflow_federated.python.learning.templates import type_checks  # noqa: E402
from tensorflow_federated.python.core.impl.utils import tensorflow_utils  # noqa: E402
from tensorflow_federated.python.learning.templates import client_works  # noqa: E402
from tensorflow_federated.python.program import structure_utils  # noqa: E402
from tensorflow_federated.python.simulation.baselines import keras_metrics  # noqa: E402
from tensorflow_federated.python.simulation.baselines.emnist import emnist_models  # noqa: E402
from tensorflow_federated.python.simulation.baselines.shakespeare import char_prediction_models  # noqa: E402
from tensorflow_federated.python.simulation.baselines.shakespeare import char_prediction_preprocessing  # noqa: E402
from tensorflow_federated.python.simulation.baselines.stackoverflow import word_prediction_models  # noqa: E402
from tensorflow_federated.python.simulation.baselines.stackoverflow import (  # noqa: E402
    word_prediction_preprocessing,
)
from tensorflow_federated.python.simulation.datasets import download as tff_download  # noqa: E402
from tensorflow_federated.python.simulation.models import resnet_models  # noqa: E402
from tensorflow_federated.python.tensorflow_libs import graph_utils  # noqa: E402
from tensorflow_federated.python.tensorflow_libs import serialization_utils  # noqa: E402

# Every TFF worker started from now on dies with this process, SIGKILL
# included. Installed here, beside the other uses of TFF's private names,
# because every module that runs TFF computations imports this one first
# (tests/test_compat.py checks that the program's entry points get it).
processes.install_worker_reaper()

__all__ = [
    "SUPPORTED_TFF",
    "UnsupportedTFF",
    "allow_deeply_nested_computations",
    "check_tff_version",
    "client_data_of_tensors",
    "event_loop_of",
    "invoke_without_retry",
    "quiet_library_logs",
    "quiet_tensorflow_errors",
    # TFF's private modules, imported above.
    "char_prediction_models",
    "char_prediction_preprocessing",
    "emnist_models",
    "keras_metrics",
    "resnet_models",
    "word_prediction_models",
    "word_prediction_preprocessing",
    "async_execution_context",
    "computation_impl",
    "computation_pb2",
    "computation_types",
    "context_base",
    "context_stack_impl",
    "distributed_dp",
    "executor_factory",
    "executors_errors",
    "forms",
    "graph_utils",
    "mergeable",
    "mergeable_comp_compiler",
    "native_compiler",
    "placements",
    "python_executor_stacks",
    "remote_executor",
    "remote_executor_grpc_stub",
    "runtime_error_context",
    "serialization_utils",
    "structure",
    "structure_utils",
    "tensorflow_computation",
    "tensorflow_utils",
    "test_compiler",
    "tff_download",
    "tree_analysis",
    "type_conversions",
]

# `AsyncExecutionContext.invoke` is wrapped in an endless retry on gRPC
# UNAVAILABLE; functools.wraps keeps the un-retried original here.
invoke_without_retry = async_execution_context.AsyncExecutionContext.invoke.__wrapped__


def event_loop_of(context: Any) -> asyncio.AbstractEventLoop:
    """The event loop a `MergeableCompExecutionContext` runs its subrounds on (TFF has no API to stop them)."""
    return context._async_runner._event_loop


@contextlib.contextmanager
def client_data_of_tensors() -> Iterator[None]:
    """Lets client work and learning processes built inside take tensors as clients' data.

    TFF's `ClientWorkProcess` and `compose_learning_process` refuse client
    data that is not a sequence, though nothing in composing, compiling or
    running a process needs one; the stacked form (`learning/stacked.py`)
    passes each client's training result as its data. Every other check of
    theirs still runs.
    """
    client_work_check = client_works._type_check_next_fn_parameters
    composed_check = type_checks.check_is_client_placed_structure_of_sequences
    client_works._type_check_next_fn_parameters = lambda fn: None
    type_checks.check_is_client_placed_structure_of_sequences = lambda value_type: None
    try:
        yield
    finally:
        client_works._type_check_next_fn_parameters = client_work_check
        type_checks.check_is_client_placed_structure_of_sequences = composed_check
