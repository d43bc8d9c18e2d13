"""Serves TFF computations for `--runtime=remote`: `python -m tffpipe.worker --port=N`.

Starts the `worker_binary` of the installed TFF (its C++ executor service),
prints `tffpipe worker ready at HOST:PORT` once it accepts connections, and
stops it cleanly on SIGTERM or SIGINT (Kubernetes sends SIGTERM when it stops
a pod). The service dies with this process, even on SIGKILL. Exit status: 0
after a requested stop, 1 when the service could not start or died.

Does not import TensorFlow, so it starts in a second.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

from tffpipe.runtimes import processes

flags.DEFINE_integer("port", 8000, "Port to serve on (all interfaces); 0 picks a free port.")
flags.DEFINE_integer(
    "max_concurrent_computation_calls", -1,
    "Most calls of one computation run at once (e.g. clients trained in "
    "parallel); -1: no limit. Lower it when the worker runs out of memory.")
flags.DEFINE_float(
    "ready_timeout", 60.0, "Seconds to wait for the service to accept connections.")
FLAGS = flags.FLAGS

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether something already listens on `port`.

    Checked before starting: gRPC servers bind with SO_REUSEPORT, so TFF's
    worker would start "successfully" on a taken port and share it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As servers bind: connections of an earlier server in TIME_WAIT do
        # not make the port taken, a listening socket does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
            s.listen()
            return False
        except OSError:
            return True


def claim_port(port: int) -> socket.socket | None:
    """Claims `port` for this worker among tffpipe workers on this machine, or None if one has it.

    `port_in_use` alone leaves a race: two workers started at the same moment
    both find the port free, and TFF's `worker_binary` (gRPC, SO_REUSEPORT)
    then lets both listen on it. The claim is a Unix socket bound to an
    abstract name derived from the port: the kernel lets one process bind a
    name at a time, and frees it when the process dies, SIGKILL included.
    Linux only; elsewhere the check falls back to `port_in_use`.
    """
    if not sys.platform.startswith("linux"):
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0tffpipe-worker-port-{port}")
    except OSError:
        claim.close()
        return None
    return claim


def _accepts_connections(port: int) -> bool:
    # A plain TCP connect: the service binds its port only once it serves.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start(port: int, max_concurrent_computation_calls: int = -1) -> subprocess.Popen:
    """Starts TFF's worker service on `port`; it dies with this process."""
    path = processes.binary_path()
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"TFF's worker binary is missing or not executable: {path}")
    return processes.WorkerPopen(
        [path, f"--port={port}",
         f"--max_concurrent_computation_calls={max_concurrent_computation_calls}"],
        stdin=subprocess.DEVNULL,
    )


def wait_until_ready(service: subprocess.Popen, port: int, timeout_sec: float) -> None:
    """Returns once the service accepts connections.

    Raises:
      RuntimeError: it exited, or did not get ready in time.
    """
    deadline = time.monotonic() + timeout_sec
    while not _accepts_connections(port):
        if service.poll() is not None:
            raise RuntimeError(
                f"TFF's worker exited with status {service.returncode} before serving"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"TFF's worker did not serve on port {port} within {timeout_sec:g} s")
        time.sleep(0.1)


def stop(service: subprocess.Popen) -> None:
    """Stops the service as TFF does (SIGINT), killing it if it lingers."""
    if service.poll() is None:
        service.send_signal(signal.SIGINT)
    service.wait()  # WorkerPopen kills it after a bounded wait


def serve(port: int, max_concurrent_computation_calls: int, ready_timeout: float) -> int:
    """Runs the worker service until a stop signal or its death; returns the exit status."""
    stop_requested = threading.Event()

    def request_stop(signum, frame):
        del frame
        print(f"tffpipe worker: {signal.Signals(signum).name}, stopping", flush=True)
        stop_requested.set()

    for sig in _STOP_SIGNALS:
        signal.signal(sig, request_stop)
    port = port or free_port()
    claim = claim_port(port)
    if claim is None:
        print(f"error: port {port} is in use by another tffpipe worker on this machine; pick another with --port",
              file=sys.stderr, flush=True)
        return 1
    if port_in_use(port):
        claim.close()
        print(f"error: port {port} is in use; pick another with --port", file=sys.stderr, flush=True)
        return 1
    service = start(port, max_concurrent_computation_calls)
    try:
        try:
            wait_until_ready(service, port, ready_timeout)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
        print(f"tffpipe worker ready at {socket.getfqdn()}:{port} (pid {os.getpid()})", flush=True)
        while not stop_requested.wait(0.5):
            if service.poll() is not None:
                print(f"error: TFF's worker exited with status {service.returncode}",
                      file=sys.stderr, flush=True)
                return 1
        print("tffpipe worker stopped", flush=True)
        return 0
    finally:
        stop(service)
        claim.close()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        sys.exit(2)
    if not 0 <= FLAGS.port <= 65535:
        print(f"error: --port must be 0..65535, got {FLAGS.port}", file=sys.stderr)
        sys.exit(2)
    try:
        code = serve(FLAGS.port, FLAGS.max_concurrent_computation_calls, FLAGS.ready_timeout)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
