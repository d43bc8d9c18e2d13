"""Runs rounds on TFF worker services on other machines (`--runtime=remote`).

Each worker (`python -m tffpipe.worker`, TFF's `worker_binary`) gets one
asynchronous TFF execution context; TFF's mergeable-computation context splits
every computation's clients across them and merges their partial aggregates
(`tff.backends.native.create_mergeable_comp_execution_context` does the same;
we build the context ourselves for the two things below).

What we add to TFF, and why:

* A bounded wait for a lost worker. TFF's asynchronous context retries a
  call on an unreachable worker forever, so one dead machine would hang the
  run. `_WorkerContext` retries for `wait_sec` (the worker may come back,
  e.g. a restarted pod) and then gives up on it.
* A bounded wait for a hung worker. A worker that stops answering without
  dropping its connection (a stopped process, a wedged machine) leaves TFF's
  calls, which have no deadline, waiting forever. A round's `Compute` call
  can legitimately take minutes, so one deadline per call cannot tell slow
  from hung; instead, while a call runs, the worker is probed every second
  with a call of its own deadline (an unknown method, which a live gRPC
  server answers at once with UNIMPLEMENTED, busy or not). A worker that
  answers no probe for `wait_sec` is treated as lost.
* Failover. `FailoverContext` runs each computation on the live workers; when
  one is given up on, it logs the event and runs the whole computation again
  on the remaining workers from the same arguments. TFF computations are
  functions of their arguments, so a retried round starts from the state the
  failed attempt started from and is counted once. Lost workers that answer
  again are taken back at the start of a later computation.
* Secure sums. TFF's worker cannot execute secure-sum intrinsics; as in TFF's
  test runtime they are replaced by TensorFlow bodies with the same
  arithmetic (quantisation and modular wrap-around are exact) before the
  computation is split across workers.
"""

import asyncio
import functools
import socket
import threading
import time
from collections.abc import Callable, Sequence

import grpc


from tffpipe import compat
from tffpipe import errors
from tffpipe.compat import (
    async_execution_context,
    computation_impl,
    context_base,
    executors_errors,
    mergeable,
    mergeable_comp_compiler,
    native_compiler,
    placements,
    python_executor_stacks,
    remote_executor,
    remote_executor_grpc_stub,
    tensorflow_computation,
    test_compiler,
)
from tffpipe.runtimes import tls
from tffpipe.runtimes import transport_security
from tffpipe.runtimes import worker_front

# The same limits TFF uses for its local worker: model weights of large
# models exceed gRPC's default 4 MB message size.
_MAX_MESSAGE_BYTES = worker_front.MAX_MESSAGE_BYTES
_CHANNEL_OPTIONS = [
    ("grpc.max_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
]
# At the start every worker gets at least this long to accept a connection.
MIN_CONNECT_SEC = 1.0
_RETRY_FIRST_SEC = 0.25
_RETRY_MAX_SEC = 5.0
# How often lost workers are probed, and how long a probe waits.
_REJOIN_EVERY_SEC = 30.0
_PROBE_SEC = 0.5
# While a call runs: how often its worker is probed, and the longest a probe waits.
_LIVENESS_EVERY_SEC = 1.0
_LIVENESS_MAX_WAIT_SEC = 5.0
_LIVENESS_METHOD = transport_security.PROBE_METHOD  # no server has it: UNIMPLEMENTED means alive
# TFF's invoke without its endless retry on gRPC UNAVAILABLE.
_INVOKE_ONCE = compat.invoke_without_retry


class WorkerUnavailable(errors.UserError, RuntimeError):
    """A worker did not answer within the wait allowed for it."""

    def __init__(self, address: str, detail: str):
        super().__init__(f"worker {address} is unreachable: {detail}")
        self.address = address


class NoWorkersLeft(errors.UserError, RuntimeError):
    """Every worker was lost."""


class NotMergeable(errors.UserError, ValueError):
    """The computation cannot be split into per-worker parts and a merge."""


def _channel(address: str, credentials: tls.Credentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(address, _CHANNEL_OPTIONS)
    return grpc.secure_channel(address, credentials.channel_credentials(), _CHANNEL_OPTIONS)


def is_reachable(address: str, timeout_sec: float, credentials: tls.Credentials | None) -> bool:
    """Whether a gRPC connection to `address` becomes ready in time."""
    channel = _channel(address, credentials)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_sec)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def check_workers(addresses: Sequence[str], timeout_sec: float, credentials: tls.Credentials | None) -> None:
    """Waits up to `timeout_sec` for every worker to accept a connection (a TLS handshake with `credentials`).

    Raises:
      WorkerUnavailable: naming the first worker whose host does not resolve,
        that did not answer, or whose TLS handshake failed (and why).
    """
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            socket.getaddrinfo(host.strip("[]"), int(port))
        except (socket.gaierror, UnicodeError) as e:
            raise WorkerUnavailable(
                address, f"cannot resolve host {host!r} ({getattr(e, 'strerror', None) or e})"
            ) from e
    channels = {address: _channel(address, credentials) for address in addresses}
    futures = {a: grpc.channel_ready_future(c) for a, c in channels.items()}
    deadline = time.monotonic() + timeout_sec
    try:
        for address, future in futures.items():
            try:
                future.result(timeout=max(deadline - time.monotonic(), 0.01))
            except grpc.FutureTimeoutError:
                refused = transport_security.refusal(channels[address], credentials)
                if refused:
                    raise WorkerUnavailable(address, refused) from None
                raise WorkerUnavailable(
                    address,
                    f"no TFF worker answered within {timeout_sec:g} s (start one there with "
                    f"`python -m tffpipe.worker --port={address.rsplit(':', 1)[1]}"
                    f"{' --tls_dir=DIR' if credentials else ' --insecure_workers'}`)",
                ) from None
    finally:
        for channel in channels.values():
            channel.close()


def _compile_secure_sums_away(comp):
    """Replaces secure-sum intrinsics by their arithmetic (TFF's test lowering).

    The result keeps the original type signature, Python containers included,
    so results come back as e.g. `LearningProcessOutput`, not plain dicts.
    """
    lowered = test_compiler.replace_secure_intrinsics_with_bodies(comp)
    return computation_impl.ConcreteComputation.with_type(lowered, comp.type_signature)


# Cached: `check_mergeable` compiles the round before the run, and every
# mergeable context (a new one after each lost worker) would compile it again.
# A run compiles a handful of computations (round, evaluation, ...); the bound
# keeps a long-lived process (a notebook running many runs) from holding all.
@functools.lru_cache(maxsize=16)
def _to_mergeable_form(comp) -> mergeable.MergeableCompForm:
    return mergeable_comp_compiler.compile_to_mergeable_comp_form(_compile_secure_sums_away(comp))


def check_mergeable(comp, what: str = "round") -> None:
    """Compiles `comp` for splitting across workers, as each run will.

    Raises:
      NotMergeable: one line naming TFF's reason, suggesting --runtime=cpp.
    """
    try:
        _to_mergeable_form(comp)
    except (ValueError, TypeError) as e:
        raise NotMergeable(
            f"the {what} cannot be split across workers (TFF's mergeable form: "
            f"{errors.first_line(e)[:200]}); "
            "use --runtime=cpp"
        ) from e


class _LoopThread:
    """An event loop in a daemon thread of its own, that can be closed.

    TFF's `AsyncThreadRunner` stops its loop only when garbage-collected
    (joining the thread there); a retired worker's loop is stopped here as
    soon as the worker is dropped.
    """

    def __init__(self, name: str):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def run(self, coro):
        """Awaits `coro` run on this thread's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout_sec: float = 5.0) -> None:
        """Cancels what the loop runs, stops it and waits for the thread (at most `timeout_sec`)."""
        if self._loop.is_closed():
            return

        def cancel_then_stop():
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            # One more pass delivers the cancellations before the loop stops.
            self._loop.call_soon(self._loop.stop)

        self._loop.call_soon_threadsafe(cancel_then_stop)
        self._thread.join(timeout_sec)
        if not self._thread.is_alive():
            self._loop.close()


class _WorkerContext(async_execution_context.AsyncExecutionContext):
    """TFF's asynchronous context on one worker, with a bounded retry."""

    def __init__(self, address: str, wait_sec: float, credentials: tls.Credentials | None):
        self._channel = _channel(address, credentials)
        stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(self._channel)
        self._probe_channel = _channel(address, credentials)
        self._probe = self._probe_channel.unary_unary(_LIVENESS_METHOD)

        def executor_for(cardinalities):
            # As TFF's local factory does: computations without clients
            # still need a CLIENTS cardinality.
            cardinalities.setdefault(placements.CLIENTS, 0)
            executor = remote_executor.RemoteExecutor(stub)
            executor.set_cardinalities(cardinalities)
            return executor

        super().__init__(
            executor_fn=python_executor_stacks.ResourceManagingExecutorFactory(executor_stack_fn=executor_for),
            compiler_fn=native_compiler.desugar_and_transform_to_native,
            transform_args=tensorflow_computation.transform_args,
            transform_result=tensorflow_computation.transform_result,
        )
        self.address = address
        self._wait_sec = wait_sec
        # TFF's RemoteExecutor makes blocking gRPC calls inside its
        # coroutines, so on one shared event loop the workers' shares ran one
        # after the other (two workers took as long as one). Each worker's
        # calls run on an event loop in a thread of its own.
        self._own_thread = _LoopThread(f"tffpipe worker {address}")

    async def invoke(self, comp, arg):
        """Runs `comp` on this worker, waiting at most `wait_sec` for it to answer."""
        gave_up_at = None
        pause = _RETRY_FIRST_SEC
        while True:
            try:
                return await self._watched(self._own_thread.run(_INVOKE_ONCE(self, comp, arg)))
            except (executors_errors.RetryableError, grpc.RpcError) as e:
                if not _is_connection_error(e):
                    raise
                now = time.monotonic()
                gave_up_at = gave_up_at or now + self._wait_sec
                if now >= gave_up_at:
                    raise WorkerUnavailable(
                        self.address, f"no answer for {self._wait_sec:g} s ({_grpc_detail(e)})"
                    ) from e
                await asyncio.sleep(min(pause, gave_up_at - now))
                pause = min(pause * 2, _RETRY_MAX_SEC)

    async def _watched(self, call):
        """Awaits `call`, probing the worker meanwhile; gives up after `wait_sec` of silence."""
        task = asyncio.ensure_future(call)
        silent_since = None
        loop = asyncio.get_running_loop()
        while True:
            done, _ = await asyncio.wait({task}, timeout=_LIVENESS_EVERY_SEC)
            if done:
                return task.result()
            if await loop.run_in_executor(None, self._answers):
                silent_since = None
                continue
            now = time.monotonic()
            silent_since = silent_since or now
            if now - silent_since >= self._wait_sec:
                task.cancel()
                # Unblocks the call waiting in the worker's thread.
                self._channel.close()
                raise WorkerUnavailable(
                    self.address,
                    f"no answer for {self._wait_sec:g} s while it held a call (stopped or hung)",
                )

    def close(self) -> None:
        """Closes both channels (unblocking a call still waiting) and stops this worker's thread."""
        self._channel.close()
        self._probe_channel.close()
        self._own_thread.close()

    def _answers(self) -> bool:
        """Whether the worker's gRPC server answers a call right now."""
        try:
            self._probe(b"", timeout=min(max(self._wait_sec / 2, _PROBE_SEC), _LIVENESS_MAX_WAIT_SEC))
        except grpc.RpcError as e:
            return e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        return True


def _is_connection_error(error: Exception) -> bool:
    """Whether the worker went away (as opposed to the computation failing).

    A worker that restarted no longer knows the executors and values it held
    before, and answers NOT_FOUND for them: the call is then run again from
    scratch like after a lost connection.
    """
    if isinstance(error, executors_errors.RetryableError):
        return True
    code = error.code() if isinstance(error, grpc.Call) else None
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    return code == grpc.StatusCode.NOT_FOUND and isinstance(error, grpc.Call) and "xecutor" in (error.details() or "")


def _grpc_detail(error: Exception) -> str:
    cause = getattr(error, "grpc_error", None) or error.__cause__ or error
    if isinstance(cause, grpc.Call):
        return f"{cause.code().name}: {cause.details()}"
    return errors.first_line(cause)


class FailoverContext(context_base.SyncContext):
    """Runs every TFF computation across the live workers, retrying on loss.

    Install it with `context_stack.install(...)`; the program loop then runs
    exactly as on one machine.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        wait_sec: float,
        print_fn: Callable[[str], None],
        credentials: tls.Credentials | None = None,
    ):
        """Connects to the workers.

        Args:
          addresses: the workers, "HOST:PORT" each.
          wait_sec: how long a worker gets to answer, at the start and after
            it stopped answering.
          print_fn: receives a line for every worker lost or taken back.
          credentials: the launcher's certificate for mutual TLS; None: plaintext.

        Raises:
          WorkerUnavailable: a worker does not answer within wait_sec.
        """
        check_workers(addresses, max(wait_sec, MIN_CONNECT_SEC), credentials)
        self._credentials = credentials
        self._addresses = list(addresses)
        self._lost: dict[str, float] = {}
        self._wait_sec = wait_sec
        self._print = print_fn
        self._lock = threading.Lock()
        self._mergeable = None
        self._workers: list[_WorkerContext] = []
        self._last_probe = time.monotonic()
        self.workers_lost = 0

    @property
    def live_addresses(self) -> list[str]:
        return [a for a in self._addresses if a not in self._lost]

    def _context(self) -> mergeable.MergeableCompExecutionContext:
        # Fresh per-worker contexts with every new set of workers: the old
        # ones may still hold executors of the attempt that failed.
        if self._mergeable is None:
            self._workers = [_WorkerContext(a, self._wait_sec, self._credentials) for a in self.live_addresses]
            self._mergeable = mergeable.MergeableCompExecutionContext(
                async_contexts=self._workers,
                compiler_fn=_to_mergeable_form,
            )
        return self._mergeable

    def _take_back_answering_workers(self) -> None:
        now = time.monotonic()
        if not self._lost or now - self._last_probe < _REJOIN_EVERY_SEC:
            return
        self._last_probe = now
        for address in list(self._lost):
            if is_reachable(address, _PROBE_SEC, self._credentials):
                del self._lost[address]
                self._retire_context()
                self._print(f"worker {address} answers again; using it from now on")

    def _retire_context(self) -> None:
        """Stops what the current context still runs and forgets it."""
        if self._mergeable is None:
            return
        # The failed attempt's other subrounds would keep the surviving
        # workers busy; TFF has no API to stop them, so cancel the tasks on
        # the context's event loop.
        loop = compat.event_loop_of(self._mergeable)

        def cancel_all():
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(cancel_all)
        self._mergeable = None
        for worker in self._workers:
            worker.close()
        self._workers = []

    def close(self) -> None:
        """Closes every worker's channels and threads (the run is over)."""
        with self._lock:
            self._retire_context()

    def invoke(self, comp, arg):
        with self._lock:
            while True:
                self._take_back_answering_workers()
                try:
                    return self._context().invoke(comp, arg)
                except WorkerUnavailable as e:
                    self._drop(e)

    def _drop(self, error: WorkerUnavailable) -> None:
        self._lost.setdefault(error.address, time.monotonic())
        self.workers_lost += 1
        self._retire_context()
        live = self.live_addresses
        if not live:
            raise NoWorkersLeft(
                f"{error}; no workers left (start them again and rerun the same command "
                "to resume from the last checkpoint)"
            ) from error
        self._print(f"{error}; running the computation again on the remaining {len(live)} worker(s): {', '.join(live)}")


def describe(addresses: Sequence[str], wait_sec: float) -> str:
    """The run's runtime line for `--runtime=remote`."""
    return (
        f"remote runtime: each round's clients split across {len(addresses)} worker(s) "
        f"({', '.join(addresses)}); a lost worker is waited for {wait_sec:g} s, then its "
        "share runs on the others"
    )


def describe_transport(workers: int, credentials: tls.Credentials | None) -> str:
    """The run's transport line: what protects the traffic to the workers."""
    if credentials is None:
        return (
            f"transport: plaintext to {workers} worker(s) (--insecure_workers): the examples and the model "
            "cross the network readable, and anyone who reaches a worker can use it"
        )
    return (
        f"transport: mutual TLS to {workers} worker(s) (CA fingerprint {credentials.ca_fingerprint}; "
        f"this launcher: {credentials.name}, valid until {credentials.not_after:%Y-%m-%d})"
    )
