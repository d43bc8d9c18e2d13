"""`--runtime=cpp`: TFF's C++ worker process, in the execution context the process needs.

TFF's default C++ context cannot run secure-sum intrinsics ("Cannot embed a
federated value"); a process that calls them runs in TFF's test context,
which replaces them with insecure bodies that keep their arithmetic (exact
quantisation and modular wrap-around; the protocol is simulated).
"""

import contextlib

from tffpipe.runtimes import base


class CppRuntime(base.Runtime):
    key = "cpp"
    summary = "TFF's C++ worker process"

    @contextlib.contextmanager
    def running(self, process, cfg, print_fn):
        from tffpipe.runtimes import contexts  # pylint: disable=g-import-not-at-top

        with contexts.execution_context_for(process, print_fn):
            yield process

    def doctor_checks(self, cfg, gpus_seen):
        if gpus_seen:
            yield ("warn", "runtime cpp", "clients train on the CPU: TFF's worker_binary is built "
                   "without CUDA; use --runtime=inprocess to train on the GPU(s)")
        else:
            yield ("ok", "runtime cpp", "clients train on the CPU in TFF's worker")


RUNTIME = CppRuntime()
