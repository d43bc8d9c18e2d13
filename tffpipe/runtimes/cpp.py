"""`--runtime=cpp`: TFF's C++ worker process, in the execution context the process needs.

TFF's default C++ context cannot run secure-sum intrinsics ("Cannot embed a
federated value"); a process that calls them runs in TFF's test context,
which replaces them with insecure bodies that keep their arithmetic (exact
quantisation and modular wrap-around; the protocol is simulated).

The worker runs in a private network namespace (`processes.WorkerPopen`);
where the system refuses one, the run says so in its first lines.
"""

import contextlib

from tffpipe.runtimes import base


class CppRuntime(base.Runtime):
    key = "cpp"
    summary = "TFF's C++ worker process"

    @contextlib.contextmanager
    def running(self, process, ctx, print_fn):
        from tffpipe.runtimes import contexts
        from tffpipe.runtimes import processes

        exposure = processes.local_worker_exposure()
        print_fn(
            f"warning: {exposure}"
            if exposure
            else "runtime: TFF's worker in a private network namespace, "
            "reached through a Unix socket only this user can open"
        )
        with contexts.execution_context_for(process, print_fn):
            yield process

    def doctor_checks(self, ctx, gpus_seen):
        from tffpipe.runtimes import processes

        exposure = processes.local_worker_exposure()
        yield (
            ("warn", "local TFF worker", exposure)
            if exposure
            else ("ok", "local TFF worker", "private network namespace: no other host or user reaches it")
        )
        if gpus_seen:
            yield (
                "warn",
                "runtime cpp",
                "clients train on the CPU: TFF's worker_binary is built "
                "without CUDA; use --runtime=inprocess to train on the GPU(s)",
            )
        else:
            yield ("ok", "runtime cpp", "clients train on the CPU in TFF's worker")


RUNTIME = CppRuntime()
