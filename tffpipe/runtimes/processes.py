"""Makes every TFF worker process die with the Python process that started it.

TFF's C++ execution contexts start `worker_binary` with `subprocess.Popen` and
only stop it from `ServiceManager.__del__`, which does not run at interpreter
exit, on SIGKILL or on most crashes. The orphaned worker inherits our stdout
and stderr, so a pipeline such as `python -m tffpipe.train | tail` never ends.
TFF offers no hook for this, so we wrap the `Popen` it uses:

* every worker gets `PR_SET_PDEATHSIG=SIGKILL`, so the kernel kills it when
  its parent dies for any reason, SIGKILL included;
* an `atexit` hook stops the workers on a normal exit, an exception or Ctrl-C,
  and drops TFF's execution contexts while modules are still intact (TFF's
  `ServiceManager.__del__` otherwise runs during interpreter teardown and
  prints "AttributeError: 'NoneType' object has no attribute 'Popen'");
* programs turn SIGTERM into an exception (`raise_on_sigterm`), so the
  `atexit` hook runs.

Workers also start with a bounded number of malloc arenas (`tffpipe.runtimes.memory`),
and, where the system allows it, in a network namespace of their own
(`private_network`): TFF's worker listens on every interface without
authentication, so TFF's `localhost:PORT` channel is pointed at the Unix
socket that reaches it instead.
"""

import atexit
import ctypes
import gc
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import weakref

from tffpipe.runtimes import memory
from tffpipe.runtimes import private_network
import contextlib

_PR_SET_PDEATHSIG = 1
_STOP_TIMEOUT_SEC = 5.0
_live_workers: "weakref.WeakSet[subprocess.Popen]" = weakref.WeakSet()
_private_sockets: dict[int, str] = {}
_install_lock = threading.Lock()
_installed = False


def die_with_parent(parent_pid: int) -> None:
    """Runs in the forked child before exec: ask for SIGKILL on parent death."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # A launcher run as a background job of a script (`cmd &`) ignores SIGINT,
    # and ignored signals survive exec: the worker would ignore `stop`'s SIGINT.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    # The parent may have died between fork and prctl; then nobody would
    # deliver the signal.
    if os.getppid() != parent_pid:
        os._exit(1)


def _has_fileno(stream) -> bool:
    if stream is None or isinstance(stream, int):
        return True
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False


def _port_of(args: list[str]) -> int | None:
    for arg in args:
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    return None


_PRIVATE_PREFIX = "tffpipe-worker-"
_swept = False


def sweep_stale_private_folders(folder: str | None = None) -> int:
    """Removes this user's private-worker folders whose relay is gone (a SIGKILLed launcher's); returns how many.

    A folder is stale when it is over a minute old and its socket refuses
    connections (no relay listens), or it has no socket (a relay that never
    bound). A young folder is never touched: its relay may be starting.
    """
    folder = folder or tempfile.gettempdir()
    removed = 0
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        try:
            if not name.startswith(_PRIVATE_PREFIX):
                continue
            status = os.stat(path)
            if status.st_uid != os.getuid() or time.time() - status.st_mtime < 60:
                continue
            sock = os.path.join(path, "worker.sock")
            if os.path.exists(sock):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    try:
                        probe.connect(sock)
                        continue  # a live relay
                    except ConnectionRefusedError:
                        pass
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def private_socket(port: int) -> str | None:
    """The Unix socket that reaches the private TFF worker started for `port`, if any."""
    return _private_sockets.get(port)


class WorkerPopen(subprocess.Popen):
    """`subprocess.Popen` for TFF workers: tied to this process's lifetime, and private.

    Where the system allows it, the worker runs in a network namespace of its
    own and is reached through a Unix socket (`private_network`,
    `private_socket(port)`); elsewhere it listens on every interface, as TFF
    starts it.

    Note: PDEATHSIG fires when the *thread* that forked the child exits. A
    private worker's relay is therefore not given it: the relay watches its
    parent process itself (`private_network`) and the worker is tied to the
    relay. A worker started directly (no private network here) keeps
    PDEATHSIG: TFF starts workers from its execution context's event-loop
    thread, which lives as long as the context does.
    """

    def __init__(self, args, **kwargs):
        self.private_dir = None
        port = _port_of(list(args))
        if port is not None and private_network.unavailable_reason() is None:
            global _swept  # noqa: PLW0603 (once per process)
            if not _swept:
                _swept = True
                sweep_stale_private_folders()
            self.private_dir = tempfile.mkdtemp(prefix=_PRIVATE_PREFIX)  # 0700: only this user reaches it
            path = os.path.join(self.private_dir, "worker.sock")
            args = private_network.command(path, port, list(args))
            _private_sockets[port] = path
        if sys.platform.startswith("linux") and self.private_dir is None:
            parent_pid = os.getpid()
            kwargs["preexec_fn"] = lambda: die_with_parent(parent_pid)
        kwargs["env"] = memory.worker_environment(kwargs.get("env"))
        for stream in ("stdout", "stderr"):
            # TFF hands the worker `sys.stdout`/`sys.stderr`; in a notebook or
            # under output capture those have no file descriptor and Popen
            # fails ("fileno"). The worker then writes to the real ones.
            if not _has_fileno(kwargs.get(stream)):
                kwargs[stream] = getattr(sys, f"__{stream}__", None) or subprocess.DEVNULL
        super().__init__(args, **kwargs)
        _live_workers.add(self)

    def wait(self, timeout=None):
        """Waits for the worker; an unbounded wait gives up and kills it.

        TFF's `ServiceManager.__del__` sends SIGINT and waits with no limit;
        a worker still busy (seen after 50 rounds of 50 clients: minutes at
        full CPU) would hang the launcher's exit.
        """
        if timeout is not None:
            code = super().wait(timeout=timeout)
        else:
            try:
                code = super().wait(timeout=_STOP_TIMEOUT_SEC)
            except subprocess.TimeoutExpired:
                self.kill()
                code = super().wait()
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
        return code


def binary_path() -> str:
    """Where TFF 0.87 keeps its C++ worker, found without importing TFF."""
    spec = importlib.util.find_spec("tensorflow_federated")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("tensorflow-federated is not installed (`uv sync`)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "worker_binary")


def stop_workers(timeout: float = _STOP_TIMEOUT_SEC) -> None:
    """Stops every worker process started through `WorkerPopen`."""
    stop(list(_live_workers), timeout)


def stop(children: "list[subprocess.Popen]", timeout: float) -> None:
    """Sends SIGINT to each of `children` still running, then waits up to `timeout` for each, killing what is left."""
    running = [child for child in children if child.poll() is None]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGINT)
    for child in running:
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def exit_now(code: int) -> None:
    """Stops the workers and exits at once, skipping interpreter teardown.

    TFF's `ServiceManager.__del__` fails with a traceback when it runs during
    teardown (module globals are already gone); exiting here avoids that noise
    after an error message that is meant to be the only line printed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    _at_exit()
    os._exit(code)


def _release_tff_contexts() -> None:
    """Lets TFF's contexts (and their worker managers) go while Python is whole."""
    if "tensorflow_federated" not in sys.modules:
        return  # nothing of TFF's was started (e.g. a flag error), nothing to import
    try:
        from tffpipe.compat import context_stack_impl, runtime_error_context

        context_stack_impl.context_stack.set_default_context(runtime_error_context.RuntimeErrorContext())
        gc.collect()
    except Exception:
        pass  # Best effort: the workers are stopped either way.


def _at_exit() -> None:
    _release_tff_contexts()
    stop_workers()


def _raise_terminated(signum, frame):
    del signum, frame
    from tffpipe import errors

    raise errors.Terminated()


def raise_on_sigterm() -> None:
    """Turns SIGTERM into `errors.Terminated` in the main thread.

    Programs call this first (it imports nothing), so a SIGTERM at any moment,
    TensorFlow's import included, unwinds through `finally` blocks and the
    `atexit` hook that stops the workers. Only if no handler is set yet.
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL,
        None,
    ):
        signal.signal(signal.SIGTERM, _raise_terminated)


def raise_once_on_interrupt() -> None:
    """Ctrl-C raises `KeyboardInterrupt` once; later ones are ignored while the program winds down.

    A terminal sends SIGINT to the whole foreground process group, and `uv
    run` forwards it to its child as well, so the launcher often receives it
    twice: the second would interrupt the clean-up after the one-line message
    ("Exception ignored in ... KeyboardInterrupt"). Only where Python's own
    handler is installed (a notebook keeps its own).
    """
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _raise_interrupt_once)


def _raise_interrupt_once(signum, frame) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _channel_to_worker(target: str, options=None, compression=None):
    import grpc

    host, _, port = target.rpartition(":")
    path = private_socket(int(port)) if host == "localhost" and port.isdigit() else None
    return grpc.insecure_channel(f"unix:{path}" if path else target, options, compression)


def local_worker_exposure() -> str | None:
    """None when TFF's local worker is private; otherwise one line on why it is reachable."""
    reason = private_network.unavailable_reason()
    if reason is None:
        return None
    return (
        f"TFF's local worker listens on every interface, unauthenticated: {reason}; anyone who reaches "
        "this machine's ports can run code in it (see docs/security.md)"
    )


def install_worker_reaper() -> None:
    """Ties TFF worker processes started from now on to this process.

    Safe to call more than once. Must be called before the first federated
    computation runs (importing TFF does not start a worker; the first
    computation does).
    """
    global _installed  # noqa: PLW0603 (once per process)
    if _installed:
        return
    # Outside the lock: importing compat the first time calls this function itself.
    from tffpipe.compat import executor_factory

    with _install_lock:
        if _installed:
            return

        # Replace the module's view of `subprocess` rather than the global
        # `subprocess.Popen`, so that nothing else in the process is affected.
        shim = types.ModuleType("subprocess_for_tff_workers")
        shim.__dict__.update(vars(subprocess))
        vars(shim)["Popen"] = WorkerPopen
        executor_factory.subprocess = shim
        # TFF connects to `localhost:PORT`; a private worker is at its Unix socket.
        grpc_shim = types.ModuleType("grpc_for_tff_workers")
        grpc_shim.__dict__.update(vars(executor_factory.grpc))
        vars(grpc_shim)["insecure_channel"] = _channel_to_worker
        executor_factory.grpc = grpc_shim
        atexit.register(_at_exit)
        _installed = True
