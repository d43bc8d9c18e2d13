"""What a stranger who reaches a TFF worker's port runs: a computation that reads a file on its host.

    python tests/unauthenticated_read.py TARGET PATH

TARGET is a gRPC target (HOST:PORT). Prints `read: <the file's bytes>` and
exits 0 when the worker ran it; `refused: <why>` and exits 1 otherwise. Public
TFF API only, over an insecure channel (no certificate).
"""

import sys

import grpc
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.impl.execution_contexts import sync_execution_context
from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
from tensorflow_federated.python.core.impl.executors import remote_executor
from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub


def main(target: str, path: str) -> int:
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=5)
    except grpc.FutureTimeoutError:
        print(f"refused: no connection to {target}")
        return 1
    stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(channel)

    def stack(cardinalities):
        cardinalities.setdefault(tff.CLIENTS, 1)
        executor = remote_executor.RemoteExecutor(stub)
        executor.set_cardinalities(cardinalities)
        return executor

    tff.framework.set_default_context(
        sync_execution_context.SyncExecutionContext(
            executor_fn=python_executor_stacks.ResourceManagingExecutorFactory(executor_stack_fn=stack),
            compiler_fn=compiler.desugar_and_transform_to_native,
        )
    )

    @tff.tensorflow.computation
    def read():
        return tf.io.read_file(path)

    try:
        print(f"read: {read()!r}")
        return 0
    except Exception as e:  # anything the worker or gRPC answers
        print(f"refused: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
