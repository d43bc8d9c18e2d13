"""Serves TFF computations for `--runtime=remote`: `python -m tffpipe.worker --port=N --tls_dir=DIR`.

Starts the `worker_binary` of the installed TFF (its C++ executor service) in
a private network namespace where no other host reaches it
(`runtimes/private_network.py`), and serves `--bind:--port` with a front that
accepts only callers whose certificate the federation's CA signed
(`runtimes/worker_front.py`; plaintext only with `--insecure_workers`). Prints
`tffpipe worker ready at HOST:PORT` once it serves, and stops cleanly on
SIGTERM or SIGINT (Kubernetes sends SIGTERM when it stops a pod). The service
dies with this process, even on SIGKILL. Exit status: 0 after a requested
stop, 1 when the service could not start or died, 2 on bad flags.

Does not import TensorFlow, so it starts in a second.
"""

import os
import signal
import socket
import subprocess
import sys
import time

from absl import flags

from tffpipe.runtimes import processes
from tffpipe.runtimes import tls
from tffpipe.runtimes import transport_security
from tffpipe.runtimes import worker_front

# Its own flag set: the launcher and the doctor define --tls_dir in absl's global one.
FLAGS = flags.FlagValues()
flags.DEFINE_integer("port", 8000, "Port to serve on; 0 picks a free port.", flag_values=FLAGS)
flags.DEFINE_string(
    "bind",
    "::",
    "Address to serve on: '::' (every interface, IPv4 included), an address of this "
    "machine, or 127.0.0.1 / ::1 for this machine only.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "tls_dir",
    "",
    "This worker's certificate folder (`python -m tffpipe.certs issue DIR NAME --role=worker`): "
    "serve mutual TLS, accepting only callers whose certificate the same CA signed.",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "insecure_workers",
    False,
    "Serve plaintext gRPC to any caller instead of mutual TLS (a warning at every "
    "start): only on a network where every host is trusted.",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "max_concurrent_computation_calls",
    -1,
    "Most calls of one computation run at once (e.g. clients trained in "
    "parallel); -1: no limit. Lower it when the worker runs out of memory.",
    flag_values=FLAGS,
)
flags.DEFINE_float("ready_timeout", 60.0, "Seconds to wait for the service to accept connections.", flag_values=FLAGS)


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


def _serves(target: str) -> bool:
    # An unknown method: a gRPC server that serves answers UNIMPLEMENTED at once.
    import grpc

    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary(transport_security.PROBE_METHOD)(b"", timeout=0.5)
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.UNIMPLEMENTED
    return True


def start(port: int, max_concurrent_computation_calls: int = -1) -> subprocess.Popen:
    """Starts TFF's worker service on `port`; it dies with this process."""
    path = processes.binary_path()
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"TFF's worker binary is missing or not executable: {path}")
    return processes.WorkerPopen(
        [path, f"--port={port}", f"--max_concurrent_computation_calls={max_concurrent_computation_calls}"],
        stdin=subprocess.DEVNULL,
    )


def backend_target(port: int) -> str:
    """The gRPC target of the worker service started on `port`: its private socket, or the port."""
    path = processes.private_socket(port)
    return f"unix:{path}" if path else f"127.0.0.1:{port}"


def wait_until_ready(service: subprocess.Popen, port: int, timeout_sec: float) -> None:
    """Returns once the service answers gRPC calls.

    Raises:
      RuntimeError: it exited, or did not get ready in time.
    """
    deadline = time.monotonic() + timeout_sec
    while not _serves(backend_target(port)):
        if service.poll() is not None:
            raise RuntimeError(f"TFF's worker exited with status {service.returncode} before serving")
        if time.monotonic() > deadline:
            raise RuntimeError(f"TFF's worker did not serve on port {port} within {timeout_sec:g} s")
        time.sleep(0.1)


def stop(service: subprocess.Popen) -> None:
    """Stops the service as TFF does (SIGINT), killing it if it lingers."""
    if service.poll() is None:
        service.send_signal(signal.SIGINT)
    service.wait()  # WorkerPopen kills it after a bounded wait


def _listen_address(bind: str, port: int) -> str:
    host = bind.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(
    port: int,
    max_concurrent_computation_calls: int,
    ready_timeout: float,
    bind: str = "::",
    credentials: "tls.Credentials | None" = None,
) -> int:
    """Runs the worker until a stop signal or its death; returns the exit status.

    Args:
      port: the port callers dial (0: a free one).
      max_concurrent_computation_calls: passed to TFF's worker.
      ready_timeout: seconds to wait for TFF's worker to serve.
      bind: the address to serve on.
      credentials: this worker's certificate; None serves plaintext.
    """
    # A plain flag, not a threading.Event: Event.set() from a signal handler
    # deadlocks when the signal lands while this thread holds the Event's
    # (non-reentrant) lock inside wait(), which the loop below re-enters
    # twice a second. A worker then printed "stopping" and never stopped.
    stop_requested: list[str] = []

    def request_stop(signum, frame):
        del frame
        print(f"tffpipe worker: {signal.Signals(signum).name}, stopping", flush=True)
        stop_requested.append(signal.Signals(signum).name)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, request_stop)
    port = port or free_port()
    claim = claim_port(port)
    if claim is None:
        print(
            f"error: port {port} is in use by another tffpipe worker on this machine; pick another with --port",
            file=sys.stderr,
            flush=True,
        )
        return 1
    if port_in_use(port):
        claim.close()
        print(f"error: port {port} is in use; pick another with --port", file=sys.stderr, flush=True)
        return 1
    exposure = processes.local_worker_exposure()
    backend_port = free_port()
    service = start(backend_port, max_concurrent_computation_calls)
    serving = None
    try:
        try:
            wait_until_ready(service, backend_port, ready_timeout)
            serving = worker_front.Front(
                _listen_address(bind, port),
                backend_target(backend_port),
                credentials.server_credentials() if credentials else None,
            )
            serving.start()
        except (RuntimeError, OSError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
        if exposure:
            print(f"warning: port {backend_port}: {exposure}", flush=True)
        if credentials is None:
            print(f"warning: {INSECURE_WARNING}", flush=True)
        else:
            print(
                f"transport: mutual TLS; callers need a certificate signed by CA {credentials.ca_fingerprint} "
                f"(this worker: {credentials.name}, valid until {credentials.not_after:%Y-%m-%d})",
                flush=True,
            )
        print(f"tffpipe worker ready at {socket.getfqdn()}:{port} (pid {os.getpid()})", flush=True)
        while not stop_requested:
            time.sleep(0.5)  # the handler runs during the sleep; the flag is read after it
            if stop_requested:
                break
            if service.poll() is not None:
                print(f"error: TFF's worker exited with status {service.returncode}", file=sys.stderr, flush=True)
                return 1
        print("tffpipe worker stopped", flush=True)
        return 0
    finally:
        if serving is not None:
            serving.stop()
        stop(service)
        claim.close()


INSECURE_WARNING = (
    "--insecure_workers: serving plaintext gRPC to any caller; whoever reaches this port can run "
    "TensorFlow code here (read and write files) and read every example and model sent"
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        sys.exit(2)
    if not 0 <= FLAGS.port <= 65535:
        print(f"error: --port must be 0..65535, got {FLAGS.port}", file=sys.stderr)
        sys.exit(2)
    if bool(FLAGS.tls_dir) == FLAGS.insecure_workers:
        print(
            "error: --tls_dir and --insecure_workers exclude each other"
            if FLAGS.tls_dir
            else "error: give --tls_dir (this worker's folder from `python -m tffpipe.certs issue DIR NAME "
            "--role=worker`), or --insecure_workers to serve plaintext to any caller",
            file=sys.stderr,
        )
        sys.exit(2)
    credentials = None
    try:
        if FLAGS.tls_dir:
            credentials = tls.load(FLAGS.tls_dir, "worker")
        code = serve(FLAGS.port, FLAGS.max_concurrent_computation_calls, FLAGS.ready_timeout, FLAGS.bind, credentials)
    except (FileNotFoundError, tls.TlsError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
    if any(arg in ("-h", "--help", "--helpshort", "--helpfull") for arg in argv[1:]):
        print(f"usage: python -m tffpipe.worker [flags]\n\n{__doc__.split(chr(10) + chr(10))[1]}\n")
        print(FLAGS.get_help())
        sys.exit(0)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main(_parse_flags(sys.argv))
